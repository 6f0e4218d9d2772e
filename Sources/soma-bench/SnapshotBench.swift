import ArgumentParser
import Foundation
import SomaStore

struct SnapshotBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Snapshot restore: `soma-node sync --snapshot latest` of the bench chain's last snapshot from 3 serving nodes, against nginx on 3 ports + the faster of 8 parallel curl and aria2c -j 16, + lz4 -d + sha256sum on the same chunk files.")

    @Option(help: "Checkpoints of the bench profile (default: all of it).")
    var checkpoints = 10_000
    @Option(help: "Where the chain file, the served stores and the chunk files are kept between runs.")
    var cache = ".build-bench"
    @Option(help: "Transports to measure, each against a baseline over the same: tls, plaintext (repeat for both).")
    var transport: [BenchTransport] = [.tls, .plaintext]

    mutating func run() async throws {
        let fm = FileManager.default
        try fm.createDirectory(atPath: cache, withIntermediateDirectories: true)
        let binDir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
        let node = binDir + "/soma-node"
        guard fm.isExecutableFile(atPath: node) else { throw ValidationError("build soma-node first: \(node) is missing") }
        let chain = (cache as NSString).appendingPathComponent("bench-\(checkpoints).chain")
        let served = (cache as NSString).appendingPathComponent("snapshot-\(checkpoints)")
        let files = (cache as NSString).appendingPathComponent("snapshot-\(checkpoints)-files")
        if !fm.fileExists(atPath: chain) {
            print("generating the bench chain into \(chain) (once)")
            try runProcess(CommandLine.arguments[0], ["export-chain", "--file", chain, "--checkpoints", "\(checkpoints)"])
        }
        if !fm.fileExists(atPath: served + "/done") {
            // A store that keeps the snapshot of its last epoch (the served stores of the other
            // benchmarks keep none).
            print("importing the chain into \(served) with its last epoch's snapshot (once)")
            try? fm.removeItem(atPath: served)
            try runProcess(node, ["import", "--file", chain, "--data", served, "--retain-snapshots", "1"], quiet: true)
            try runProcess(node, ["init", "--data", served], quiet: true)
            try writeFile(served + "/done", Data())
        }
        var config = StoreConfiguration()
        config.retainSnapshots = 1
        let store = try await NodeStore.open(path: served + "/db", configuration: config)
        guard let epoch = try await store.snapshotEpochs().last, let manifest = try await store.snapshotManifest(epoch: epoch) else {
            await store.close()
            throw ValidationError("\(served) holds no snapshot")
        }
        if !fm.fileExists(atPath: files + "/done") {
            print("writing every chunk of epoch \(epoch)'s snapshot as a file into \(files) (once)")
            try? fm.removeItem(atPath: files)
            try fm.createDirectory(atPath: files, withIntermediateDirectories: true)
            for i in 0..<UInt32(manifest.chunkRoots.count) {
                guard let frame = try await store.snapshotChunk(epoch: epoch, index: i) else { throw ValidationError("chunk \(i) is missing") }
                guard fm.createFile(atPath: "\(files)/chunk-\(i).lz4", contents: Data(frame)) else { throw ValidationError("cannot write \(files)/chunk-\(i).lz4") }
            }
            try writeFile(files + "/done", Data())
        }
        await store.close()
        var chunkBytes = 0
        for name in try fm.contentsOfDirectory(atPath: files) where name.hasSuffix(".lz4") {
            chunkBytes += (try fm.attributesOfItem(atPath: files + "/" + name)[.size] as? Int) ?? 0
        }
        for mode in transport {
            let (servers, peers) = try startServingNodes(node: node, store: served, config: try benchNodeConfig(cache: cache, transport: mode))
            defer { for s in servers where s.isRunning { s.terminate(); s.waitUntilExit() } }
            let fresh = (cache as NSString).appendingPathComponent("snapshot-fresh")
            try? fm.removeItem(atPath: fresh)
            print("\n== \(mode.label): soma-bench snapshot: epoch \(epoch)'s snapshot, \(manifest.objectCount) objects in \(manifest.chunkRoots.count) chunks (\(fmt(Double(chunkBytes) / 1e6)) MB of LZ4), from 3 serving nodes \(peers.joined(separator: ", "))")

            // soma-node sync --snapshot, as a process: the restore's own time from its report, the
            // process's wall time, CPU and peak RSS.
            let start = ContinuousClock.now
            let (outText, timing) = try timedRun(node, ["sync", "--data", fresh, "--genesis", served + "/genesis.bcs", "--snapshot", "latest"] + (mode == .plaintext ? ["--plaintext"] : []) + peers.flatMap { ["--peer", $0] })
            let wall = seconds(from: start)
            guard let restored = outText.split(separator: "\n").first(where: { $0.hasPrefix("restored epoch") }).map(String.init),
                  let secs = restored.components(separatedBy: " sources in ").last?.components(separatedBy: " s ").first.flatMap(Double.init)
            else { throw ValidationError("no restore report in:\n\(outText)") }
            print(restored)
            let mb = restored.components(separatedBy: "objects/s, ").last?.components(separatedBy: " MB/s").first.flatMap(Double.init) ?? 0
            let objects = Double(manifest.objectCount)
            line("restore (verify every chunk, write objects + live set)", "\(fmt(objects / secs, 0)) objects/s", "\(fmt(secs)) s; goal >= 500000 objects/s")
            line("  objects' bytes verified and written", "\(fmt(mb)) MB/s", "\(fmt(Double(chunkBytes) / 1e6 / secs)) MB/s of LZ4 chunks")
            line("soma-node sync --snapshot, whole process", "\(fmt(wall)) s", "connect, discovery, epoch chain, manifests, restore, final root check")
            timing.report(over: wall)
            let scratch = cache + "/snapshot-baseline"
            let curl = try downloadBaseline(files: files, scratch: scratch, tool: "curl", tls: mode == .tls)
            line("baseline A: nginx x3 + 8 curl + lz4 -d | sha256sum", "\(fmt(objects / curl, 0)) objects/s", "\(fmt(curl)) s")
            let aria = try downloadBaseline(files: files, scratch: scratch, tool: "aria2c", tls: mode == .tls)
            line("baseline B: nginx x3 + aria2c -j 16 + lz4 -d | sha256sum", "\(fmt(objects / aria, 0)) objects/s", "\(fmt(aria)) s")
            let base = min(curl, aria)
            line("baseline (the faster; verifies and stores nothing)", "\(fmt(base)) s")
            line("ratio restore time / baseline time (\(mode.label))", fmt(secs / base, 2), "goal <= 1.0")
            line("ratio whole sync process / baseline time", fmt(wall / base, 2))
            try? fm.removeItem(atPath: fresh)
        }
    }
}
