import ArgumentParser
import Foundation
import NIOPosix
import SomaCore
import SomaNet
import SomaStore
import Synchronization

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "SomaNet: one `soma-node run` serving every block of the bench chain to 1, 4 and 16 clients, against nginx serving the same blocks as files to as many curl clients.")

    @Option(help: "Checkpoints of the bench profile (default: all of it).")
    var checkpoints = 10_000
    @Option(help: "Where the chain file, the served store and the block files are kept between runs.")
    var cache = ".build-bench"
    @Option(help: "Client counts to measure.")
    var clients: [Int] = [1, 4, 16]
    @Option(help: "Requests each client keeps in flight.")
    var window = 4
    @Option(help: "Transports to measure, each against nginx over the same: tls, plaintext (repeat for both).")
    var transport: [BenchTransport] = [.tls, .plaintext]

    mutating func run() async throws {
        let fm = FileManager.default
        let (node, data) = try servedStore(cache: cache, checkpoints: checkpoints)
        let files = (cache as NSString).appendingPathComponent("serve-\(checkpoints)-files")
        let last = UInt64(checkpoints - 1)
        if !fm.fileExists(atPath: files + "/done") {
            print("writing every block as a file into \(files) (once)")
            try? fm.removeItem(atPath: files)
            try fm.createDirectory(atPath: files, withIntermediateDirectories: true)
            var config = StoreConfiguration()
            config.retainSnapshots = 0
            let store = try await NodeStore.open(path: data + "/db", configuration: config)
            for seq in 1...last {
                let frames = try await store.blockFrames(at: seq)
                for (part, frame) in frames.enumerated() {
                    try writeFile("\(files)/\(seq)-\(part).lz4", Data(frame))
                }
            }
            await store.close()
            try writeFile(files + "/done", Data())
        }
        let genesis = try Genesis(bcsBytes: Array(try Data(contentsOf: URL(fileURLWithPath: data + "/genesis.bcs"))))
        print("soma-bench serve: \(checkpoints - 1) blocks, \(ProcessInfo.processInfo.activeProcessorCount) cores")
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        for mode in transport {
            // The node, as a separate process, so its peak RSS is its own; no upload budgets.
            let config = try benchNodeConfig(cache: cache, transport: mode)
            let server = Process()
            server.executableURL = URL(fileURLWithPath: node)
            server.arguments = ["run", "--data", data, "--config", config, "--listen", "127.0.0.1:0", "--http", "off", "--log-level", "warning"]
            let out = Pipe()
            server.standardOutput = out
            try server.run()
            defer { if server.isRunning { server.terminate(); server.waitUntilExit() } }
            var line = ""
            while !line.contains("\n") {
                let chunk = out.fileHandleForReading.availableData
                guard !chunk.isEmpty else { break }
                line += String(decoding: chunk, as: UTF8.self)
            }
            guard let port = line.split(separator: ":").last.flatMap({ Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) else {
                throw ValidationError("soma-node run did not report its port: \(line)")
            }
            // nginx on the block files, over the same transport.
            let nginx = try startNginx(root: files, scratch: cache + "/nginx", tls: mode == .tls)
            defer { nginx.process.terminate(); nginx.process.waitUntilExit() }
            var net = NetConfiguration()
            net.tls = mode == .tls

            print("\n== \(mode.label): soma-node on :\(port), nginx on :\(nginx.port)\(mode == .tls ? " (TLS 1.3, TLS_AES_128_GCM_SHA256)" : "")")
            for c in clients {
                print("\n\(c) client\(c == 1 ? "" : "s"), \(mode.label)")
                // Issue 13: at least nginx's rate at 4 and 16 clients; 0.8 of it for one client.
                let goal = c >= 4 ? "goal >= 1.0" : "goal >= 0.8"
                let ours = try await fetchAll(port: port, clients: c, last: last, chainID: genesis.chainID, net: net, group: group)
                line2("soma-node getBlock", "\(fmt(ours.mbps)) MB/s, \(fmt(ours.rps, 0)) req/s", "\(fmt(ours.seconds)) s")
                let streamed = try await streamAll(port: port, clients: c, last: last, chainID: genesis.chainID, net: net, group: group)
                line2("soma-node getBlocks (streams of 32)", "\(fmt(streamed.mbps)) MB/s, \(fmt(streamed.rps, 0)) blocks/s", "\(fmt(streamed.seconds)) s")
                let base = try curlAll(port: nginx.port, clients: c, last: last, files: files, tls: mode == .tls)
                line2("nginx + curl (baseline)", "\(fmt(base.mbps)) MB/s, \(fmt(base.rps, 0)) req/s", "\(fmt(base.seconds)) s")
                line2("ratio soma-node getBlock / nginx", fmt(ours.mbps / base.mbps, 2), goal)
                line2("ratio soma-node getBlocks / nginx", fmt(streamed.mbps / base.mbps, 2), goal)
            }
            line2("peak RSS of the soma-node server", "\(fmt(peakRSS(pid: server.processIdentifier), 0)) MiB", "goal <= 512")
        }
        try await group.shutdownGracefully()
    }

    final class Bytes: Sendable {
        let value = Atomic<Int>(0)
    }

    struct Rate { var bytes: Int; var requests: Int; var seconds: Double
        var mbps: Double { Double(bytes) / seconds / 1e6 }
        var rps: Double { Double(requests) / seconds }
    }

    func fetchAll(port: Int, clients: Int, last: UInt64, chainID: Digest, net: NetConfiguration, group: MultiThreadedEventLoopGroup) async throws -> Rate {
        var peers: [PeerClient] = []
        for _ in 0..<clients {
            peers.append(try await PeerClient.connect(host: "127.0.0.1", port: port, identity: HandshakeIdentity(key: SigningKey.generate(), chainID: chainID), configuration: net, group: group))
        }
        let window = self.window
        let start = ContinuousClock.now
        let (bytes, requests) = try await withThrowingTaskGroup(of: (Int, Int).self) { tasks in
            for (i, peer) in peers.enumerated() {
                for w in 0..<window {
                    tasks.addTask {
                        var b = 0, r = 0
                        var seq = UInt64(1 + i + w * clients)
                        while seq <= last {
                            // The answer as received, like curl's bytes into /dev/null: no decode.
                            b += try await peer.callBuffer(.getBlock, BlockRequest(seq: seq, part: 0).bcsBytes).readableBytes
                            r += 1
                            seq += UInt64(clients * window)
                        }
                        return (b, r)
                    }
                }
            }
            var tb = 0, tr = 0
            for try await (b, r) in tasks { tb += b; tr += r }
            return (tb, tr)
        }
        let d = ContinuousClock.now - start
        for p in peers { await p.close() }
        return Rate(bytes: bytes, requests: requests, seconds: Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18)
    }

    func streamAll(port: Int, clients: Int, last: UInt64, chainID: Digest, net: NetConfiguration, group: MultiThreadedEventLoopGroup) async throws -> Rate {
        var peers: [PeerClient] = []
        for _ in 0..<clients {
            peers.append(try await PeerClient.connect(host: "127.0.0.1", port: port, identity: HandshakeIdentity(key: SigningKey.generate(), chainID: chainID), configuration: net, group: group))
        }
        let window = self.window
        let start = ContinuousClock.now
        let span = UInt64(BlocksRequest.maxCount)
        let (bytes, blocks) = try await withThrowingTaskGroup(of: (Int, Int).self) { tasks in
            for (i, peer) in peers.enumerated() {
                for w in 0..<window {
                    tasks.addTask {
                        var b = 0, n = 0
                        var from = 1 + UInt64(i + w * clients) * span
                        while from <= last {
                            // The items as received, like curl's bytes into /dev/null: no decode
                            // (what getBlock's clients do too), each dropped as it comes.
                            let bytes = Bytes()
                            n += try await peer.blocks(from: from, count: UInt32(min(span, last - from + 1))) { item in
                                bytes.value.add(item.readableBytes, ordering: .relaxed)
                            }
                            b += bytes.value.load(ordering: .relaxed)
                            from += UInt64(clients * window) * span
                        }
                        return (b, n)
                    }
                }
            }
            var tb = 0, tn = 0
            for try await (b, n) in tasks { tb += b; tn += n }
            return (tb, tn)
        }
        let d = ContinuousClock.now - start
        for p in peers { await p.close() }
        return Rate(bytes: bytes, requests: blocks, seconds: Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18)
    }

    func curlAll(port: Int, clients: Int, last: UInt64, files: String, tls: Bool) throws -> Rate {
        let fm = FileManager.default
        let names = (try fm.contentsOfDirectory(atPath: files)).filter { $0.hasSuffix(".lz4") }.sorted()
        var bytes = 0
        for n in names { bytes += (try fm.attributesOfItem(atPath: files + "/" + n)[.size] as? Int) ?? 0 }
        var processes: [Process] = []
        let lists = (0..<clients).map { cache + "/nginx/list-\($0).txt" }
        for (i, list) in lists.enumerated() {
            var text = ""
            for (k, n) in names.enumerated() where k % clients == i {
                text += "url = \"\(tls ? "https" : "http")://127.0.0.1:\(port)/\(n)\"\noutput = \"/dev/null\"\n"
            }
            try writeFile(list, Data(text.utf8))
        }
        let start = ContinuousClock.now
        for list in lists {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
            p.arguments = ["-s", "--fail"] + curlTLSArguments(tls) + ["-K", list]
            try p.run()
            processes.append(p)
        }
        for p in processes { p.waitUntilExit() }
        let d = ContinuousClock.now - start
        guard processes.allSatisfy({ $0.terminationStatus == 0 }) else { throw ValidationError("a curl client failed") }
        return Rate(bytes: bytes, requests: names.count, seconds: Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18)
    }

    func startNginx(root: String, scratch relativeScratch: String, index: Int = 0, tls: Bool = false) throws -> (process: Process, port: Int) {
        let fm = FileManager.default
        let scratch = URL(fileURLWithPath: relativeScratch).standardizedFileURL.path
        guard fm.isExecutableFile(atPath: "/usr/sbin/nginx") else { throw ValidationError("nginx is not installed (tools/bench installs it)") }
        try fm.createDirectory(atPath: scratch + "/logs", withIntermediateDirectories: true)
        let port = 20_000 + Int(ProcessInfo.processInfo.processIdentifier % 10_000) * 3 % 30_000 + index
        let absRoot = URL(fileURLWithPath: root).standardizedFileURL.path
        var listen = "listen 127.0.0.1:\(port);"
        if tls {
            // TLS 1.3 with the cipher suite soma-node negotiates (BoringSSL picks AES-128-GCM
            // where the CPU has AES instructions) and an Ed25519 certificate, as a node's.
            let (cert, key) = try benchCertificate(scratch: scratch)
            listen = """
                listen 127.0.0.1:\(port) ssl; ssl_certificate \(cert); ssl_certificate_key \(key);
                    ssl_protocols TLSv1.3; ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;
                    ssl_session_cache shared:SSL:1m;
                """
        }
        let conf = """
            worker_processes 2;
            error_log \(scratch)/logs/error.log;
            pid \(scratch)/nginx.pid;
            events { worker_connections 1024; }
            http {
              access_log off;
              sendfile on;
              tcp_nopush on;
              keepalive_requests 1000000;
              client_body_temp_path \(scratch)/body; proxy_temp_path \(scratch)/proxy;
              fastcgi_temp_path \(scratch)/fastcgi; uwsgi_temp_path \(scratch)/uwsgi; scgi_temp_path \(scratch)/scgi;
              server { \(listen) root \(absRoot); }
            }
            """
        try writeFile(scratch + "/nginx.conf", Data(conf.utf8))
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/sbin/nginx")
        p.arguments = ["-p", scratch, "-c", scratch + "/nginx.conf", "-g", "daemon off;"]
        try p.run()
        Thread.sleep(forTimeInterval: 0.5)
        guard p.isRunning else { throw ValidationError("nginx did not start; see \(scratch)/logs/error.log") }
        return (p, port)
    }
}

/// How the benchmarks' peers talk: TLS 1.3 (a node's default) or plaintext (`net.tls: false`),
/// each measured against a baseline over the same transport.
enum BenchTransport: String, ExpressibleByArgument, CaseIterable, Sendable {
    case tls, plaintext
    var label: String { self == .tls ? "TLS 1.3" : "plaintext" }
}

/// The configuration file of the benchmark's serving nodes, written into `cache`: the transport,
/// no upload budgets (a node's defaults, 64 MiB/s per peer and 256 MiB/s in all, would be what is
/// measured). Its path.
func benchNodeConfig(cache: String, transport: BenchTransport) throws -> String {
    let path = URL(fileURLWithPath: cache).standardizedFileURL.path + "/bench-node-\(transport.rawValue).yaml"
    let text = """
        # soma-bench: the serving nodes' configuration (written by every run).
        net:
          tls: \(transport == .tls)
          uploadBytesPerSecondPerPeer: 0
          uploadBytesPerSecond: 0

        """
    guard FileManager.default.createFile(atPath: path, contents: Data(text.utf8)) else { throw ValidationError("cannot write \(path)") }
    return path
}

/// An Ed25519 self-signed certificate and its key for nginx (made once in `scratch` with openssl).
func benchCertificate(scratch: String) throws -> (cert: String, key: String) {
    let cert = scratch + "/bench-cert.pem", key = scratch + "/bench-key.pem"
    if !FileManager.default.fileExists(atPath: cert) {
        try runProcess("/usr/bin/openssl", ["req", "-x509", "-newkey", "ed25519", "-keyout", key, "-out", cert, "-days", "3650",
                                            "-nodes", "-subj", "/CN=soma-bench"], quiet: true)
    }
    return (cert, key)
}

/// curl's flags for the TLS baseline: TLS 1.3 only, the self-signed certificate accepted.
func curlTLSArguments(_ tls: Bool) -> [String] { tls ? ["-k", "--tlsv1.3"] : [] }

func runProcess(_ path: String, _ args: [String], quiet: Bool = false) throws {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    if quiet { p.standardOutput = FileHandle.nullDevice }
    try p.run()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else { throw ValidationError("\(path) \(args.joined(separator: " ")) failed") }
}

/// The soma-node binary beside this one, and the data directory of the bench chain's served
/// store (`CACHE/serve-N`): the chain exported and imported once, then reused by every run.
func servedStore(cache: String, checkpoints: Int) throws -> (node: String, data: String) {
    let fm = FileManager.default
    try fm.createDirectory(atPath: cache, withIntermediateDirectories: true)
    let chain = (cache as NSString).appendingPathComponent("bench-\(checkpoints).chain")
    let data = (cache as NSString).appendingPathComponent("serve-\(checkpoints)")
    let node = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path + "/soma-node"
    guard fm.isExecutableFile(atPath: node) else { throw ValidationError("build soma-node first: \(node) is missing") }
    if !fm.fileExists(atPath: chain) {
        print("generating the bench chain into \(chain) (once)")
        try runProcess(CommandLine.arguments[0], ["export-chain", "--file", chain, "--checkpoints", "\(checkpoints)"])
    }
    if !fm.fileExists(atPath: data + "/db") {
        print("importing the chain into \(data) (once)")
        try runProcess(node, ["import", "--file", chain, "--data", data, "--retain-snapshots", "0"], quiet: true)
        try runProcess(node, ["init", "--data", data], quiet: true)
    }
    return (node, data)
}

func line2(_ name: String, _ value: String, _ note: String = "") { line(name, value, note) }

/// Peak resident set of another process, from /proc.
func peakRSS(pid: Int32) -> Double {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
    for l in status.split(separator: "\n") where l.hasPrefix("VmHWM:") {
        return (l.split(separator: " ").compactMap { Double($0) }.first ?? 0) / 1024
    }
    return 0
}

/// Writes `contents` to `path` (replacing it), or says which file could not be written.
func writeFile(_ path: String, _ contents: Data) throws {
    guard FileManager.default.createFile(atPath: path, contents: contents) else { throw ValidationError("cannot write \(path)") }
}
