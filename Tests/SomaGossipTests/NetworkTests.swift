import Foundation
import NIOPosix
import SomaCore
import SomaGossip
import SomaNet
import Synchronization
import Testing

@Suite("Gossip over real connections on 127.0.0.1", .serialized)
struct GossipNetworkTests {
    static let chain = Hashing.sha256(Array("gossip-test-chain".utf8))

    @Test("20 nodes over TLS on a random graph of degree 6: every message and every critical one reaches every node; a node that restarts gets the critical messages its peers retry")
    func realNodes() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let topics = ["votes": { var o = TopicOptions(); o.priority = .consensus; return o }(), "news": TopicOptions()]
        var nodes: [GossipNode] = []
        for i in 0..<20 {
            nodes.append(try await GossipNode.start(key: SimNet.key(1_000 + i), chainID: Self.chain, topics: topics, group: group))
        }
        let graph = SimNet.randomGraph(n: 20, degree: 6, seed: 99)
        for (a, peers) in graph.enumerated() {
            for b in peers where a < b { try await nodes[a].connect(host: "127.0.0.1", port: nodes[b].port) }
        }
        #expect(await eventually(10) { nodes.allSatisfy { $0.router.peers.count == 6 } })
        var ids: [MessageID] = []
        for i in 0..<100 {
            ids.append(nodes[i % 20].router.publish(topic: i % 2 == 0 ? "votes" : "news", payload: Array("message \(i)".utf8)))
        }
        #expect(await eventually(20) { nodes.allSatisfy { n in ids.allSatisfy { n.router.hasSeen($0) } } })
        let stats = nodes.map(\.router.statistics)
        #expect(stats.reduce(0) { $0 + $1.received } == 100 * 19)

        // Node 5 goes down; a critical message goes out; node 5 comes back on the same key and port.
        let port5 = nodes[5].port
        await nodes[5].close()
        #expect(await eventually(10) { graph[5].allSatisfy { !nodes[$0].router.peers.contains(SimNet.key(1_005).publicKey) } })
        let publisher = nodes[0].router
        let report = Task { await publisher.publishCritical(topic: "votes", payload: Array("critical".utf8)) }
        try await Task.sleep(for: .milliseconds(300))
        nodes[5] = try await GossipNode.start(key: SimNet.key(1_005), chainID: Self.chain, port: port5, topics: topics, group: group)
        for b in graph[5] { try await nodes[5].connect(host: "127.0.0.1", port: nodes[b].port) }
        let critical = GossipItem.Message.id(topic: "votes", payload: Array("critical".utf8))
        #expect(await eventually(15) { nodes.allSatisfy { $0.router.hasSeen(critical) } })
        let delivered = await report.value
        #expect(delivered.missing.isEmpty && delivered.acknowledged.count == graph[0].count, "\(delivered)")
        for n in nodes { await n.close() }
        try await group.shutdownGracefully()
    }
}
