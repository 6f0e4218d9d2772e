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

    init(data: String, arguments extra: [String] = []) throws {
        process.executableURL = URL(fileURLWithPath: try somaNode())
        process.arguments = ["run", "--data", data, "--listen", "127.0.0.1:0"] + extra
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        var line = ""
        while !line.contains("\n") {
            let chunk = out.fileHandleForReading.availableData
            guard !chunk.isEmpty else { break }
            line += String(decoding: chunk, as: UTF8.self)
        }
        address = line.replacingOccurrences(of: "listening on ", with: "").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func stop() {
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
    }
}

