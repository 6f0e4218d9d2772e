import Foundation
public import Logging
import NIOPosix
import SomaCore
import SomaNet
import SomaStore
import SomaSync
public import ServiceLifecycle

/// The running node: opens the store, serves history to peers, syncs from its configured peers
/// and follows the tip (pushes from peers wake it; it forwards each new tip), prunes in the
/// background (pruned mode), and on a graceful shutdown stops accepting, lets requests in flight finish,
/// closes connections and closes the store last.
public final class NodeService: Service, Sendable {
    /// The configuration.
    public let configuration: NodeConfiguration
    private let logger: Logger
    private let onListening: @Sendable (String, Int) -> Void

    /// A node for `configuration`; `onListening` is told the address once the port is bound.
    public init(configuration: NodeConfiguration, logger: Logger, onListening: @escaping @Sendable (String, Int) -> Void = { _, _ in }) {
        self.configuration = configuration
        self.logger = logger
        self.onListening = onListening
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
            let identity = HandshakeIdentity(key: key, chainID: genesis.chainID)
            let (pushes, pushed) = AsyncStream.makeStream(of: PushedCheckpoint.self, bufferingPolicy: .bufferingNewest(64))
            let server = try await NetServer.start(
                host: config.listenHost, port: config.listenPort,
                identity: identity, service: HistoryService(store: store),
                configuration: config.net, group: group, logger: logger, pushes: config.peers.isEmpty ? nil : pushed)
            logger.info("serving", metadata: [
                "listen.address": "\(config.listenHost):\(server.port)", "peer.id": "\(key.publicKey)",
                "chain.id": "\(genesis.chainID.short)",
            ])
            onListening(config.listenHost, server.port)
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                if config.store.mode == .pruned { tasks.addTask { try await store.runPruning() } }
                let follower = config.peers.isEmpty ? nil : TipFollower(
                    store: store, genesis: genesis, seeds: config.peers, identity: identity, net: config.net, group: group,
                    configuration: config.sync, pollInterval: .seconds(config.pollSeconds), logger: logger, pushes: pushed,
                    forward: { server.broadcast(.pushCheckpoint, $0.bcsBytes) })
                if let follower {
                    tasks.addTask { try await follower.run() }
                    tasks.addTask { await follower.consume(pushes) }
                }
                // Serve until the service group asks for a graceful shutdown.
                try? await gracefulShutdown()
                tasks.cancelAll()
                pushed.finish()
                follower?.stop()
                try await tasks.waitForAll()
                await follower?.close()
            }
            logger.info("stopping: draining requests in flight", metadata: ["requests": "\(server.requestsInFlight)"])
            await server.shutdown(drain: .seconds(config.drainSeconds))
        } catch {
            try? await group.shutdownGracefully()
            await store.close()
            throw error
        }
        try? await group.shutdownGracefully()
        await store.close()
        logger.info("stopped; store closed")
    }
}
