import Foundation
import SomaCore
import SomaDiscovery
import SomaStore
import SomaArchive
import SomaGossip
import SomaNet
import Yams

/// Errors of the node's set-up: configuration, key and genesis files.
public struct NodeError: Error, CustomStringConvertible, Sendable {
    /// What went wrong, naming the file and the field.
    public let description: String

    /// Creates an error.
    public init(_ description: String) { self.description = description }
}

/// The YAML form of ``NodeConfiguration``: every key optional, unknown keys refused.
public enum NodeConfigurationFile {
    /// The commented default file that `soma-node init` writes.
    public static func defaultText() -> String {
        let d = NodeConfiguration(dataDirectory: ".")
        return """
            # soma-node configuration. Every key is optional; flags override the file.
            listen:
              host: \(d.listenHost)        # address to serve peers on
              port: \(d.listenPort)             # 0 picks a free port
            store:
              # mode: archive                  # archive keeps all history; pruned keeps retainEpochs (unset: the store's own mode; archive for a new store)
              retainEpochs: \(d.store.retainEpochs)         # epochs of blocks and object versions a pruned store keeps
              retainSnapshots: \(d.store.retainSnapshots)      # epoch snapshots kept (0: none)
              snapshotChunkObjects: \(d.store.snapshotChunkSize)  # objects per snapshot chunk (a power of two), each proven on its own
              blockCacheMiB: \(d.store.database.blockCacheBytes >> 20)       # RocksDB block cache
              syncWrites: \(d.store.syncWrites)        # fsync the write-ahead log on every commit
            net:
              tls: \(d.net.tls)                        # TLS 1.3 on every connection; false (plaintext) only for tests and loopback baselines
              maxFrameMiB: \(d.net.maxFrameBytes >> 20)          # largest frame accepted
              maxInFlightPerConnection: \(d.net.maxInFlightPerConnection)
              uploadBytesPerSecondPerPeer: \(d.net.uploadBytesPerSecondPerPeer ?? 0)   # per connection; 0: unlimited
              uploadBytesPerSecond: \(d.net.uploadBytesPerSecond ?? 0)         # whole node; 0: unlimited
            sync:
              peers: []                        # seed peers, HOST:PORT: dialled when the node has no connection
              window: \(d.sync.window)                       # block requests in flight over all peers
              timeoutSeconds: \(d.sync.requestTimeout.nanoseconds / 1_000_000_000)              # a request with no answer (or a stream with no item) this long is stalled
              pollSeconds: \(d.pollSeconds)                  # how often to ask peers for new checkpoints
              banSeconds: \(d.sync.banDuration.components.seconds)                 # how long a peer that sent bad data is avoided
              verifyAllCertificates: \(d.sync.verifyAllCertificates)     # check every certificate's signatures, not one per batch
            discovery:
              seeds: []                        # more seed peers (HOST:PORT), as sync.peers
              targetConnections: \(d.discovery.targetConnections)             # outbound connections to keep (the sources of sync)
              maxPeers: \(d.discovery.maxPeers)                 # records the persistent peer table holds
              exchangeSeconds: \(d.discovery.exchangeInterval.components.seconds)              # how often to exchange known peers and dial
              access: \(d.discovery.access)                   # private: never advertised; answers allowedPeers only
              role: auto                       # archive, full or validator (auto: from store.mode)
              advertise: []                    # HOST:PORT others dial; empty: the listen address
              allowedPeers: []                 # peer ids (hex) a private node answers
            http:
              listen: "\(d.http.listen ?? "")"      # HOST:PORT of the HTTP API, /metrics and the status page; empty: off
              readyWithin: \(d.http.readyWithin)                 # /health?ready answers 503 while more checkpoints than this behind the best known tip
              eventBuffer: \(d.http.eventBuffer)              # events held for one /v1/events client before it is dropped as too slow
            gossip:
              meshDegree: \(d.gossip.meshDegree)                    # eager peers a push tree starts with
              minimumEager: \(d.gossip.minimumEager)                  # a topic's tree keeps at least this many (an origin's tree: 1)
              lazyFanout: \(d.gossip.lazyFanout)                    # lazy peers a message is announced to, at most
              haveIntervalMs: \(d.gossip.haveInterval.milliseconds)              # how often announcements leave
              missingTimeoutMs: \(d.gossip.missingTimeout.milliseconds)            # an announced message not received this long is pulled
              seenTTLSeconds: \(d.gossip.seenTTL.components.seconds)              # how long a message id is remembered (longer than a message stays valid)
              retainMiB: \(d.gossip.retainBytes >> 20)                    # message bodies kept to answer pulls
              topics: []                       # more topics: [{name: NAME, class: consensus|checkpoints|bulk, maxMessageKiB: 1...4096}]
            archive:
              target: ""                       # continuous archiving: s3://BUCKET/PREFIX or a folder; empty: off
              endpoint: ""                     # S3 endpoint (default: AWS_ENDPOINT_URL); keys from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
              region: ""                       # default: AWS_REGION, then us-east-1
              intervalSeconds: \(d.archive.intervalSeconds)              # how often to look for newly closed segments
              snapshots: \(d.archive.snapshots)                  # also copy the store's epoch snapshots (new validators restore from them)
            drainSeconds: \(d.drainSeconds)            # on stop, wait this long for requests in flight
            logLevel: \(d.logLevel)
            logFormat: \(d.logFormat.rawValue)                  # text, or json (one JSON object a line)

            """
    }

    /// The document as plain values: mappings with string keys, sequences and scalars (Int,
    /// Bool, Double, String, NSNull by YAML's core schema), walked from Yams' node tree. Yams'
    /// own untyped loader traps on a mapping key that is not a scalar (`? {a: 1}: 2`); here that
    /// is an error naming the file, as are nesting deeper than 64 levels and more than 100,000
    /// values (aliases arrive resolved, so each use counts).
    static func plain(_ node: Yams.Node, _ source: String) throws -> Any {
        var budget = 100_000
        return try plain(node, source, depth: 0, budget: &budget)
    }

    /// One node; `budget` counts the nodes visited, so aliases expanded over and over (a
    /// "billion laughs" file) are refused instead of walked.
    private static func plain(_ node: Yams.Node, _ source: String, depth: Int, budget: inout Int) throws -> Any {
        guard depth < 64 else { throw NodeError("\(source): nested deeper than 64 levels") }
        budget -= 1
        guard budget >= 0 else { throw NodeError("\(source): more than 100000 values (aliases expanded)") }
        switch node {
        case .scalar:
            return node.any
        case .mapping(let mapping):
            var out: [String: Any] = [:]
            for (key, value) in mapping {
                guard case .scalar(let scalar) = key else {
                    throw NodeError("\(source): a mapping key must be a plain string (line \(key.mark.map { "\($0.line)" } ?? "?"))")
                }
                out[scalar.string] = try plain(value, source, depth: depth + 1, budget: &budget)
            }
            return out
        case .sequence(let sequence):
            var out: [Any] = []
            for item in sequence { out.append(try plain(item, source, depth: depth + 1, budget: &budget)) }
            return out
        case .alias:
            throw NodeError("\(source): YAML aliases are not supported")
        }
    }

    /// Reads `path` over the defaults for `dataDirectory`.
    /// - Throws: ``NodeError`` naming the key for a malformed file or value.
    public static func load(path: String, dataDirectory: String) throws -> NodeConfiguration {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw NodeError("cannot read \(path): \(fileProblem(path))")
        }
        return try parse(String(decoding: data, as: UTF8.self), dataDirectory: dataDirectory, source: path)
    }

    /// Parses YAML text over the defaults.
    public static func parse(_ text: String, dataDirectory: String, source: String = "configuration") throws -> NodeConfiguration {
        var config = NodeConfiguration(dataDirectory: dataDirectory)
        let node: Yams.Node?
        do { node = try Yams.compose(yaml: text) } catch { throw NodeError("\(source): not YAML: \(error)") }
        guard let node else { return config }
        let root = try plain(node, source)
        guard let top = root as? [String: Any] else { throw NodeError("\(source): the top level must be a mapping") }
        func section(_ name: String) throws -> [String: Any] {
            guard let v = top[name] else { return [:] }
            guard let m = v as? [String: Any] else { throw NodeError("\(source): '\(name)' must be a mapping") }
            return m
        }
        func int(_ m: [String: Any], _ key: String, _ path: String, range: ClosedRange<Int>) throws -> Int? {
            guard let v = m[key] else { return nil }
            guard let i = v as? Int, range.contains(i) else { throw NodeError("\(source): '\(path)' must be an integer in \(range)") }
            return i
        }
        try checkKeys(top, ["listen", "store", "net", "sync", "discovery", "http", "metrics", "gossip", "archive", "drainSeconds", "logLevel", "logFormat"], source, "")
        let listen = try section("listen")
        try checkKeys(listen, ["host", "port"], source, "listen.")
        if let h = listen["host"] {
            guard let s = h as? String, !s.isEmpty else { throw NodeError("\(source): 'listen.host' must be a string") }
            config.listenHost = s
        }
        if let p = try int(listen, "port", "listen.port", range: 0...65_535) { config.listenPort = p }
        let store = try section("store")
        try checkKeys(store, ["mode", "retainEpochs", "retainSnapshots", "snapshotChunkObjects", "blockCacheMiB", "syncWrites"], source, "store.")
        if let m = store["mode"] {
            guard let s = m as? String, let mode = StoreMode(rawValue: s) else { throw NodeError("\(source): 'store.mode' must be archive or pruned") }
            config.store.mode = mode
            config.store.adoptStoredMode = false
        }
        if let v = try int(store, "retainEpochs", "store.retainEpochs", range: 1...1_000_000) { config.store.retainEpochs = UInt64(v) }
        if let v = try int(store, "retainSnapshots", "store.retainSnapshots", range: 0...1_000) { config.store.retainSnapshots = UInt64(v) }
        if let v = try int(store, "snapshotChunkObjects", "store.snapshotChunkObjects", range: 64...65_536) {
            guard v & (v - 1) == 0 else { throw NodeError("\(source): 'store.snapshotChunkObjects' must be a power of two") }
            config.store.snapshotChunkSize = v
        }
        if let v = try int(store, "blockCacheMiB", "store.blockCacheMiB", range: 1...65_536) { config.store.database.blockCacheBytes = v << 20 }
        if let v = store["syncWrites"] {
            guard let b = v as? Bool else { throw NodeError("\(source): 'store.syncWrites' must be true or false") }
            config.store.syncWrites = b
        }
        let net = try section("net")
        try checkKeys(net, ["tls", "maxFrameMiB", "maxInFlightPerConnection", "uploadBytesPerSecondPerPeer", "uploadBytesPerSecond"], source, "net.")
        if let v = net["tls"] {
            guard let b = v as? Bool else { throw NodeError("\(source): 'net.tls' must be true or false") }
            config.net.tls = b
        }
        if let v = try int(net, "maxFrameMiB", "net.maxFrameMiB", range: 1...256) { config.net.maxFrameBytes = v << 20 }
        if let v = try int(net, "maxInFlightPerConnection", "net.maxInFlightPerConnection", range: 1...100_000) { config.net.maxInFlightPerConnection = v }
        if let v = try int(net, "uploadBytesPerSecondPerPeer", "net.uploadBytesPerSecondPerPeer", range: 0...Int(Int32.max)) {
            config.net.uploadBytesPerSecondPerPeer = v == 0 ? nil : v
        }
        if let v = try int(net, "uploadBytesPerSecond", "net.uploadBytesPerSecond", range: 0...Int(Int32.max)) {
            config.net.uploadBytesPerSecond = v == 0 ? nil : v
        }
        let sync = try section("sync")
        try checkKeys(sync, ["peers", "window", "timeoutSeconds", "pollSeconds", "banSeconds", "verifyAllCertificates", "prefetchSnapshot"], source, "sync.")
        if let v = sync["peers"] {
            guard let list = v as? [Any] else { throw NodeError("\(source): 'sync.peers' must be a list of HOST:PORT") }
            config.peers = try list.map { item in
                guard let s = item as? String, let colon = s.lastIndex(of: ":"), colon != s.startIndex,
                      let port = Int(s[s.index(after: colon)...]), (1...65_535).contains(port)
                else { throw NodeError("\(source): 'sync.peers' entries must be HOST:PORT, not \(item)") }
                return s
            }
        }
        if let v = try int(sync, "window", "sync.window", range: 1...256) { config.sync.window = v }
        if let v = try int(sync, "timeoutSeconds", "sync.timeoutSeconds", range: 1...3_600) { config.sync.requestTimeout = .seconds(Int64(v)) }
        if let v = try int(sync, "pollSeconds", "sync.pollSeconds", range: 1...3_600) { config.pollSeconds = v }
        if let v = try int(sync, "banSeconds", "sync.banSeconds", range: 1...86_400 * 30) { config.sync.banDuration = .seconds(v) }
        if let v = sync["verifyAllCertificates"] {
            guard let b = v as? Bool else { throw NodeError("\(source): 'sync.verifyAllCertificates' must be true or false") }
            config.sync.verifyAllCertificates = b
        }
        if let v = sync["prefetchSnapshot"] {
            guard let b = v as? Bool else { throw NodeError("\(source): 'sync.prefetchSnapshot' must be true or false") }
            config.sync.prefetchSnapshot = b
        }
        let discovery = try section("discovery")
        try checkKeys(discovery, ["seeds", "targetConnections", "maxPeers", "exchangeSeconds", "access", "role", "advertise", "allowedPeers"], source, "discovery.")
        func addresses(_ key: String) throws -> [String]? {
            guard let v = discovery[key] else { return nil }
            guard let list = v as? [Any] else { throw NodeError("\(source): 'discovery.\(key)' must be a list of HOST:PORT") }
            return try list.map { item in
                guard let s = item as? String, s.utf8.count <= NodeInfo.maxAddressBytes, NodeInfo.split(address: s) != nil else {
                    throw NodeError("\(source): 'discovery.\(key)' entries must be HOST:PORT, not \(item)")
                }
                return s
            }
        }
        if let seeds = try addresses("seeds") { config.discovery.seeds = seeds }
        if let advertise = try addresses("advertise") {
            guard advertise.count <= NodeInfo.maxAddresses else { throw NodeError("\(source): 'discovery.advertise' holds at most \(NodeInfo.maxAddresses) addresses") }
            config.discovery.advertise = advertise
        }
        if let v = try int(discovery, "targetConnections", "discovery.targetConnections", range: 1...1_000) { config.discovery.targetConnections = v }
        if let v = try int(discovery, "maxPeers", "discovery.maxPeers", range: 16...1_000_000) { config.discovery.maxPeers = v }
        if let v = try int(discovery, "exchangeSeconds", "discovery.exchangeSeconds", range: 1...3_600) { config.discovery.exchangeInterval = .seconds(v) }
        if let v = discovery["access"] {
            guard let s = v as? String, let a = Access.allCases.first(where: { $0.description == s }) else {
                throw NodeError("\(source): 'discovery.access' must be public or private")
            }
            config.discovery.access = a
        }
        if let v = discovery["role"] {
            guard let s = v as? String, s == "auto" || Role.allCases.contains(where: { $0.description == s }) else {
                throw NodeError("\(source): 'discovery.role' must be auto, archive, full or validator")
            }
            config.role = Role.allCases.first { $0.description == s }
        }
        if let v = discovery["allowedPeers"] {
            guard let list = v as? [Any] else { throw NodeError("\(source): 'discovery.allowedPeers' must be a list of peer ids") }
            config.discovery.allowedPeers = Set(try list.map { item in
                guard let s = item as? String, let bytes = HexCoding.decode(s), let id = PeerID(bytes: bytes) else {
                    throw NodeError("\(source): 'discovery.allowedPeers' entries must be 64 hex digits, not \(item)")
                }
                return id
            })
        }
        let http = try section("http")
        try checkKeys(http, ["listen", "readyWithin", "eventBuffer"], source, "http.")
        if let v = http["listen"] {
            guard let s = v as? String, s.isEmpty || HTTPConfiguration.split(s) != nil
            else { throw NodeError("\(source): 'http.listen' must be HOST:PORT (port 0...65535) or empty") }
            config.http.listen = s.isEmpty ? nil : s
        }
        // Files written before the HTTP API have `metrics.listen` (where /metrics was served;
        // empty: off). /metrics is now a route of the HTTP API: a non-empty value is read as
        // http.listen when the file names none; an empty one leaves the API at its default.
        let metrics = try section("metrics")
        try checkKeys(metrics, ["listen"], source, "metrics.")
        if let v = metrics["listen"] {
            guard let s = v as? String, s.isEmpty || HTTPConfiguration.split(s) != nil
            else { throw NodeError("\(source): 'metrics.listen' (now http.listen) must be HOST:PORT or empty") }
            if !s.isEmpty && http["listen"] == nil { config.http.listen = s }
        }
        if let v = try int(http, "readyWithin", "http.readyWithin", range: 0...1_000_000) { config.http.readyWithin = UInt64(v) }
        if let v = try int(http, "eventBuffer", "http.eventBuffer", range: 16...1_000_000) { config.http.eventBuffer = v }
        let archive = try section("archive")
        try checkKeys(archive, ["target", "endpoint", "region", "intervalSeconds", "snapshots"], source, "archive.")
        for key in ["target", "endpoint", "region"] {
            guard let v = archive[key] else { continue }
            guard let s = v as? String else { throw NodeError("\(source): 'archive.\(key)' must be a string") }
            let value: String? = s.isEmpty ? nil : s
            switch key {
            case "target":
                if let value { do { _ = try ArchiveLocation(value) } catch { throw NodeError("\(source): 'archive.target': \(error)") } }
                config.archive.target = value
            case "endpoint": config.archive.endpoint = value
            default: config.archive.region = value
            }
        }
        if let v = try int(archive, "intervalSeconds", "archive.intervalSeconds", range: 1...86_400) { config.archive.intervalSeconds = v }
        if let v = archive["snapshots"] {
            guard let b = v as? Bool else { throw NodeError("\(source): 'archive.snapshots' must be true or false") }
            config.archive.snapshots = b
        }
        let gossip = try section("gossip")
        try checkKeys(gossip, ["meshDegree", "minimumEager", "lazyFanout", "haveIntervalMs", "missingTimeoutMs", "seenTTLSeconds", "retainMiB", "topics"], source, "gossip.")
        if let v = try int(gossip, "meshDegree", "gossip.meshDegree", range: 0...64) { config.gossip.meshDegree = v }
        if let v = try int(gossip, "minimumEager", "gossip.minimumEager", range: 0...64) { config.gossip.minimumEager = v }
        if let v = try int(gossip, "lazyFanout", "gossip.lazyFanout", range: 0...64) { config.gossip.lazyFanout = v }
        if let v = try int(gossip, "haveIntervalMs", "gossip.haveIntervalMs", range: 1...10_000) { config.gossip.haveInterval = .milliseconds(v) }
        if let v = try int(gossip, "missingTimeoutMs", "gossip.missingTimeoutMs", range: 1...60_000) { config.gossip.missingTimeout = .milliseconds(v) }
        if let v = try int(gossip, "seenTTLSeconds", "gossip.seenTTLSeconds", range: 1...86_400) { config.gossip.seenTTL = .seconds(v) }
        if let v = try int(gossip, "retainMiB", "gossip.retainMiB", range: 1...65_536) { config.gossip.retainBytes = v << 20 }
        if let v = gossip["topics"] {
            guard let list = v as? [Any], list.count <= 256 else { throw NodeError("\(source): 'gossip.topics' must be a list of at most 256 topics") }
            var names = Set<String>()
            for item in list {
                guard let t = item as? [String: Any] else { throw NodeError("\(source): each of 'gossip.topics' must be a mapping {name, class, maxMessageKiB}") }
                try checkKeys(t, ["name", "class", "maxMessageKiB"], source, "gossip.topics.")
                guard let name = t["name"] as? String, !name.isEmpty, name.utf8.count <= GossipLimits.maxTopicBytes, !name.hasPrefix("consensus.") else {
                    throw NodeError("\(source): 'gossip.topics.name' must be 1...64 UTF-8 bytes, not under consensus. (the relay's topics)")
                }
                guard names.insert(name).inserted else { throw NodeError("\(source): 'gossip.topics.name' \(name) is listed twice") }
                var priority = Priority.bulk
                if let c = t["class"] {
                    guard let s = c as? String, let p = Priority.allCases.first(where: { $0.description == s }) else {
                        throw NodeError("\(source): 'gossip.topics.class' must be consensus, checkpoints or bulk")
                    }
                    priority = p
                }
                let kib = try int(t, "maxMessageKiB", "gossip.topics.maxMessageKiB", range: 1...(GossipLimits.maxMessageBytes >> 10)) ?? 1_024
                config.gossipTopics.append(GossipTopic(name: name, priority: priority, maxMessageBytes: kib << 10))
            }
        }
        if let v = try int(top, "drainSeconds", "drainSeconds", range: 0...3_600) { config.drainSeconds = v }
        if let v = top["logLevel"] {
            guard let s = v as? String, ["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(s) else {
                throw NodeError("\(source): 'logLevel' must be one of trace, debug, info, notice, warning, error, critical")
            }
            config.logLevel = s
        }
        if let v = top["logFormat"] {
            guard let s = v as? String, let f = LogFormat(rawValue: s) else { throw NodeError("\(source): 'logFormat' must be text or json") }
            config.logFormat = f
        }
        return config
    }

    private static func checkKeys(_ m: [String: Any], _ known: Set<String>, _ source: String, _ prefix: String) throws {
        if let unknown = m.keys.sorted().first(where: { !known.contains($0) }) {
            throw NodeError("\(source): unknown key '\(prefix)\(unknown)'")
        }
    }
}

extension Duration {
    /// Whole milliseconds.
    var milliseconds: Int64 { components.seconds * 1_000 + components.attoseconds / 1_000_000_000_000_000 }
}
