public import Logging
public import NIOCore
import NIOPosix
import NIOSSL
public import SomaCore
import Synchronization

/// Limits and timeouts of the transport (each one in `docs/PROTOCOL.md`, with its default).
public struct NetConfiguration: Sendable {
    /// TLS 1.3 on every connection (DESIGN §8). Off only when configured explicitly (`net.tls:
    /// false`), for tests and loopback baselines: a plaintext connection has no protection
    /// against anyone on the path.
    public var tls = true
    /// The largest frame accepted (the length field), checked before allocating.
    public var maxFrameBytes = 16 << 20
    /// Requests a connection may have in flight; more are answered `busy`.
    public var maxInFlightPerConnection = 64
    /// Requests the whole server may have in flight; more are answered `busy`.
    public var maxInFlight = 1_024
    /// How long a peer has to complete the handshake.
    public var handshakeTimeout: TimeAmount = .seconds(5)
    /// How long a client waits for an answer by default.
    public var requestTimeout: TimeAmount = .seconds(10)
    /// What a `busy` answer asks the peer to wait.
    public var busyRetryAfterMs: UInt64 = 100
    /// Upload budget of each connection in bytes per second (`nil`: unlimited).
    public var uploadBytesPerSecondPerPeer: Int? = 64 << 20
    /// Upload budget of the whole server in bytes per second (`nil`: unlimited).
    public var uploadBytesPerSecond: Int? = 256 << 20
    /// Connections the server holds open at once; more are closed at once.
    public var maxConnections = 512
    /// Connections one remote address may hold open; more are closed at once.
    public var maxConnectionsPerAddress = 16
    /// Connections one network group (IPv4 /24, IPv6 /48) may hold open; more are closed at once.
    public var maxConnectionsPerGroup = 32
    /// A connection that sends nothing for this long is closed (`nil`: never).
    public var idleTimeout: TimeAmount? = .seconds(120)
    /// Most items a client collects from one stream before it gives up on it (`tooLarge`).
    public var maxStreamItems = 4_096
    /// Most payload bytes a client collects from one stream before it gives up on it (`tooLarge`).
    public var maxStreamBytes = 128 << 20
    /// How outgoing frames are ordered: priority classes and fragments (DESIGN §8).
    public var writeScheduling = WriteScheduling()
    /// An emulated link in front of every socket (tests, demos, benchmarks; `nil`: none).
    public var linkShape: LinkShape?
    /// Bytes a socket may hold not yet sent (Linux `TCP_NOTSENT_LOWAT`; `nil`: the kernel's
    /// default, unbounded): what an urgent frame can find queued in the kernel ahead of it.
    /// Bytes sent but not yet acknowledged are not counted, so throughput over long links is kept.
    public var unsentBytes: Int? = 128 << 10

    /// The socket option that bounds a socket's unsent bytes (Linux `TCP_NOTSENT_LOWAT`).
    static let notSentLowat = ChannelOptions.Types.SocketOption(level: .tcp, name: NIOBSDSocket.Option(rawValue: 25))

    /// The defaults.
    public init() {}
}

/// Who may ask a server what (DESIGN §9: private RPCs answer only allow-listed peer ids).
public struct AccessPolicy: Sendable {
    /// The peers answered; `nil`: everyone.
    public var allowed: Set<PeerID>?

    /// Everyone is answered.
    public static let open = AccessPolicy(allowed: nil)

    /// Only `allowed` are answered (and only their pushes are taken).
    public init(allowed: Set<PeerID>?) {
        self.allowed = allowed
    }

    /// Whether `peer` is answered.
    public func admits(_ peer: PeerID) -> Bool { allowed.map { $0.contains(peer) } ?? true }
}

/// Where a connection hands the gossip frames (method 24, one-way) its peer sends, with the
/// peer's id: called on the connection's event loop, so it must not block.
public typealias GossipInbox = @Sendable (PeerID, ByteBuffer) -> Void

/// A peer that completed the handshake on a server's connection (an inbound peer).
public struct InboundPeer: Sendable {
    /// Its key, proven in the handshake.
    public let peerID: PeerID
    /// Its hello (with its node information).
    public let hello: Hello
    /// The address it connected from.
    public let remoteAddress: String?
    /// Completes when the connection closes.
    public let closed: EventLoopFuture<Void>?
    let channel: (any Channel)?

    /// Closes the connection.
    public func close() { channel?.close(promise: nil) }

    /// Sends a one-way message (such as a gossip frame) to the peer on this connection; nothing
    /// once it closed.
    public func send(_ method: Method, _ payload: [UInt8]) {
        guard let channel, channel.isActive else { return }
        channel.writeAndFlush(Frame(kind: .oneWay, method: method.rawValue, requestID: 0, payload: ByteBuffer(bytes: payload)), promise: nil)
    }
}

/// Serves requests that passed the handshake: each runs on the service (off the event loop;
/// store calls go to the store's pool) and its answer is written back with the same request id.
///
/// Protection: beyond `maxInFlight` requests (counted until the answer is written) a connection
/// gets `busy` at once instead of a queue; answers are paced by the connection's and the
/// server's upload budgets; and while the socket cannot take more (a slow reader) the
/// connection stops reading requests, so nothing buffers without bound.
final class RequestHandler: ChannelInboundHandler {
    typealias InboundIn = Frame
    typealias OutboundOut = Frame

    private let service: any HistoryServing
    private let maxInFlight: Int
    private let maxServerInFlight: Int
    private let retryAfterMs: UInt64
    private let peerBudget: ByteBudget?
    private let globalBudget: ByteBudget?
    private let serverInFlight: ServerState
    private let logger: Logger
    private let pushes: AsyncStream<PushedCheckpoint>.Continuation?
    private let access: AccessPolicy
    private let inbound: AsyncStream<InboundPeer>.Continuation?
    private let gossip: GossipInbox?
    private var peer: PeerID?
    private var inFlight = 0 {
        didSet { serverInFlight.requests.add(inFlight - oldValue, ordering: .relaxed) }
    }

    init(service: any HistoryServing, configuration: NetConfiguration, globalBudget: ByteBudget?, state: ServerState,
         logger: Logger, pushes: AsyncStream<PushedCheckpoint>.Continuation?, access: AccessPolicy,
         inbound: AsyncStream<InboundPeer>.Continuation?, gossip: GossipInbox?) {
        self.access = access
        self.gossip = gossip
        self.inbound = inbound
        self.serverInFlight = state
        self.logger = logger
        self.pushes = pushes
        self.service = service
        self.maxInFlight = configuration.maxInFlightPerConnection
        self.maxServerInFlight = configuration.maxInFlight
        self.retryAfterMs = configuration.busyRetryAfterMs
        self.peerBudget = configuration.uploadBytesPerSecondPerPeer.map { ByteBudget(bytesPerSecond: $0) }
        self.globalBudget = globalBudget
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            context.channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
            context.read()
        }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let done = event as? HandshakeCompleted {
            peer = done.peerID
            serverInFlight.peers.withLock { $0[ObjectIdentifier(context.channel)] = done.peerID }
            inbound?.yield(InboundPeer(
                peerID: done.peerID, hello: done.hello, remoteAddress: context.remoteAddress.map { "\($0)" }, closed: context.channel.closeFuture,
                channel: context.channel))
            logger.debug("peer connected", metadata: ["peer.id": "\(done.peerID.raw.short)", "peer.address": "\(context.remoteAddress.map { "\($0)" } ?? "?")"])
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        if let peer, !access.admits(peer) {
            // A private node: answer allow-listed peers only, take nothing from others.
            if frame.kind == .request {
                reply(context, frame, .failure(.unavailable("this node answers allow-listed peers only")))
            }
            return
        }
        if frame.kind == .oneWay && frame.method == Method.pushCheckpoint.rawValue {
            receivePush(context, frame)
            return
        }
        if frame.kind == .oneWay && frame.method == Method.gossip.rawValue {
            if let peer { gossip?(peer, frame.payload) }
            return
        }
        guard frame.kind == .request else { return }
        NetMetrics.shared.of(frame.method).requests.increment()
        guard inFlight < maxInFlight, serverInFlight.requests.load(ordering: .relaxed) < maxServerInFlight else {
            NetMetrics.shared.of(frame.method).busy.increment()
            reply(context, frame, .failure(.busy(retryAfterMs: retryAfterMs)))
            return
        }
        inFlight += 1
        let payload = Array(frame.payload.readableBytesView)
        let service = self.service
        let method = frame.method
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        if method == Method.getBlocks.rawValue {
            let request: BlocksRequest
            do {
                request = try BlocksRequest(bcsBytes: payload)
            } catch {
                return paced(context, frame, .failure(.badRequest("payload: \(error)")))
            }
            guard request.count >= 1, request.count <= BlocksRequest.maxCount else {
                return paced(context, frame, .failure(.badRequest("count must be 1...\(BlocksRequest.maxCount)")))
            }
            let (end, overflow) = request.from.addingReportingOverflow(UInt64(request.count))
            guard !overflow else {
                return paced(context, frame, .failure(.badRequest("blocks \(request.from) + \(request.count) run past the largest sequence number")))
            }
            streamNext(context, frame, end: end, seq: request.from, part: 0, sent: 0)
            return
        }
        serverInFlight.run(on: context.eventLoop) {
            await service.handle(method: method, payload: payload)
        }.whenComplete { result in
            let (handler, context) = bound.value
            let answer: Result<ByteBuffer, RPCError>
            switch result {
            case .success(let a): answer = a
            case .failure(let error): answer = .failure(.unavailable("\(error)"))
            }
            handler.paced(context, frame, answer)
        }
    }

    /// Streams `getBlocks` items one at a time: fetch one, wait for the budgets, write it, and
    /// fetch the next only once it reached the socket; then the stream end. The in-flight slot
    /// is held until the end, and a stream never holds more than one item.
    private func streamNext(_ context: ChannelHandlerContext, _ request: Frame, end: UInt64, seq: UInt64, part: UInt32, sent: Int) {
        guard seq < end else { return finishStream(context, request) }
        let service = self.service
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        serverInFlight.run(on: context.eventLoop) {
            await service.blockItem(seq: seq, part: part)
        }.whenComplete { result in
            let (handler, context) = bound.value
            guard case .success(let answer) = result else {
                // The node is stopping: say so rather than end a stream that sent nothing.
                return sent == 0 ? handler.paced(context, request, .failure(.unavailable("the node is stopping")))
                                 : handler.finishStream(context, request)
            }
            switch answer {
            case .failure(let e):
                handler.paced(context, request, .failure(e))
            case .success(nil):
                if sent == 0 {
                    handler.paced(context, request, .failure(.notFound("block \(seq) is not held (pruned or not yet synced)")))
                } else {
                    handler.finishStream(context, request)
                }
            case .success(.some(let (item, parts))):
                let (nextSeq, nextPart) = part + 1 < parts ? (seq, part + 1) : (seq + 1, 0)
                let size = 16 + item.readableBytes
                let wait = max(handler.peerBudget?.reserve(size) ?? .zero, handler.globalBudget?.reserve(size) ?? .zero)
                NetMetrics.shared.bytesOut.increment(by: size)
                if wait > .zero { NetMetrics.shared.budgetWaits.increment() }
                let write: () -> Void = {
                    let (handler, context) = bound.value
                    let written = context.eventLoop.makePromise(of: Void.self)
                    context.writeAndFlush(handler.wrapOutboundOut(
                        Frame(kind: .streamItem, method: request.method, requestID: request.requestID, payload: item)), promise: written)
                    written.futureResult.whenComplete { outcome in
                        let (handler, context) = bound.value
                        if case .failure = outcome { return handler.finishStream(context, request) }
                        handler.streamNext(context, request, end: end, seq: nextSeq, part: nextPart, sent: sent + 1)
                    }
                }
                if wait > .zero {
                    let deferred = NIOLoopBound(write, eventLoop: context.eventLoop)
                    context.eventLoop.scheduleTask(in: .nanoseconds(Int64(wait.components.seconds) * 1_000_000_000 + Int64(wait.components.attoseconds / 1_000_000_000))) {
                        deferred.value()
                    }
                } else {
                    write()
                }
            }
        }
    }

    private func finishStream(_ context: ChannelHandlerContext, _ request: Frame) {
        inFlight -= 1
        context.writeAndFlush(wrapOutboundOut(Frame(kind: .streamEnd, method: request.method, requestID: request.requestID, payload: ByteBuffer())), promise: nil)
    }

    /// Writes the answer once the budgets allow it, then frees its in-flight slot.
    private func paced(_ context: ChannelHandlerContext, _ request: Frame, _ answer: Result<ByteBuffer, RPCError>) {
        let size: Int
        switch answer {
        case .success(let b): size = 16 + b.readableBytes
        case .failure: size = 64
        }
        let wait = max(peerBudget?.reserve(size) ?? .zero, globalBudget?.reserve(size) ?? .zero)
        guard wait > .zero else {
            inFlight -= 1
            reply(context, request, answer)
            return
        }
        NetMetrics.shared.budgetWaits.increment()
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: .nanoseconds(Int64(wait.components.seconds) * 1_000_000_000 + Int64(wait.components.attoseconds / 1_000_000_000))) {
            let (handler, context) = bound.value
            handler.inFlight -= 1
            handler.reply(context, request, answer)
        }
    }

    private func reply(_ context: ChannelHandlerContext, _ request: Frame, _ answer: Result<ByteBuffer, RPCError>) {
        let (kind, buffer): (FrameKind, ByteBuffer)
        switch answer {
        case .success(let b): (kind, buffer) = (.response, b)
        case .failure(let e):
            (kind, buffer) = (.error, ByteBuffer(bytes: e.bcsBytes))
            if case .busy = e {} else { NetMetrics.shared.of(request.method).errors.increment() }
        }
        NetMetrics.shared.bytesOut.increment(by: 16 + buffer.readableBytes)
        context.writeAndFlush(wrapOutboundOut(Frame(kind: kind, method: request.method, requestID: request.requestID, payload: buffer)), promise: nil)
        if !context.channel.isWritable {
            // A slow reader: stop taking requests until the socket drains.
            context.channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
        }
    }

    /// A pushed tip is decoded strictly, off the event loop, and handed to whoever listens (sync
    /// verifies it); a push that does not decode gets a goodbye and the connection is closed.
    private func receivePush(_ context: ChannelHandlerContext, _ frame: Frame) {
        guard let peer, let pushes else { return }
        let payload = frame.payload
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.makeFutureWithTask {
            Result { try BCS.decode(CertifiedCheckpointSummary.self, fromContiguous: payload.readableBytesView) }
        }.whenSuccess { result in
            switch result {
            case .success(let certified):
                pushes.yield(PushedCheckpoint(peerID: peer, certified: certified))
            case .failure(let error):
                let (handler, context) = bound.value
                handler.errorCaught(context: context, error: WireError(.badPayload, "malformed pushCheckpoint: \(error)"))
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if peer == nil { NetMetrics.shared.handshakeFailed(error) }
        logger.notice("closing connection", metadata: [
            "peer.address": "\(context.remoteAddress.map { "\($0)" } ?? "?")",
            "peer.id": "\(peer.map { $0.raw.short } ?? "none")", "reason": "\(error)",
        ])
        // After the handshake, tell the peer why before closing (a goodbye frame).
        if peer != nil, context.channel.isActive {
            let reason = ByteBuffer(bytes: Array("\(error)".utf8.prefix(1_024)))
            let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(wrapOutboundOut(Frame(kind: .oneWay, method: Method.goodbye.rawValue, requestID: 0, payload: reason)))
                .whenComplete { _ in bound.value.close(promise: nil) }
        } else {
            context.close(promise: nil)
        }
    }
}

/// A certified checkpoint a peer pushed (unverified: sync checks it before use).
public struct PushedCheckpoint: Sendable {
    /// A push from `peerID`.
    public init(peerID: PeerID, certified: CertifiedCheckpointSummary) {
        self.peerID = peerID
        self.certified = certified
    }

    /// Who pushed it (its key, proven in the handshake).
    public let peerID: PeerID
    /// The pushed certified summary.
    public let certified: CertifiedCheckpointSummary
}

/// The last handler of an accepted connection: logs what no handler before it took (a peer
/// that spoke the wrong transport) and closes.
final class SnifferErrorLogger: ChannelInboundHandler {
    typealias InboundIn = Any
    private let logger: Logger

    init(logger: Logger) { self.logger = logger }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.notice("closing connection", metadata: [
            "peer.address": "\(context.remoteAddress.map { "\($0)" } ?? "?")", "reason": "\(error)",
        ])
        context.close(promise: nil)
    }
}

/// Closes a connection that went quiet for the idle timeout.
final class IdleCloser: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? IdleStateHandler.IdleStateEvent, e == .read {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}

/// What a server shares across its connections: open connections and requests in flight.
final class ServerState: Sendable {
    let requests = Atomic<Int>(0)
    /// The tasks running service calls, so a stop can cancel and await them before the store
    /// they read closes; `nil` once stopping (new calls are refused).
    private let tasks = Mutex<(next: UInt64, running: [UInt64: Task<Void, Never>])?>((0, [:]))

    /// Runs `work` (a service call) as a tracked task; its result completes the returned
    /// future on `loop`. Once the server is stopping, fails at once (the node is going away).
    func run<T: Sendable>(on loop: any EventLoop, _ work: @escaping @Sendable () async -> T) -> EventLoopFuture<T> {
        let promise = loop.makePromise(of: T.self)
        let started = tasks.withLock { state -> Bool in
            guard let id = state?.next else { return false }
            state?.next += 1
            state?.running[id] = Task { [weak self] in
                promise.succeed(await work())
                self?.finished(id)
            }
            return true
        }
        if !started { promise.fail(WireError(.connectionClosed, "the node is stopping")) }
        return promise.futureResult
    }

    private func finished(_ id: UInt64) {
        tasks.withLock { state in _ = state?.running.removeValue(forKey: id) }
    }

    /// Refuses new service calls, cancels the running ones and waits for them to return.
    func cancelAndAwaitTasks() async {
        let running = tasks.withLock { state -> [Task<Void, Never>] in
            let all = state.map { Array($0.running.values) } ?? []
            state = nil
            return all
        }
        for t in running { t.cancel() }
        for t in running { await t.value }
    }
    let connections = Mutex<[ObjectIdentifier: any Channel]>([:])
    /// The peer of each connection whose handshake completed.
    let peers = Mutex<[ObjectIdentifier: PeerID]>([:])

    /// Registers a new connection; `false` when the server, the connection's address or its
    /// network group already holds its limit of connections.
    func add(_ channel: any Channel, configuration: NetConfiguration) -> Bool {
        let address = channel.remoteAddress?.ipAddress
        let group = channel.remoteAddress.map(ConnectionGroup.init)
        let admitted = connections.withLock { open -> Bool in
            guard open.count < configuration.maxConnections else { return false }
            var sameAddress = 0
            var sameGroup = 0
            for other in open.values {
                guard let remote = other.remoteAddress else { continue }
                if remote.ipAddress == address { sameAddress += 1 }
                if ConnectionGroup(remote) == group { sameGroup += 1 }
            }
            guard sameAddress < configuration.maxConnectionsPerAddress, sameGroup < configuration.maxConnectionsPerGroup else { return false }
            open[ObjectIdentifier(channel)] = channel
            return true
        }
        if admitted {
            channel.closeFuture.whenComplete { [self] _ in
                _ = connections.withLock { $0.removeValue(forKey: ObjectIdentifier(channel)) }
                _ = peers.withLock { $0.removeValue(forKey: ObjectIdentifier(channel)) }
            }
        }
        return admitted
    }
}

/// The network group of an address, for connection caps: an IPv4 /24, an IPv6 /48, or the
/// address itself for other kinds.
struct ConnectionGroup: Hashable, Sendable, CustomStringConvertible {
    /// The group's prefix bytes (or the address's text for other kinds).
    let prefix: [UInt8]

    /// The group of `address`.
    init(_ address: SocketAddress) {
        switch address {
        case .v4(let a):
            let ip = UInt32(bigEndian: a.address.sin_addr.s_addr)
            prefix = [4, UInt8(truncatingIfNeeded: ip >> 24), UInt8(truncatingIfNeeded: ip >> 16), UInt8(truncatingIfNeeded: ip >> 8)]
        case .v6(let a):
            var bytes = a.address.sin6_addr
            let all = withUnsafeBytes(of: &bytes) { Array($0) }
            prefix = [6] + all.prefix(6)
        default:
            prefix = Array("\(address)".utf8)
        }
    }

    /// `4:a.b.c/24`, `6:hex/48`, or the address.
    var description: String {
        switch prefix.first {
        case 4 where prefix.count == 4: return "\(prefix[1]).\(prefix[2]).\(prefix[3]).0/24"
        case 6: return prefix.dropFirst().map { String($0, radix: 16) }.joined(separator: ":") + "::/48"
        default: return String(decoding: prefix, as: UTF8.self)
        }
    }
}

/// A listening socket that serves history to peers that complete the handshake.
public final class NetServer: Sendable {
    /// The bound port (useful with port 0).
    public let port: Int
    private let channel: any Channel
    private let state: ServerState

    private init(channel: any Channel, port: Int, state: ServerState) {
        self.channel = channel
        self.port = port
        self.state = state
    }

    /// Inbound connections whose handshake completed and that are still open.
    public var inboundPeers: Int { state.peers.withLock { $0.count } }

    /// Open connections.
    public var connectionCount: Int { state.connections.withLock { $0.count } }

    /// Requests being answered now.
    public var requestsInFlight: Int { state.requests.load(ordering: .relaxed) }

    /// Sends a one-way message (such as `pushCheckpoint`) to every connected peer; connections
    /// still in their handshake refuse it. `except` skips one peer (the one it came from).
    public func broadcast(_ method: Method, _ payload: [UInt8], except: PeerID? = nil) {
        let open = state.connections.withLock { Array($0.values) }
        for channel in open {
            let peer = state.peers.withLock { $0[ObjectIdentifier(channel)] }
            guard peer != nil, peer != except else { continue }
            let frame = Frame(kind: .oneWay, method: method.rawValue, requestID: 0, payload: ByteBuffer(bytes: payload))
            channel.writeAndFlush(frame, promise: nil)
        }
    }

    /// A graceful stop: stops accepting, lets the requests in flight finish (up to `drain`),
    /// then refuses new service calls, cancels those still running and waits for them to
    /// return (so none reaches the store after this returns), and closes every connection.
    public func shutdown(drain: Duration) async {
        try? await channel.close()
        let deadline = ContinuousClock.now + drain
        while requestsInFlight > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
        await state.cancelAndAwaitTasks()
        let open = state.connections.withLock { Array($0.values) }
        for c in open { try? await c.close() }
        await HandshakeHandler.waitForOffloads()
    }

    /// Binds `host:port` (port 0: any free port) and serves `service` as `identity`.
    /// - Parameters:
    ///   - logger: where connection failures (handshake refusals with their reason, malformed
    ///     frames) are logged.
    ///   - pushes: receives the checkpoints peers push (`pushCheckpoint`), if given.
    ///   - access: who is answered (everyone by default).
    ///   - inbound: told of every peer that completes the handshake, if given.
    ///   - gossip: where the gossip frames (method 24) of connected peers go, if given.
    public static func start(
        host: String, port: Int, identity: HandshakeIdentity, service: some HistoryServing,
        configuration: NetConfiguration = NetConfiguration(), group: any EventLoopGroup,
        logger: Logger = Logger(label: "soma.net"), pushes: AsyncStream<PushedCheckpoint>.Continuation? = nil,
        access: AccessPolicy = .open, inbound: AsyncStream<InboundPeer>.Continuation? = nil, gossip: GossipInbox? = nil
    ) async throws -> NetServer {
        // The serving metrics exist (at zero) from the start, not from the first request.
        _ = NetMetrics.shared
        let globalBudget = configuration.uploadBytesPerSecond.map { ByteBudget(bytesPerSecond: $0) }
        let state = ServerState()
        let tls = configuration.tls ? try identity.tls() : nil
        let policy = HandshakePolicy(tls: configuration.tls, allowed: access.allowed)
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(NetConfiguration.notSentLowat, value: SocketOptionValue(configuration.unsentBytes ?? Int(Int32.max)))
            .childChannelInitializer { channel in
                guard state.add(channel, configuration: configuration) else {
                    return channel.close()
                }
                return channel.eventLoop.makeCompletedFuture {
                    let ops = channel.pipeline.syncOperations
                    if let shape = configuration.linkShape { try ops.addHandler(LinkShaper(shape: shape)) }
                    if let idle = configuration.idleTimeout {
                        try ops.addHandler(IdleStateHandler(readTimeout: idle))
                        try ops.addHandler(IdleCloser())
                    }
                    try ops.addHandler(TransportSniffer(tls: tls != nil) { context in
                        var handlers: [any ChannelHandler] = []
                        if let tls {
                            handlers.append(NIOSSLServerHandler(context: tls.serverContext) { chain, promise in
                                promise.succeed(TLSIdentity.verify(chain, expected: nil))
                            })
                        }
                        handlers += [
                            ByteToMessageHandler(FrameDecoder(maxFrameBytes: configuration.maxFrameBytes)),
                            FrameEncoder(),
                            WriteScheduler(scheduling: configuration.writeScheduling),
                            HandshakeHandler(identity: identity, role: .listener, policy: policy, timeout: configuration.handshakeTimeout),
                            RequestHandler(
                                service: service, configuration: configuration, globalBudget: globalBudget, state: state,
                                logger: logger, pushes: pushes, access: access, inbound: inbound, gossip: gossip),
                        ]
                        try context.pipeline.syncOperations.addHandlers(handlers, position: .after(context.handler))
                    })
                    try ops.addHandler(SnifferErrorLogger(logger: logger))
                }
            }
            .bind(host: host, port: port).get()
        guard let bound = channel.localAddress?.port else {
            try? await channel.close()
            throw WireError(.handshakeFailed, "the server socket has no port")
        }
        return NetServer(channel: channel, port: bound, state: state)
    }

    /// Stops listening (connections already open finish on their own), then waits until no
    /// handshake work is left on the thread pool (``HandshakeHandler/waitForOffloads(limit:)``),
    /// so that the caller may shut the event loops down.
    public func close() async throws {
        try await channel.close()
        await HandshakeHandler.waitForOffloads()
    }
}
