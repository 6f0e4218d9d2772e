import NIOCore
public import SomaDiscovery
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
    /// Where to serve Prometheus metrics (`GET /metrics`), `HOST:PORT`; `nil`: not served.
    public var metricsListen: String? = nil
    /// Log level name (trace, debug, info, notice, warning, error, critical).
    public var logLevel = "info"

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
