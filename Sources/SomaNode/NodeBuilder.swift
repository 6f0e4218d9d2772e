import Foundation
public import Logging
import NIOCore
import NIOPosix
public import Prometheus
import SomaCore
import SomaDiscovery
import SomaGossip
import SomaNet
import SomaStore
public import SomaSync

/// Builds a node from one ``NodeConfiguration`` (the seed's P2P builder, DESIGN §13): store,
/// transport, peer server, discovery, sync and follower, status, HTTP API and metrics. `run`,
/// `sync`, `devnet run`, the tests and the benchmarks build nodes with it; the CLI only maps
/// flags and files to the configuration.
///
/// ```swift
/// let node = try await NodeBuilder(configuration: config, logger: logger).build()
/// try await node.run()   // services in one ServiceGroup until SIGTERM/SIGINT; the store closes last
/// ```
public struct NodeBuilder: Sendable {
    /// The configuration.
    public var configuration: NodeConfiguration
    /// The logger every part logs to.
    public var logger: Logger
    /// The registry the process's swift-metrics backend writes to; `/metrics` serves it.
    public var metrics: PrometheusCollectorRegistry?
    /// Grows the node's own chain while it runs (a local devnet), if set.
    public var producer: (any CheckpointProducer)?
    /// The genesis file, when not `DIR/genesis.bcs` (`sync --genesis`).
    public var genesisPath: String?
    /// Whether a missing `DIR/node.key` is replaced by a key for this process only (`sync`);
    /// otherwise it is an error.
    public var ephemeralKeyIfMissing = false
    /// Told each address once it is bound: the peer port (`.peers`) and the HTTP API (`.http`).
    public var onListening: @Sendable (Endpoint, String, Int) -> Void = { _, _, _ in }

    /// What ``onListening`` is told about.
    public enum Endpoint: String, Sendable {
        /// The peer protocol's port.
        case peers
        /// The HTTP API's port.
        case http
    }

    /// A builder for `configuration`.
    public init(configuration: NodeConfiguration, logger: Logger, metrics: PrometheusCollectorRegistry? = nil) {
        self.configuration = configuration
        self.logger = logger
        self.metrics = metrics
    }

    /// Builds the node with its network: opens the store, binds the peer port (when
    /// `configuration.serve`) and sets up discovery; nothing runs before ``Node/run()``.
    /// - Throws: ``NodeError`` naming the file, the port or the store and what to do.
    public func build() async throws -> Node {
        try await make(network: true, sources: nil)
    }

    /// Builds the node without the network: the store, sync (from `sources`, if any), status,
    /// events and the HTTP API (when `configuration.http.listen` is set); no peer port, no
    /// discovery. For tests.
    public func buildForTesting(sources: (@Sendable () async -> [SourceOffer])? = nil) async throws -> Node {
        try await make(network: false, sources: sources)
    }

    func make(network: Bool, sources: (@Sendable () async -> [SourceOffer])?) async throws -> Node {
        let config = configuration
        let genesis = try loadGenesis()
        let key: SigningKey
        if ephemeralKeyIfMissing && !FileManager.default.fileExists(atPath: config.keyPath) {
            key = SigningKey.generate()
        } else {
            key = try NodeKey.load(from: config.keyPath)
        }
        let store: NodeStore
        do {
            store = try await NodeStore.open(path: config.databasePath, configuration: config.store)
        } catch let error as StoreError where error.code == .busy {
            throw NodeError(error.message)
        } catch let error as StoreError {
            throw NodeError("cannot open the store at \(config.databasePath): \(error.message)")
        } catch {
            throw NodeError("cannot open the store at \(config.databasePath): \(error)")
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        do {
            try await store.initialize(genesis: genesis)
            let events = EventHub(store: store, buffer: config.http.eventBuffer)
            // Live events start after what the store holds now; older ones are read back on request.
            await events.advance(to: try await store.watermark(.highestSynced)?.seq ?? 0)
            let status = NodeStatus(chainID: genesis.chainID, peerID: "\(key.publicKey)", mode: store.configuration.mode, readyWithin: config.http.readyWithin)
            let wiring = Node.Wiring()
            let gossip = NodeGossip(key: key, configuration: config.gossip, topics: config.gossipTopics, logger: logger)
            await gossip.refresh(from: store)
            var discovery: Discovery? = nil
            var server: NetServer? = nil
            if network {
                (discovery, server) = try await makeNetwork(genesis: genesis, key: key, store: store, group: group, wiring: wiring, gossip: gossip)
            }
            let offers: @Sendable () async -> [SourceOffer]
            if let discovery {
                offers = { await Node.offers(discovery) }
            } else {
                offers = sources ?? { [] }
            }
            let follower = TipFollower(
                store: store, genesis: genesis, sources: offers, configuration: config.sync, pollInterval: .seconds(config.pollSeconds),
                logger: logger, forward: { [weak server] in server?.broadcast(.pushCheckpoint, $0.bcsBytes) },
                onBan: { label, reason in events.publishBan(label: label, reason: reason) })
            return Node(
                configuration: config, genesis: genesis, key: key, store: store, group: group, status: status, events: events,
                discovery: discovery, server: server, follower: follower, sources: offers, wiring: wiring, gossip: gossip, logger: logger,
                metrics: metrics, producer: producer, onListening: onListening)
        } catch {
            try? await group.shutdownGracefully()
            await store.close()
            throw error
        }
    }

    /// The genesis, read and verified.
    func loadGenesis() throws -> Genesis {
        let path = genesisPath ?? configuration.genesisPath
        guard let bytes = FileManager.default.contents(atPath: path) else {
            throw NodeError("no genesis at \(path): create the data directory with `soma-node devnet generate` or `soma-node import`, or give the chain's genesis file")
        }
        do {
            let genesis = try Genesis(bcsBytes: Array(bytes))
            try genesis.verify()
            return genesis
        } catch {
            throw NodeError("\(path) is not a valid genesis: \(error)")
        }
    }

    /// Discovery and, when serving, the peer server (bound now, so a taken port fails the build).
    func makeNetwork(
        genesis: Genesis, key: SigningKey, store: NodeStore, group: MultiThreadedEventLoopGroup, wiring: Node.Wiring, gossip: NodeGossip
    ) async throws -> (Discovery, NetServer?) {
        let config = configuration
        if let restore = try await store.restoreState(), config.serve {
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
        let discovery = Discovery(
            key: key, chainID: genesis.chainID, table: table, configuration: settings, net: config.net, group: group,
            logger: logger, pushes: wiring.pushed,
            onConnect: { client in
                wiring.connected.yield()
                gossip.links.add(client.peerID, link: ClientLink(client: client), closed: client.closed)
            },
            gossip: gossip.inbox, held: { await Node.held(store) })
        guard config.serve else { return (discovery, nil) }
        let server: NetServer
        do {
            server = try await NetServer.start(
                host: config.listenHost, port: config.listenPort,
                identity: discovery.identity, service: NodeServing(history: HistoryService(store: store), discovery: discovery),
                configuration: config.net, group: group, logger: logger, pushes: wiring.pushed,
                access: discovery.accessPolicy, inbound: wiring.inboundPeers, gossip: gossip.inbox)
        } catch {
            throw NodeError.listen("the peer port", "\(config.listenHost):\(config.listenPort)", error, fix: "set listen.port in the configuration or --listen HOST:PORT")
        }
        let advertised = config.discovery.advertise.isEmpty
            ? Node.defaultAddresses(host: config.listenHost, port: server.port) : config.discovery.advertise
        await discovery.setAddresses(advertised)
        logger.info("serving peers", metadata: [
            "listen.address": "\(config.listenHost):\(server.port)", "peer.id": "\(key.publicKey)",
            "chain.id": "\(genesis.chainID.short)", "advertised": "\(advertised.joined(separator: ","))",
            "access": "\(settings.access)", "peers.known": "\(known)", "peers.seeds": "\(settings.seeds.count)",
        ])
        onListening(.peers, config.listenHost, server.port)
        return (discovery, server)
    }
}

extension NodeError {
    /// A port that could not be bound, with the reason in words and what to change.
    static func listen(_ what: String, _ address: String, _ error: any Error, fix: String) -> NodeError {
        let text = "\(error)"
        let reason: String
        if text.contains("Address already in use") || text.contains("errno: 98") {
            reason = "the address is already in use (another soma-node, or another program, listens there)"
        } else if text.contains("Permission denied") || text.contains("errno: 13") {
            reason = "permission denied (ports below 1024 need privileges)"
        } else if text.contains("Cannot assign requested address") || text.contains("errno: 99") {
            reason = "no interface of this machine has that address"
        } else {
            reason = text
        }
        return NodeError("cannot listen for \(what) on \(address): \(reason); \(fix)")
    }
}
