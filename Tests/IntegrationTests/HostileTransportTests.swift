import Foundation
import NIOCore
import NIOPosix
import SomaCore
import SomaNet
import SomaTestSupport
import Synchronization
import Testing

/// Forwards bytes to `partner`; closing one side closes the other.
final class GlueHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    var partner: (any Channel)?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        partner?.writeAndFlush(unwrapInboundIn(data), promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) { partner?.close(promise: nil) }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
}

/// A TCP proxy on loopback in front of a node, forwarding both ways: someone on the path.
/// ``inject(_:)`` writes raw bytes into the client-to-node direction of every connection.
final class InjectingProxy: Sendable {
    private let server: any Channel
    final class Upstreams: Sendable { let channels = Mutex<[any Channel]>([]) }
    private let upstreams = Upstreams()
    let port: Int

    init(group: any EventLoopGroup, targetPort: Int) async throws {
        let upstreams = self.upstreams
        server = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { inbound in
                let toClient = GlueHandler(), toNode = GlueHandler()
                return ClientBootstrap(group: inbound.eventLoop)
                    .channelInitializer { ch in ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(toClient) } }
                    .connect(host: "127.0.0.1", port: targetPort)
                    .flatMapThrowing { outbound in
                        toClient.partner = inbound
                        toNode.partner = outbound
                        upstreams.channels.withLock { $0.append(outbound) }
                        try inbound.pipeline.syncOperations.addHandler(toNode)
                    }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        port = server.localAddress?.port ?? 0
    }

    /// Writes `bytes` towards the node on every proxied connection.
    func inject(_ bytes: [UInt8]) async throws {
        for channel in upstreams.channels.withLock({ $0 }) where channel.isActive {
            try await channel.writeAndFlush(ByteBuffer(bytes: bytes))
        }
    }

    func close() async { try? await server.close() }
}

/// Answers every request after the handshake with stream items, without end, until the
/// connection closes: a hostile server.
final class EndlessStreamer: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = Frame
    typealias OutboundOut = Frame

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let request = unwrapInboundIn(data)
        guard request.kind == .request else { return }
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        func burst() {
            let (handler, context) = bound.value
            guard context.channel.isActive else { return }
            for _ in 0..<64 {
                let item = Frame(kind: .streamItem, method: request.method, requestID: request.requestID,
                                 payload: ByteBuffer(repeating: 0xAB, count: 1_024))
                context.write(handler.wrapOutboundOut(item), promise: nil)
            }
            context.flush()
            context.eventLoop.scheduleTask(in: .milliseconds(1)) { burst() }
        }
        burst()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
}

@Suite("Someone on the path, and a hostile server", .serialized)
struct HostileTransportTests {
    /// Over TLS a frame injected by someone on the path breaks the record layer: the node drops
    /// that connection (and nothing reaches its request handler), the client sees it closed, and
    /// both go on with others. In plaintext (the explicit opt-out) the injected frame is taken
    /// as the client's: the node answers it to the client, which drops an answer it did not ask
    /// for; injected garbage gets a goodbye and a close. The node never crashes and verifies.
    @Test("frames injected into a connection: refused by TLS; in plaintext answered or closed, never a crash", arguments: [true, false])
    func injection(tls: Bool) async throws {
        let dir = TempDir("inject")
        defer { dir.cleanup() }
        #expect(try somaNode(["devnet", "generate", "--profile", "tiny", "--out", dir.path]).0 == 0)
        #expect(try somaNode(["init", "--data", dir.path]).0 == 0)
        let node = try RunningNode(data: dir.path, arguments: tls ? [] : ["--plaintext"])
        defer { node.stop() }
        let port = try #require(node.address.split(separator: ":").last.flatMap { Int($0) }, "\(node.address)")
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let genesis = try Genesis(bcsBytes: Array(try Data(contentsOf: URL(fileURLWithPath: dir.file("genesis.bcs")))))
        var net = NetConfiguration()
        net.tls = tls
        let proxy = try await InjectingProxy(group: group, targetPort: port)
        let victim = try await PeerClient.connect(host: "127.0.0.1", port: proxy.port,
                                                  identity: HandshakeIdentity(key: SigningKey.generate(), chainID: genesis.chainID),
                                                  configuration: net, group: group)
        #expect(try await victim.availability().highestSynced == 29)

        // A well-formed request frame, as a man in the middle would write it.
        var frame = ByteBuffer()
        Frame(kind: .request, method: Method.getAvailability.rawValue, requestID: 1 << 60, payload: ByteBuffer()).write(into: &frame)
        try await proxy.inject(Array(frame.readableBytesView))
        try await Task.sleep(for: .milliseconds(500))
        if tls {
            #expect(!victim.isConnected, "an injected record was taken over TLS")
        } else {
            // Answered to the victim under an id it never used, and dropped there.
            #expect(victim.isConnected)
            #expect(try await victim.availability().highestSynced == 29)
            // Garbage (an unknown frame kind) gets a goodbye and a close.
            var garbage = ByteBuffer()
            Frame(kind: .oneWay, method: 4, requestID: 0, payload: ByteBuffer()).write(into: &garbage)
            var bytes = Array(garbage.readableBytesView)
            bytes[4] = 9 // the kind byte
            try await proxy.inject(bytes)
            try await Task.sleep(for: .milliseconds(500))
            #expect(!victim.isConnected)
        }
        await victim.close()

        // The node serves others as before.
        let honest = try await PeerClient.connect(host: "127.0.0.1", port: port,
                                                  identity: HandshakeIdentity(key: SigningKey.generate(), chainID: genesis.chainID),
                                                  configuration: net, group: group)
        #expect(try await honest.availability().highestSynced == 29)
        await honest.close()
        await proxy.close()
        #expect(node.process.isRunning, "the node crashed")
        node.stop()
        #expect(node.process.terminationStatus == 0)
        let (vs, vo) = try somaNode(["verify", "--data", dir.path])
        #expect(vs == 0 && vo.contains("verify: OK"), "\(vo)")
        try await group.shutdownGracefully()
    }

    /// A server that answers a block stream with items without end: the client stops collecting
    /// at its bound (items, bytes) with a clear error instead of growing without limit.
    @Test("a hostile server streaming without end is cut off at the client's bound")
    func endlessStream() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let chainID = try #require(Digest(bytes: [UInt8](repeating: 3, count: 32)))
        let serverIdentity = HandshakeIdentity(key: SigningKey.generate(), chainID: chainID)
        let server = try await ServerBootstrap(group: group)
            .childChannelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    let ops = ch.pipeline.syncOperations
                    try ops.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameBytes: 1 << 20)))
                    try ops.addHandler(FrameEncoder())
                    try ops.addHandler(HandshakeHandler(identity: serverIdentity, role: .listener, policy: HandshakePolicy(tls: false)))
                    try ops.addHandler(EndlessStreamer())
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let port = try #require(server.localAddress?.port)
        for (items, bytes) in [(200, 128 << 20), (4_096, 1 << 20)] {
            var net = NetConfiguration()
            net.tls = false
            net.maxStreamItems = items
            net.maxStreamBytes = bytes
            let client = try await PeerClient.connect(host: "127.0.0.1", port: port,
                                                      identity: HandshakeIdentity(key: SigningKey.generate(), chainID: chainID),
                                                      configuration: net, group: group)
            do {
                _ = try await client.blocks(from: 1, count: 32, timeout: .seconds(20))
                Issue.record("an endless stream was collected")
            } catch let error as WireError {
                #expect(error.code == .tooLarge, "\(error)")
                #expect(error.description.contains("exceeded \(items) items or \(bytes) bytes"), "\(error)")
            }
            await client.close()
        }
        try await server.close()
        try await group.shutdownGracefully()
    }
}
