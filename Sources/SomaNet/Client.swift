public import NIOCore
import NIOPosix
import NIOSSL
import Synchronization
public import SomaCore
public import SomaStore

/// Matches answers to requests by id, fails them on timeout or close, and reports the handshake.
final class ResponseHandler: ChannelInboundHandler {
    typealias InboundIn = Frame
    typealias OutboundOut = Frame

    private var context: ChannelHandlerContext?
    private var pending: [UInt64: (EventLoopPromise<Frame>, Scheduled<Void>?)] = [:]
    private var streams: [UInt64: (EventLoopPromise<[Frame]>, [Frame], Scheduled<Void>?)] = [:]
    private var streamBytes: [UInt64: Int] = [:]
    /// Streams whose items go to a consumer as they arrive instead of being kept (and how many went).
    private var consumers: [UInt64: @Sendable (ByteBuffer) -> Void] = [:]
    private var consumedItems: [UInt64: Int] = [:]
    let handshake: EventLoopPromise<HandshakeCompleted>
    let pushes: AsyncStream<PushedCheckpoint>.Continuation?
    let gossip: GossipInbox?
    private let maxStreamItems: Int
    private let maxStreamBytes: Int
    private var peerID: PeerID?

    init(handshake: EventLoopPromise<HandshakeCompleted>, pushes: AsyncStream<PushedCheckpoint>.Continuation?, gossip: GossipInbox? = nil,
         configuration: NetConfiguration) {
        self.handshake = handshake
        self.pushes = pushes
        self.gossip = gossip
        self.maxStreamItems = configuration.maxStreamItems
        self.maxStreamBytes = configuration.maxStreamBytes
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func send(id: UInt64, method: UInt16, payload: [UInt8], timeout: TimeAmount, promise: EventLoopPromise<Frame>) {
        guard let context else {
            promise.fail(WireError(.connectionClosed, "the connection is closed"))
            return
        }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let timer = context.eventLoop.scheduleTask(in: timeout) {
            if let (promise, _) = bound.value.pending.removeValue(forKey: id) {
                promise.fail(WireError(.timedOut, "no answer to request \(id) within \(timeout.nanoseconds / 1_000_000) ms"))
            }
        }
        pending[id] = (promise, timer)
        var buffer = context.channel.allocator.buffer(capacity: payload.count)
        buffer.writeBytes(payload)
        context.writeAndFlush(wrapOutboundOut(Frame(kind: .request, method: method, requestID: id, payload: buffer)), promise: nil)
    }

    /// A stream fails when no item arrives for `timeout` (a stall), however long it is.
    /// Sends a stream request; its items are kept and answered at the stream's end, or, with
    /// `consume`, handed to it one by one as they arrive (on the event loop) and not kept.
    func sendStream(
        id: UInt64, method: UInt16, payload: [UInt8], timeout: TimeAmount, promise: EventLoopPromise<[Frame]>,
        consume: (@Sendable (ByteBuffer) -> Void)? = nil
    ) {
        guard let context else {
            promise.fail(WireError(.connectionClosed, "the connection is closed"))
            return
        }
        streamTimeouts[id] = timeout
        if let consume { consumers[id] = consume }
        streams[id] = (promise, [], scheduleStall(id, timeout, context.eventLoop))
        context.writeAndFlush(wrapOutboundOut(Frame(kind: .request, method: method, requestID: id, payload: ByteBuffer(bytes: payload))), promise: nil)
    }

    private var streamTimeouts: [UInt64: TimeAmount] = [:]

    private func scheduleStall(_ id: UInt64, _ timeout: TimeAmount, _ loop: any EventLoop) -> Scheduled<Void> {
        let bound = NIOLoopBound(self, eventLoop: loop)
        return loop.scheduleTask(in: timeout) {
            let handler = bound.value
            let consumed = handler.consumedItems[id, default: 0]
            if let (promise, items, _) = handler.removeStream(id) {
                promise.fail(WireError(.timedOut, "stream \(id) stalled: no item for \(timeout.nanoseconds / 1_000_000) ms after \(items.count + consumed) items"))
            }
        }
    }

    /// Gives up on request `id` (the caller was cancelled): its answer, if it comes, is dropped.
    func cancel(id: UInt64) {
        if let (promise, timer) = pending.removeValue(forKey: id) {
            timer?.cancel()
            promise.fail(CancellationError())
        }
        if let (promise, _, timer) = removeStream(id) {
            timer?.cancel()
            promise.fail(CancellationError())
        }
    }

    func sendOneWay(method: UInt16, payload: [UInt8]) {
        guard let context else { return }
        context.writeAndFlush(wrapOutboundOut(Frame(kind: .oneWay, method: method, requestID: 0, payload: ByteBuffer(bytes: payload))), promise: nil)
    }

    /// The reason the peer gave when it said goodbye, if it did.
    private(set) var goodbye: String?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        if frame.kind == .oneWay && frame.method == Method.goodbye.rawValue {
            goodbye = String(decoding: frame.payload.readableBytesView, as: UTF8.self)
            return
        }
        if frame.kind == .oneWay && frame.method == Method.gossip.rawValue {
            if let peerID { gossip?(peerID, frame.payload) }
            return
        }
        if frame.kind == .oneWay && frame.method == Method.pushCheckpoint.rawValue {
            // The peer gossips a new tip on this connection too (it serves us, we follow it).
            // Decoded off the event loop; a push that does not decode closes the connection.
            guard let peerID, let pushes else { return }
            let payload = frame.payload
            let channel = context.channel
            context.eventLoop.makeFutureWithTask {
                try? BCS.decode(CertifiedCheckpointSummary.self, fromContiguous: payload.readableBytesView)
            }.whenSuccess { certified in
                guard let certified else { return channel.close(promise: nil) }
                pushes.yield(PushedCheckpoint(peerID: peerID, certified: certified))
            }
            return
        }
        if var entry = streams[frame.requestID] {
            switch frame.kind {
            case .streamItem:
                let bytes = streamBytes[frame.requestID, default: 0] + frame.payload.readableBytes
                let items = entry.1.count + consumedItems[frame.requestID, default: 0]
                guard items < maxStreamItems, bytes <= maxStreamBytes else {
                    _ = removeStream(frame.requestID)
                    entry.2?.cancel()
                    entry.0.fail(WireError(.tooLarge, "stream \(frame.requestID) exceeded \(maxStreamItems) items or \(maxStreamBytes) bytes"))
                    return
                }
                streamBytes[frame.requestID] = bytes
                if let consume = consumers[frame.requestID] {
                    consume(frame.payload)
                    consumedItems[frame.requestID] = items + 1
                } else {
                    entry.1.append(frame)
                }
                entry.2?.cancel()
                if let timeout = streamTimeouts[frame.requestID], let loop = self.context?.eventLoop {
                    entry.2 = scheduleStall(frame.requestID, timeout, loop)
                }
                streams[frame.requestID] = entry
            case .streamEnd:
                _ = removeStream(frame.requestID)
                entry.2?.cancel()
                entry.0.succeed(entry.1)
            case .error, .response:
                _ = removeStream(frame.requestID)
                entry.2?.cancel()
                entry.0.succeed([frame])
            default:
                break
            }
            return
        }
        guard frame.kind == .response || frame.kind == .error, let (promise, timer) = pending.removeValue(forKey: frame.requestID) else { return }
        timer?.cancel()
        promise.succeed(frame)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let done = event as? HandshakeCompleted {
            peerID = done.peerID
            handshake.succeed(done)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let error = Self.describe(error, goodbye: goodbye)
        handshake.fail(error)
        failAll(error)
        context.close(promise: nil)
    }

    /// TLS failures become ``WireError`` `tlsFailed` with a hint at the likely cause.
    static func describe(_ error: any Error, goodbye: String?) -> any Error {
        switch error {
        case let e as NIOSSLError:
            let hint = goodbye.map { "the peer said: \($0)" }
                ?? "the peer may speak plaintext (net.tls must match), or its certificate is not the Ed25519 key expected"
            return WireError(.tlsFailed, "TLS 1.3 handshake failed (\(e)); \(hint)")
        case let e as BoringSSLError:
            return WireError(.tlsFailed, "TLS failed (\(e))")
        default:
            return error
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        let error = WireError(.connectionClosed, goodbye.map { "the peer closed the connection: \($0)" } ?? "the peer closed the connection")
        handshake.fail(error)
        failAll(error)
        context.fireChannelInactive()
    }

    private func failAll(_ error: any Error) {
        for (_, (promise, timer)) in pending {
            timer?.cancel()
            promise.fail(error)
        }
        pending.removeAll()
        for (_, (promise, _, timer)) in streams {
            timer?.cancel()
            promise.fail(error)
        }
        streams.removeAll()
        streamTimeouts.removeAll()
        streamBytes.removeAll()
        consumers.removeAll()
        consumedItems.removeAll()
    }

    /// Forgets stream `id` (its bookkeeping and consumer); returns its entry, if it was open.
    private func removeStream(_ id: UInt64) -> (EventLoopPromise<[Frame]>, [Frame], Scheduled<Void>?)? {
        streamTimeouts.removeValue(forKey: id)
        streamBytes.removeValue(forKey: id)
        consumers.removeValue(forKey: id)
        consumedItems.removeValue(forKey: id)
        return streams.removeValue(forKey: id)
    }
}

/// A connection to a peer, after the handshake: typed calls of the history RPCs, many in flight
/// at once on one connection.
public final class PeerClient: Sendable {
    /// The peer's verified key.
    public let peerID: PeerID
    /// The peer's hello.
    public let hello: Hello
    private let channel: any Channel
    private let handler: NIOLoopBound<ResponseHandler>
    private let configuration: NetConfiguration
    private let nextID = Atomic<UInt64>(1)

    private init(channel: any Channel, handler: NIOLoopBound<ResponseHandler>, completed: HandshakeCompleted, configuration: NetConfiguration) {
        self.channel = channel
        self.handler = handler
        self.peerID = completed.peerID
        self.hello = completed.hello
        self.configuration = configuration
    }

    /// Connects to `host:port` and completes the handshake as `identity` (over TLS 1.3 unless
    /// `configuration.tls` is off); checkpoints the peer pushes on this connection go to
    /// `pushes`, if given.
    /// - Parameter expectedPeer: the peer id dialled, if known: any other key is refused
    ///   (`wrongPeer`, or `tlsFailed` when its certificate names another key).
    /// - Parameter allowed: a private node's allow-list: a peer not on it is refused
    ///   (`notAllowed`) before this node's hello leaves (under TLS: as soon as its certificate
    ///   names its key), and in plaintext the hello carries no record.
    /// - Parameter gossip: where the gossip frames the peer sends on this connection go, if given.
    /// - Throws: ``WireError`` (wrong chain, wrong version, bad proof, wrong peer, not allowed, TLS, timeout)
    ///   or a socket error.
    public static func connect(
        host: String, port: Int, identity: HandshakeIdentity, configuration: NetConfiguration = NetConfiguration(),
        group: any EventLoopGroup, pushes: AsyncStream<PushedCheckpoint>.Continuation? = nil, expectedPeer: PeerID? = nil,
        allowed: Set<PeerID>? = nil, gossip: GossipInbox? = nil
    ) async throws -> PeerClient {
        let loop = group.next()
        let handshake = loop.makePromise(of: HandshakeCompleted.self)
        let tls = configuration.tls ? try identity.tls() : nil
        let bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(configuration.handshakeTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(NetConfiguration.notSentLowat, value: SocketOptionValue(configuration.unsentBytes ?? Int(Int32.max)))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try configureDialer(channel, identity: identity, tls: tls, configuration: configuration, expectedPeer: expectedPeer, allowed: allowed)
                    try channel.pipeline.syncOperations.addHandler(ResponseHandler(handshake: handshake, pushes: pushes, gossip: gossip, configuration: configuration))
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: host, port: port).get()
        } catch {
            // No channel, so no handler will ever complete the handshake.
            handshake.fail(error)
            throw error
        }
        do {
            let completed = try await handshake.futureResult.get()
            let handler = try await channel.eventLoop.submit {
                NIOLoopBound(try channel.pipeline.syncOperations.handler(type: ResponseHandler.self), eventLoop: channel.eventLoop)
            }.get()
            return PeerClient(channel: channel, handler: handler, completed: completed, configuration: configuration)
        } catch {
            // Closed by the handshake already (a refusal) or by us now: either way wait until it
            // is, so nothing of this channel runs on its loop after the caller returns (and, say,
            // shuts the loop down).
            try? await channel.close()
            try? await channel.closeFuture.get()
            throw error
        }
    }

    /// Adds a dialer's transport to a new channel's pipeline, on its event loop: TLS 1.3 (when
    /// `tls` is given) pinning `expectedPeer` if known, the frame codec and the handshake (a
    /// private node passes its allow-list as `allowed`). The
    /// caller adds the handler that takes the frames after ``HandshakeCompleted``.
    public static func configureDialer(
        _ channel: any Channel, identity: HandshakeIdentity, tls: TLSIdentity?, configuration: NetConfiguration, expectedPeer: PeerID? = nil,
        allowed: Set<PeerID>? = nil
    ) throws {
        let ops = channel.pipeline.syncOperations
        if let shape = configuration.linkShape { try ops.addHandler(LinkShaper(shape: shape)) }
        if let tls {
            try ops.addHandler(NIOSSLClientHandler(context: tls.clientContext, serverHostname: nil) { chain, promise in
                promise.succeed(TLSIdentity.verify(chain, expected: expectedPeer))
            })
        }
        try ops.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameBytes: configuration.maxFrameBytes)))
        try ops.addHandler(FrameEncoder())
        try ops.addHandler(WriteScheduler(scheduling: configuration.writeScheduling))
        let policy = HandshakePolicy(tls: tls != nil, expectedPeer: expectedPeer, allowed: allowed)
        try ops.addHandler(HandshakeHandler(identity: identity, role: .dialer, policy: policy, timeout: configuration.handshakeTimeout))
    }

    /// Sends one request and returns the answer's payload.
    /// - Throws: the peer's ``RPCError``, or ``WireError`` (`timedOut`, `connectionClosed`).
    public func call(_ method: Method, _ payload: [UInt8] = [], timeout: TimeAmount? = nil) async throws -> [UInt8] {
        Array(try await callBuffer(method, payload, timeout: timeout).readableBytesView)
    }

    /// Sends one request and returns the answer's payload as received (no copy).
    public func callBuffer(_ method: Method, _ payload: [UInt8] = [], timeout: TimeAmount? = nil) async throws -> ByteBuffer {
        let promise = channel.eventLoop.makePromise(of: Frame.self)
        let handler = self.handler
        let t = timeout ?? configuration.requestTimeout
        let id = nextID.add(1, ordering: .relaxed).oldValue
        channel.eventLoop.execute { handler.value.send(id: id, method: method.rawValue, payload: payload, timeout: t, promise: promise) }
        let frame = try await withCancellation(id) { try await promise.futureResult.get() }
        guard frame.kind == .response else {
            throw (try? BCS.decode(RPCError.self, fromContiguous: frame.payload.readableBytesView))
                ?? RPCError.unavailable("an error answer that does not decode")
        }
        return frame.payload
    }

    private func decode<T: BCSDecodable>(_: T.Type, _ method: Method, _ payload: [UInt8], timeout: TimeAmount? = nil) async throws -> T {
        try BCS.decode(T.self, fromContiguous: try await callBuffer(method, payload, timeout: timeout).readableBytesView)
    }

    /// `getAvailability`.
    public func availability() async throws -> Availability {
        try await decode(Availability.self, .getAvailability, [])
    }

    /// `getEpochEndings`.
    public func epochEndings(from epoch: UInt64, max: UInt32 = EpochEndingsRequest.maxCount) async throws -> [CertifiedCheckpointSummary] {
        let bytes = try await call(.getEpochEndings, EpochEndingsRequest(fromEpoch: epoch, max: max).bcsBytes)
        return try BCS.read(from: bytes[...]) { (r: inout BCSReader) throws(CoreError) in
            try r.readVector(CertifiedCheckpointSummary.self, minElementSize: 74)
        }
    }

    /// `getSummaries`.
    public func summaries(from seq: UInt64, count: UInt32, allCertificates: Bool = false) async throws -> SummariesResponse {
        try await decode(SummariesResponse.self, .getSummaries, SummariesRequest(from: seq, count: count, allCertificates: allCertificates).bcsBytes)
    }

    /// `getBlock`: the stored LZ4 frame of one part, with its proof.
    public func block(_ seq: UInt64, part: UInt32 = 0) async throws -> ProvenFrame {
        try await decode(ProvenFrame.self, .getBlock, BlockRequest(seq: seq, part: part).bcsBytes)
    }

    /// `getTransactions`: for a prefix of `digests` (at least one), each with its effects and
    /// entry proof, `nil` where the peer does not hold it. Unverified: check each proof.
    public func transactions(_ digests: [Digest]) async throws -> [EntryWithProof?] {
        let answer = try await decode(ProvenItems<EntryWithProof>.self, .getTransactions, TransactionsRequest(digests: digests).bcsBytes)
        guard !answer.items.isEmpty, answer.items.count <= digests.count else {
            throw WireError(.badPayload, "getTransactions answered \(answer.items.count) items for \(digests.count) digests")
        }
        return answer.items
    }

    /// `getObjects`: for a prefix of `queries` (at least one), each version with the entry that
    /// wrote it, `nil` where the peer does not hold it. Unverified: check each proof.
    public func objects(_ queries: [ObjectQuery]) async throws -> [ObjectWithProof?] {
        let answer = try await decode(ProvenItems<ObjectWithProof>.self, .getObjects, ObjectsRequest(objects: queries).bcsBytes)
        guard !answer.items.isEmpty, answer.items.count <= queries.count else {
            throw WireError(.badPayload, "getObjects answered \(answer.items.count) items for \(queries.count) queries")
        }
        return answer.items
    }

    /// `getSnapshotManifest`.
    public func snapshotManifest(epoch: UInt64) async throws -> SnapshotManifest {
        try await decode(SnapshotManifest.self, .getSnapshotManifest, SnapshotRequest(epoch: epoch).bcsBytes)
    }

    /// `getSnapshotChunk`: the stored LZ4 chunk with its subtree proof and the chunk count.
    /// - Parameter timeout: the longest wait for the answer (default: the client's request timeout).
    public func snapshotChunk(epoch: UInt64, index: UInt32, timeout: TimeAmount? = nil) async throws -> ProvenFrame {
        try await decode(ProvenFrame.self, .getSnapshotChunk, SnapshotRequest(epoch: epoch, index: index).bcsBytes, timeout: timeout)
    }

    /// Runs `body` (waiting for request `id`); a cancelled caller drops the request at once.
    private func withCancellation<T: Sendable>(_ id: UInt64, _ body: () async throws -> T) async throws -> T {
        let handler = self.handler
        let loop = channel.eventLoop
        return try await withTaskCancellationHandler(operation: body, onCancel: {
            loop.execute { handler.value.cancel(id: id) }
        })
    }

    /// `getBlocks`: up to 32 consecutive checkpoints' blocks in one streamed answer (fewer if
    /// the peer stops holding them), each part with its proof. Each item is decoded as it
    /// arrives and its buffer let go (not all the stream's buffers held until its end); an item
    /// that does not decode fails the call once the stream has ended.
    /// - Parameter timeout: the longest wait for the next item (a stall fails the stream with
    ///   ``WireError`` `timedOut`, whatever its length); the request timeout by default.
    public func blocks(from seq: UInt64, count: UInt32, timeout: TimeAmount? = nil) async throws -> [BlockItem] {
        let decoded = DecodedItems()
        _ = try await blocks(from: seq, count: count, timeout: timeout) { item in decoded.add(item) }
        return try decoded.result()
    }

    /// The items of one stream, decoded as they come; the first failure, if any.
    private final class DecodedItems: Sendable {
        private let state = Mutex<(items: [BlockItem], failure: (any Error)?)>(([], nil))

        func add(_ item: ByteBuffer) {
            state.withLock { s in
                guard s.failure == nil else { return }
                do {
                    s.items.append(try BCS.decode(BlockItem.self, fromContiguous: item.readableBytesView))
                } catch {
                    s.failure = error
                }
            }
        }

        func result() throws -> [BlockItem] {
            try state.withLock { s in
                if let failure = s.failure { throw failure }
                return s.items
            }
        }
    }

    /// `getBlocks` with each item handed to `each` as it arrives, as received (`bcs(BlockItem)`,
    /// not decoded), instead of all kept until the stream ends: a caller that checks, forwards
    /// or counts items one at a time holds one at a time. `each` runs on the connection's event
    /// loop: keep it short. Returns how many items came (fewer than `count` if the peer stops
    /// holding them); the same limits and stall timeout as ``blocks(from:count:timeout:)``.
    public func blocks(
        from seq: UInt64, count: UInt32, timeout: TimeAmount? = nil, each: @escaping @Sendable (ByteBuffer) -> Void
    ) async throws -> Int {
        let promise = channel.eventLoop.makePromise(of: [Frame].self)
        let handler = self.handler
        let t = timeout ?? configuration.requestTimeout
        let payload = BlocksRequest(from: seq, count: count).bcsBytes
        let id = nextID.add(1, ordering: .relaxed).oldValue
        let items = ItemCount()
        let counted: @Sendable (ByteBuffer) -> Void = { item in
            items.value.add(1, ordering: .relaxed)
            each(item)
        }
        channel.eventLoop.execute {
            handler.value.sendStream(id: id, method: Method.getBlocks.rawValue, payload: payload, timeout: t, promise: promise, consume: counted)
        }
        let frames = try await withCancellation(id) { try await promise.futureResult.get() }
        if let first = frames.first, first.kind == .error {
            throw (try? BCS.decode(RPCError.self, fromContiguous: first.payload.readableBytesView)) ?? RPCError.unavailable("an error answer that does not decode")
        }
        if let first = frames.first, first.kind == .response {
            throw WireError(.badPayload, "getBlocks was answered with a response, not a stream")
        }
        return items.value.load(ordering: .relaxed)
    }

    private final class ItemCount: Sendable {
        let value = Atomic<Int>(0)
    }

    /// Pushes a new certified tip to the peer (one-way; no answer).
    public func push(_ certified: CertifiedCheckpointSummary) {
        send(.pushCheckpoint, certified.bcsBytes)
    }

    /// Sends a one-way message (no answer).
    public func send(_ method: Method, _ payload: [UInt8]) {
        let handler = self.handler
        channel.eventLoop.execute { handler.value.sendOneWay(method: method.rawValue, payload: payload) }
    }

    /// Whether the connection is still open.
    public var isConnected: Bool { channel.isActive }

    /// Completes when the connection closes.
    public var closed: EventLoopFuture<Void> { channel.closeFuture }

    /// Closes the connection and waits until it is closed (also when it was closing already);
    /// requests in flight fail with `connectionClosed`.
    public func close() async {
        try? await channel.close()
        try? await channel.closeFuture.get()
    }
}
