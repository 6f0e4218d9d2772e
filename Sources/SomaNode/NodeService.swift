import Foundation
public import Logging
import NIOCore
import NIOPosix
public import Prometheus
import SomaCore
import SomaDiscovery
import SomaNet
import SomaStore
import SomaSync
public import ServiceLifecycle

/// The running node: opens the store, serves history and known peers, discovers peers (signed
/// records, exchange, a persistent peer table; DESIGN §9), syncs from the peers discovery
/// connects to and follows the tip (pushes wake it; it forwards each new tip), prunes in the
/// background (pruned mode), and on a graceful shutdown stops accepting, lets requests in flight
/// finish, closes connections and closes the store last.
public final class NodeService: Service, Sendable {
    /// The configuration.
    public let configuration: NodeConfiguration
    private let logger: Logger
    private let onListening: @Sendable (String, Int) -> Void
    private let metrics: PrometheusCollectorRegistry?
    private let onMetrics: @Sendable (Int) -> Void
    private let producer: (any CheckpointProducer)?

    /// A node for `configuration`; `onListening` is told the address once the port is bound.
    /// - Parameters:
    ///   - metrics: the registry the process's swift-metrics backend writes to; served on
    ///     `metricsListen` when both are set (`onMetrics` is told the bound port).
    ///   - producer: grows the node's own chain while it serves (a local devnet), if given.
    public init(
        configuration: NodeConfiguration, logger: Logger, metrics: PrometheusCollectorRegistry? = nil,
        producer: (any CheckpointProducer)? = nil,
        onListening: @escaping @Sendable (String, Int) -> Void = { _, _ in }, onMetrics: @escaping @Sendable (Int) -> Void = { _ in }
    ) {
        self.producer = producer
        self.configuration = configuration
        self.logger = logger
        self.metrics = metrics
        self.onListening = onListening
        self.onMetrics = onMetrics
    }

    /// Runs until a graceful shutdown (SIGTERM or SIGINT through the service group).
    public func run() async throws {
        let config = configuration
        guard let genesisBytes = FileManager.default.contents(atPath: config.genesisPath) else {
            throw NodeError("no genesis at \(config.genesisPath): create the data directory with `soma-node devnet generate` or `soma-node import`")
        }
        let genesis: Genesis
        do {
            genesis = try Genesis(bcsBytes: Array(genesisBytes))
            try genesis.verify()
        } catch {
            throw NodeError("\(config.genesisPath): \(error)")
        }
        let key = try NodeKey.load(from: config.keyPath)
        let store = try await NodeStore.open(path: config.databasePath, configuration: config.store)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        do {
            try await store.initialize(genesis: genesis)
            if let restore = try await store.restoreState() {
                throw NodeError("\(config.databasePath) is part-way through restoring epoch \(restore.manifest.epoch)'s snapshot (\(restore.done.count) of \(restore.manifest.chunkRoots.count) chunks): finish it with `soma-node sync --snapshot \(restore.manifest.epoch)` first")
            }
            let table = PeerTable(
                selfID: key.publicKey, store: store, maxPeers: config.discovery.maxPeers,
                maxPerIntroducer: config.discovery.maxPerIntroducer, maxInbound: config.discovery.maxInbound,
                maxPerGroup: config.discovery.maxPerGroup,
                admitOnly: config.discovery.access == .private ? config.discovery.allowedPeers : nil)
            let known = try await table.load()
            var settings = config.discovery
            settings.seeds = Array(Set(config.peers + config.discovery.seeds)).sorted()
            settings.role = config.role ?? (store.configuration.mode == .archive ? .archive : .full)
            let (pushes, pushed) = AsyncStream.makeStream(of: PushedCheckpoint.self, bufferingPolicy: .bufferingNewest(64))
            let (inbound, inboundPeers) = AsyncStream.makeStream(of: InboundPeer.self, bufferingPolicy: .bufferingNewest(256))
            let (connects, connected) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
            let discovery = Discovery(
                key: key, chainID: genesis.chainID, table: table, configuration: settings, net: config.net, group: group,
                logger: logger, pushes: pushed, onConnect: { _ in connected.yield() }, held: { await NodeService.held(store) })
            let server = try await NetServer.start(
                host: config.listenHost, port: config.listenPort,
                identity: discovery.identity, service: NodeServing(history: HistoryService(store: store), discovery: discovery),
                configuration: config.net, group: group, logger: logger, pushes: pushed,
                access: discovery.accessPolicy, inbound: inboundPeers)
            let advertised = config.discovery.advertise.isEmpty
                ? NodeService.defaultAddresses(host: config.listenHost, port: server.port) : config.discovery.advertise
            await discovery.setAddresses(advertised)
            logger.info("serving", metadata: [
                "listen.address": "\(config.listenHost):\(server.port)", "peer.id": "\(key.publicKey)",
                "chain.id": "\(genesis.chainID.short)", "advertised": "\(advertised.joined(separator: ","))",
                "access": "\(settings.access)", "peers.known": "\(known)", "peers.seeds": "\(settings.seeds.count)",
            ])
            onListening(config.listenHost, server.port)
            // From here on the server runs: whatever fails, it is shut down (its request tasks
            // ended) before the store closes, and the failure is thrown after that.
            var failure: (any Error)? = nil
            var metricsServer: MetricsServer? = nil
            if let registry = metrics, let listen = config.metricsListen, let colon = listen.lastIndex(of: ":"),
               let port = Int(listen[listen.index(after: colon)...]) {
                do {
                    let m = try await MetricsServer.start(host: String(listen[..<colon]), port: port, registry: registry, group: group)
                    logger.info("serving metrics", metadata: ["metrics.address": "\(listen[..<colon]):\(m.port)"])
                    onMetrics(m.port)
                    metricsServer = m
                } catch {
                    failure = error
                }
            }
            let scoreInterval = settings.exchangeInterval
            // The first part to fail stops the node (it is not left running without it).
            if failure == nil {
                await withThrowingTaskGroup(of: Part.self) { tasks in
                    if store.configuration.mode == .pruned {
                        tasks.addTask {
                            do {
                                try await store.runPruning()
                            } catch is CancellationError {
                            } catch {
                                throw NodeError("pruning failed, stopping the node: \(error)")
                            }
                            return .other
                        }
                    }
                    let follower = TipFollower(
                        store: store, genesis: genesis,
                        sources: { await NodeService.offers(discovery) },
                        configuration: config.sync, pollInterval: .seconds(config.pollSeconds), logger: logger,
                        forward: { server.broadcast(.pushCheckpoint, $0.bcsBytes) })
                    if let producer {
                        tasks.addTask {
                            do {
                                try await producer.run(store: store) { server.broadcast(.pushCheckpoint, $0.bcsBytes) }
                            } catch is CancellationError {
                            } catch {
                                self.logger.error("the devnet producer stopped", metadata: ["error": "\(error)"])
                            }
                            return .other
                        }
                    }
                    tasks.addTask { await discovery.run(); return .other }
                    tasks.addTask { await discovery.consume(inbound: inbound); return .other }
                    tasks.addTask {
                        do {
                            try await follower.run()
                        } catch is CancellationError {
                        } catch {
                            throw NodeError("the sync follower failed, stopping the node: \(error)")
                        }
                        return .other
                    }
                    tasks.addTask { await follower.consume(pushes); return .other }
                    // A new connection is a new source: the follower takes it at once.
                    tasks.addTask { for await _ in connects { follower.nudge() }; return .other }
                    tasks.addTask {
                        // What sync measures of its sources goes into the peer table (and survives restarts).
                        while !Task.isCancelled {
                            try? await Task.sleep(for: scoreInterval)
                            await NodeService.recordScores(follower.sync.pool, into: discovery)
                        }
                        return .other
                    }
                    // Serve until the service group asks for a graceful shutdown, or a part fails.
                    tasks.addTask {
                        try? await gracefulShutdown()
                        return .shutdown
                    }
                    do {
                        while let part = try await tasks.next(), part != .shutdown {}
                    } catch {
                        failure = error
                        logger.error("stopping", metadata: ["reason": "\(error)"])
                    }
                    // Every task is cancelled and awaited before anything is closed.
                    tasks.cancelAll()
                    pushed.finish()
                    inboundPeers.finish()
                    connected.finish()
                    follower.stop()
                    do {
                        try await tasks.waitForAll()
                    } catch {
                        if failure == nil { failure = error }
                    }
                    await NodeService.recordScores(follower.sync.pool, into: discovery)
                    await follower.close()
                    await discovery.close()
                }
            }
            await metricsServer?.close()
            logger.info("stopping: draining requests in flight", metadata: ["requests": "\(server.requestsInFlight)"])
            // The server's request tasks end before the store closes (below).
            await server.shutdown(drain: .seconds(config.drainSeconds))
            if let failure { throw failure }
        } catch {
            try? await group.shutdownGracefully()
            await store.close()
            throw error
        }
        try? await group.shutdownGracefully()
        await store.close()
        logger.info("stopped; store closed")
    }

    /// How a task of the running node ended: the shutdown signal, or another part.
    enum Part: Sendable, Equatable {
        case shutdown
        case other
    }

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
            await discovery.noteSource(
                s.peerID, throughput: s.throughput, failures: s.failures, bannedFor: s.bannedForBadData ? s.bannedFor : nil,
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
