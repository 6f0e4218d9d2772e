public import NIOCore
import NIOSSL
import NIOTLS
public import NIOPosix
public import SomaCore
import Synchronization

/// The first message each side sends (method ``Method/hello``, a one-way frame).
public struct Hello: Hashable, Sendable, BCSCodable {
    /// The protocol version this node speaks.
    public var protocolVersion: UInt64
    /// The chain it follows: the digest of checkpoint 0.
    public var chainID: Digest
    /// Its Ed25519 key.
    public var peerID: PeerID
    /// 32 fresh random bytes the other side must sign.
    public var nonce: Digest
    /// Its signed node information (opaque here; discovery defines it), at most 4 KiB.
    public var nodeInfo: [UInt8]

    /// The largest `nodeInfo` accepted.
    public static let maxNodeInfoBytes = 4_096

    /// Creates a hello.
    public init(protocolVersion: UInt64, chainID: Digest, peerID: PeerID, nonce: Digest, nodeInfo: [UInt8]) {
        self.protocolVersion = protocolVersion
        self.chainID = chainID
        self.peerID = peerID
        self.nonce = nonce
        self.nodeInfo = nodeInfo
    }

    /// Writes the fields in order.
    public func encode(to writer: inout BCSWriter) {
        writer.write(protocolVersion)
        writer.write(chainID)
        writer.write(peerID)
        writer.write(nonce)
        writer.writeBytes(nodeInfo)
    }

    /// Reads the fields in order; `nodeInfo` over 4 KiB is refused.
    public init(from reader: inout BCSReader) throws(CoreError) {
        protocolVersion = try reader.readU64()
        chainID = try reader.readDigest()
        peerID = try reader.read(PeerID.self)
        nonce = try reader.readDigest()
        nodeInfo = try reader.readBytes()
        guard nodeInfo.count <= Hello.maxNodeInfoBytes else {
            throw CoreError(.lengthTooLarge, "node info of \(nodeInfo.count) bytes")
        }
    }

    /// The largest encoded hello: the fixed fields (104 bytes), a 2-byte length and 4 KiB of node info.
    public static let maxEncodedBytes = 104 + 2 + maxNodeInfoBytes

    /// The bytes a side signs to prove its key (protocol 3): the domain, the signer's role, then
    /// both hellos exactly as sent, the dialer's first. Both hellos carry fresh nonces, so the
    /// proof is bound to this session; the role keeps a proof from being reflected back; under
    /// TLS the hello's key must also be the key of the certificate the TLS session proved.
    public static func proofMessage(role: HandshakeRole, dialerHello: [UInt8], listenerHello: [UInt8]) -> [UInt8] {
        var m = Array("soma-node handshake v2::".utf8)
        m.reserveCapacity(m.count + 1 + dialerHello.count + listenerHello.count)
        m.append(role.rawValue)
        m += dialerHello
        m += listenerHello
        return m
    }
}

/// Which end of a connection a side is: the one that dialled, or the one that accepted.
public enum HandshakeRole: UInt8, Sendable {
    /// The side that opened the connection; it sends its hello first.
    case dialer = 0
    /// The side that accepted it; it answers the dialer's hello with its own.
    case listener = 1
}

/// Method numbers of the protocol (the `method` field of a frame).
public enum Method: UInt16, Sendable, CaseIterable {
    /// ``Hello``, one-way, first frame of each side.
    case hello = 0
    /// The proof of the key: a 64-byte Ed25519 signature, one-way, second frame.
    case helloProof = 1
    /// A UTF-8 reason, one-way, sent before closing.
    case goodbye = 2
    /// Known peers.
    case getKnownPeers = 16
    /// Held ranges and snapshot epochs.
    case getAvailability = 17
    /// Certified end-of-epoch summaries.
    case getEpochEndings = 18
    /// A batch of summaries.
    case getSummaries = 19
    /// A stored block.
    case getBlock = 20
    /// A new certified tip (one-way).
    case pushCheckpoint = 21
    /// A snapshot manifest.
    case getSnapshotManifest = 22
    /// A snapshot chunk.
    case getSnapshotChunk = 23
    /// Gossip (one-way): a batch of messages, announcements, requests and acknowledgements of
    /// message propagation (SomaGossip, DESIGN §12); the payload's first byte is its ``Priority``.
    case gossip = 24
    /// Consecutive blocks, streamed: one stream item a block part, then a stream end.
    case getBlocks = 25
    /// Transactions by digest, each with its effects and its entry proof.
    case getTransactions = 26
    /// Object versions, each with the transaction that wrote it and its entry proof.
    case getObjects = 27
}

/// This node's side of the handshake.
public struct HandshakeIdentity: Sendable {
    /// The signing key behind the peer id.
    public let key: SigningKey
    /// The chain this node follows.
    public let chainID: Digest
    /// The protocol version it speaks.
    public let protocolVersion: UInt64
    /// Where its current node information is kept (discovery re-signs it over time).
    public let nodeInfoSlot: NodeInfoSlot
    private let tlsCache: TLSIdentityCache

    /// Its node information for the hello, as it is now.
    public var nodeInfo: [UInt8] { nodeInfoSlot.bytes }

    /// Creates an identity with fixed node information.
    public init(key: SigningKey, chainID: Digest, protocolVersion: UInt64 = SomaNet.protocolVersion, nodeInfo: [UInt8] = []) {
        self.init(key: key, chainID: chainID, protocolVersion: protocolVersion, nodeInfoSlot: NodeInfoSlot(nodeInfo))
    }

    /// Creates an identity whose hellos carry what `nodeInfoSlot` holds when each is sent.
    public init(key: SigningKey, chainID: Digest, protocolVersion: UInt64 = SomaNet.protocolVersion, nodeInfoSlot: NodeInfoSlot) {
        self.key = key
        self.chainID = chainID
        self.protocolVersion = protocolVersion
        self.nodeInfoSlot = nodeInfoSlot
        self.tlsCache = TLSIdentityCache(key: key)
    }

    /// The TLS certificate and contexts of this identity, built on first use and then shared by
    /// every connection (and every copy of this identity).
    /// - Throws: ``WireError`` `tlsFailed` if they cannot be built.
    public func tls() throws -> TLSIdentity { try tlsCache.get() }
}

/// Builds an identity's ``TLSIdentity`` once.
final class TLSIdentityCache: Sendable {
    private let key: SigningKey
    private let built = Mutex<TLSIdentity?>(nil)

    init(key: SigningKey) { self.key = key }

    func get() throws -> TLSIdentity {
        try built.withLock { slot in
            if let slot { return slot }
            let made = try TLSIdentity(key: key)
            slot = made
            return made
        }
    }
}

/// The node information a node's hellos carry, replaceable while connections come and go.
public final class NodeInfoSlot: Sendable {
    private let value: Mutex<[UInt8]>

    /// A slot holding `bytes` (at most ``Hello/maxNodeInfoBytes``).
    public init(_ bytes: [UInt8] = []) {
        precondition(bytes.count <= Hello.maxNodeInfoBytes, "node info over 4 KiB")
        value = Mutex(bytes)
    }

    /// What it holds now.
    public var bytes: [UInt8] { value.withLock { $0 } }

    /// Replaces what it holds (at most ``Hello/maxNodeInfoBytes``).
    public func set(_ bytes: [UInt8]) {
        precondition(bytes.count <= Hello.maxNodeInfoBytes, "node info over 4 KiB")
        value.withLock { $0 = bytes }
    }
}

/// Fired (as a user inbound event) when the peer has proven its key.
public struct HandshakeCompleted: Sendable {
    /// The peer's verified key.
    public let peerID: PeerID
    /// The peer's hello.
    public let hello: Hello
}

/// What a side of the handshake checks beyond version, chain and proof.
public struct HandshakePolicy: Sendable {
    /// Whether the connection runs inside TLS: the peer's hello must then name the key of the
    /// certificate the TLS session proved.
    public var tls: Bool
    /// The peer id a dialer expects (the one it dialled), if it knows it.
    public var expectedPeer: PeerID?
    /// Which peers a listener finishes handshakes with (a private node's allow-list); `nil`:
    /// everyone. A refused peer gets a goodbye before it receives this node's hello and record.
    public var allowed: Set<PeerID>?

    /// A policy.
    public init(tls: Bool, expectedPeer: PeerID? = nil, allowed: Set<PeerID>? = nil) {
        self.tls = tls
        self.expectedPeer = expectedPeer
        self.allowed = allowed
    }
}

/// Runs the handshake (protocol 3, `docs/PROTOCOL.md`) on a channel of ``Frame``s.
///
/// The dialer sends its ``Hello`` as soon as the connection is up; the listener checks it
/// (version, chain, not itself, under TLS the certificate's key, its allow-list) before it
/// answers with its own hello and its proof; the dialer checks that hello (and the peer id it
/// dialled, if known) and sends its proof. Each proof is an Ed25519 signature over both hellos
/// as sent (``Hello/proofMessage(role:dialerHello:listenerHello:)``). Until the handshake
/// completes no other frame passes: frames that arrive meanwhile wait (at most 64, 1 MiB), and
/// writes are refused. Signing and verifying run on a thread pool, off the event loop. Any
/// failure, or no completed handshake within `timeout`, sends a ``Method/goodbye`` with the
/// reason and closes; the reason is also fired as the channel's error so both sides can log it.
public final class HandshakeHandler: ChannelDuplexHandler {
    /// Frames in.
    public typealias InboundIn = Frame
    /// Frames on, after the handshake.
    public typealias InboundOut = Frame
    /// Frames out.
    public typealias OutboundIn = Frame
    /// Frames out.
    public typealias OutboundOut = Frame

    private enum State {
        case waitingForHello
        case waitingForProof(peer: Hello, dialerHello: [UInt8], listenerHello: [UInt8])
        case established
        case failed
    }

    /// Most frames, and bytes, held while the handshake is still being checked.
    static let maxHeldFrames = 64
    static let maxHeldBytes = 1 << 20

    private let identity: HandshakeIdentity
    private let role: HandshakeRole
    private let policy: HandshakePolicy
    private let timeout: TimeAmount
    private let pool: NIOThreadPool?
    private let nonce: Digest
    private var state = State.waitingForHello
    private var timer: Scheduled<Void>?
    private var ownHello: [UInt8] = []
    /// Frames that arrived while a signature was being made or checked.
    private var held: [Frame] = []
    private var heldBytes = 0
    private var working = false

    /// A handler for `identity` on the `role` end, giving up after `timeout`.
    /// - Parameter pool: where signatures are made and checked (default: NIO's shared pool);
    ///   `nil` does that work inline on the event loop, for embedded channels (tests, fuzzing)
    ///   only: a node keeps Ed25519 work off its event loops.
    public init(identity: HandshakeIdentity, role: HandshakeRole, policy: HandshakePolicy, timeout: TimeAmount = .seconds(5),
                pool: NIOThreadPool? = .singleton) {
        self.identity = identity
        self.role = role
        self.policy = policy
        self.timeout = timeout
        self.pool = pool
        var rng = SystemRandomNumberGenerator()
        var bytes = [UInt8](repeating: 0, count: 32)
        for i in bytes.indices { bytes[i] = UInt8.random(in: 0...255, using: &rng) }
        nonce = Digest(bytes: bytes) ?? .zero
    }

    /// Arms the timeout; a dialer sends its hello (under TLS it leaves once TLS is up).
    public func channelActive(context: ChannelHandlerContext) {
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let millis = timeout.nanoseconds / 1_000_000
        timer = context.eventLoop.scheduleTask(in: timeout) {
            let (handler, context) = bound.value
            if case .established = handler.state { return }
            handler.fail(context, WireError(.handshakeFailed, "no completed handshake within \(millis) ms"))
        }
        // A private dialer under TLS waits for the certificate to name an allow-listed key
        // before its hello (and record) leaves; everyone else speaks first at once.
        if role == .dialer && !(policy.allowed != nil && policy.tls) { sendDialerHello(context) }
        context.fireChannelActive()
    }

    private func sendDialerHello(_ context: ChannelHandlerContext) {
        // In plaintext a private node's record waits for a proven key it never gets: not sent.
        let record = policy.allowed != nil && !policy.tls ? [] : identity.nodeInfo
        ownHello = makeHello(nodeInfo: record).bcsBytes
        send(context, .hello, ownHello)
        context.flush()
    }

    /// A private dialer's TLS session is up: the listener's certificate must name an
    /// allow-listed key before this node's hello goes out.
    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if role == .dialer, ownHello.isEmpty, case .waitingForHello = state, let allowed = policy.allowed, policy.tls,
           let tls = event as? TLSUserEvent, case .handshakeCompleted = tls {
            let certificate = try? context.pipeline.syncOperations.nioSSL_peerCertificate()
            guard let certificate, let proven = TLSIdentity.peerID(of: certificate) else {
                return fail(context, WireError(.tlsFailed, "no Ed25519 certificate from the peer in the TLS session"))
            }
            guard allowed.contains(proven) else {
                return fail(context, WireError(.notAllowed, "this node is private: peer \(proven.raw.short) is not on its allow-list"))
            }
            sendDialerHello(context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// Cancels the timeout.
    public func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        context.fireChannelInactive()
    }

    private func makeHello(nodeInfo: [UInt8]) -> Hello {
        Hello(protocolVersion: identity.protocolVersion, chainID: identity.chainID, peerID: identity.key.publicKey, nonce: nonce, nodeInfo: nodeInfo)
    }

    private func send(_ context: ChannelHandlerContext, _ method: Method, _ bytes: [UInt8]) {
        var buffer = context.channel.allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        context.write(wrapOutboundOut(Frame(kind: .oneWay, method: method.rawValue, requestID: 0, payload: buffer)), promise: nil)
    }

    private func fail(_ context: ChannelHandlerContext, _ error: WireError) {
        if case .failed = state { return }
        state = .failed
        held.removeAll()
        timer?.cancel()
        send(context, .goodbye, Array(error.description.utf8.prefix(1_024)))
        context.flush()
        context.fireErrorCaught(error)
        context.close(promise: nil)
    }

    /// Handshake frames are handled here; later frames pass on.
    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch state {
        case .established:
            context.fireChannelRead(data)
        case .failed:
            return
        case .waitingForHello, .waitingForProof:
            if frame.kind == .oneWay, frame.method == Method.goodbye.rawValue {
                let reason = String(decoding: frame.payload.readableBytesView.prefix(1_024), as: UTF8.self)
                return fail(context, WireError(.handshakeFailed, "the peer closed the handshake: \(reason)"))
            }
            guard held.count < Self.maxHeldFrames, heldBytes + frame.payload.readableBytes <= Self.maxHeldBytes else {
                return fail(context, WireError(.handshakeFailed, "more than \(Self.maxHeldFrames) frames or \(Self.maxHeldBytes) bytes before the handshake completed"))
            }
            held.append(frame)
            heldBytes += frame.payload.readableBytes
            drain(context)
        }
    }

    /// Handles held frames in order while no signature is being made or checked; after the
    /// handshake, passes the rest on.
    private func drain(_ context: ChannelHandlerContext) {
        while !working, !held.isEmpty {
            if case .failed = state { return }
            let frame = held.removeFirst()
            heldBytes -= frame.payload.readableBytes
            if case .established = state {
                context.fireChannelRead(wrapInboundOut(frame))
                continue
            }
            handshake(context, frame)
        }
    }

    /// Runs `work` on the pool, then `done` on the event loop; frames wait meanwhile.
    private func offload<T: Sendable>(_ context: ChannelHandlerContext, _ work: @escaping @Sendable () -> T, then done: @escaping (HandshakeHandler, ChannelHandlerContext, T) -> Void) {
        guard let pool else {
            // Inline: the caller, `drain`, goes on with the held frames.
            done(self, context, work())
            return
        }
        working = true
        // The handler, its context and `done` stay on the event loop (the answer comes back there).
        let bound = NIOLoopBound((self, context, done), eventLoop: context.eventLoop)
        let promise = context.eventLoop.makePromise(of: T.self)
        // Counted until the answer is handed to the event loop (see waitForOffloads()).
        Self.offloads.add(1, ordering: .relaxed)
        pool.submit { state in
            defer { Self.offloads.subtract(1, ordering: .releasing) }
            switch state {
            case .active: promise.succeed(work())
            case .cancelled: promise.fail(NIOThreadPoolError.ThreadPoolInactive())
            }
        }
        promise.futureResult.whenComplete { result in
            let (handler, context, done) = bound.value
            handler.working = false
            if case .failed = handler.state { return }
            switch result {
            case .success(let value):
                done(handler, context, value)
                handler.drain(context)
            case .failure(let error):
                handler.fail(context, WireError(.handshakeFailed, "the handshake's thread pool is not running: \(error)"))
            }
        }
    }

    /// Handshake work on the thread pool whose answer is not yet handed to its event loop.
    static let offloads = Atomic<Int>(0)

    /// Waits (at most `limit`) until no handshake's signing or verifying is still on the thread
    /// pool: its answer goes to a connection's event loop, which must still run then. Call it
    /// before shutting an event loop group down (a refused or dropped connection does not wait
    /// for the work it started).
    public static func waitForOffloads(limit: Duration = .seconds(5)) async {
        let deadline = ContinuousClock.now + limit
        while offloads.load(ordering: .acquiring) > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(1))
        }
    }

    private func handshake(_ context: ChannelHandlerContext, _ frame: Frame) {
        switch state {
        case .waitingForHello:
            if role == .dialer && ownHello.isEmpty {
                return fail(context, WireError(.handshakeFailed, "the listener spoke before this node's hello"))
            }
            guard frame.kind == .oneWay, frame.method == Method.hello.rawValue else {
                return fail(context, WireError(.handshakeFailed, "expected a hello (one-way, method 0), got kind \(frame.kind) method \(frame.method)"))
            }
            let peerBytes = Array(frame.payload.readableBytesView)
            let hello: Hello
            do {
                hello = try Hello(bcsBytes: peerBytes)
            } catch {
                return fail(context, WireError(.badPayload, "hello: \(error)"))
            }
            if let refusal = check(context, hello) { return fail(context, refusal) }
            let key = identity.key
            switch role {
            case .listener:
                // A private listener reaches this line only for allow-listed peers; in plaintext
                // the peer's key is not proven yet, so a private node's record is not sent.
                let record = policy.allowed != nil && !policy.tls ? [] : identity.nodeInfo
                ownHello = makeHello(nodeInfo: record).bcsBytes
                let (dialer, listener) = (peerBytes, ownHello)
                state = .waitingForProof(peer: hello, dialerHello: dialer, listenerHello: listener)
                offload(context, { key.sign(Hello.proofMessage(role: .listener, dialerHello: dialer, listenerHello: listener)) }) { handler, context, proof in
                    handler.send(context, .hello, handler.ownHello)
                    handler.send(context, .helloProof, proof.bytes)
                    context.flush()
                }
            case .dialer:
                let (dialer, listener) = (ownHello, peerBytes)
                state = .waitingForProof(peer: hello, dialerHello: dialer, listenerHello: listener)
                offload(context, { key.sign(Hello.proofMessage(role: .dialer, dialerHello: dialer, listenerHello: listener)) }) { handler, context, proof in
                    handler.send(context, .helloProof, proof.bytes)
                    context.flush()
                }
            }
        case .waitingForProof(let hello, let dialerHello, let listenerHello):
            guard frame.kind == .oneWay, frame.method == Method.helloProof.rawValue,
                  let signature = Signature(bytes: frame.payload.readableBytesView)
            else {
                return fail(context, WireError(.badProof, "expected a 64-byte proof (one-way, method 1), got kind \(frame.kind) method \(frame.method) of \(frame.payload.readableBytes) bytes"))
            }
            let peerRole: HandshakeRole = role == .dialer ? .listener : .dialer
            let message = Hello.proofMessage(role: peerRole, dialerHello: dialerHello, listenerHello: listenerHello)
            let peer = hello.peerID
            offload(context, { peer.isValidSignature(signature, for: message) }) { handler, context, valid in
                guard valid else {
                    return handler.fail(context, WireError(.badProof, "the peer's proof of key \(peer.raw.short) does not verify"))
                }
                handler.state = .established
                handler.timer?.cancel()
                context.fireUserInboundEventTriggered(HandshakeCompleted(peerID: peer, hello: hello))
            }
        case .established, .failed:
            return
        }
    }

    /// What is wrong with the peer's hello, if anything.
    private func check(_ context: ChannelHandlerContext, _ hello: Hello) -> WireError? {
        guard hello.protocolVersion == identity.protocolVersion else {
            return WireError(.wrongVersion, "peer speaks protocol \(hello.protocolVersion), this node \(identity.protocolVersion)")
        }
        guard hello.chainID == identity.chainID else {
            return WireError(.wrongChain, "peer follows chain \(hello.chainID.short), this node \(identity.chainID.short)")
        }
        guard hello.peerID != identity.key.publicKey else {
            return WireError(.handshakeFailed, "the peer is this node itself (peer id \(hello.peerID.raw.short))")
        }
        if policy.tls {
            let certificate = try? context.pipeline.syncOperations.nioSSL_peerCertificate()
            guard let certificate, let proven = TLSIdentity.peerID(of: certificate) else {
                return WireError(.tlsFailed, "no Ed25519 certificate from the peer in the TLS session")
            }
            guard proven == hello.peerID else {
                return WireError(.wrongPeer, "the hello names peer \(hello.peerID.raw.short), the TLS certificate \(proven.raw.short)")
            }
        }
        if let expected = policy.expectedPeer, expected != hello.peerID {
            return WireError(.wrongPeer, "dialled peer \(expected.raw.short), reached \(hello.peerID.raw.short)")
        }
        if let allowed = policy.allowed, !allowed.contains(hello.peerID) {
            return WireError(.notAllowed, "this node is private: peer \(hello.peerID.raw.short) is not on its allow-list")
        }
        return nil
    }

    /// Application frames wait for the handshake: before it they are refused.
    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .established = state {
            context.write(data, promise: promise)
        } else {
            promise?.fail(WireError(.handshakeFailed, "the handshake has not completed"))
        }
    }
}
