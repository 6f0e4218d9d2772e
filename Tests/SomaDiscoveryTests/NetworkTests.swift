import Foundation
import Logging
import NIOCore
import NIOPosix
import SomaCore
@testable import SomaDiscovery
import SomaNet
import SomaStore
import SomaTestSupport
import Testing

let testChain = Hashing.sha256(Array("discovery-test".utf8))

/// A node as `soma-node run` wires it, in process: store, peer table, discovery, a server on
/// 127.0.0.1:0 answering history and `getKnownPeers`.
final class TestNode: @unchecked Sendable {  // mutated only by the test that owns it
    let key: SigningKey
    let dir: String
    let store: NodeStore
    let discovery: Discovery
    let server: NetServer
    let address: String
    private var task: Task<Void, Never>?
    private let inbound: AsyncStream<InboundPeer>.Continuation

    private init(key: SigningKey, dir: String, store: NodeStore, discovery: Discovery, server: NetServer,
                 inbound: AsyncStream<InboundPeer>.Continuation) {
        self.key = key
        self.dir = dir
        self.store = store
        self.discovery = discovery
        self.server = server
        self.inbound = inbound
        address = "127.0.0.1:\(server.port)"
    }

    static func start(
        dir: String, key: SigningKey = SigningKey.generate(), seeds: [String] = [], target: Int = 3,
        access: Access = .public, allowed: Set<PeerID> = [], group: any EventLoopGroup
    ) async throws -> TestNode {
        let store = try await NodeStore.open(path: dir)
        let table = PeerTable(selfID: key.publicKey, store: store, maxPeers: 100)
        try await table.load()
        var config = DiscoveryConfiguration()
        config.seeds = seeds
        config.targetConnections = target
        config.exchangeInterval = .milliseconds(200)
        config.backoffBase = .milliseconds(200)
        config.backoffMax = .seconds(2)
        config.access = access
        config.allowedPeers = allowed
        var logger = Logger(label: "test.discovery")
        logger.logLevel = .warning
        let discovery = Discovery(key: key, chainID: testChain, table: table, configuration: config, group: group, logger: logger)
        let (stream, inbound) = AsyncStream.makeStream(of: InboundPeer.self)
        let server = try await NetServer.start(
            host: "127.0.0.1", port: 0, identity: discovery.identity,
            service: NodeServing(history: HistoryService(store: store), discovery: discovery), group: group, logger: logger,
            access: discovery.accessPolicy, inbound: inbound)
        await discovery.setAddresses(["127.0.0.1:\(server.port)"])
        let node = TestNode(key: key, dir: dir, store: store, discovery: discovery, server: server, inbound: inbound)
        node.task = Task {
            await withTaskGroup(of: Void.self) { tasks in
                tasks.addTask { await discovery.run() }
                tasks.addTask { await discovery.consume(inbound: stream) }
            }
        }
        return node
    }

    var id: PeerID { key.publicKey }

    func stop() async {
        task?.cancel()
        inbound.finish()
        await task?.value
        await discovery.close()
        await server.shutdown(drain: .zero)
        await store.close()
    }
}

/// Polls `condition` every 100 ms for up to `seconds`.
func eventually(_ seconds: Double = 20, _ condition: () async -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1_000))
    while ContinuousClock.now < deadline {
        if await condition() { return true }
        try? await Task.sleep(for: .milliseconds(100))
    }
    return await condition()
}

@Suite("discovery over loopback", .serialized)
struct NetworkTests {
    /// Six nodes: the first knows nobody, every other knows only the first.
    func sixNodes(_ dir: TempDir, group: any EventLoopGroup) async throws -> [TestNode] {
        var nodes = [try await TestNode.start(dir: dir.file("n0"), group: group)]
        for i in 1..<6 {
            nodes.append(try await TestNode.start(dir: dir.file("n\(i)"), seeds: [nodes[0].address], group: group))
        }
        return nodes
    }

    func converged(_ nodes: [TestNode], target: Int) async -> Bool {
        for n in nodes {
            if n.discovery.connections.count < target { return false }
            if await n.discovery.table.count < nodes.count - 1 { return false }
        }
        return true
    }

    @Test("a 6-node network where each node knows one seed converges to the target connections; every node learns every other")
    func converges() async throws {
        let dir = TempDir("disc-six")
        defer { dir.cleanup() }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let nodes = try await sixNodes(dir, group: group)
        let ok = await eventually { await converged(nodes, target: 3) }
        var picture: [String] = []
        for n in nodes { picture.append("\(n.discovery.connections.count) conns, \(await n.discovery.table.count) known") }
        #expect(ok, "\(picture)")
        let ids = Set(nodes.map(\.id))
        for n in nodes {
            let connected = n.discovery.connectedIDs
            #expect(connected.count >= 3 && connected.isSubset(of: ids.subtracting([n.id])))
            // Every known peer is known with its signed addresses and was proven by a handshake or a peer.
            for r in await n.discovery.table.all { #expect(ids.contains(r.peerID) && r.info.info.addresses.count == 1) }
        }
        // The seed, which knew nobody, learnt everyone from their hellos and dialled some of them.
        #expect(await nodes[0].discovery.table.count == 5)
        // Dial-back: those it did not keep a connection to it reached with feeler dials; only
        // then does it advertise them, and every node advertises only peers it reached.
        #expect(await eventually { await nodes[0].discovery.knownPeers().peers.count == 5 })
        for n in nodes {
            for ad in await n.discovery.knownPeers().peers {
                #expect(await n.discovery.table.record(ad.info.peerID)?.isReached == true)
            }
        }
        for n in nodes { await n.stop() }
        try await group.shutdownGracefully()
    }

    @Test("a node restarted without seeds reconnects from its persisted peer table")
    func restartFromTable() async throws {
        let dir = TempDir("disc-restart")
        defer { dir.cleanup() }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        var nodes = try await sixNodes(dir, group: group)
        #expect(await eventually { await converged(nodes, target: 3) })
        let last = nodes.removeLast()
        let before = await last.discovery.table.count
        let dialledBefore = await last.discovery.table.all.filter(\.direct).count
        #expect(dialledBefore >= 3)
        await last.stop()
        // No seeds this time: only the table it wrote.
        let again = try await TestNode.start(dir: last.dir, key: last.key, seeds: [], group: group)
        #expect(await again.discovery.table.count == before)
        #expect(await eventually { again.discovery.connections.count >= 3 })
        #expect(again.discovery.connectedIDs.isSubset(of: Set(nodes.map(\.id))))
        // It dialled them itself: each is a direct record it had written before the restart.
        for id in again.discovery.connectedIDs { #expect(await again.discovery.table.record(id)?.direct == true) }
        await again.stop()
        for n in nodes { await n.stop() }
        try await group.shutdownGracefully()
    }

    @Test("a private node is never advertised and answers only its allow-listed peers")
    func privateNode() async throws {
        let dir = TempDir("disc-private")
        defer { dir.cleanup() }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let seed = try await TestNode.start(dir: dir.file("seed"), group: group)
        let hidden = try await TestNode.start(
            dir: dir.file("private"), seeds: [seed.address], target: 1, access: .private, allowed: [seed.id], group: group)
        #expect(await eventually { hidden.discovery.connections.count == 1 })
        let a = try await TestNode.start(dir: dir.file("a"), seeds: [seed.address], target: 2, group: group)
        let b = try await TestNode.start(dir: dir.file("b"), seeds: [seed.address], target: 2, group: group)
        #expect(await eventually { a.discovery.connectedIDs.contains(b.id) || b.discovery.connectedIDs.contains(a.id) })
        try await Task.sleep(for: .milliseconds(600))  // a few more exchange rounds
        // The seed knows the private node (it connected to the seed), but passes it on to no one.
        #expect(await seed.discovery.table.record(hidden.id) != nil)
        for n in [seed, a, b] {
            let answer = await n.discovery.knownPeers()
            #expect(!answer.peers.contains { $0.info.peerID == hidden.id })
        }
        #expect(await a.discovery.table.record(hidden.id) == nil)
        #expect(await b.discovery.table.record(hidden.id) == nil)
        // Asked directly, it answers the allow-listed seed only.
        let port = hidden.server.port
        // A stranger is refused at the handshake, with the reason, before it sees the record.
        do {
            _ = try await PeerClient.connect(
                host: "127.0.0.1", port: port, identity: HandshakeIdentity(key: SigningKey.generate(), chainID: testChain), group: group)
            Issue.record("a stranger completed a handshake with a private node")
        } catch let e as WireError {
            #expect(e.message.contains("allow-list"), "\(e)")
        }
        let friend = try await PeerClient.connect(
            host: "127.0.0.1", port: port, identity: HandshakeIdentity(key: seed.key, chainID: testChain), group: group)
        let known = try BCS.decode(KnownPeers.self, from: try await friend.call(.getKnownPeers))
        #expect(known.own.info.peerID == hidden.id && known.own.info.access == .private)
        _ = try await friend.availability()
        await friend.close()
        for n in [hidden, a, b, seed] { await n.stop() }
        try await group.shutdownGracefully()
    }
}
