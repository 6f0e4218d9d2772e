import NIOCore
public import SomaDiscovery
public import SomaGossip
public import SomaNet
public import SomaStore
public import SomaSync

/// Everything a running node is configured with; every field has a default. The YAML file and
/// the command-line flags map onto it (``NodeConfigurationFile``); nothing else reads them.
public struct NodeConfiguration: Sendable {
    /// The data directory: `genesis.bcs`, `node.key`, `db/`.
    public var dataDirectory: String
    /// Address to serve peers on.
    public var listenHost = "0.0.0.0"
    /// Port to serve peers on (0: any free port).
    public var listenPort = 9_100
    /// The store.
    public var store = StoreConfiguration()
    /// The transport.
    public var net = NetConfiguration()
    /// Seed peers (`HOST:PORT`), dialled when the node has no connection; discovery finds the
    /// rest (with `discovery.seeds`).
    public var peers: [String] = []
    /// Discovery's tunables (its seeds are joined with ``peers``).
    public var discovery = DiscoveryConfiguration()
    /// The role this node advertises (`nil`: archive for an archive store, full otherwise).
    public var role: Role? = nil
    /// The sync pipeline's tunables.
    public var sync = SyncConfiguration()
    /// How often a following node polls its peers for new checkpoints (pushes wake it sooner).
    public var pollSeconds = 2
    /// How long a stop waits for requests in flight before closing connections.
    public var drainSeconds = 5
    /// Whether the node serves its history to peers (`listenHost:listenPort`); `sync` does not.
    public var serve = true
    /// The HTTP API (status, reads with proofs, events, metrics, the status page).
    public var http = HTTPConfiguration()
    /// Log level name (trace, debug, info, notice, warning, error, critical).
    public var logLevel = "info"
    /// Log lines as text or as JSON objects, one a line.
    public var logFormat = LogFormat.text
    /// Continuous archiving (`archive.*`): where and how often.
    public var archive = ArchiveConfiguration()
    /// Message propagation's tunables (tree, announcements, seen-cache).
    public var gossip = GossipConfiguration()
    /// Topics carried besides the consensus relay's (a publisher's own messages, over the HTTP
    /// API or in process).
    public var gossipTopics: [GossipTopic] = []

    /// Defaults for a data directory.
    public init(dataDirectory: String) {
        self.dataDirectory = dataDirectory
        // A node opens its store in the store's own mode unless the file or a flag names one.
        store.adoptStoredMode = true
    }

    /// `DIR/genesis.bcs`.
    public var genesisPath: String { dataDirectory + "/genesis.bcs" }
    /// `DIR/node.key`.
    public var keyPath: String { dataDirectory + "/node.key" }
    /// `DIR/db`.
    public var databasePath: String { dataDirectory + "/db" }
    /// `DIR/soma-node.yaml`.
    public var configPath: String { dataDirectory + "/soma-node.yaml" }
}

/// How log lines are written.
public enum LogFormat: String, Sendable, CaseIterable {
    /// `2026-12-05T07:00:00+0000 info soma-node : key=value message`, swift-log's text lines.
    case text
    /// One JSON object a line: `timestamp`, `level`, `label`, `message`, `metadata`, `source`.
    case json
}

/// The HTTP API's settings (DESIGN §13).
public struct HTTPConfiguration: Sendable {
    /// `HOST:PORT` to serve the API on (port 0: any free port); `nil`: not served.
    public var listen: String? = "127.0.0.1:9184"
    /// A node is ready (`/health?ready`) while it is at most this many checkpoints behind the
    /// best tip it knows of.
    public var readyWithin: UInt64 = 10
    /// Events held for one `/v1/events` client before it is dropped as too slow.
    public var eventBuffer = 4_096
    /// Most checkpoints, transactions or objects one request may ask for.
    public var maxBatch = 100

    /// The defaults.
    public init() {}

    /// `listen` split into host and port, if it is a valid `HOST:PORT`.
    public var address: (host: String, port: Int)? {
        guard let listen else { return nil }
        return HTTPConfiguration.split(listen)
    }

    /// `HOST:PORT` (IPv6 hosts in brackets or bare) split, the port in 0...65535.
    public static func split(_ address: String) -> (host: String, port: Int)? {
        guard let colon = address.lastIndex(of: ":"), colon != address.startIndex,
              let port = Int(address[address.index(after: colon)...]), (0...65_535).contains(port)
        else { return nil }
        var host = String(address[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { return nil }
        return (host, port)
    }
}

/// A topic an operator adds (`gossip.topics` in the configuration file).
public struct GossipTopic: Sendable, Equatable {
    /// Its name: 1...64 UTF-8 bytes, not under `consensus.` (the relay's).
    public var name: String
    /// The class its frames travel in.
    public var priority: Priority
    /// The largest payload, decompressed.
    public var maxMessageBytes: Int

    /// A topic.
    public init(name: String, priority: Priority, maxMessageBytes: Int) {
        self.name = name
        self.priority = priority
        self.maxMessageBytes = maxMessageBytes
    }

    /// Its options: class and size; no validation (its payloads are opaque to the node).
    public var options: TopicOptions {
        var o = TopicOptions()
        o.priority = priority
        o.maxMessageBytes = maxMessageBytes
        return o
    }
}

/// Continuous archiving by a running node (DESIGN §11): each closed history segment is copied
/// to the archive, the manifest replaced after each; resumable (what the archive lists is not
/// written again).
public struct ArchiveConfiguration: Sendable {
    /// Where: `s3://BUCKET/PREFIX` or a folder; nil: no archiving.
    public var target: String? = nil
    /// The S3 endpoint (default: `AWS_ENDPOINT_URL_S3`, then `AWS_ENDPOINT_URL`).
    public var endpoint: String? = nil
    /// The S3 region (default: `AWS_REGION`, then `AWS_DEFAULT_REGION`, then us-east-1).
    public var region: String? = nil
    /// How often the node looks for newly closed segments.
    public var intervalSeconds = 60
    /// Also copy the store's epoch snapshots the archive lacks (a new validator can then
    /// restore from the archive); each is the epoch's whole live set.
    public var snapshots = true

    /// No archiving.
    public init() {}
}
