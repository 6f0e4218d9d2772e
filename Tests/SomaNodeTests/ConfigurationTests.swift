import SomaNode
import SomaStore
import Testing

@Suite("Node configuration file")
struct ConfigurationTests {
    @Test("the default file parses to the defaults; every key overrides")
    func defaults() throws {
        let parsed = try NodeConfigurationFile.parse(NodeConfigurationFile.defaultText(), dataDirectory: "/d")
        let defaults = NodeConfiguration(dataDirectory: "/d")
        #expect(parsed.listenHost == defaults.listenHost && parsed.listenPort == defaults.listenPort)
        #expect(parsed.store.mode == defaults.store.mode && parsed.store.retainEpochs == defaults.store.retainEpochs)
        #expect(parsed.net.maxFrameBytes == defaults.net.maxFrameBytes && parsed.net.uploadBytesPerSecond == nil)
        let custom = try NodeConfigurationFile.parse("""
            listen: {host: 127.0.0.1, port: 0}
            store: {mode: pruned, retainEpochs: 3, retainSnapshots: 0, blockCacheMiB: 8, syncWrites: true}
            net: {maxFrameMiB: 4, maxInFlightPerConnection: 8, uploadBytesPerSecondPerPeer: 1000, uploadBytesPerSecond: 5000}
            drainSeconds: 1
            logLevel: debug
            """, dataDirectory: "/d")
        #expect(custom.listenHost == "127.0.0.1" && custom.listenPort == 0)
        #expect(custom.store.mode == .pruned && custom.store.retainEpochs == 3 && custom.store.retainSnapshots == 0)
        #expect(custom.store.database.blockCacheBytes == 8 << 20 && custom.store.syncWrites)
        #expect(custom.net.maxFrameBytes == 4 << 20 && custom.net.maxInFlightPerConnection == 8)
        #expect(custom.net.uploadBytesPerSecondPerPeer == 1000 && custom.net.uploadBytesPerSecond == 5000)
        #expect(custom.drainSeconds == 1 && custom.logLevel == "debug")
        #expect(try NodeConfigurationFile.parse("", dataDirectory: "/d").listenPort == defaults.listenPort)
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
        ("store: [1, 2", "YAML"),
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
