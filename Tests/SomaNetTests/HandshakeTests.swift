import NIOCore
import NIOPosix
import SomaCore
import SomaNet
import Testing

/// Records how a handshake ended on one side.
final class HandshakeRecorder: ChannelInboundHandler, Sendable {
    typealias InboundIn = Frame
    let outcome: EventLoopPromise<Result<PeerID, WireError>>

    init(_ outcome: EventLoopPromise<Result<PeerID, WireError>>) { self.outcome = outcome }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let done = event as? HandshakeCompleted { outcome.succeed(.success(done.peerID)) }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        outcome.succeed(.failure(error as? WireError ?? WireError(.handshakeFailed, "\(error)")))
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        outcome.succeed(.failure(WireError(.handshakeFailed, "closed")))
    }
}

@Suite("Handshake over real sockets on 127.0.0.1", .serialized)
struct HandshakeTests {
    static let chain = Hashing.sha256(Array("chain".utf8))

    static func key(_ n: UInt8) -> SigningKey { try! SigningKey(seed: [UInt8](repeating: n, count: 32)) }

    static func pipeline(_ channel: any Channel, _ identity: HandshakeIdentity, _ promise: EventLoopPromise<Result<PeerID, WireError>>, timeout: TimeAmount) -> EventLoopFuture<Void> {
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameBytes: 1 << 20)))
            try channel.pipeline.syncOperations.addHandler(FrameEncoder())
            try channel.pipeline.syncOperations.addHandler(HandshakeHandler(identity: identity, timeout: timeout))
            try channel.pipeline.syncOperations.addHandler(HandshakeRecorder(promise))
        }
    }

    /// Runs a server with `serverIdentity` and a client with `clientIdentity`; returns both outcomes.
    static func run(server serverIdentity: HandshakeIdentity, client clientIdentity: HandshakeIdentity?, rawClient: [UInt8]? = nil,
                    timeout: TimeAmount = .seconds(2)) async throws -> (server: Result<PeerID, WireError>, client: Result<PeerID, WireError>?) {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let serverOutcome = group.next().makePromise(of: Result<PeerID, WireError>.self)
        let server = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { pipeline($0, serverIdentity, serverOutcome, timeout: timeout) }
            .bind(host: "127.0.0.1", port: 0).get()
        let port = server.localAddress!.port!
        var clientResult: Result<PeerID, WireError>? = nil
        if let clientIdentity {
            let clientOutcome = group.next().makePromise(of: Result<PeerID, WireError>.self)
            let client = try await ClientBootstrap(group: group)
                .channelInitializer { pipeline($0, clientIdentity, clientOutcome, timeout: timeout) }
                .connect(host: "127.0.0.1", port: port).get()
            clientResult = try await clientOutcome.futureResult.get()
            try? await client.close()
        } else {
            // A raw client: sends `rawClient` bytes (or nothing) and waits.
            let client = try await ClientBootstrap(group: group).connect(host: "127.0.0.1", port: port).get()
            if let rawClient { try await client.writeAndFlush(ByteBuffer(bytes: rawClient)) }
            _ = try await serverOutcome.futureResult.get()
            try? await client.close()
        }
        let serverResult = try await serverOutcome.futureResult.get()
        try await server.close()
        try await group.shutdownGracefully()
        return (serverResult, clientResult)
    }

    @Test("both sides prove their keys and learn each other's peer id")
    func success() async throws {
        let (s, c) = try await Self.run(
            server: HandshakeIdentity(key: Self.key(1), chainID: Self.chain),
            client: HandshakeIdentity(key: Self.key(2), chainID: Self.chain))
        #expect(try s.get() == Self.key(2).publicKey)
        #expect(try c?.get() == Self.key(1).publicKey)
    }

    @Test("a peer on another chain is refused by both sides with the reason")
    func wrongChain() async throws {
        let (s, c) = try await Self.run(
            server: HandshakeIdentity(key: Self.key(1), chainID: Self.chain),
            client: HandshakeIdentity(key: Self.key(2), chainID: Hashing.sha256([9])))
        #expect(throws: WireError.self) { try s.get() }
        if case .failure(let e) = s { #expect(e.code == .wrongChain || e.message.contains("chain")) }
        if case .failure(let e) = c { #expect(e.code == .wrongChain || e.message.contains("chain"), "\(e)") } else { Issue.record("client accepted") }
    }

    @Test("a peer on another protocol version is refused")
    func wrongVersion() async throws {
        let (s, c) = try await Self.run(
            server: HandshakeIdentity(key: Self.key(1), chainID: Self.chain),
            client: HandshakeIdentity(key: Self.key(2), chainID: Self.chain, protocolVersion: 2))
        guard case .failure(let se) = s, case .failure(let ce)? = c else {
            Issue.record("a version mismatch was accepted")
            return
        }
        #expect(se.code == .wrongVersion || se.message.contains("protocol"))
        #expect(ce.code == .wrongVersion || ce.message.contains("protocol"))
    }

    @Test("a proof signed over the wrong bytes is refused")
    func badProof() async throws {
        // A client that sends a valid hello, then a proof signed over a wrong nonce.
        let key = Self.key(3)
        let hello = Hello(protocolVersion: 1, chainID: Self.chain, peerID: key.publicKey, nonce: Hashing.sha256([1]), nodeInfo: [])
        let proof = key.sign(Hello.proofMessage(chainID: Self.chain, peerNonce: Hashing.sha256([2]), signer: key.publicKey))
        var bytes = ByteBuffer()
        Frame(kind: .oneWay, method: Method.hello.rawValue, requestID: 0, payload: ByteBuffer(bytes: hello.bcsBytes)).write(into: &bytes)
        Frame(kind: .oneWay, method: Method.helloProof.rawValue, requestID: 0, payload: ByteBuffer(bytes: proof.bytes)).write(into: &bytes)
        let (s, _) = try await Self.run(server: HandshakeIdentity(key: Self.key(1), chainID: Self.chain), client: nil,
                                        rawClient: Array(bytes.readableBytesView))
        guard case .failure(let e) = s else {
            Issue.record("a bad proof was accepted")
            return
        }
        #expect(e.code == .badProof, "\(e)")
    }

    @Test("a silent peer is dropped after the timeout; garbage instead of a hello is refused")
    func silenceAndGarbage() async throws {
        let (s, _) = try await Self.run(server: HandshakeIdentity(key: Self.key(1), chainID: Self.chain), client: nil, timeout: .milliseconds(300))
        guard case .failure(let e) = s else {
            Issue.record("a silent peer completed a handshake")
            return
        }
        #expect(e.code == .handshakeFailed, "\(e)")
        let (g, _) = try await Self.run(server: HandshakeIdentity(key: Self.key(1), chainID: Self.chain), client: nil,
                                        rawClient: [0, 0, 0, 14, 3, 0, 0, 0] + Array(repeating: 0xFF, count: 10))
        guard case .failure(let ge) = g else {
            Issue.record("garbage completed a handshake")
            return
        }
        #expect(ge.code == .badPayload, "\(ge)")
    }
}
