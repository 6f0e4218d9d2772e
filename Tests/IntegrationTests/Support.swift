import Foundation
import SomaCore
import SomaStore
import Testing

/// A fresh temporary directory, removed when the returned guard's `cleanup()` runs.
struct TempDir {
    let path: String

    init(_ label: String = "store") {
        path = NSTemporaryDirectory() + "soma-\(label)-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    func file(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }

    func cleanup() { try? FileManager.default.removeItem(atPath: path) }
}

/// Asserts that `body` throws a StoreError with `code`.
func expectStoreCode(_ code: StoreError.Code, _ comment: String = "", sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("expected \(code), nothing was thrown. \(comment)", sourceLocation: sourceLocation)
    } catch let error as StoreError {
        #expect(error.code == code, "\(comment): got \(error)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected StoreError \(code), got \(error). \(comment)", sourceLocation: sourceLocation)
    }
}

/// Runs a command and returns (status, stdout, stderr).
@discardableResult
func run(_ executable: String, _ arguments: [String], input: Data? = nil) throws -> (Int32, Data, String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: executable)
    p.arguments = arguments
    let out = Pipe(), err = Pipe(), inp = Pipe()
    p.standardOutput = out
    p.standardError = err
    p.standardInput = inp
    try p.run()
    if let input { inp.fileHandleForWriting.write(input) }
    try inp.fileHandleForWriting.close()
    let o = out.fileHandleForReading.readDataToEndOfFile()
    let e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, o, String(decoding: e, as: UTF8.self))
}

/// The first of `names` found on PATH or in the usual places.
func tool(_ names: String...) -> String? {
    for n in names {
        for dir in ["/usr/bin", "/usr/local/bin", "/bin"] where FileManager.default.isExecutableFile(atPath: "\(dir)/\(n)") {
            return "\(dir)/\(n)"
        }
    }
    return nil
}

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
