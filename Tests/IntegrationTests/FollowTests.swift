import Foundation
import Logging
import NIOPosix
import SomaCore
import SomaDevnet
import SomaNet
import SomaNode
import SomaStore
import SomaTestSupport
import Testing

@Suite("soma-node run follows the tip", .serialized)
struct FollowTests {
    @Test("a node syncs from its peer, then follows pushed checkpoints and forwards them: a node that only knows the follower gets them too, without polling")
    func followAndForward() async throws {
        let base = TempDir("follow")
        defer { base.cleanup() }
        let profile = DevnetProfile(name: "follow", validators: 4, epochs: 4, checkpoints: 400, transactionsPerCheckpoint: 10, accounts: 32)
        let generator = ChainGenerator(profile: profile, seed: 33)
        let chain = await generator.generateAll(parallelism: 2)
        let genesis = generator.genesis
        // The source: a serving node built as `soma-node run` builds one (NodeBuilder), whose
        // store the test grows while the others follow it.
        let sourceDir = base.file("source")
        try FileManager.default.createDirectory(atPath: sourceDir, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: sourceDir + "/genesis.bcs", contents: Data(genesis.bcsBytes))
        _ = try NodeKey.create(at: sourceDir + "/node.key")
        var config = NodeConfiguration(dataDirectory: sourceDir)
        config.listenHost = "127.0.0.1"
        config.listenPort = 0
        config.http.listen = nil
        var logger = Logger(label: "follow-source")
        logger.logLevel = .warning
        let source = try await NodeBuilder(configuration: config, logger: logger).build()
        let running = Task { try await source.run(signals: []) }
        let store = source.store
        try await store.commit(chain[..<150].map(\.verified))
        let sourcePort = try #require(source.server?.port)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        // Polling every hour: only pushes can wake the followers.
        var followers: [RunningNode] = []
        defer { followers.forEach { $0.stop() } }
        var upstream = "127.0.0.1:\(sourcePort)"
        for name in ["f", "g"] {
            let dir = base.file(name)
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            FileManager.default.createFile(atPath: dir + "/genesis.bcs", contents: Data(genesis.bcsBytes))
            #expect(try somaNode(["init", "--data", dir]).0 == 0)
            try "sync:\n  pollSeconds: 3600\n".write(toFile: dir + "/soma-node.yaml", atomically: true, encoding: .utf8)
            let node = try RunningNode(data: dir, arguments: ["--peer", upstream])
            followers.append(node)
            upstream = node.address
        }
        let clients = try await followers.asyncMap { node in
            let colon = node.address.lastIndex(of: ":")!
            return try await PeerClient.connect(
                host: "127.0.0.1", port: Int(node.address[node.address.index(after: colon)...])!,
                identity: HandshakeIdentity(key: SigningKey.generate(), chainID: genesis.chainID), group: group)
        }
        func waitFor(_ seq: UInt64) async throws -> [UInt64] {
            var heights: [UInt64] = []
            for _ in 0..<600 {
                heights = []
                for c in clients { heights.append((try? await c.availability().highestSynced) ?? 0) }
                if heights.allSatisfy({ $0 >= seq }) { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            return heights
        }
        // Both catch up: f from the source, g from f (f forwards its new tip to g).
        let caughtUp = try await waitFor(150)
        #expect(caughtUp == [150, 150])
        // The chain grows; the source pushes its new tip to f only.
        try await store.commit(chain[150...].map(\.verified))
        let pusher = try await PeerClient.connect(
            host: "127.0.0.1", port: Int(followers[0].address.split(separator: ":").last!)!,
            identity: HandshakeIdentity(key: SigningKey.generate(), chainID: genesis.chainID), group: group)
        pusher.push(chain[chain.count - 1].certified)
        let followed = try await waitFor(399)
        #expect(followed == [399, 399])
        for c in clients + [pusher] { await c.close() }
        followers.forEach { $0.stop() }
        await source.shutdown()
        try await running.value
        try? await group.shutdownGracefully()
        // Both followers stored a chain that verifies from the genesis.
        for name in ["f", "g"] {
            let (s, o) = try somaNode(["verify", "--data", base.file(name)])
            #expect(s == 0 && o.contains("400 checkpoints"), "\(name): \(o)")
        }
    }

    @Test("`devnet run` grows its chain at its pace and pushes each checkpoint: a follower that never polls reaches the profile's end with the same state root")
    func devnetProducer() async throws {
        let base = TempDir("devnet-run")
        defer { base.cleanup() }
        let a = base.file("a")
        #expect(try somaNode(["devnet", "generate", "--profile", "tiny", "--until", "9", "--out", a]).0 == 0)
        #expect(try somaNode(["init", "--data", a]).0 == 0)
        let producer = try RunningNode(data: a, arguments: ["--profile", "tiny", "--interval-ms", "100"], command: ["devnet", "run"])
        defer { producer.stop() }
        let f = base.file("f")
        try FileManager.default.createDirectory(atPath: f, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: a + "/genesis.bcs", toPath: f + "/genesis.bcs")
        #expect(try somaNode(["init", "--data", f]).0 == 0)
        try "sync:\n  pollSeconds: 3600\n".write(toFile: f + "/soma-node.yaml", atomically: true, encoding: .utf8)
        let follower = try RunningNode(data: f, arguments: ["--peer", producer.address])
        defer { follower.stop() }
        var tip = ""
        for _ in 0..<300 {
            let (_, out) = try somaNode(["inspect", "--data", f, "--json"])
            tip = out.replacingOccurrences(of: " ", with: "").replacingOccurrences(of: "\n", with: "")
            if tip.contains("\"highestExecuted\":{\"digest\":") && tip.contains("\"seq\":29}") { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        follower.stop()
        producer.stop()
        let (_, fo) = try somaNode(["inspect", "--data", f, "--checkpoint", "29", "--json"])
        let (_, ao) = try somaNode(["inspect", "--data", a, "--checkpoint", "29", "--json"])
        let root = { (o: String) in o.replacingOccurrences(of: " ", with: "").components(separatedBy: "\"stateRoot\":\"").dropFirst().first?.prefix(64).description ?? "" }
        #expect(!root(ao).isEmpty && root(fo) == root(ao), "\(fo)")
        let (vs, vo) = try somaNode(["verify", "--data", f])
        #expect(vs == 0 && vo.contains("30 checkpoints"), "\(vo)")
    }
}

extension Array {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var out: [T] = []
        for e in self { out.append(try await transform(e)) }
        return out
    }

}
