public import NIOCore
import NIOPosix
import SomaCore

/// Limits and timeouts of the transport.
public struct NetConfiguration: Sendable {
    /// The largest frame accepted (the length field), checked before allocating.
    public var maxFrameBytes = 16 << 20
    /// Requests a connection may have in flight; more are answered `busy`.
    public var maxInFlightPerConnection = 64
    /// How long a peer has to complete the handshake.
    public var handshakeTimeout: TimeAmount = .seconds(5)
    /// How long a client waits for an answer by default.
    public var requestTimeout: TimeAmount = .seconds(10)
    /// What a `busy` answer asks the peer to wait.
    public var busyRetryAfterMs: UInt64 = 100

    /// The defaults.
    public init() {}
}

/// Serves requests that passed the handshake: each runs on the service (off the event loop;
/// store calls go to the store's pool) and its answer is written back with the same request id.
/// Beyond `maxInFlight` requests a connection gets `busy` at once instead of a queue.
final class RequestHandler: ChannelInboundHandler {
    typealias InboundIn = Frame
    typealias OutboundOut = Frame

    private let service: HistoryService
    private let maxInFlight: Int
    private let retryAfterMs: UInt64
    private var inFlight = 0

    init(service: HistoryService, maxInFlight: Int, retryAfterMs: UInt64) {
        self.service = service
        self.maxInFlight = maxInFlight
        self.retryAfterMs = retryAfterMs
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        guard frame.kind == .request else { return }  // one-way messages belong to later layers
        guard inFlight < maxInFlight else {
            reply(context, frame, .failure(.busy(retryAfterMs: retryAfterMs)))
            return
        }
        inFlight += 1
        let payload = Array(frame.payload.readableBytesView)
        let service = self.service
        let method = frame.method
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.makeFutureWithTask {
            await service.handle(method: method, payload: payload)
        }.whenComplete { result in
            let (handler, context) = bound.value
            handler.inFlight -= 1
            switch result {
            case .success(let answer): handler.reply(context, frame, answer)
            case .failure(let error): handler.reply(context, frame, .failure(.unavailable("\(error)")))
            }
        }
    }

    private func reply(_ context: ChannelHandlerContext, _ request: Frame, _ answer: Result<[UInt8], RPCError>) {
        let (kind, bytes): (FrameKind, [UInt8])
        switch answer {
        case .success(let b): (kind, bytes) = (.response, b)
        case .failure(let e): (kind, bytes) = (.error, e.bcsBytes)
        }
        var buffer = context.channel.allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        context.writeAndFlush(wrapOutboundOut(Frame(kind: kind, method: request.method, requestID: request.requestID, payload: buffer)), promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// A listening socket that serves history to peers that complete the handshake.
public final class NetServer: Sendable {
    /// The bound port (useful with port 0).
    public let port: Int
    private let channel: any Channel

    private init(channel: any Channel, port: Int) {
        self.channel = channel
        self.port = port
    }

    /// Binds `host:port` (port 0: any free port) and serves `service` as `identity`.
    public static func start(
        host: String, port: Int, identity: HandshakeIdentity, service: HistoryService,
        configuration: NetConfiguration = NetConfiguration(), group: any EventLoopGroup
    ) async throws -> NetServer {
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let ops = channel.pipeline.syncOperations
                    try ops.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameBytes: configuration.maxFrameBytes)))
                    try ops.addHandler(MessageToByteHandler(FrameEncoder()))
                    try ops.addHandler(HandshakeHandler(identity: identity, timeout: configuration.handshakeTimeout))
                    try ops.addHandler(RequestHandler(
                        service: service, maxInFlight: configuration.maxInFlightPerConnection,
                        retryAfterMs: configuration.busyRetryAfterMs))
                }
            }
            .bind(host: host, port: port).get()
        guard let bound = channel.localAddress?.port else {
            try? await channel.close()
            throw WireError(.handshakeFailed, "the server socket has no port")
        }
        return NetServer(channel: channel, port: bound)
    }

    /// Stops listening (connections already open finish on their own).
    public func close() async throws {
        try await channel.close()
    }
}
