import Foundation
import SomaTestSupport

/// The soma-node binary built beside the test bundle.
func somaNode() throws -> String {
    let bundleDir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for candidate in [bundleDir.appendingPathComponent("soma-node").path,
                      bundleDir.deletingLastPathComponent().appendingPathComponent("soma-node").path] {
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
    }
    // `swift test` on Linux runs the bundle from the build directory itself.
    let cwdBuild = FileManager.default.currentDirectoryPath + "/.build/debug/soma-node"
    if FileManager.default.isExecutableFile(atPath: cwdBuild) { return cwdBuild }
    throw CocoaError(.fileNoSuchFile, userInfo: [NSFilePathErrorKey: "soma-node next to \(bundleDir.path)"])
}

/// Runs soma-node with `arguments`; returns (status, stdout + stderr).
@discardableResult
func somaNode(_ arguments: [String]) throws -> (Int32, String) {
    let (status, out, err) = try run(try somaNode(), arguments)
    return (status, String(decoding: out, as: UTF8.self) + err)
}

/// A `soma-node run` process on port 0, stopped with SIGTERM.
final class RunningNode {
    let process = Process()
    let address: String
    /// The HTTP API's port (`--http 127.0.0.1:0` unless the arguments name another).
    let httpPort: Int?

    init(data: String, arguments extra: [String] = [], command: [String] = ["run"]) throws {
        process.executableURL = URL(fileURLWithPath: try somaNode())
        let http = extra.contains("--http") ? [] : ["--http", "127.0.0.1:0"]
        process.arguments = command + ["--data", data, "--listen", "127.0.0.1:0"] + http + extra
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        let wantsHTTP = !extra.contains("off")
        var text = ""
        while !(text.contains("listening on ") && (!wantsHTTP || text.contains("http on "))) || !text.hasSuffix("\n") {
            let chunk = out.fileHandleForReading.availableData
            guard !chunk.isEmpty else { break }
            text += String(decoding: chunk, as: UTF8.self)
        }
        let lines = text.split(separator: "\n").map(String.init)
        address = lines.first { $0.hasPrefix("listening on ") }.map { String($0.dropFirst("listening on ".count)) } ?? ""
        httpPort = lines.first { $0.hasPrefix("http on ") }.flatMap { $0.split(separator: ":").last.flatMap { Int($0) } }
    }

    func stop() {
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
    }
}


/// What a test makes of the store after one SIGKILL of ``killRepeatedly(_:attempts:maxKills:delayMs:stepMs:afterKill:)``.
enum KillOutcome {
    /// The kill caught the command mid-work: it counts.
    case caught
    /// Too early or too late to count; try again.
    case missed
    /// The work is complete: stop.
    case finished
}

/// Starts `soma-node arguments` up to `attempts` times and SIGKILLs each run after a random
/// delay (`delayMs`, plus `stepMs` more each attempt), until `maxKills` kills were caught
/// mid-work; a run that ends by itself stops the loop. After each kill, and after a run that
/// ended by itself, `afterKill` inspects the store. Returns the number of kills caught.
func killRepeatedly(
    _ arguments: [String], attempts: Int, maxKills: Int, delayMs: ClosedRange<Int>, stepMs: Int,
    afterKill: () async throws -> KillOutcome
) async throws -> Int {
    var kills = 0
    for attempt in 0..<attempts where kills < maxKills {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try somaNode())
        p.arguments = arguments
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        try await Task.sleep(for: .milliseconds(Int.random(in: delayMs) + attempt * stepMs))
        guard p.isRunning else {
            // It ended by itself: the store is complete; let the test read it once more (a
            // watermark it keeps must be the final one), but it is no kill.
            p.waitUntilExit()
            _ = try await afterKill()
            return kills
        }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        switch try await afterKill() {
        case .caught: kills += 1
        case .missed: continue
        case .finished: return kills
        }
    }
    return kills
}
