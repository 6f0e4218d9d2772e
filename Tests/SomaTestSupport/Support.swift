public import Foundation
public import SomaCore
public import SomaDevnet
public import SomaStore
public import Testing

/// A fresh temporary directory, removed when the returned guard's `cleanup()` runs.
public struct TempDir {
    /// The directory.
    public let path: String

    /// Creates a fresh directory named after `label`.
    public init(_ label: String = "store") {
        path = NSTemporaryDirectory() + "soma-\(label)-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    /// A path inside the directory.
    public func file(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }

    /// Removes the directory.
    public func cleanup() { try? FileManager.default.removeItem(atPath: path) }
}

/// Asserts that `body` throws a StoreError with `code`.
public func expectStoreCode(_ code: StoreError.Code, _ comment: String = "", sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("expected \(code), nothing was thrown. \(comment)", sourceLocation: sourceLocation)
    } catch let error as StoreError {
        #expect(error.code == code, "\(comment): got \(error)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected StoreError \(code), got \(error). \(comment)", sourceLocation: sourceLocation)
    }
}

/// Runs a command and returns (status, stdout, stderr); `environment` adds to this process's.
@discardableResult
public func run(_ executable: String, _ arguments: [String], input: Data? = nil, environment: [String: String] = [:]) throws -> (Int32, Data, String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: executable)
    p.arguments = arguments
    if !environment.isEmpty { p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
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
public func tool(_ names: String...) -> String? {
    for n in names {
        for dir in ["/usr/bin", "/usr/local/bin", "/bin"] where FileManager.default.isExecutableFile(atPath: "\(dir)/\(n)") {
            return "\(dir)/\(n)"
        }
    }
    return nil
}

extension GeneratedCheckpoint {
    /// This checkpoint through the transaction verifier, its blocks built by it. A generated
    /// chain always verifies: a failure is a bug of the generator or the verifier, and stops
    /// the test run.
    public var verified: VerifiedCheckpoint {
        do {
            return try CheckpointVerifier.verify(contents: data, of: certified, previousTotal: previousTotal)
        } catch {
            preconditionFailure("generated checkpoint \(certified.summary.sequenceNumber) fails verification: \(error)")
        }
    }
}
