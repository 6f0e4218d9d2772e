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
                throw CLIError("cannot write \(config.configPath): \(fileProblem(config.configPath, writing: true))")
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
    @Option(help: "Address to serve peers on, HOST:PORT (port 0: any free port).")
    var listen: String?
    @Option(help: "A peer to sync from and follow, HOST:PORT (repeat for several; replaces sync.peers of the file).")
    var peer: [String] = []
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String?
    @Option(help: "Log lines as text or json (one JSON object a line).")
    var logFormat: String?
    @Option(help: "Serve the HTTP API, /metrics and the status page on HOST:PORT (replaces http.listen of the file; `off`: not served).")
    var http: String?
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
            guard let (host, port) = HTTPConfiguration.split(listen) else { throw ValidationError("--listen takes HOST:PORT (port 0...65535), not \(listen)") }
            configuration.listenHost = host
            configuration.listenPort = port
        }
        if let logLevel {
            guard Logger.Level(rawValue: logLevel) != nil else {
                throw ValidationError("--log-level takes trace, debug, info, notice, warning, error or critical, not \(logLevel)")
            }
            configuration.logLevel = logLevel
        }
        if let logFormat {
            guard let f = LogFormat(rawValue: logFormat) else { throw ValidationError("--log-format takes text or json, not \(logFormat)") }
            configuration.logFormat = f
        }
        if plaintext { configuration.net.tls = false }
        if let http {
            if http == "off" {
                configuration.http.listen = nil
            } else {
                guard HTTPConfiguration.split(http) != nil else { throw ValidationError("--http takes HOST:PORT (port 0...65535) or off, not \(http)") }
                configuration.http.listen = http
            }
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
        bootstrapLogging(level: configuration.logLevel, format: configuration.logFormat)
        let logger = Logger(label: "soma-node")
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(NodeMetricsFactory(registry: registry))
        var builder = NodeBuilder(configuration: configuration, logger: logger, metrics: registry)
        builder.producer = producer
        builder.onListening = { endpoint, host, port in
            // One plain line on stdout each for scripts and tests that start the node on port 0.
            let line = endpoint == .peers ? "listening on \(host):\(port)\n" : "http on \(host):\(port)\n"
            FileHandle.standardOutput.write(Data(line.utf8))
        }
        let node = try await builder.build()
        try await node.run()
    }
}

/// Sets up swift-log for the process: text lines or JSON lines on standard error.
func bootstrapLogging(level: String, format: LogFormat) {
    let level = Logger.Level(rawValue: level) ?? .info
    LoggingSystem.bootstrap { label in
        switch format {
        case .text:
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        case .json:
            var handler = JSONLogHandler(label: label)
            handler.logLevel = level
            return handler
        }
    }
}
