public import Logging
public import SomaCore
public import SomaNet
public import SomaStore
import Synchronization

/// A connection sync may draw from, as discovery (or a fixed list) offers it.
public struct SourceOffer: Sendable {
    /// How it is named in reports (usually `HOST:PORT`).
    public var label: String
    /// The connection.
    public var client: PeerClient
    /// Its throughput measured before (bytes/s), if known.
    public var throughput: Double?

    /// Creates an offer.
    public init(label: String, client: PeerClient, throughput: Double? = nil) {
        self.label = label
        self.client = client
        self.throughput = throughput
    }
}

/// Keeps a store at the chain's tip once it has caught up (DESIGN §10, "at the tip"): it polls
/// its sources' availability every `pollInterval`, reacts at once to `pushCheckpoint` gossip,
/// runs a ``PeerSync`` catch-up whenever a source holds more than the store, and forwards each
/// new tip it commits to its sources. Its sources are whatever `sources` offers each round
/// (discovery's connections): new ones join the pool, reconnected ones replace their old entry
/// and keep their scores.
public final class TipFollower: Sendable {
    /// The sync it runs.
    public let sync: PeerSync
    let sources: @Sendable () async -> [SourceOffer]
    let pollInterval: Duration
    let logger: Logger
    let slots = Mutex<[PeerID: Int]>([:])
    let wake: AsyncStream<Void>.Continuation
    let forward: @Sendable (CertifiedCheckpointSummary) -> Void
    let wakes: AsyncStream<Void>

    /// A follower that fills `store` from the connections `sources` offers; `forward` is also
    /// given each new tip (a serving node sends it to the peers connected to it), `onBan` the
    /// label and reason of each source banned (after it is logged).
    public init(
        store: NodeStore, genesis: Genesis, sources: @escaping @Sendable () async -> [SourceOffer],
        configuration: SyncConfiguration = SyncConfiguration(), pollInterval: Duration = .seconds(2),
        logger: Logger, forward: @escaping @Sendable (CertifiedCheckpointSummary) -> Void = { _ in },
        onBan: @escaping @Sendable (String, String) -> Void = { _, _ in }
    ) {
        self.forward = forward
        self.sources = sources
        let pool = SourcePool(
            clients: [], labels: [], perSourceInFlight: configuration.perSourceInFlight, banDuration: configuration.banDuration,
            stallBanDuration: configuration.stallBanDuration,
            onBan: { label, reason in
                logger.warning("source banned", metadata: ["peer.address": "\(label)", "reason": "\(reason)"])
                onBan(label, reason)
            })
        sync = PeerSync(store: store, genesis: genesis, pool: pool, configuration: configuration)
        self.pollInterval = pollInterval
        self.logger = logger
        (wakes, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Reacts to checkpoints peers push: a push of a newer checkpoint from one of the sources
    /// raises what that source is known to hold and wakes the follower. Returns when `pushes`
    /// ends.
    public func consume(_ pushes: AsyncStream<PushedCheckpoint>) async {
        for await push in pushes {
            await sync.pool.noteHolds(peerID: push.peerID, highest: push.certified.summary.sequenceNumber)
            wake.yield()
        }
    }

    /// Takes in what `sources` offers now; returns how many sources are connected.
    func refreshSources() async -> Int {
        let pool = sync.pool
        for offer in await sources() where offer.client.isConnected {
            let id = offer.client.peerID
            if let i = slots.withLock({ $0[id] }) {
                if await pool.client(i) !== offer.client { await pool.replace(i, with: offer.client) }
                continue
            }
            let i = await pool.add(offer.client, label: offer.label, throughput: offer.throughput)
            slots.withLock { $0[id] = i }
        }
        var connected = 0
        for client in await pool.clients where client.isConnected { connected += 1 }
        return connected
    }

    /// Follows the tip until cancelled: catch up, forward the new tip, wait for a push or the
    /// poll interval, again. Failures are logged and retried next round.
    public func run() async throws {
        var iterator = wakes.makeAsyncIterator()
        var lastForwarded: UInt64 = 0
        while !Task.isCancelled {
            let connected = await refreshSources()
            logger.trace("follow round", metadata: ["sources": "\(connected)"])
            if connected > 0 {
                do {
                    await sync.pool.refresh()
                    let held = await sync.pool.highestHeld
                    let synced = try await sync.store.watermark(.highestSynced)?.seq ?? 0
                    if held > synced {
                        let report = try await sync.catchUp()
                        if report.checkpoints > 0 {
                            logger.info("synced", metadata: [
                                "checkpoints": "\(report.checkpoints)", "tip": "\(report.tip)", "transactions": "\(report.transactions)",
                            ])
                        }
                    }
                    // Forward the newest tip to every source (they ignore what they hold).
                    if let tip = try await sync.store.watermark(.highestSynced), tip.seq > lastForwarded,
                       let certified = try await sync.store.summary(at: tip.seq) {
                        for client in await sync.pool.peers where client.isConnected { client.push(certified) }
                        forward(certified)
                        lastForwarded = tip.seq
                    }
                } catch is CancellationError {
                    return
                } catch {
                    logger.warning("sync round failed; retrying", metadata: ["reason": "\(error)"])
                }
            }
            // Wait for a push or the poll interval, whichever first.
            let interval = pollInterval
            let wake = self.wake
            let timer = Task {
                // Only a sleep that ran out wakes the loop: a cancelled timer (the loop woke
                // for another reason) must not leave a wake behind, or the loop never waits again.
                guard (try? await Task.sleep(for: interval)) != nil else { return }
                wake.yield()
            }
            _ = await iterator.next()
            timer.cancel()
        }
    }

    /// Closes every source connection (after ``run()`` returned).
    public func close() async {
        for client in await sync.pool.clients { await client.close() }
    }

    /// Wakes ``run()`` for a round now (a new source connected).
    public func nudge() {
        wake.yield()
    }

    /// Ends the wait of ``run()`` (call after cancelling it).
    public func stop() {
        wake.yield()
        wake.finish()
    }
}
