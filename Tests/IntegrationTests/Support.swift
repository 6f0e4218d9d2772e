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
