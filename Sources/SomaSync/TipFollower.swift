public import Logging
public import NIOCore
public import SomaCore
public import SomaNet
public import SomaStore
import Synchronization

/// Keeps a store at the chain's tip once it has caught up (DESIGN §10, "at the tip"): it polls
/// its sources' availability every `pollInterval`, reacts at once to `pushCheckpoint` gossip,
/// runs a ``PeerSync`` catch-up whenever a source holds more than the store, and forwards each
/// new tip it commits to its sources. Seed addresses that cannot be reached (or whose
/// connection closed) are dialled again every round.
public final class TipFollower: Sendable {
    /// The sync it runs.
    public let sync: PeerSync
    let seeds: [String]
    let identity: HandshakeIdentity
    let net: NetConfiguration
    let group: any EventLoopGroup
    let pollInterval: Duration
    let logger: Logger
    let slots = Mutex<[String: Int]>([:])
    let wake: AsyncStream<Void>.Continuation
    let forward: @Sendable (CertifiedCheckpointSummary) -> Void
    let pushes: AsyncStream<PushedCheckpoint>.Continuation?
    let wakes: AsyncStream<Void>

    /// A follower of `seeds` (`HOST:PORT`) that fills `store`; `forward` is also given each new
    /// tip (a serving node sends it to the peers connected to it); checkpoints the sources push
    /// on the follower's own connections go to `pushes` (give it the stream ``consume(_:)`` reads).
    public init(
        store: NodeStore, genesis: Genesis, seeds: [String], identity: HandshakeIdentity, net: NetConfiguration = NetConfiguration(),
        group: any EventLoopGroup, configuration: SyncConfiguration = SyncConfiguration(), pollInterval: Duration = .seconds(2),
        logger: Logger, pushes: AsyncStream<PushedCheckpoint>.Continuation? = nil,
        forward: @escaping @Sendable (CertifiedCheckpointSummary) -> Void = { _ in }
    ) {
        self.forward = forward
        self.pushes = pushes
        let pool = SourcePool(
            clients: [], labels: [], perSourceInFlight: configuration.perSourceInFlight, banDuration: configuration.banDuration,
            stallBanDuration: configuration.stallBanDuration,
            onBan: { label, reason in logger.warning("source banned", metadata: ["peer.address": "\(label)", "reason": "\(reason)"]) })
        sync = PeerSync(store: store, genesis: genesis, pool: pool, configuration: configuration)
        self.seeds = seeds
        self.identity = identity
        self.net = net
        self.group = group
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

    /// Dials the seeds not connected now; returns how many sources are connected.
    func connectSeeds() async -> Int {
        let pool = sync.pool
        var connected = 0
        for seed in seeds {
            if let i = slots.withLock({ $0[seed] }), await pool.client(i).isConnected {
                connected += 1
                continue
            }
            guard let colon = seed.lastIndex(of: ":"), let port = Int(seed[seed.index(after: colon)...]) else { continue }
            do {
                let client = try await PeerClient.connect(
                    host: String(seed[..<colon]), port: port, identity: identity, configuration: net, group: group, pushes: pushes)
                if let i = slots.withLock({ $0[seed] }) {
                    await pool.replace(i, with: client)
                } else {
                    let i = await pool.add(client, label: seed)
                    slots.withLock { $0[seed] = i }
                }
                connected += 1
                logger.info("connected to source", metadata: ["peer.address": "\(seed)", "peer.id": "\(client.peerID.raw.short)"])
            } catch {
                logger.debug("source unreachable", metadata: ["peer.address": "\(seed)", "reason": "\(error)"])
            }
        }
        return connected
    }

    /// Follows the tip until cancelled: catch up, forward the new tip, wait for a push or the
    /// poll interval, again. Failures are logged and retried next round.
    public func run() async throws {
        var iterator = wakes.makeAsyncIterator()
        var lastForwarded: UInt64 = 0
        while !Task.isCancelled {
            let connected = await connectSeeds()
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
                        for client in await sync.pool.clients where client.isConnected { client.push(certified) }
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
                try? await Task.sleep(for: interval)
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

    /// Ends the wait of ``run()`` (call after cancelling it).
    public func stop() {
        wake.yield()
        wake.finish()
    }
}
