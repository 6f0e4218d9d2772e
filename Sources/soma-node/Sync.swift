import ArgumentParser
import Foundation
import Logging
import NIOCore
import NIOPosix
import SomaArchive
import SomaCore
import SomaDiscovery
import SomaNet
import SomaNode
import SomaStore
import SomaSync

struct Sync: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Catch a store up from peers and archives, verifying everything, then exit.",
        discussion: """
            Finds its sources by discovery: it dials the seeds (--peer) or the peers its store \
            remembers, asks them for the peers they know and connects to up to \
            --target-connections of them. Verifies the epoch chain, every summary batch (one quorum \
            check each) and every block, and commits in order with execution and the state-root check at every epoch end. Blocks \
            come from all peers at once, by measured throughput; a peer that sends anything that \
            fails verification is banned and its work goes to the others. Archives (--archive, an \
            S3 bucket prefix or a folder) are sources of the same scheduler: raced against the \
            peers by measured throughput, read with ranged reads, verified the same way; an \
            archive file that is missing, corrupt or lies is set aside with the reason and the \
            sync finishes from the other sources. A stop or crash resumes \
            after the store's highestSynced. Shows a progress bar on a terminal, log lines otherwise; \
            with --json, standard output carries one JSON document with the outcome and the \
            progress lines go to standard error.
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
    @Option(help: "An archive, s3://BUCKET/PREFIX or a folder (repeat for several): a source raced against the peers (with none, the sync reads the archives alone); its checkpoints and snapshots are verified as from any source.")
    var archive: [String] = []
    @Option(help: "With --snapshot: snapshots held locally, an older data directory of this chain (opened read-only) or an archive (repeat for several): chunks whose roots they hold are read from them, each verified, instead of fetched (a differential update).")
    var reuse: [String] = []
    @OptionGroup var archiveOptions: ArchiveOptions
    @Flag(help: "Check the signatures of every certificate, not one per batch.")
    var verifyAllCertificates = false
    @Flag(help: "Speak plaintext instead of TLS 1.3 (only with peers that also run plaintext, for tests and loopback baselines).")
    var plaintext = false
    @Flag(help: "Print the outcome as one JSON document (progress goes to standard error).")
    var json = false

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
        if !reuse.isEmpty, snapshot == nil { throw ValidationError("--reuse serves a snapshot restore: give --snapshot latest or an epoch") }
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
        let console = Console(json: json)
        let display = console.progressDisplay()
        do {
            var document: [String: Any] = [:]
            var request = CatchUpRequest()
            var locations: [String] = []
            for location in archive {
                let source = try await archiveSource(location, node: node)
                request.sources.append((source, location))
                locations.append("\(source.sourceID)")
            }
            if !locations.isEmpty {
                document["archives"] = locations
                console.say("archives: \(locations.joined(separator: ", "))")
            }
            var connected = 0
            let knownPeers = try await node.store.peerRecords().count
            if archive.isEmpty || !peer.isEmpty || knownPeers > 0 {
                do {
                    connected = try await node.connect()
                    console.say("discovery: connected to \(connected) peers over \(config.net.tls ? "TLS 1.3" : "plaintext") (\(await node.discovery?.table.count ?? 0) known)")
                } catch let error as NodeError where !archive.isEmpty {
                    console.say("discovery: \(error); syncing from the archives alone")
                }
            }
            var reusedStores: [NodeStore] = []
            for location in reuse {
                if FileManager.default.fileExists(atPath: DataDirectory(root: location).database) {
                    let old: NodeStore
                    do { old = try await DataOptions.openStore(at: location, readOnly: true) } catch {
                        throw CLIError("--reuse \(location): cannot open its store read-only: \(error)")
                    }
                    reusedStores.append(old)
                    request.reuse.append(StoreSnapshotSource(store: old, label: location))
                } else {
                    request.reuse.append(try await archiveSource(location, node: node))
                }
            }
            request.until = UInt64(until)
            request.snapshot = snapshot.map { UInt64($0).map(SnapshotChoice.epoch) ?? .latest }
            request.sync.window = window
            request.sync.requestTimeout = .seconds(Int64(timeout))
            request.sync.verifyAllCertificates = verifyAllCertificates
            request.restore.requestTimeout = .seconds(Int64(timeout))
            let terminal = display.terminal
            request.onBan = { label, reason in console.say("\(terminal ? "\r\u{1B}[K" : "")peer \(label) banned: \(reason)") }
            request.progress = { display.update($0) }
            request.restoreProgress = { display.update($0) }
            let restoreStart = ContinuousClock.now
            if snapshot != nil, let state = try await node.store.restoreState() {
                console.say("resuming the restore of epoch \(state.manifest.epoch)'s snapshot: \(state.done.count) of \(state.manifest.chunkRoots.count) chunks already written")
            }
            let outcome: CatchUpOutcome
            do {
                outcome = try await node.catchUp(request)
            } catch {
                for store in reusedStores { await store.close() }
                throw error
            }
            for store in reusedStores { await store.close() }
            document["connected"] = connected
            document["transport"] = config.net.tls ? "tls" : "plaintext"
            if let report = outcome.restore {
                let secs = elapsed(since: restoreStart)
                printRestore(report, seconds: secs, console: console)
                document["restore"] = restoreObject(report, seconds: secs)
            } else if let skipped = outcome.restoreSkipped {
                let from = skipped.restoredEpoch.map { " (restored from epoch \($0)'s snapshot)" } ?? ""
                console.say("snapshot: the store already holds checkpoints up to \(skipped.highestSynced)\(from): syncing on from there")
                document["restoreSkipped"] = ["highestSynced": skipped.highestSynced, "restoredEpoch": skipped.restoredEpoch ?? NSNull()] as [String: Any]
            }
            let report = outcome.report
            display.finish()
            let secs = elapsed(since: start)
            let used = report.sources.filter { $0.checkpoints > 0 }.count
            console.say("synced \(report.checkpoints) checkpoints (\(report.transactions) transactions, \(format(Double(report.rawBytes) / 1e6)) MB) from \(used) of \(report.sources.count) sources in \(format(secs)) s (\(format(Double(report.checkpoints) / secs, 0)) checkpoints/s, \(format(Double(report.rawBytes) / 1e6 / secs)) MB/s); tip \(report.tip)")
            if let wanted = UInt64(until), report.tip < wanted {
                console.say("  the peers hold checkpoints up to \(report.tip) only: --until \(wanted) is not reached (run sync again later, or `soma-node run` to follow the tip)")
            }
            console.say("  \(report.quorumChecks) summary batches quorum-checked, \(report.hedges) hedged requests")
            let quarters = display.quarterRates.flatMap { $0[0] > 0 ? $0 : nil }
            if let q = quarters {
                console.say("  by quarter    \(q.map { format($0) }.joined(separator: ", ")) MB/s (last / first \(format(q[3] / q[0], 2)))")
            }
            for s in report.sources { console.say("  \(s.peerID == nil ? "archive" : "peer") \(s)") }
            document["sync"] = [
                "tip": report.tip, "checkpoints": report.checkpoints, "transactions": report.transactions,
                "rawBytes": report.rawBytes, "storedBytes": report.storedBytes, "quorumChecks": report.quorumChecks,
                "hedges": report.hedges, "seconds": jsonSeconds(secs),
                "quarterMegabytesPerSecond": quarters.map { q in q.map { ($0 * 10).rounded() / 10 } } ?? NSNull(),
                "sources": report.sources.map(\.jsonObject),
            ] as [String: Any]
            document["stateRoot"] = NSNull()
            if let root = try await node.store.epochs().last(where: { $0.stateRoot != nil }), let digest = root.stateRoot {
                console.say("  state root    \(digest.hex) (epoch \(root.epoch), \(root.liveObjectCount ?? 0) live objects)")
                document["stateRoot"] = ["epoch": root.epoch, "root": digest.hex, "liveObjects": root.liveObjectCount ?? NSNull()] as [String: Any]
            }
            // An epoch end's snapshot is built beside the commits after it; the last one may
            // still be running: it is part of this command's work (a failure is reported here).
            let building = ContinuousClock.now
            try await node.store.finishSnapshotBuild()
            let waited = elapsed(since: building)
            if let adopted = report.adoptedSnapshot {
                console.say("  snapshot      epoch \(adopted)'s, taken from the sources during the catch-up (every chunk verified), not built")
            } else if waited >= 0.05, let newest = try await node.store.snapshotEpochs().last {
                console.say("  snapshot      epoch \(newest)'s, built beside the last commits, done \(format(waited)) s after them")
            }
            document["snapshotAdopted"] = report.adoptedSnapshot ?? NSNull()
            document["snapshotEpochs"] = try await node.store.snapshotEpochs()
            if json { try console.emit(document) }
        } catch {
            display.finish()
            await node.close()
            throw error
        }
        await node.close()
    }
}

extension Sync {
    /// Says what a snapshot restore did.
    func printRestore(_ report: RestoreReport, seconds secs: Double, console: Console) {
        let used = report.sources.filter { $0.checkpoints > 0 }.count
        console.say("restored epoch \(report.epoch)'s snapshot (checkpoint \(report.checkpoint)): \(report.objectCount) live objects in \(report.chunks) chunks, \(report.fetched) fetched from \(used) of \(report.agreeingSources) agreeing sources\(report.reused > 0 || !reuse.isEmpty ? " and \(report.reused) reused from local snapshots (\(format(Double(report.reusedBytes) / 1e6)) MB not fetched)" : "") in \(format(secs)) s (\(format(Double(report.objects) / secs, 0)) objects/s, \(format(Double(report.rawBytes) / 1e6 / secs)) MB/s verified and written), \(report.hedges) hedged requests")
        console.say("  state root    \(report.stateRoot.hex) (certified by epoch \(report.epoch)'s committee, recomputed over the stored live set)")
        for s in report.sources where s.checkpoints > 0 || s.banReason != nil {
            console.say("  \(s.peerID == nil ? "archive" : "peer") \(s.label): \(s.checkpoints) chunks, \(format(Double(s.bytes) / 1e6)) MB\(s.banReason.map { ", banned: \($0)" } ?? "")")
        }
    }

    /// A restore's report as JSON (each source's `checkpoints` counts chunks here).
    func restoreObject(_ report: RestoreReport, seconds secs: Double) -> [String: Any] {
        [
            "epoch": report.epoch, "checkpoint": report.checkpoint, "stateRoot": report.stateRoot.hex,
            "liveObjects": report.objectCount, "chunks": report.chunks, "chunksFetched": report.fetched,
            "chunksReused": report.reused, "reusedBytes": report.reusedBytes,
            "objectsWritten": report.objects, "rawBytes": report.rawBytes, "frameBytes": report.frameBytes,
            "hedges": report.hedges, "agreeingSources": report.agreeingSources, "seconds": jsonSeconds(secs),
            "sources": report.sources.map(\.jsonObject),
        ]
    }
}

extension Sync {
    /// The archive at `location` as a sync source, after a first look: it must be an archive
    /// (a signed manifest) of this node's chain.
    func archiveSource(_ location: String, node: Node) async throws -> ArchiveSource {
        let backend = try archiveOptions.backend(location)
        let reader = ArchiveReader(backend: backend)
        let manifest: ArchiveManifest
        do {
            manifest = try await reader.requiredManifest()
        } catch let error as ArchiveError {
            throw CLIError(error.description)
        } catch {
            throw CLIError("archive \(backend): \(error)")
        }
        guard let genesis = try await node.store.genesis() else { throw CLIError("the store has no genesis") }
        guard manifest.chainID == genesis.chainID else {
            throw CLIError("\(backend) is an archive of chain \(manifest.chainID.hex.prefix(16))…, not of this node's (\(genesis.chainID.hex.prefix(16))…)")
        }
        return ArchiveSource(reader: reader, chainID: genesis.chainID)
    }
}
