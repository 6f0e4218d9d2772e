import Foundation
import Logging
import NIOCore
import NIOPosix
import Prometheus
import ServiceLifecycle
public import UnixSignals
public import SomaCore
public import SomaDiscovery
import SomaArchive
import SomaGossip
public import SomaNet
public import SomaStore
public import SomaSync
import Synchronization

/// A built node (``NodeBuilder``): its store, peer server, discovery, follower, status and
/// events, and the services that run them. ``run()`` runs them in one `ServiceGroup` until
/// SIGTERM/SIGINT (or ``shutdown()``); on a stop they end in reverse order — the producer,
/// pruning, the follower, discovery, the peer server (requests in flight drained), the HTTP API,
/// status — and the store closes last, after every task that uses it has ended. A part that
/// fails stops the node the same way, and ``run()`` throws its error.
public final class Node: Sendable {
    /// The configuration it was built from.
    public let configuration: NodeConfiguration
    /// The chain's genesis.
    public let genesis: Genesis
    /// The node's key (its peer id is the public key).
    public let key: SigningKey
    /// The store.
    public let store: NodeStore
    /// The status `/v1/status` shows.
    public let status: NodeStatus
    /// Synced checkpoints, epoch changes and bans (`/v1/events`, ``events(after:)``).
    public let events: EventHub
    /// Discovery (nil when built for testing).
    public let discovery: Discovery?
    /// The peer server (nil when not serving or built for testing).
    public let server: NetServer?
    /// The sync follower: catches up from the sources and follows the tip.
    public let follower: TipFollower
    /// Message propagation and the consensus relay over the node's connections.
    public let gossip: NodeGossip
    /// The connections sync draws from (discovery's, or those a test node was given).
    let sources: @Sendable () async -> [SourceOffer]
    let group: MultiThreadedEventLoopGroup
    let wiring: Wiring
    let logger: Logger
    let metrics: PrometheusCollectorRegistry?
    let producer: (any CheckpointProducer)?
    let onListening: @Sendable (NodeBuilder.Endpoint, String, Int) -> Void
    let running = Mutex<ServiceGroup?>(nil)
    let closed = Mutex(false)
    let httpPort = Mutex<Int?>(nil)
    let gauges: NodeGauges

    /// The streams between the peer server, discovery and the follower.
    final class Wiring: Sendable {
        let pushes: AsyncStream<PushedCheckpoint>
        let pushed: AsyncStream<PushedCheckpoint>.Continuation
        let inbound: AsyncStream<InboundPeer>
        let inboundPeers: AsyncStream<InboundPeer>.Continuation
        let connects: AsyncStream<Void>
        let connected: AsyncStream<Void>.Continuation

        init() {
            (pushes, pushed) = AsyncStream.makeStream(of: PushedCheckpoint.self, bufferingPolicy: .bufferingNewest(64))
            (inbound, inboundPeers) = AsyncStream.makeStream(of: InboundPeer.self, bufferingPolicy: .bufferingNewest(256))
            (connects, connected) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        }

        func finish() {
            pushed.finish()
            inboundPeers.finish()
            connected.finish()
        }
    }

    init(
        configuration: NodeConfiguration, genesis: Genesis, key: SigningKey, store: NodeStore, group: MultiThreadedEventLoopGroup,
        status: NodeStatus, events: EventHub, discovery: Discovery?, server: NetServer?, follower: TipFollower,
        sources: @escaping @Sendable () async -> [SourceOffer], wiring: Wiring, gossip: NodeGossip,
        logger: Logger, metrics: PrometheusCollectorRegistry?, producer: (any CheckpointProducer)?,
        onListening: @escaping @Sendable (NodeBuilder.Endpoint, String, Int) -> Void
    ) {
        self.configuration = configuration
        self.genesis = genesis
        self.key = key
        self.store = store
        self.group = group
        self.status = status
        self.events = events
        self.discovery = discovery
        self.server = server
        self.follower = follower
        self.gossip = gossip
        self.sources = sources
        self.wiring = wiring
        self.logger = logger
        self.metrics = metrics
        self.producer = producer
        self.onListening = onListening
        self.gauges = NodeGauges(version: NodeVersion.current, chainID: genesis.chainID.hex)
    }

    /// The port the HTTP API listens on, once it does.
    public var boundHTTPPort: Int? { httpPort.withLock { $0 } }

    // MARK: Running

    /// Runs every service until SIGTERM or SIGINT (`signals`), ``shutdown()`` or a part's
    /// failure; then stops them in reverse order and closes the store last.
    /// - Throws: the first part's failure (a ``NodeError`` naming the part).
    public func run(signals: [UnixSignal] = [.sigterm, .sigint]) async throws {
        let parts = services()
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: parts.map {
                ServiceGroupConfiguration.ServiceConfiguration(service: $0, successTerminationBehavior: .ignore, failureTerminationBehavior: .gracefullyShutdownGroup)
            },
            gracefulShutdownSignals: signals, logger: logger))
        let already = running.withLock { slot -> Bool in
            guard slot == nil else { return true }
            slot = group
            return false
        }
        guard !already else { throw NodeError("the node is already running") }
        defer { running.withLock { $0 = nil } }
        do {
            try await group.run()
        } catch {
            await close()
            throw error
        }
        await close()
        logger.info("stopped; store closed")
    }

    /// Asks a running node to stop gracefully (as SIGTERM does).
    public func shutdown() async {
        let group = running.withLock { $0 }
        await group?.triggerGracefulShutdown()
    }

    /// Closes what a node that did not ``run()`` (or ran and ended) holds: connections, the
    /// event loops and, last, the store. Idempotent.
    public func close() async {
        let first = closed.withLock { c -> Bool in
            defer { c = true }
            return !c
        }
        guard first else { return }
        wiring.finish()
        events.finish()
        gossip.router.finishSubscribers()
        gossip.consensus.finishSubscribers()
        follower.stop()
        await follower.close()
        await discovery?.close()
        if let server { await server.shutdown(drain: .seconds(configuration.drainSeconds)) }
        // Handshake work still on the thread pool answers to these event loops.
        await HandshakeHandler.waitForOffloads()
        try? await group.shutdownGracefully()
        await store.close()
    }

    /// The services, in start order (they stop in reverse).
    func services() -> [any Service] {
        var parts: [any Service] = []
        parts.append(Part("store") { [self] in
            // Last to stop: closes the store once every other part has ended.
            try? await gracefulShutdown()
            await close()
        })
        parts.append(Part("status") { [self] in
            await cancelWhenGracefulShutdownIgnoringCancel {
                while !Task.isCancelled {
                    await self.observe()
                    try? await Task.sleep(for: .seconds(1))
                }
            }
        })
        if let address = configuration.http.address {
            parts.append(HTTPAPI(node: self, host: address.host, port: address.port))
        }
        if let server {
            let drain = configuration.drainSeconds
            parts.append(Part("peer server") { [logger] in
                try? await gracefulShutdown()
                logger.info("stopping: draining requests in flight", metadata: ["requests": "\(server.requestsInFlight)"])
                await server.shutdown(drain: .seconds(drain))
            })
        }
        parts.append(Part("gossip") { [gossip, store] in
            await cancelWhenGracefulShutdownIgnoringCancel { await gossip.run(store: store) }
        })
        if let discovery {
            parts.append(Part("discovery") { [wiring, gossip] in
                await cancelWhenGracefulShutdownIgnoringCancel {
                    await withTaskGroup(of: Void.self) { tasks in
                        tasks.addTask { await discovery.run() }
                        // Peers that dial in: a gossip link each, and their records to discovery.
                        let (records, recordsIn) = AsyncStream.makeStream(of: InboundPeer.self, bufferingPolicy: .bufferingNewest(256))
                        tasks.addTask { await discovery.consume(inbound: records) }
                        tasks.addTask {
                            for await peer in wiring.inbound {
                                gossip.links.add(peer.peerID, link: InboundLink(peer: peer), closed: peer.closed)
                                recordsIn.yield(peer)
                            }
                            recordsIn.finish()
                        }
                    }
                }
                await discovery.close()
            })
        }
        parts.append(Part("sync follower") { [self] in
            try await runFollower()
        })
        if let target = configuration.archive.target {
            parts.append(Part("archiving") { [self] in
                await cancelWhenGracefulShutdownIgnoringCancel { await self.archiveContinuously(to: target) }
            })
        }
        if store.configuration.mode == .pruned {
            parts.append(Part("pruning") { [store] in
                do {
                    try await cancelWhenGracefulShutdown { try await store.runPruning() }
                } catch is CancellationError {
                } catch {
                    throw NodeError("pruning failed, stopping the node: \(error)")
                }
            })
        }
        if let producer {
            parts.append(Part("devnet producer") { [self] in
                do {
                    try await cancelWhenGracefulShutdown {
                        try await producer.run(store: self.store) { [weak server = self.server] in server?.broadcast(.pushCheckpoint, $0.bcsBytes) }
                    }
                } catch is CancellationError {
                } catch {
                    logger.error("the devnet producer stopped", metadata: ["error": "\(error)"])
                }
            })
        }
        // First to hear of a stop: the status shows it while the rest winds down, and event
        // streams (checkpoints, gossip, certificates) end (an SSE answer would otherwise hold
        // the HTTP API's drain open, or write after the event loops are gone).
        parts.append(Part("stop signal") { [self] in
            try? await gracefulShutdown()
            status.setStopping()
            events.finish()
            gossip.router.finishSubscribers()
            gossip.consensus.finishSubscribers()
            logger.info("stopping")
        })
        return parts
    }

    /// The follower with what feeds it: pushes, new connections, and the scores it measures
    /// written to the peer table.
    func runFollower() async throws {
        let follower = self.follower
        let discovery = self.discovery
        let interval = configuration.discovery.exchangeInterval
        do {
            try await cancelWhenGracefulShutdown { [wiring] in
                try await withThrowingTaskGroup(of: Void.self) { tasks in
                    tasks.addTask {
                        do {
                            try await follower.run()
                        } catch is CancellationError {
                        } catch {
                            throw NodeError("the sync follower failed, stopping the node: \(error)")
                        }
                    }
                    tasks.addTask { await follower.consume(wiring.pushes) }
                    // A new connection is a new source: the follower takes it at once.
                    tasks.addTask { for await _ in wiring.connects { follower.nudge() } }
                    if let discovery {
                        tasks.addTask {
                            // What sync measures of its sources goes into the peer table (and survives restarts).
                            while !Task.isCancelled {
                                try? await Task.sleep(for: interval)
                                await Node.recordScores(follower.sync.pool, into: discovery)
                            }
                        }
                    }
                    try await tasks.next()
                    tasks.cancelAll()
                    follower.stop()
                    try await tasks.waitForAll()
                }
            }
        } catch is CancellationError {
        }
        follower.stop()
        if let discovery { await Node.recordScores(follower.sync.pool, into: discovery) }
        await follower.close()
    }

    /// One look at the node for its status (once a second) and the events it publishes.
    func observe() async {
        guard let marks = try? await store.watermarks() else { return }
        let synced = marks[.highestSynced]?.seq ?? 0
        let epoch = (try? await store.summary(at: synced))?.summary.epoch ?? 0
        let stats = await follower.sync.pool.stats
        let total = stats.reduce(0) { $0 + $1.bytes }
        let connected = Set(discovery?.connections.map(\.client.peerID) ?? [])
        var peers: [PeerStatus] = []
        for s in stats {
            // An archive is always reachable; a peer while discovery holds its connection.
            var isConnected = true
            if discovery != nil, let id = s.peerID { isConnected = connected.contains(id) }
            peers.append(PeerStatus(
                address: s.label, peerId: "\(s.source)", connected: isConnected,
                lowest: s.holds?.lowerBound, highest: s.holds?.upperBound, checkpoints: s.checkpoints, bytes: s.bytes,
                share: total > 0 ? Double(s.bytes) / Double(total) : 0, throughput: s.throughput, failures: s.failures, hedges: s.hedges,
                bannedReason: s.banReason, bannedSeconds: s.bannedFor.map { NodeStatus.seconds($0) }))
        }
        let sizes = (try? await store.statistics()) ?? []
        status.record(NodeStatus.Observation(
            watermarks: marks, epoch: epoch, peers: peers, bytesReceived: total,
            storeBytes: sizes.reduce(0) { $0 + $1.bytes }, segmentBytes: store.segments.dataBytes))
        gauges.update(
            report: status.report, peers: peers, families: sizes, engine: try? await store.engineStatistics(),
            inbound: server?.inboundPeers, outbound: discovery?.connections.count, subscribers: events.subscriberCount,
            pruningLag: await pruningLag(marks, epoch: epoch))
        await events.advance(to: synced)
    }

    /// Checkpoints a pruned store holds below the first checkpoint of the oldest epoch it is
    /// configured to keep (0 for an archive, or while pruning keeps up).
    func pruningLag(_ marks: [Watermark: WatermarkValue], epoch: UInt64) async -> UInt64 {
        guard store.configuration.mode == .pruned, let lowest = marks[.lowestAvailable]?.seq else { return 0 }
        let keep = store.configuration.retainEpochs
        guard epoch >= keep, let records = try? await store.epochs(),
              let oldestKept = records.first(where: { $0.epoch == epoch - keep + 1 })
        else { return 0 }
        return oldestKept.firstCheckpoint > lowest ? oldestKept.firstCheckpoint - lowest : 0
    }

    // MARK: Helpers the parts share

    /// What the node holds, for its record: `lowestAvailable...highestSynced` and the snapshot epochs.
    static func held(_ store: NodeStore) async -> (holds: [HeldRange], snapshotEpochs: [UInt64]) {
        guard let marks = try? await store.watermarks(), let high = marks[.highestSynced]?.seq else { return ([], []) }
        let low = min(marks[.lowestAvailable]?.seq ?? 0, high)
        return ([HeldRange(lowest: low, highest: high)], (try? await store.snapshotEpochs()) ?? [])
    }

    /// Discovery's connections as sync sources, with the throughput the table remembers.
    static func offers(_ discovery: Discovery) async -> [SourceOffer] {
        var out: [SourceOffer] = []
        for c in discovery.connections {
            let measured = await discovery.table.record(c.client.peerID)?.throughput
            out.append(SourceOffer(label: c.address, client: c.client, throughput: measured.flatMap { $0 > 0 ? Double($0) : nil }))
        }
        return out
    }

    /// Copies the pool's scores (throughput, failures, bans for bad data) into discovery's
    /// table, by peer id. A stall ban is a pause of this process's sync and a dropped
    /// connection is no ban at all: neither is recorded.
    static func recordScores(_ pool: SourcePool, into discovery: Discovery) async {
        for s in await pool.stats {
            guard let peerID = s.peerID else { continue }  // an archive is no peer
            await discovery.noteSource(
                peerID, throughput: s.throughput, failures: s.failures, bannedFor: s.bannedForBadData ? s.bannedFor : nil,
                reason: s.bannedForBadData ? s.banReason : nil)
        }
    }

    /// The addresses a node advertises when none are configured: the listen address, or for a
    /// wildcard listen address the machine's first non-loopback IPv4 address (loopback if none).
    public static func defaultAddresses(host: String, port: Int) -> [String] {
        if !["0.0.0.0", "::", "", "[::]"].contains(host) {
            return [host.contains(":") && !host.hasPrefix("[") ? "[\(host)]:\(port)" : "\(host):\(port)"]
        }
        let devices = (try? System.enumerateDevices()) ?? []
        for d in devices {
            guard let a = d.address, case .v4 = a, let ip = a.ipAddress, !ip.hasPrefix("127.") else { continue }
            return ["\(ip):\(port)"]
        }
        return ["127.0.0.1:\(port)"]
    }
}

/// One long-lived part of the node as a service.
struct Part: Service, CustomStringConvertible {
    let description: String
    let body: @Sendable () async throws -> Void

    init(_ name: String, _ body: @escaping @Sendable () async throws -> Void) {
        self.description = name
        self.body = body
    }

    func run() async throws { try await body() }
}

/// Runs `operation` until the service's graceful shutdown cancels it; the cancellation is the
/// expected end, not an error.
func cancelWhenGracefulShutdownIgnoringCancel(_ operation: @escaping @Sendable () async -> Void) async {
    await cancelWhenGracefulShutdown { await operation() }
}
