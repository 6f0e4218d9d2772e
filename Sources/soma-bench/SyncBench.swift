import ArgumentParser
import Foundation

struct SyncBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sync",
        abstract: "SomaSync: a fresh `soma-node sync` of the bench chain from 3 serving nodes, against nginx on 3 ports + the faster of 8 parallel curl and aria2c -j 16, + lz4 -d + sha256sum on the same blocks.")

    @Option(help: "Checkpoints of the bench profile (default: all of it).")
    var checkpoints = 10_000
    @Option(help: "Where the chain file, the served stores and the block files are kept between runs.")
    var cache = ".build-bench"
    @Option(help: "Transports to measure, each against a baseline over the same: tls, plaintext (repeat for both).")
    var transport: [BenchTransport] = [.tls, .plaintext]

    mutating func run() async throws {
        let fm = FileManager.default
        let binDir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
        let node = binDir + "/soma-node"
        // The served store and the block files come from `soma-bench serve` (built once there).
        let served = (cache as NSString).appendingPathComponent("serve-\(checkpoints)")
        let files = (cache as NSString).appendingPathComponent("serve-\(checkpoints)-files")
        if !fm.fileExists(atPath: files + "/done") {
            print("preparing the served store and block files (once) with `soma-bench serve --clients 1`")
            try runProcess(CommandLine.arguments[0], ["serve", "--checkpoints", "\(checkpoints)", "--cache", cache, "--clients", "1"], quiet: true)
        }
        let fresh = (cache as NSString).appendingPathComponent("sync-fresh")
        for mode in transport {
            let (servers, peers) = try startServingNodes(node: node, store: served, config: try benchNodeConfig(cache: cache, transport: mode))
            defer { for s in servers where s.isRunning { s.terminate(); s.waitUntilExit() } }
            try? fm.removeItem(atPath: fresh)
            print("\n== \(mode.label): soma-bench sync: \(checkpoints - 1) checkpoints from 3 serving nodes \(peers.joined(separator: ", "))")

            // soma-node sync, as a process: its wall time, CPU and peak RSS.
            let start = ContinuousClock.now
            let (outText, timing) = try timedRun(node, ["sync", "--data", fresh, "--genesis", served + "/genesis.bcs"]
                                                 + (mode == .plaintext ? ["--plaintext"] : []) + peers.flatMap { ["--peer", $0] })
            let secs = seconds(from: start)
            let raw = outText.components(separatedBy: "checkpoints (").last?.components(separatedBy: " MB)").first?.components(separatedBy: ", ").last.flatMap { Double($0) } ?? 0
            line("soma-node sync (verify, execute, store)", "\(fmt(raw / secs)) MB/s raw", "\(fmt(secs)) s, \(fmt(Double(checkpoints - 1) / secs)) checkpoints/s")
            timing.report(over: secs)
            if let quarters = outText.split(separator: "\n").first(where: { $0.contains("by quarter") }) {
                let rates = quarters.split(separator: "(").first?.replacingOccurrences(of: "by quarter", with: "").trimmingCharacters(in: .whitespaces) ?? ""
                let ratio = quarters.components(separatedBy: "last / first ").last?.replacingOccurrences(of: ")", with: "") ?? "?"
                line("rate by quarter of the chain", rates)
                line("flat cost: last quarter / first quarter", ratio, "goal >= 0.8")
            }

            // Baseline: nginx on 3 ports over the same transport, the faster of 8 parallel
            // curls and aria2c -j 16, then lz4 -d | sha256sum as one stream.
            let scratch = cache + "/sync-baseline"
            let tls = mode == .tls
            let curl = try downloadBaseline(files: files, scratch: scratch, tool: "curl", tls: tls)
            line("baseline A: nginx x3 + 8 curl + lz4 -d | sha256sum", "\(fmt(raw / curl)) MB/s raw", "\(fmt(curl)) s")
            let aria = try downloadBaseline(files: files, scratch: scratch, tool: "aria2c", tls: tls)
            line("baseline B: nginx x3 + aria2c -j 16 + lz4 -d | sha256sum", "\(fmt(raw / aria)) MB/s raw", "\(fmt(aria)) s")
            let base = min(curl, aria)
            line("baseline (the faster; verifies and stores nothing)", "\(fmt(raw / base)) MB/s raw", "\(fmt(base)) s")
            line("ratio soma-node time / baseline time (\(mode.label))", fmt(secs / base, 2), "goal <= 1.0")
        }
        try? fm.removeItem(atPath: fresh)
    }

}

/// Three `soma-node run` nodes on loopback serving `store` and two copies of it (made once:
/// RocksDB allows one process per store; each copy gets a node key of its own), with the
/// configuration file `config` (``benchNodeConfig(cache:transport:)``). Their processes and
/// `HOST:PORT`s.
func startServingNodes(node: String, store: String, config: String) throws -> ([Process], [String]) {
    let fm = FileManager.default
    var dirs = [store]
    for copy in ["b", "c"] {
        let dir = store + "-" + copy
        if !fm.fileExists(atPath: dir + "/node.key") {
            print("copying the served store to \(dir) (once)")
            try? fm.removeItem(atPath: dir)
            try fm.copyItem(atPath: store, toPath: dir)
            try? fm.removeItem(atPath: dir + "/node.key")
            try runProcess(node, ["init", "--data", dir], quiet: true)
        }
        dirs.append(dir)
    }
    var servers: [Process] = []
    var peers: [String] = []
    do {
        for dir in dirs {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: node)
            p.arguments = ["run", "--data", dir, "--config", config, "--listen", "127.0.0.1:0", "--http", "off", "--log-level", "warning"]
            let out = Pipe()
            p.standardOutput = out
            try p.run()
            servers.append(p)
            var text = ""
            while !text.contains("\n") {
                let chunk = out.fileHandleForReading.availableData
                guard !chunk.isEmpty else { break }
                text += String(decoding: chunk, as: UTF8.self)
            }
            peers.append(text.replacingOccurrences(of: "listening on ", with: "").trimmingCharacters(in: .whitespacesAndNewlines))
        }
    } catch {
        for s in servers where s.isRunning { s.terminate(); s.waitUntilExit() }
        throw error
    }
    return (servers, peers)
}

/// What `/usr/bin/time -f "%e %U %S %M"` measured of a process.
struct ProcessTiming {
    var user = 0.0, system = 0.0, peakKiB = 0.0

    /// Prints CPU and peak RSS lines, CPU as a share of `seconds` of wall time.
    func report(over seconds: Double) {
        line("CPU (user + system)", "\(fmt(user + system)) s", "\(fmt((user + system) / seconds * 100, 0))% of one core")
        line("peak RSS", "\(fmt(peakKiB / 1024, 0)) MiB", "goal <= 1024")
    }
}

/// Runs `soma-node` with `arguments` under `/usr/bin/time`: its standard output and timing.
func timedRun(_ node: String, _ arguments: [String]) throws -> (String, ProcessTiming) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/time")
    p.arguments = ["-f", "%e %U %S %M", node] + arguments
    let err = Pipe()
    let out = Pipe()
    p.standardError = err
    p.standardOutput = out
    try p.run()
    let outText = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    let timing = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    guard p.terminationStatus == 0 else { throw ValidationError("soma-node \(arguments.joined(separator: " ")) failed:\n\(outText)\n\(timing)") }
    // The last line is time's (the node's own standard error comes before it).
    let fields = timing.split(separator: "\n").last?.split(separator: " ").compactMap { Double($0) } ?? []
    guard fields.count >= 4 else { return (outText, ProcessTiming()) }
    return (outText, ProcessTiming(user: fields[1], system: fields[2], peakKiB: fields[3]))
}

func seconds(from start: ContinuousClock.Instant) -> Double {
    let d = ContinuousClock.now - start
    return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
}

/// The do-it-yourself baseline of the sync and snapshot benchmarks: the `.lz4` files of `files`
/// served by nginx on 3 ports (over TLS 1.3 when `tls`), fetched by 8 parallel curl processes or
/// by aria2c -j 16 (`tool`), then decompressed and hashed in order as one stream
/// (`lz4 -d | sha256sum`). Its wall time.
func downloadBaseline(files: String, scratch relativeScratch: String, tool: String, tls: Bool = false) throws -> Double {
    let fm = FileManager.default
    let scratch = URL(fileURLWithPath: relativeScratch).standardizedFileURL.path
    try? fm.removeItem(atPath: scratch)
    try fm.createDirectory(atPath: scratch + "/out", withIntermediateDirectories: true)
    let serve = Serve()
    var nginxes: [(process: Process, port: Int)] = []
    defer { for n in nginxes { n.process.terminate(); n.process.waitUntilExit() } }
    for i in 0..<3 { nginxes.append(try serve.startNginx(root: files, scratch: scratch + "/nginx-\(i)", index: i, tls: tls)) }
    let scheme = tls ? "https" : "http"
    let names = (try fm.contentsOfDirectory(atPath: files)).filter { $0.hasSuffix(".lz4") }.sorted { a, b in
        let x = a.split(separator: "-").compactMap { Int($0.split(separator: ".")[0]) }
        let y = b.split(separator: "-").compactMap { Int($0.split(separator: ".")[0]) }
        return x.lexicographicallyPrecedes(y)
    }
    let start = ContinuousClock.now
    var processes: [Process] = []
    if tool == "aria2c" {
        // One input file: each block from one of the three ports, 16 downloads at once.
        var text = ""
        for (i, n) in names.enumerated() {
            text += "\(scheme)://127.0.0.1:\(nginxes[i % 3].port)/\(n)\n  out=\(n)\n"
        }
        try writeFile(scratch + "/aria.txt", Data(text.utf8))
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/aria2c")
        p.arguments = ["-q", "-j", "16", "--max-connection-per-server=16", "--allow-overwrite=true", "--auto-file-renaming=false",
                       "--file-allocation=none"] + (tls ? ["--check-certificate=false"] : []) + ["-d", scratch + "/out", "-i", scratch + "/aria.txt"]
        try p.run()
        processes.append(p)
    }
    for k in 0..<8 where tool == "curl" {
        var text = ""
        for (i, n) in names.enumerated() where i % 8 == k {
            text += "url = \"\(scheme)://127.0.0.1:\(nginxes[i % 3].port)/\(n)\"\noutput = \"\(scratch)/out/\(n)\"\n"
        }
        let list = scratch + "/list-\(k).txt"
        try writeFile(list, Data(text.utf8))
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        p.arguments = ["-s", "--fail"] + curlTLSArguments(tls) + ["-K", list]
        try p.run()
        processes.append(p)
    }
    for p in processes { p.waitUntilExit() }
    guard processes.allSatisfy({ $0.terminationStatus == 0 }) else { throw ValidationError("a \(tool) client failed") }
    // The downloaded blocks in order, as one stream.
    try writeFile(scratch + "/order.txt", Data(names.map { "\(scratch)/out/\($0)\n" }.joined().utf8))
    let pipeline = Process()
    pipeline.executableURL = URL(fileURLWithPath: "/bin/sh")
    pipeline.arguments = ["-c", "xargs -a '\(scratch)/order.txt' cat | lz4 -d -c | sha256sum > /dev/null"]
    try pipeline.run()
    pipeline.waitUntilExit()
    guard pipeline.terminationStatus == 0 else { throw ValidationError("lz4 -d | sha256sum failed") }
    let secs = seconds(from: start)
    try? fm.removeItem(atPath: scratch + "/out")
    return secs
}
