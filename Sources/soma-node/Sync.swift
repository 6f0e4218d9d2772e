import ArgumentParser
import Foundation
import Logging
import NIOCore
import NIOPosix
import SomaCore
import SomaDiscovery
import SomaNet
import SomaNode
import SomaStore
import SomaSync

struct Sync: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Catch a store up from peers, verifying everything, then exit.",
        discussion: """
            Finds its sources by discovery: it dials the seeds (--peer) or the peers its store \
            remembers, asks them for the peers they know and connects to up to \
            --target-connections of them. Verifies the epoch chain, every summary batch (one quorum \
            check each) and every block, and commits in order with execution and the state-root check at every epoch end. Blocks \
            come from all peers at once, by measured throughput; a peer that sends anything that \
            fails verification is banned and its work goes to the others. A stop or crash resumes \
            after the store's highestSynced. Shows a progress bar on a terminal, log lines otherwise.
            """)

    @Option(help: "The node's data directory (created if missing).")
    var data: String
    @Option(help: "The chain's genesis file (default: DIR/genesis.bcs).")
    var genesis: String?
    @Option(help: "A seed peer, HOST:PORT (repeat for several; optional once the store's peer table knows peers).")
    var peer: [String] = []
    @Option(help: "Sources to connect to (found by discovery from the seeds).")
    var targetConnections = 8
    @Option(help: "The checkpoint to stop at, or `latest`.")
    var until = "latest"
    @Option(help: "Block requests in flight over all peers.")
    var window = 12
    @Option(help: "Seconds without an answer (or between two streamed blocks) before a request counts as stalled.")
    var timeout = 10
    @Option(help: "Store mode of a new store: archive (all history) or pruned (default: archive; pruned with --snapshot; an existing store keeps its own).")
    var mode: String?
    @Option(help: "Restore a verified state snapshot first, `latest` or an epoch number, then sync the checkpoints after it (a new validator's fast catch-up; the store keeps no history before it).")
    var snapshot: String?
    @Flag(help: "Check the signatures of every certificate, not one per batch.")
    var verifyAllCertificates = false
    @Flag(help: "Speak plaintext instead of TLS 1.3 (only with peers that also run plaintext, for tests and loopback baselines).")
    var plaintext = false

    func validate() throws {
        guard targetConnections >= 1 && targetConnections <= 1_000 else { throw ValidationError("--target-connections must be 1...1000") }
        for p in peer {
            guard let colon = p.lastIndex(of: ":"), let port = Int(p[p.index(after: colon)...]), (1...65_535).contains(port),
                  colon != p.startIndex
            else {
                throw ValidationError("--peer takes HOST:PORT, not \(p)")
            }
        }
        guard until == "latest" || UInt64(until) != nil else { throw ValidationError("--until takes a checkpoint number or latest") }
        guard window >= 1 && window <= 256 else { throw ValidationError("--window must be 1...256") }
        guard timeout >= 1 && timeout <= 3_600 else { throw ValidationError("--timeout must be 1...3600 seconds") }
        if let mode { guard StoreMode(rawValue: mode) != nil else { throw ValidationError("--mode takes archive or pruned") } }
        if let snapshot {
            guard snapshot == "latest" || UInt64(snapshot) != nil else { throw ValidationError("--snapshot takes an epoch number or latest") }
            guard mode != "archive" else {
                throw ValidationError("an archive keeps every checkpoint since genesis; a store restored from a snapshot holds none before it: use --mode pruned (the default with --snapshot)")
            }
        }
    }

    func run() async throws {
        let start = ContinuousClock.now
        var config = NodeConfiguration(dataDirectory: data)
        if let mode {
            config.store.mode = StoreMode(rawValue: mode)!
            config.store.adoptStoredMode = false
        } else if snapshot != nil {
            config.store.mode = .pruned
        }
        config.serve = false
        config.http.listen = nil
        config.net.tls = !plaintext
        config.peers = peer
        config.discovery.targetConnections = targetConnections
        config.discovery.exchangeInterval = .seconds(2)
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        if genesis == nil && !FileManager.default.fileExists(atPath: config.genesisPath) {
            throw CLIError("no genesis at \(config.genesisPath): give --genesis FILE")
        }
        if let genesis {
            // The chain's genesis joins the data directory (later runs and `run` read it there).
            guard let bytes = FileManager.default.contents(atPath: genesis) else { throw CLIError("no genesis at \(genesis): give --genesis FILE") }
            do {
                let g = try Genesis(bcsBytes: Array(bytes))
                try g.verify()
                try writeGenesis(g, to: DataDirectory(root: data))
            } catch let error as CLIError {
                throw error
            } catch {
                throw CLIError("\(genesis) is not a valid genesis: \(error)")
            }
        }
        var logger = Logger(label: "soma-node.sync")
        logger.logLevel = .warning
        var builder = NodeBuilder(configuration: config, logger: logger)
        builder.ephemeralKeyIfMissing = true
        let node = try await builder.build()
        let display = ProgressDisplay()
        do {
            let connected = try await node.connect()
            print("discovery: connected to \(connected) peers over \(config.net.tls ? "TLS 1.3" : "plaintext") (\(await node.discovery?.table.count ?? 0) known)")
            var request = CatchUpRequest()
            request.until = UInt64(until)
            request.snapshot = snapshot.map { UInt64($0).map(SnapshotChoice.epoch) ?? .latest }
            request.sync.window = window
            request.sync.requestTimeout = .seconds(Int64(timeout))
            request.sync.verifyAllCertificates = verifyAllCertificates
            request.restore.requestTimeout = .seconds(Int64(timeout))
            let terminal = display.terminal
            request.onBan = { label, reason in print("\(terminal ? "\r\u{1B}[K" : "")peer \(label) banned: \(reason)") }
            request.progress = { display.update($0) }
            request.restoreProgress = { display.update($0) }
            let restoreStart = ContinuousClock.now
            if snapshot != nil, let state = try await node.store.restoreState() {
                print("resuming the restore of epoch \(state.manifest.epoch)'s snapshot: \(state.done.count) of \(state.manifest.chunkRoots.count) chunks already written")
            }
            let outcome = try await node.catchUp(request)
            if let report = outcome.restore {
                printRestore(report, seconds: elapsed(since: restoreStart))
            } else if let skipped = outcome.restoreSkipped {
                let from = skipped.restoredEpoch.map { " (restored from epoch \($0)'s snapshot)" } ?? ""
                print("snapshot: the store already holds checkpoints up to \(skipped.highestSynced)\(from): syncing on from there")
            }
            let report = outcome.report
            display.finish()
            let secs = elapsed(since: start)
            let used = report.sources.filter { $0.checkpoints > 0 }.count
            print("synced \(report.checkpoints) checkpoints (\(report.transactions) transactions, \(format(Double(report.rawBytes) / 1e6)) MB) from \(used) of \(report.sources.count) peers in \(format(secs)) s (\(format(Double(report.checkpoints) / secs, 0)) checkpoints/s, \(format(Double(report.rawBytes) / 1e6 / secs)) MB/s); tip \(report.tip)")
            print("  \(report.quorumChecks) summary batches quorum-checked, \(report.hedges) hedged requests")
            if let q = display.quarterRates, q[0] > 0 {
                print("  by quarter    \(q.map { format($0) }.joined(separator: ", ")) MB/s (last / first \(format(q[3] / q[0], 2)))")
            }
            for s in report.sources { print("  peer \(s)") }
            if let root = try await node.store.epochs().last(where: { $0.stateRoot != nil }) {
                print("  state root    \(root.stateRoot!.hex) (epoch \(root.epoch), \(root.liveObjectCount ?? 0) live objects)")
            }
            // An epoch end's snapshot is built beside the commits after it; the last one may
            // still be running: it is part of this command's work (a failure is reported here).
            let building = ContinuousClock.now
            try await node.store.finishSnapshotBuild()
            let waited = elapsed(since: building)
            if waited >= 0.05, let newest = try await node.store.snapshotEpochs().last {
                print("  snapshot      epoch \(newest)'s, built beside the last commits, done \(format(waited)) s after them")
            }
        } catch {
            display.finish()
            await node.close()
            throw error
        }
        await node.close()
    }
}

extension Sync {
    /// Prints what a snapshot restore did.
    func printRestore(_ report: RestoreReport, seconds secs: Double) {
        let used = report.sources.filter { $0.checkpoints > 0 }.count
        print("restored epoch \(report.epoch)'s snapshot (checkpoint \(report.checkpoint)): \(report.objectCount) live objects in \(report.chunks) chunks, \(report.fetched) fetched from \(used) of \(report.agreeingSources) agreeing peers in \(format(secs)) s (\(format(Double(report.objects) / secs, 0)) objects/s, \(format(Double(report.rawBytes) / 1e6 / secs)) MB/s verified and written), \(report.hedges) hedged requests")
        print("  state root    \(report.stateRoot.hex) (certified by epoch \(report.epoch)'s committee, recomputed over the stored live set)")
        for s in report.sources where s.checkpoints > 0 || s.banReason != nil {
            print("  peer \(s.label): \(s.checkpoints) chunks, \(format(Double(s.bytes) / 1e6)) MB\(s.banReason.map { ", banned: \($0)" } ?? "")")
        }
    }
}
