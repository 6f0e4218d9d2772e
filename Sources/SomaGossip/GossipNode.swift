public import Logging
public import NIOCore
public import SomaCore
public import SomaNet
import Synchronization

/// A gossip link over a connection this node dialled.
public struct ClientLink: GossipLink {
    /// The connection.
    public let client: PeerClient

    /// A link over `client`.
    public init(client: PeerClient) { self.client = client }

    /// Writes a gossip frame (method 24, one-way).
    public func send(_ frame: [UInt8]) { client.send(.gossip, frame) }

    /// Closes the connection.
    public func disconnect() {
        let client = self.client
        Task { await client.close() }
    }
}

/// A gossip link over a connection a peer opened to this node.
public struct InboundLink: GossipLink {
    /// The connection.
    public let peer: InboundPeer

    /// A link over `peer`'s connection.
    public init(peer: InboundPeer) { self.peer = peer }

    /// Writes a gossip frame (method 24, one-way).
    public func send(_ frame: [UInt8]) { peer.send(.gossip, frame) }

    /// Closes the connection.
    public func disconnect() { peer.close() }
}

/// Answers no history request: a node that only gossips.
struct NoHistory: HistoryServing {
    func handle(method: UInt16, payload: [UInt8]) async -> Result<ByteBuffer, RPCError> {
        .failure(.unavailable("this node only gossips"))
    }

    func blockItem(seq: UInt64, part: UInt32) async -> Result<(ByteBuffer, UInt32)?, RPCError> {
        .failure(.unavailable("this node only gossips"))
    }
}

/// Keeps one link per peer for a router: a peer may be connected both ways; the newest
/// connection carries its gossip, and closing an older one does not remove the peer.
public final class GossipLinks: Sendable {
    /// The router the links feed.
    public let router: GossipRouter
    private let current = Mutex<[PeerID: Int]>([:])
    private let counter = Atomic<Int>(0)

    /// Links for `router`.
    public init(router: GossipRouter) { self.router = router }

    /// Gives `peer`'s gossip to `link` until `closed` completes.
    public func add(_ peer: PeerID, link: any GossipLink, closed: EventLoopFuture<Void>?) {
        let token = counter.add(1, ordering: .relaxed).newValue
        current.withLock { $0[peer] = token }
        router.addPeer(peer, link: link)
        closed?.whenComplete { [self] _ in
            let last = current.withLock { table -> Bool in
                guard table[peer] == token else { return false }
                table.removeValue(forKey: peer)
                return true
            }
            if last { router.removePeer(peer) }
        }
    }
}

/// A node that only gossips: a listening socket, the connections it dials, a ``GossipRouter``
/// over all of them. `soma-node devnet gossip`, the gossip tests and `tools/bench gossip` run
/// these in one process; a full node wires its own connections to its router instead.
public final class GossipNode: Sendable {
    /// The router.
    public let router: GossipRouter
    /// The listening socket.
    public let server: NetServer
    /// The node's identity (its key is its peer id).
    public let identity: HandshakeIdentity
    let net: NetConfiguration
    let group: any EventLoopGroup
    let links: GossipLinks
    let intake: GossipIntake
    let clients = Mutex<[PeerClient]>([])
    let tasks = Mutex<[Task<Void, Never>]>([])

    private init(
        router: GossipRouter, server: NetServer, identity: HandshakeIdentity, net: NetConfiguration, group: any EventLoopGroup, links: GossipLinks,
        intake: GossipIntake
    ) {
        self.intake = intake
        self.router = router
        self.server = server
        self.identity = identity
        self.net = net
        self.group = group
        self.links = links
    }

    /// The port it listens on.
    public var port: Int { server.port }

    /// Starts a node listening on `host:port` (0: any free port) with `topics`.
    public static func start(
        key: SigningKey, chainID: Digest, host: String = "127.0.0.1", port: Int = 0, net: NetConfiguration = NetConfiguration(),
        gossip: GossipConfiguration = GossipConfiguration(), topics: [String: TopicOptions], group: any EventLoopGroup,
        logger: Logger = Logger(label: "soma.gossip")
    ) async throws -> GossipNode {
        let identity = HandshakeIdentity(key: key, chainID: chainID)
        let router = GossipRouter(localID: key.publicKey, configuration: gossip, logger: logger)
        for (t, o) in topics { router.register(topic: t, options: o) }
        let links = GossipLinks(router: router)
        let intake = GossipIntake(router: router)
        let (inbound, continuation) = AsyncStream<InboundPeer>.makeStream()
        let server = try await NetServer.start(
            host: host, port: port, identity: identity, service: NoHistory(), configuration: net, group: group, logger: logger,
            inbound: continuation, gossip: intake.inbox)
        let node = GossipNode(router: router, server: server, identity: identity, net: net, group: group, links: links, intake: intake)
        node.tasks.withLock { tasks in
            tasks.append(Task { await router.run() })
            tasks.append(Task { await intake.run() })
            tasks.append(Task {
                for await peer in inbound { links.add(peer.peerID, link: InboundLink(peer: peer), closed: peer.closed) }
            })
        }
        return node
    }

    /// Dials `host:port` and gossips over the connection.
    /// - Returns: the peer's id.
    @discardableResult
    public func connect(host: String, port: Int) async throws -> PeerID {
        let client = try await PeerClient.connect(
            host: host, port: port, identity: identity, configuration: net, group: group, gossip: intake.inbox)
        clients.withLock { $0.append(client) }
        links.add(client.peerID, link: ClientLink(client: client), closed: client.closed)
        return client.peerID
    }

    /// Stops: the router's timers end (awaited: a timer still running could send on a
    /// connection whose event loops the caller shuts down next), the connections close.
    public func close() async {
        intake.finish()
        let tasks = self.tasks.withLock { $0 }
        for t in tasks { t.cancel() }
        for t in tasks { await t.value }
        for c in clients.withLock({ $0 }) { await c.close() }
        await server.shutdown(drain: .zero)
    }
}

/// Hands the gossip frames connections receive to a router off the event loops: a connection's
/// inbox only queues the frame (bounded: the newest 16,384 frames are kept), and one task feeds
/// the router in arrival order, so decoding, hashing, decompression and vote signature checks
/// never run on an event loop.
public final class GossipIntake: Sendable {
    /// Frames queued at most; under a flood the oldest go first (critical messages are retried).
    public static let capacity = 16_384

    let router: GossipRouter
    private let frames: AsyncStream<(PeerID, ByteBuffer)>
    private let input: AsyncStream<(PeerID, ByteBuffer)>.Continuation

    /// An intake for `router`; ``run()`` feeds it.
    public init(router: GossipRouter) {
        self.router = router
        (frames, input) = AsyncStream.makeStream(of: (PeerID, ByteBuffer).self, bufferingPolicy: .bufferingNewest(Self.capacity))
    }

    /// What connections are given: it queues and returns at once.
    public var inbox: GossipInbox {
        let input = self.input
        return { peer, frame in input.yield((peer, frame)) }
    }

    /// Feeds the router until cancelled or ``finish()``.
    public func run() async {
        for await (peer, frame) in frames {
            if Task.isCancelled { break }
            router.receive(from: peer, frame: frame.readableBytesView)
        }
    }

    /// Ends ``run()`` after the frames queued.
    public func finish() { input.finish() }
}
