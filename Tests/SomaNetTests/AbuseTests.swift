import NIOCore
import NIOPosix
import SomaCore
import SomaDevnet
import SomaNet
import SomaStore
import SomaTestSupport
import Testing

/// After the handshake: writes `frames` (raw bytes) and optionally stops reading.
final class AbuseHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = Frame
    let bytes: [UInt8]
    let stopReading: Bool
    let closed: EventLoopPromise<Void>
    let handshaken: EventLoopPromise<Void>

    init(bytes: [UInt8], stopReading: Bool, closed: EventLoopPromise<Void>, handshaken: EventLoopPromise<Void>) {
        self.bytes = bytes
        self.stopReading = stopReading
        self.closed = closed
        self.handshaken = handshaken
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is HandshakeCompleted else { return }
        handshaken.succeed()
        if stopReading { context.channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in } }
        // Raw bytes straight to the socket: written from the first handler's position, below
        // the frame encoder.
        guard let first = try? context.pipeline.syncOperations.context(handlerType: ByteToMessageHandler<FrameDecoder>.self) else {
            context.close(promise: nil)
            return
        }
        first.writeAndFlush(NIOAny(ByteBuffer(bytes: bytes)), promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) { closed.succeed() }
    func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
}

@Suite("Malformed and abusive peers are answered or closed while others keep being served", .serialized)
struct AbuseTests {
    static func abuse(_ served: ServedChain, bytes: [UInt8], stopReading: Bool) async throws -> (any Channel, EventLoopFuture<Void>) {
        let loop = served.group.next()
        let closed = loop.makePromise(of: Void.self)
        let handshaken = loop.makePromise(of: Void.self)
        let identity = HandshakeIdentity(key: DevnetKeys.validator(seed: 77, index: 9), chainID: served.generator.genesis.chainID)
        let channel = try await ClientBootstrap(group: loop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try PeerClient.configureDialer(channel, identity: identity, tls: try identity.tls(), configuration: NetConfiguration())
                    try channel.pipeline.syncOperations.addHandler(AbuseHandler(bytes: bytes, stopReading: stopReading, closed: closed, handshaken: handshaken))
                }
            }
            .connect(host: "127.0.0.1", port: served.server.port).get()
        try await handshaken.futureResult.get()
        return (channel, closed.futureResult)
    }

    static func request(_ id: UInt64, _ method: Method, _ payload: [UInt8]) -> [UInt8] {
        var b = ByteBuffer()
        Frame(kind: .request, method: method.rawValue, requestID: id, payload: ByteBuffer(bytes: payload)).write(into: &b)
        return Array(b.readableBytesView)
    }

    @Test("a declared length of 4 GiB, a frame over the limit and a truncated frame close that connection only")
    func badFrames() async throws {
        let served = try await ServedChain.start()
        for bytes in [[0xFF, 0xFF, 0xFF, 0xFF] + [UInt8](repeating: 0, count: 12),
                      [0x01, 0x00, 0x00, 0x01] + [UInt8](repeating: 0, count: 12),
                      [0, 0, 0, 5, 1]] {
            let (channel, closed) = try await Self.abuse(served, bytes: bytes, stopReading: false)
            if bytes.count < 16 {
                // A short header: the server refuses it; either side may close first.
                try? await channel.close()
            }
            try await closed.get()
            #expect(try await served.client.availability().highestSynced == 29)
        }
        await served.stop()
    }

    @Test("10,000 requests without reading the answers: that peer is throttled, another is still served")
    func flood() async throws {
        let served = try await ServedChain.start()
        var bytes: [UInt8] = []
        for i in 0..<10_000 { bytes += Self.request(UInt64(i + 1), .getBlock, BlockRequest(seq: UInt64(i % 30), part: 0).bcsBytes) }
        let (channel, _) = try await Self.abuse(served, bytes: bytes, stopReading: true)
        try await Task.sleep(for: .milliseconds(500))
        for _ in 0..<20 {
            #expect(try await served.client.availability().highestSynced == 29)
            #expect(try await served.client.block(5).count == 1)
        }
        try await channel.close()
        await served.stop()
    }
}

@Suite("Connection limits", .serialized)
struct ConnectionLimitTests {
    @Test("an address over its connection limit is closed at once; the others are served")
    func perAddress() async throws {
        var config = NetConfiguration()
        config.maxConnectionsPerAddress = 2
        let served = try await ServedChain.start(configuration: config)
        let chainID = served.generator.genesis.chainID
        let second = try await PeerClient.connect(
            host: "127.0.0.1", port: served.server.port,
            identity: HandshakeIdentity(key: DevnetKeys.validator(seed: 77, index: 5), chainID: chainID), group: served.group)
        await #expect(throws: (any Error).self) {
            _ = try await PeerClient.connect(
                host: "127.0.0.1", port: served.server.port,
                identity: HandshakeIdentity(key: DevnetKeys.validator(seed: 77, index: 6), chainID: chainID), group: served.group)
        }
        #expect(try await second.availability().highestSynced == 29)
        #expect(served.server.connectionCount == 2)
        await second.close()
        await served.stop()
    }

    @Test("a connection idle past the timeout is closed")
    func idle() async throws {
        var config = NetConfiguration()
        // Generous margins: the suite loads both cores while this runs.
        config.idleTimeout = .seconds(2)
        let served = try await ServedChain.start(configuration: config)
        #expect(try await served.client.availability().highestSynced == 29)
        try await Task.sleep(for: .milliseconds(4_500))
        await #expect(throws: WireError.self) { _ = try await served.client.availability() }
        await served.stop()
    }
}
