import SomaDiscovery
import SomaNode
import SomaStore
import SomaGossip
import Testing

@Suite("Node configuration file")
struct ConfigurationTests {
    @Test("the default file parses to the defaults; every key overrides")
    func defaults() throws {
        let parsed = try NodeConfigurationFile.parse(NodeConfigurationFile.defaultText(), dataDirectory: "/d")
        let defaults = NodeConfiguration(dataDirectory: "/d")
        #expect(parsed.listenHost == defaults.listenHost && parsed.listenPort == defaults.listenPort)
        #expect(parsed.store.mode == defaults.store.mode && parsed.store.retainEpochs == defaults.store.retainEpochs)
        #expect(parsed.net.maxFrameBytes == defaults.net.maxFrameBytes && parsed.net.uploadBytesPerSecond == defaults.net.uploadBytesPerSecond)
        #expect(parsed.net.tls && parsed.net.uploadBytesPerSecondPerPeer == 64 << 20 && parsed.net.uploadBytesPerSecond == 256 << 20)
        let custom = try NodeConfigurationFile.parse("""
            listen: {host: 127.0.0.1, port: 0}
            store: {mode: pruned, retainEpochs: 3, retainSnapshots: 0, blockCacheMiB: 8, syncWrites: true}
            net: {tls: false, maxFrameMiB: 4, maxInFlightPerConnection: 8, uploadBytesPerSecondPerPeer: 1000, uploadBytesPerSecond: 5000}
            drainSeconds: 1
            logLevel: debug
            """, dataDirectory: "/d")
        #expect(custom.listenHost == "127.0.0.1" && custom.listenPort == 0)
        #expect(custom.store.mode == .pruned && custom.store.retainEpochs == 3 && custom.store.retainSnapshots == 0)
        #expect(custom.store.database.blockCacheBytes == 8 << 20 && custom.store.syncWrites)
        #expect(custom.net.maxFrameBytes == 4 << 20 && custom.net.maxInFlightPerConnection == 8)
        #expect(custom.net.uploadBytesPerSecondPerPeer == 1000 && custom.net.uploadBytesPerSecond == 5000 && !custom.net.tls)
        #expect(custom.drainSeconds == 1 && custom.logLevel == "debug")
        #expect(try NodeConfigurationFile.parse("", dataDirectory: "/d").listenPort == defaults.listenPort)
        #expect(parsed.discovery.targetConnections == defaults.discovery.targetConnections && parsed.role == nil)
        let id = String(repeating: "ab", count: 32)
        let discovery = try NodeConfigurationFile.parse("""
            sync: {peers: ["10.0.0.1:9100"]}
            discovery: {seeds: ["seed.example:9100", "[::1]:9100"], targetConnections: 5, maxPeers: 200, exchangeSeconds: 3,
                        access: private, role: validator, advertise: ["203.0.113.7:9100"], allowedPeers: ["\(id)"]}
            """, dataDirectory: "/d")
        #expect(discovery.peers == ["10.0.0.1:9100"] && discovery.discovery.seeds == ["seed.example:9100", "[::1]:9100"])
        #expect(discovery.discovery.targetConnections == 5 && discovery.discovery.maxPeers == 200)
        #expect(discovery.discovery.exchangeInterval == .seconds(3) && discovery.discovery.access == .private)
        #expect(discovery.role == .validator && discovery.discovery.advertise == ["203.0.113.7:9100"])
        #expect(discovery.discovery.allowedPeers.map(\.raw.hex) == [id])
        // The HTTP API and logs.
        #expect(parsed.http.listen == "127.0.0.1:9184" && parsed.http.readyWithin == 10 && parsed.logFormat == .text)
        let http = try NodeConfigurationFile.parse(
            "http: {listen: \"[::1]:0\", readyWithin: 3, eventBuffer: 64}\nlogFormat: json\n", dataDirectory: "/d")
        #expect(http.http.address?.host == "::1" && http.http.address?.port == 0 && http.http.readyWithin == 3)
        #expect(http.http.eventBuffer == 64 && http.logFormat == .json)
        #expect(try NodeConfigurationFile.parse("http: {listen: \"\"}", dataDirectory: "/d").http.listen == nil)
        // A file written before the HTTP API: metrics.listen is where /metrics (now a route of
        // the API) was served; empty leaves the API at its default.
        #expect(try NodeConfigurationFile.parse("metrics: {listen: \"\"}", dataDirectory: "/d").http.listen == "127.0.0.1:9184")
        #expect(try NodeConfigurationFile.parse("metrics: {listen: \"0.0.0.0:9300\"}", dataDirectory: "/d").http.listen == "0.0.0.0:9300")
        #expect(try NodeConfigurationFile.parse(
            "metrics: {listen: \"0.0.0.0:9300\"}\nhttp: {listen: \"127.0.0.1:1\"}", dataDirectory: "/d").http.listen == "127.0.0.1:1")
        // Gossip: the router's tunables and the operator's own topics.
        let g = GossipConfiguration()
        #expect(parsed.gossip.meshDegree == g.meshDegree && parsed.gossip.minimumEager == g.minimumEager && parsed.gossip.lazyFanout == g.lazyFanout)
        #expect(parsed.gossip.haveInterval == g.haveInterval && parsed.gossip.missingTimeout == g.missingTimeout)
        #expect(parsed.gossip.seenTTL == g.seenTTL && parsed.gossip.retainBytes == g.retainBytes && parsed.gossipTopics.isEmpty)
        let gossip = try NodeConfigurationFile.parse("""
            gossip:
              meshDegree: 5
              minimumEager: 1
              lazyFanout: 2
              haveIntervalMs: 40
              missingTimeoutMs: 300
              seenTTLSeconds: 600
              retainMiB: 16
              topics: [{name: blocks.hints, class: checkpoints, maxMessageKiB: 64}, {name: misc}]
            """, dataDirectory: "/d")
        #expect(gossip.gossip.meshDegree == 5 && gossip.gossip.minimumEager == 1 && gossip.gossip.lazyFanout == 2)
        #expect(gossip.gossip.haveInterval == .milliseconds(40) && gossip.gossip.missingTimeout == .milliseconds(300))
        #expect(gossip.gossip.seenTTL == .seconds(600) && gossip.gossip.retainBytes == 16 << 20)
        // Continuous archiving.
        #expect(parsed.archive.target == nil && parsed.archive.intervalSeconds == 60 && parsed.archive.snapshots)
        let archive = try NodeConfigurationFile.parse(
            "archive: {target: \"s3://soma-archive/main\", endpoint: \"http://127.0.0.1:8333\", region: eu-west-1, intervalSeconds: 5, snapshots: false}", dataDirectory: "/d")
        #expect(!archive.archive.snapshots)
        #expect(parsed.sync.prefetchSnapshot)
        #expect(try NodeConfigurationFile.parse("sync: {prefetchSnapshot: false}", dataDirectory: "/d").sync.prefetchSnapshot == false)
        #expect(archive.archive.target == "s3://soma-archive/main" && archive.archive.endpoint == "http://127.0.0.1:8333")
        #expect(archive.archive.region == "eu-west-1" && archive.archive.intervalSeconds == 5)
        #expect(gossip.gossipTopics == [
            GossipTopic(name: "blocks.hints", priority: .checkpoints, maxMessageBytes: 64 << 10),
            GossipTopic(name: "misc", priority: .bulk, maxMessageBytes: 1 << 20),
        ])
    }

    @Test("bad files are refused with the key named", arguments: [
        ("listen: {port: 70000}", "listen.port"),
        ("store: {mode: everything}", "store.mode"),
        ("store: {retainEpochs: 0}", "store.retainEpochs"),
        ("net: {maxFrameMiB: big}", "net.maxFrameMiB"),
        ("colour: blue", "colour"),
        ("store: {colour: blue}", "store.colour"),
        ("listen: 5", "listen"),
        ("- a\n- b", "top level"),
        ("logLevel: loud", "logLevel"),
        ("logFormat: xml", "logFormat"),
        ("http: {listen: nowhere}", "http.listen"),
        ("http: {listen: \"a:70000\"}", "http.listen"),
        ("http: {readyWithin: -1}", "http.readyWithin"),
        ("http: {eventBuffer: 1}", "http.eventBuffer"),
        ("http: {colour: blue}", "http.colour"),
        ("metrics: {listen: 9}", "metrics.listen"),
        ("store: [1, 2", "YAML"),
        ("discovery: {seeds: [nowhere]}", "discovery.seeds"),
        ("discovery: {access: secret}", "discovery.access"),
        ("discovery: {role: king}", "discovery.role"),
        ("discovery: {allowedPeers: [abc]}", "discovery.allowedPeers"),
        ("discovery: {targetConnections: 0}", "discovery.targetConnections"),
        ("archive: {target: \"https://example.com/x\"}", "archive.target"),
        ("archive: {intervalSeconds: 0}", "archive.intervalSeconds"),
        ("archive: {region: 5}", "archive.region"),
        ("archive: {snapshots: sometimes}", "archive.snapshots"),
        ("sync: {prefetchSnapshot: maybe}", "sync.prefetchSnapshot"),
        ("archive: {bucket: b}", "archive.bucket"),
        ("gossip: {meshDegree: 65}", "gossip.meshDegree"),
        ("gossip: {haveIntervalMs: 0}", "gossip.haveIntervalMs"),
        ("gossip: {colour: blue}", "gossip.colour"),
        ("gossip: {topics: {name: a}}", "gossip.topics"),
        ("gossip: {topics: [{name: consensus.votes}]}", "gossip.topics.name"),
        ("gossip: {topics: [{name: a}, {name: a}]}", "gossip.topics.name"),
        ("gossip: {topics: [{name: a, class: urgent}]}", "gossip.topics.class"),
        ("gossip: {topics: [{name: a, maxMessageKiB: 8192}]}", "gossip.topics.maxMessageKiB"),
        ("gossip: {topics: [{name: a, colour: blue}]}", "gossip.topics.colour"),
        ("discovery: {advertise: [\"a:1\", \"a:2\", \"a:3\", \"a:4\", \"a:5\", \"a:6\", \"a:7\", \"a:8\", \"a:9\"]}", "discovery.advertise"),
        // Fuzz finding (config): a mapping key that is itself a mapping trapped in Yams' untyped loader.
        ("net:\n  tls: true\n? uploadBytesPerSecond: 1000\n", "a mapping key must be a plain string"),
        ("store:\n  ? [1, 2]\n  : 3\n", "a mapping key must be a plain string"),
        ("store: &x {mode: archive}\nnet: *x\n", "net.mode"),
        (String(repeating: "[", count: 80) + String(repeating: "]", count: 80), "nested deeper"),
        ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
            + "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n", "more than 100000 values"),
    ])
    func badFiles(text: String, named: String) {
        do {
            _ = try NodeConfigurationFile.parse(text, dataDirectory: "/d")
            Issue.record("accepted \(text)")
        } catch let e as NodeError {
            #expect(e.description.contains(named), "\(e)")
        } catch {
            Issue.record("\(error)")
        }
    }
}
