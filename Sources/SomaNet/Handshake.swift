public import NIOCore
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

    /// The bytes a side signs to prove its key: the domain, the chain, the *other* side's
    /// nonce and its own key, so a proof cannot be replayed to another peer or chain.
    public static func proofMessage(chainID: Digest, peerNonce: Digest, signer: PeerID) -> [UInt8] {
        Array("soma-node handshake v1::".utf8) + chainID.bytes + peerNonce.bytes + signer.raw.bytes
    }
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
    /// Message propagation.
    case publish = 24
    /// Consecutive blocks, streamed: one stream item a block part, then a stream end.
    case getBlocks = 25
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

    /// Its node information for the hello, as it is now.
    public var nodeInfo: [UInt8] { nodeInfoSlot.bytes }

    /// Creates an identity with fixed node information.
    public init(key: SigningKey, chainID: Digest, protocolVersion: UInt64 = 1, nodeInfo: [UInt8] = []) {
        self.init(key: key, chainID: chainID, protocolVersion: protocolVersion, nodeInfoSlot: NodeInfoSlot(nodeInfo))
    }

    /// Creates an identity whose hellos carry what `nodeInfoSlot` holds when each is sent.
    public init(key: SigningKey, chainID: Digest, protocolVersion: UInt64 = 1, nodeInfoSlot: NodeInfoSlot) {
        self.key = key
        self.chainID = chainID
        self.protocolVersion = protocolVersion
        self.nodeInfoSlot = nodeInfoSlot
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

/// Runs the handshake on a channel of ``Frame``s: sends ``Hello``, checks the peer's (version,
/// chain), signs the peer's nonce, verifies the peer's signature over ours. Until then no other
/// frame passes; afterwards frames pass through untouched. Any failure, or no completed
/// handshake within `timeout`, sends a ``Method/goodbye`` with the reason and closes; the
/// reason is also fired as the channel's error so that both sides can log it.
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
        case waitingForProof(Hello)
        case established
        case failed
    }

    private let identity: HandshakeIdentity
    private let timeout: TimeAmount
    private let nonce: Digest
    private var state = State.waitingForHello
    private var timer: Scheduled<Void>?

    /// A handler for `identity`, giving up after `timeout`.
    public init(identity: HandshakeIdentity, timeout: TimeAmount = .seconds(5)) {
        self.identity = identity
        self.timeout = timeout
        var rng = SystemRandomNumberGenerator()
        nonce = Digest(bytes: (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) })!
    }

    /// Sends the hello once connected, and arms the timeout.
    public func channelActive(context: ChannelHandlerContext) {
        let hello = Hello(
            protocolVersion: identity.protocolVersion, chainID: identity.chainID, peerID: identity.key.publicKey,
            nonce: nonce, nodeInfo: identity.nodeInfo)
        send(context, .hello, hello.bcsBytes)
        context.flush()
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let millis = timeout.nanoseconds / 1_000_000
        timer = context.eventLoop.scheduleTask(in: timeout) {
            let (handler, context) = bound.value
            if case .established = handler.state { return }
            handler.fail(context, WireError(.handshakeFailed, "no completed handshake within \(millis) ms"))
        }
        context.fireChannelActive()
    }

    /// Cancels the timeout.
    public func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        context.fireChannelInactive()
    }

    private func send(_ context: ChannelHandlerContext, _ method: Method, _ bytes: [UInt8]) {
        var buffer = context.channel.allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        context.write(wrapOutboundOut(Frame(kind: .oneWay, method: method.rawValue, requestID: 0, payload: buffer)), promise: nil)
    }

    private func fail(_ context: ChannelHandlerContext, _ error: WireError) {
        if case .failed = state { return }
        state = .failed
        timer?.cancel()
        send(context, .goodbye, Array(error.description.utf8))
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
            if frame.method == Method.goodbye.rawValue {
                let reason = String(decoding: frame.payload.readableBytesView, as: UTF8.self)
                fail(context, WireError(.handshakeFailed, "the peer closed the handshake: \(reason)"))
                return
            }
            handshake(context, frame)
        }
    }

    private func handshake(_ context: ChannelHandlerContext, _ frame: Frame) {
        switch state {
        case .waitingForHello:
            guard frame.kind == .oneWay, frame.method == Method.hello.rawValue else {
                return fail(context, WireError(.handshakeFailed, "expected a hello, got method \(frame.method)"))
            }
            let hello: Hello
            do {
                hello = try Hello(bcsBytes: Array(frame.payload.readableBytesView))
            } catch {
                return fail(context, WireError(.badPayload, "hello: \(error)"))
            }
            guard hello.protocolVersion == identity.protocolVersion else {
                return fail(context, WireError(.wrongVersion, "peer speaks protocol \(hello.protocolVersion), this node \(identity.protocolVersion)"))
            }
            guard hello.chainID == identity.chainID else {
                return fail(context, WireError(.wrongChain, "peer follows chain \(hello.chainID.short), this node \(identity.chainID.short)"))
            }
            let proof = identity.key.sign(Hello.proofMessage(chainID: identity.chainID, peerNonce: hello.nonce, signer: identity.key.publicKey))
            state = .waitingForProof(hello)
            send(context, .helloProof, proof.bytes)
            context.flush()
        case .waitingForProof(let hello):
            guard frame.kind == .oneWay, frame.method == Method.helloProof.rawValue,
                  let signature = Signature(bytes: Array(frame.payload.readableBytesView))
            else {
                return fail(context, WireError(.badProof, "expected a 64-byte proof, got method \(frame.method)"))
            }
            let message = Hello.proofMessage(chainID: identity.chainID, peerNonce: nonce, signer: hello.peerID)
            guard hello.peerID.isValidSignature(signature, for: message) else {
                return fail(context, WireError(.badProof, "the peer's proof of key \(hello.peerID.raw.short) does not verify"))
            }
            state = .established
            timer?.cancel()
            context.fireUserInboundEventTriggered(HandshakeCompleted(peerID: hello.peerID, hello: hello))
        case .established, .failed:
            return
        }
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
