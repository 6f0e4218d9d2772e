import Foundation
public import Logging
import NIOPosix
import SomaCore
import SomaNet
import SomaStore
public import ServiceLifecycle

/// The running node: opens the store, serves history to peers, prunes in the background
/// (pruned mode), and on a graceful shutdown stops accepting, lets requests in flight finish,
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
            let server = try await NetServer.start(
                host: config.listenHost, port: config.listenPort,
                identity: HandshakeIdentity(key: key, chainID: genesis.chainID), service: HistoryService(store: store),
                configuration: config.net, group: group, logger: logger)
            logger.info("serving", metadata: [
                "listen.address": "\(config.listenHost):\(server.port)", "peer.id": "\(key.publicKey)",
                "chain.id": "\(genesis.chainID.short)",
            ])
            onListening(config.listenHost, server.port)
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                if config.store.mode == .pruned { tasks.addTask { try await store.runPruning() } }
                // Serve until the service group asks for a graceful shutdown.
                try? await gracefulShutdown()
                tasks.cancelAll()
                try await tasks.waitForAll()
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
