import ArgumentParser
import Foundation
import SomaCore
import SomaStore

struct ApiBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "api",
        abstract: "SomaNode: proof-carrying reads per second over the HTTP API (/v1/transactions/{d} and /v1/objects/{id}?version=V) with 16 concurrent wrk connections, against the same reads without proofs in the same run; the server's peak RSS.")

    @Option(help: "Checkpoints of the bench profile (the store of `soma-bench serve` is reused).")
    var checkpoints = 10_000
    @Option(help: "Where the chain file and the served store are kept between runs.")
    var cache = ".build-bench"
    @Option(help: "Concurrent connections.")
    var connections = 16
    @Option(help: "Seconds each measurement runs.")
    var seconds = 10
    @Option(help: "Distinct transactions (and object versions) the reads cycle through.")
    var samples = 4_000

    mutating func run() async throws {
        let fm = FileManager.default
        guard let wrk = ["/usr/bin/wrk", "/usr/local/bin/wrk"].first(where: { fm.isExecutableFile(atPath: $0) }) else {
            throw ValidationError("wrk is missing: tools/bench api installs it (Debian's wrk)")
        }
        let (node, data) = try servedStore(cache: cache, checkpoints: checkpoints)
        // The reads: transactions spread over the whole chain, and a version each of them wrote.
        var config = StoreConfiguration()
        config.retainSnapshots = 0
        let store = try await NodeStore.open(path: data + "/db", configuration: config)
        let last = try await store.watermark(.highestSynced)?.seq ?? 0
        var txPaths: [String] = []
        var objectPaths: [String] = []
        var rng = SystemRandomNumberGenerator()
        while txPaths.count < samples && last > 1 {
            let seq = UInt64.random(in: 1...last, using: &rng)
            guard let cp = try await store.checkpointData(at: seq), !cp.entries.isEmpty else { continue }
            let entry = cp.entries[Int.random(in: 0..<cp.entries.count, using: &rng)]
            txPaths.append("/v1/transactions/\(entry.transaction.digest.hex)")
            if let o = entry.outputObjects.first { objectPaths.append("/v1/objects/\(o.id.hex)?version=\(o.version)") }
        }
        await store.close()
        guard !txPaths.isEmpty, !objectPaths.isEmpty else { throw ValidationError("the store at \(data) holds no transactions") }

        let server = Process()
        server.executableURL = URL(fileURLWithPath: node)
        server.arguments = ["run", "--data", data, "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--log-level", "warning"]
        let out = Pipe()
        server.standardOutput = out
        try server.run()
        defer { if server.isRunning { server.terminate(); server.waitUntilExit() } }
        var text = ""
        while !text.contains("http on ") || !text.hasSuffix("\n") {
            let chunk = out.fileHandleForReading.availableData
            guard !chunk.isEmpty else { break }
            text += String(decoding: chunk, as: UTF8.self)
        }
        guard let httpLine = text.split(separator: "\n").first(where: { $0.hasPrefix("http on ") }),
              let port = httpLine.split(separator: ":").last.flatMap({ Int($0) })
        else { throw ValidationError("soma-node run did not report its HTTP port: \(text)") }

        let scratch = (cache as NSString).appendingPathComponent("api")
        try fm.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        let script = scratch + "/paths.lua"
        try writeFile(script, Data("""
            local paths = {}
            for line in io.lines(os.getenv("SOMA_PATHS")) do paths[#paths + 1] = line end
            local i = 0
            init = function(args) i = math.random(#paths) end
            request = function()
              i = i % #paths + 1
              return wrk.format("GET", paths[i])
            end
            """.utf8))
        print("soma-bench api: \(txPaths.count) transactions and \(objectPaths.count) object versions of \(last) checkpoints, \(connections) connections, \(seconds) s each, \(ProcessInfo.processInfo.activeProcessorCount) cores")
        var runs = 0
        func measure(_ name: String, _ paths: [String], _ query: String) throws -> Double {
            runs += 1
            let file = scratch + "/paths-\(runs).txt"
            let withQuery = paths.map { $0 + ($0.contains("?") ? "&" : "?") + query }
            try writeFile(file, Data(withQuery.joined(separator: "\n").utf8))
            let p = Process()
            p.executableURL = URL(fileURLWithPath: wrk)
            p.arguments = ["-t", "2", "-c", "\(connections)", "-d", "\(seconds)s", "-s", script, "http://127.0.0.1:\(port)"]
            p.environment = ["SOMA_PATHS": file]
            let pipe = Pipe()
            p.standardOutput = pipe
            try p.run()
            let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            if let bad = output.split(separator: "\n").first(where: { $0.contains("Non-2xx") }) {
                throw ValidationError("\(name): \(bad.trimmingCharacters(in: .whitespaces)): the reads must all succeed\n\(output)")
            }
            guard let rps = output.split(separator: "\n").first(where: { $0.hasPrefix("Requests/sec:") })
                .flatMap({ Double($0.split(separator: " ").last ?? "") })
            else { throw ValidationError("\(name): no rate in wrk's output:\n\(output)") }
            let latency = output.split(separator: "\n").first { $0.trimmingCharacters(in: .whitespaces).hasPrefix("Latency") }?
                .split(separator: " ", omittingEmptySubsequences: true).dropFirst().first.map(String.init) ?? "?"
            line2(name, "\(fmt(rps, 0)) reads/s", "mean latency \(latency)")
            return rps
        }
        // Warm the block cache and the page cache once.
        _ = try measure("warm-up (transactions with proofs)", txPaths, "proof=true")
        print("")
        let txProof = try measure("/v1/transactions/{d} with proof", txPaths, "proof=true")
        let txPlain = try measure("/v1/transactions/{d}?proof=false (baseline)", txPaths, "proof=false")
        line2("ratio with proof / without", fmt(txProof / txPlain, 2))
        let objProof = try measure("/v1/objects/{id}?version with proof", objectPaths, "proof=true")
        let objPlain = try measure("/v1/objects/{id}?version&proof=false (baseline)", objectPaths, "proof=false")
        line2("ratio with proof / without", fmt(objProof / objPlain, 2))
        let chainProof = try measure("/v1/transactions/{d} with proof and the epoch chain", txPaths, "epochs=true")
        line2("ratio with the epoch chain / without proof", fmt(chainProof / txPlain, 2))
        line2("peak RSS of the soma-node server", "\(fmt(peakRSS(pid: server.processIdentifier), 0)) MiB")
    }
}
