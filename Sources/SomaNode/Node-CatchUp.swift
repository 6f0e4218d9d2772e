import Foundation
import SomaCore
import SomaDiscovery
import SomaNet
import SomaStore
public import SomaSync
import SomaArchive

/// What `soma-node sync` asks of a node: where to stop, whether to restore a snapshot first,
/// and the pipeline's tunables.
public struct CatchUpRequest: Sendable {
    /// The checkpoint to stop at (`nil`: the best tip the sources hold).
    public var until: UInt64?
    /// Restore this epoch's state snapshot first (a new validator's fast catch-up).
    public var snapshot: SnapshotChoice?
    /// The checkpoint pipeline's tunables.
    public var sync = SyncConfiguration()
    /// The snapshot download's tunables.
    public var restore = RestoreConfiguration()
    /// Told each source banned (label, reason).
    public var onBan: @Sendable (String, String) -> Void = { _, _ in }
    /// Told the sync's progress.
    public var progress: @Sendable (SyncProgress) -> Void = { _ in }
    /// Told the restore's progress.
    public var restoreProgress: @Sendable (RestoreProgress) -> Void = { _ in }
    /// Sources besides the peers (archives), each with its label: raced against the peers by
    /// the same scheduler, with ``ArchiveSource/parallelReads`` requests at once.
    public var sources: [(source: any SyncSource, label: String)] = []
    /// Snapshots held locally for a restore to read matching chunks from (``SnapshotRestore/reuse``).
    public var reuse: [any SyncSource] = []

    /// Defaults: to the tip, no snapshot.
    public init() {}
}

/// What a catch-up did.
public struct CatchUpOutcome: Sendable {
    /// The snapshot restore part-way through when the run started (epoch, chunks written, chunks).
    public var resumedRestore: (epoch: UInt64, written: Int, chunks: Int)?
    /// The restore's report, when one ran.
    public var restore: RestoreReport?
    /// Why no restore ran although one was asked for: the store already holds checkpoints
    /// (up to `highestSynced`, restored from the epoch given, if any).
    public var restoreSkipped: (highestSynced: UInt64, restoredEpoch: UInt64?)?
    /// The checkpoint sync's report.
    public var report: CatchUpReport
}

extension Node {
    /// Connects to the seeds and the peers the store remembers, and exchanges known peers until
    /// `targetConnections` are connected or the rounds run out.
    /// - Returns: the number of connections.
    /// - Throws: ``NodeError`` when there is no seed and no known peer, or none answers (with
    ///   each seed's failure).
    public func connect() async throws -> Int {
        guard let discovery else { throw NodeError("this node was built without the network") }
        let known = await discovery.table.count
        let seeds = discovery.configuration.seeds
        if seeds.isEmpty && known == 0 {
            throw NodeError("no seed peer and no known peers in \(configuration.databasePath): give --peer HOST:PORT (or sync.peers in the configuration)")
        }
        let connected = await discovery.bootstrap()
        guard connected > 0 else {
            let failures = discovery.seedFailures.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }
            let said = failures.joined(separator: "; ")
            let advice: String
            if said.contains("wrongChain") {
                advice = "a peer serves another chain: give the --genesis of the chain it serves (in a fresh --data directory), or peers of this chain"
            } else if said.contains("tlsFailed") || said.contains("plaintext") {
                advice = "the peers must speak \(configuration.net.tls ? "TLS 1.3" : "plaintext") as this node does (net.tls, --plaintext)"
            } else {
                advice = "check the addresses, that the peers run and that their port is open to this machine"
            }
            throw NodeError("no peer could be reached (seeds: \(seeds.isEmpty ? "none" : seeds.joined(separator: ", "))\(failures.isEmpty ? "" : "; " + said)): \(advice)")
        }
        return connected
    }

    /// Catches the store up from the connected peers (``connect()`` first) and the request's
    /// other sources (archives; with those, no peer need be connected), restoring a
    /// snapshot first if asked, while discovery goes on and adds the peers it connects to; then
    /// records what it measured of each source in the peer table. Does not wait for the last
    /// epoch end's snapshot build (``NodeStore/finishSnapshotBuild()``).
    public func catchUp(_ request: CatchUpRequest) async throws -> CatchUpOutcome {
        guard let discovery else { throw NodeError("this node was built without the network") }
        if request.snapshot != nil, store.configuration.mode == .archive {
            throw NodeError("the store at \(configuration.databasePath) is an archive (every checkpoint since genesis): it cannot be restored from a snapshot; use another data directory, or sync without --snapshot")
        }
        let pool = SourcePool(
            clients: [], labels: [], perSourceInFlight: request.sync.perSourceInFlight,
            banDuration: request.sync.banDuration, stallBanDuration: request.sync.stallBanDuration,
            onBan: { [events] label, reason in
                events.publishBan(label: label, reason: reason)
                request.onBan(label, reason)
            })
        for (source, label) in request.sources {
            await pool.add(source, label: label, inFlight: ArchiveSource.parallelReads)
        }
        for c in discovery.connections {
            let remembered = await discovery.table.record(c.client.peerID)?.throughput ?? 0
            await pool.add(c.client, label: c.address, throughput: remembered > 0 ? Double(remembered) : nil)
        }
        // Discovery goes on while syncing: peers it connects to later join the pool.
        let joining = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(2))
                guard !Task.isCancelled else { return }
                await discovery.round()
                for c in discovery.connections where await pool.index(of: c.client.peerID) == nil {
                    guard let a = try? await c.client.availability() else { continue }
                    await pool.add(c.client, label: c.address, availability: a)
                }
            }
        }
        defer { joining.cancel() }
        var resumed: (epoch: UInt64, written: Int, chunks: Int)? = nil
        var restored: RestoreReport? = nil
        var skipped: (highestSynced: UInt64, restoredEpoch: UInt64?)? = nil
        if let choice = request.snapshot {
            if let state = try await store.restoreState() {
                resumed = (state.manifest.epoch, state.done.count, state.manifest.chunkRoots.count)
            }
            status.setRestoring(true)
            defer { status.setRestoring(false) }
            var restore = SnapshotRestore(store: store, genesis: genesis, pool: pool, configuration: request.restore)
            restore.reuse = request.reuse
            if let report = try await restore.restore(choice, progress: request.restoreProgress) {
                restored = report
            } else {
                skipped = (try await store.watermark(.highestSynced)?.seq ?? 0, try await store.restoredEpoch())
            }
        }
        let sync = PeerSync(store: store, genesis: genesis, pool: pool, configuration: request.sync)
        let report = try await sync.catchUp(until: request.until, progress: request.progress)
        joining.cancel()
        _ = await joining.value
        await Node.recordScores(pool, into: discovery)
        return CatchUpOutcome(resumedRestore: resumed, restore: restored, restoreSkipped: skipped, report: report)
    }
}
