import ArgumentParser
import Foundation
import Logging
import Metrics
import Prometheus
import ServiceLifecycle
import SomaNode

struct Init: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create a node's data directory: a commented default soma-node.yaml and a node key.")

    @Option(help: "The node's data directory.")
    var data: String

    func run() async throws {
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        let config = NodeConfiguration(dataDirectory: data)
        if FileManager.default.fileExists(atPath: config.configPath) {
            print("kept \(config.configPath)")
        } else {
            guard FileManager.default.createFile(atPath: config.configPath, contents: Data(NodeConfigurationFile.defaultText().utf8)) else {
                throw CLIError("cannot write \(config.configPath)")
            }
            print("wrote \(config.configPath)")
        }
        if FileManager.default.fileExists(atPath: config.keyPath) {
            let key = try NodeKey.load(from: config.keyPath)
            print("kept \(config.keyPath): peer id \(key.publicKey)")
        } else {
            let key = try NodeKey.create(at: config.keyPath)
            print("wrote \(config.keyPath): peer id \(key.publicKey)")
        }
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve the store's history to peers, sync from and follow the configured peers, until SIGINT or SIGTERM.",
        discussion: """
            With peers (--peer or sync.peers), the node catches up from them and then follows the \
            tip: it polls them, reacts to checkpoints they push, and forwards each new tip. Reads DIR/soma-node.yaml if present (see `soma-node init`), then the flags. On SIGINT or \
            SIGTERM it stops accepting connections, lets requests in flight finish (drainSeconds), \
            closes connections and closes the store last.
            """)

    @OptionGroup var options: NodeRunOptions

    func run() async throws {
        try await options.serve()
    }
}

/// The options of a running node (`run`, `devnet run`): the data directory, the configuration
/// file, and the flags that override it.
struct NodeRunOptions: ParsableArguments {
    @Option(help: "The node's data directory.")
    var data: String
    @Option(help: "A configuration file (default: DIR/soma-node.yaml when it exists).")
    var config: String?
    @Option(help: "Address to listen on, HOST:PORT (port 0: any free port).")
    var listen: String?
    @Option(help: "A peer to sync from and follow, HOST:PORT (repeat for several; replaces sync.peers of the file).")
    var peer: [String] = []
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String?
    @Option(help: "Serve Prometheus metrics (GET /metrics) on HOST:PORT (replaces metrics.listen of the file).")
    var metrics: String?
    @Flag(help: "Speak plaintext instead of TLS 1.3 (replaces net.tls of the file; for tests and loopback baselines only).")
    var plaintext = false

    /// The configuration file (if any) with the flags over it.
    func configuration() throws -> NodeConfiguration {
        var configuration = NodeConfiguration(dataDirectory: data)
        let file = config ?? configuration.configPath
        if config != nil || FileManager.default.fileExists(atPath: file) {
            configuration = try NodeConfigurationFile.load(path: file, dataDirectory: data)
        }
        if let listen {
            guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]),
                  (0...65_535).contains(port), colon != listen.startIndex
            else { throw ValidationError("--listen takes HOST:PORT") }
            configuration.listenHost = String(listen[..<colon])
            configuration.listenPort = port
        }
        if let logLevel { configuration.logLevel = logLevel }
        if plaintext { configuration.net.tls = false }
        if let metrics {
            guard let colon = metrics.lastIndex(of: ":"), colon != metrics.startIndex,
                  let port = Int(metrics[metrics.index(after: colon)...]), (0...65_535).contains(port)
            else { throw ValidationError("--metrics takes HOST:PORT") }
            configuration.metricsListen = metrics
        }
        if !peer.isEmpty {
            for p in peer {
                guard let colon = p.lastIndex(of: ":"), let port = Int(p[p.index(after: colon)...]), (1...65_535).contains(port),
                      colon != p.startIndex
                else { throw ValidationError("--peer takes HOST:PORT, not \(p)") }
            }
            configuration.peers = peer
        }
        return configuration
    }

    /// Runs the node (with `producer`, a devnet that grows its chain) until SIGTERM or SIGINT.
    func serve(producer: (any CheckpointProducer)? = nil) async throws {
        let configuration = try configuration()
        let level = Logger.Level(rawValue: configuration.logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "soma-node")
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let node = NodeService(configuration: configuration, logger: logger, metrics: registry, producer: producer, onListening: { host, port in
            // One plain line on stdout for scripts and tests that start the node on port 0.
            FileHandle.standardOutput.write(Data("listening on \(host):\(port)\n".utf8))
        }, onMetrics: { port in
            FileHandle.standardOutput.write(Data("metrics on port \(port)\n".utf8))
        })
        let group = ServiceGroup(configuration: .init(
            services: [node], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}
