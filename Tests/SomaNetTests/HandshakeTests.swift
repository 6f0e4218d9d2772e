import NIOCore
import NIOPosix
import SomaCore
import SomaNet
import Synchronization
import Testing

/// A server that answers every request `notFound`: the handshake is what these tests look at.
struct NothingServed: HistoryServing {
    func handle(method: UInt16, payload: [UInt8]) async -> Result<ByteBuffer, RPCError> { .failure(.notFound("nothing here")) }
    func blockItem(seq: UInt64, part: UInt32) async -> Result<(ByteBuffer, UInt32)?, RPCError> { .success(nil) }
}

/// Collects every byte a raw connection receives until it closes.
final class ByteCollector: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let received = Mutex<[UInt8]>([])
    let closed: EventLoopPromise<Void>

    init(closed: EventLoopPromise<Void>) { self.closed = closed }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let b = unwrapInboundIn(data)
        received.withLock { $0 += Array(b.readableBytesView) }
    }

    func channelInactive(context: ChannelHandlerContext) { closed.succeed() }
    func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
}

@Suite("Handshake (protocol 3) over TLS 1.3 and plaintext on 127.0.0.1", .serialized)
struct HandshakeTests {
    static let chain = Hashing.sha256(Array("chain".utf8))

    static func key(_ n: UInt8) -> SigningKey { try! SigningKey(seed: [UInt8](repeating: n, count: 32)) }

    static func plaintext() -> NetConfiguration {
        var c = NetConfiguration()
        c.tls = false
        return c
    }

    static func withServer<T>(
        _ identity: HandshakeIdentity = HandshakeIdentity(key: key(1), chainID: chain), configuration: NetConfiguration = NetConfiguration(),
        access: AccessPolicy = .open, _ body: (NetServer, MultiThreadedEventLoopGroup) async throws -> T
    ) async throws -> T {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let server = try await NetServer.start(host: "127.0.0.1", port: 0, identity: identity, service: NothingServed(),
                                               configuration: configuration, group: group, access: access)
        do {
            let result = try await body(server, group)
            try? await server.close()
            try await group.shutdownGracefully()
            return result
        } catch {
            try? await server.close()
            try? await group.shutdownGracefully()
            throw error
        }
    }

    /// Sends `bytes` on a raw TCP connection and returns what came back before the server closed it.
    static func raw(_ port: Int, _ bytes: [UInt8], group: any EventLoopGroup) async throws -> [UInt8] {
        let loop = group.next()
        let closed = loop.makePromise(of: Void.self)
        let collector = ByteCollector(closed: closed)
        let channel = try await ClientBootstrap(group: loop)
            .channelInitializer { c in c.eventLoop.makeCompletedFuture { try c.pipeline.syncOperations.addHandler(collector) } }
            .connect(host: "127.0.0.1", port: port).get()
        if !bytes.isEmpty { try await channel.writeAndFlush(ByteBuffer(bytes: bytes)) }
        try await closed.futureResult.get()
        return collector.received.withLock { $0 }
    }

    static func frame(_ method: Method, _ payload: [UInt8]) -> [UInt8] {
        var b = ByteBuffer()
        Frame(kind: .oneWay, method: method.rawValue, requestID: 0, payload: ByteBuffer(bytes: payload)).write(into: &b)
        return Array(b.readableBytesView)
    }

    /// The goodbye reasons in a byte stream of plaintext frames.
    static func goodbyes(_ bytes: [UInt8]) -> [String] {
        var b = ByteBuffer(bytes: bytes)
        var out: [String] = []
        while let length = b.readInteger(as: UInt32.self), let header = b.readBytes(length: 12), let payload = b.readBytes(length: Int(length) - 12) {
            if header[0] == 3 && header[2] == 0 && header[3] == 2 { out.append(String(decoding: payload, as: UTF8.self)) }
        }
        return out
    }

    @Test("over TLS 1.3 both sides prove their keys and learn each other's peer id; pinning the dialled id works")
    func success() async throws {
        try await Self.withServer { server, group in
            let client = try await PeerClient.connect(host: "127.0.0.1", port: server.port, identity: HandshakeIdentity(key: Self.key(2), chainID: Self.chain),
                                                      group: group, expectedPeer: Self.key(1).publicKey)
            #expect(client.peerID == Self.key(1).publicKey)
            #expect(client.hello.protocolVersion == SomaNet.protocolVersion)
            await #expect(throws: RPCError.self) { _ = try await client.availability() }
            await client.close()
        }
    }

    @Test("the certificate is self-signed for the node's Ed25519 key, the same bytes every time")
    func certificate() throws {
        let a = try TLSIdentity(key: Self.key(7))
        let b = try TLSIdentity(key: Self.key(7))
        #expect(a.certificateDER == b.certificateDER)
        // The SubjectPublicKeyInfo of an Ed25519 key (RFC 8410) holds the raw key.
        let spki: [UInt8] = [0x30, 0x2A, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70, 0x03, 0x21, 0x00] + Self.key(7).publicKey.raw.bytes
        #expect(a.certificateDER.containsRun(spki))
    }

    @Test("dialling a known peer id and reaching another key is refused by TLS")
    func wrongPeer() async throws {
        try await Self.withServer { server, group in
            await #expect(throws: WireError.self) {
                _ = try await PeerClient.connect(host: "127.0.0.1", port: server.port, identity: HandshakeIdentity(key: Self.key(2), chainID: Self.chain),
                                                 group: group, expectedPeer: Self.key(9).publicKey)
            }
            // The server keeps serving.
            let ok = try await PeerClient.connect(host: "127.0.0.1", port: server.port, identity: HandshakeIdentity(key: Self.key(3), chainID: Self.chain), group: group)
            await ok.close()
        }
    }

    @Test("another chain, an old protocol and this node itself are refused with the reason", arguments: [true, false])
    func refusals(tls: Bool) async throws {
        let config = tls ? NetConfiguration() : Self.plaintext()
        try await Self.withServer(configuration: config) { server, group in
            do {
                _ = try await PeerClient.connect(host: "127.0.0.1", port: server.port, identity: HandshakeIdentity(key: Self.key(2), chainID: Hashing.sha256([9])),
                                                 configuration: config, group: group)
                Issue.record("another chain was accepted")
            } catch let e as WireError {
                #expect(e.message.contains("chain"), "\(e)")
            }
            do {
                _ = try await PeerClient.connect(host: "127.0.0.1", port: server.port, identity: HandshakeIdentity(key: Self.key(2), chainID: Self.chain, protocolVersion: 1),
                                                 configuration: config, group: group)
                Issue.record("protocol 1 was accepted")
            } catch let e as WireError {
                #expect(e.message.contains("protocol"), "\(e)")
            }
            do {
                _ = try await PeerClient.connect(host: "127.0.0.1", port: server.port, identity: HandshakeIdentity(key: Self.key(1), chainID: Self.chain),
                                                 configuration: config, group: group)
                Issue.record("a connection to itself was accepted")
            } catch let e as WireError {
                #expect(e.message.contains("itself"), "\(e)")
            }
        }
    }

    @Test("a plaintext peer on a TLS node gets a goodbye naming TLS; a TLS peer on a plaintext node is refused with a TLS error")
    func transportMismatch() async throws {
        try await Self.withServer { server, group in
            do {
                _ = try await PeerClient.connect(host: "127.0.0.1", port: server.port, identity: HandshakeIdentity(key: Self.key(2), chainID: Self.chain),
                                                 configuration: Self.plaintext(), group: group)
                Issue.record("a plaintext client was accepted by a TLS node")
            } catch let e as WireError {
                #expect(e.message.contains("requires TLS"), "\(e)")
            }
        }
        try await Self.withServer(configuration: Self.plaintext()) { server, group in
            do {
                _ = try await PeerClient.connect(host: "127.0.0.1", port: server.port, identity: HandshakeIdentity(key: Self.key(2), chainID: Self.chain), group: group)
                Issue.record("a TLS client was accepted by a plaintext node")
            } catch let e as WireError {
                #expect(e.code == .tlsFailed || e.code == .connectionClosed, "\(e)")
            }
        }
    }

    @Test("a private node refuses a stranger with a reason before sending its hello; an allow-listed peer gets in", arguments: [true, false])
    func privateNode(tls: Bool) async throws {
        let config = tls ? NetConfiguration() : Self.plaintext()
        let record: [UInt8] = Array("the private node's record".utf8)
        let identity = HandshakeIdentity(key: Self.key(1), chainID: Self.chain, nodeInfo: record)
        try await Self.withServer(identity, configuration: config, access: AccessPolicy(allowed: [Self.key(5).publicKey])) { server, group in
            do {
                _ = try await PeerClient.connect(host: "127.0.0.1", port: server.port, identity: HandshakeIdentity(key: Self.key(2), chainID: Self.chain),
                                                 configuration: config, group: group)
                Issue.record("a stranger completed a handshake with a private node")
            } catch let e as WireError {
                #expect(e.message.contains("allow-list"), "\(e)")
            }
            if !tls {
                // What a stranger receives: a goodbye and nothing else (no hello, no record).
                let stranger = Self.key(2)
                let hello = Hello(protocolVersion: SomaNet.protocolVersion, chainID: Self.chain, peerID: stranger.publicKey, nonce: Hashing.sha256([1]), nodeInfo: [])
                let answer = try await Self.raw(server.port, Self.frame(.hello, hello.bcsBytes), group: group)
                #expect(Self.goodbyes(answer).count == 1)
                #expect(!answer.containsRun(record))
            }
            let friend = try await PeerClient.connect(host: "127.0.0.1", port: server.port, identity: HandshakeIdentity(key: Self.key(5), chainID: Self.chain),
                                                      configuration: config, group: group)
            #expect(friend.hello.nodeInfo == (tls ? record : []))
            await friend.close()
        }
    }

    @Test("a private node dialling a peer not on its list stops before its hello (TLS) or sends no record (plaintext)", arguments: [true, false])
    func privateDialer(tls: Bool) async throws {
        let config = tls ? NetConfiguration() : Self.plaintext()
        let record: [UInt8] = Array("the private dialer's record".utf8)
        let identity = HandshakeIdentity(key: Self.key(6), chainID: Self.chain, nodeInfo: record)
        try await Self.withServer(configuration: config) { server, group in
            do {
                _ = try await PeerClient.connect(host: "127.0.0.1", port: server.port, identity: identity, configuration: config,
                                                 group: group, allowed: [Self.key(5).publicKey])
                Issue.record("a private node completed a handshake with a peer not on its list")
            } catch let e as WireError {
                #expect(e.code == .notAllowed, "\(e)")
                #expect(e.message.contains("allow-list"), "\(e)")
            }
            let friend = try await PeerClient.connect(host: "127.0.0.1", port: server.port, identity: identity, configuration: config,
                                                      group: group, allowed: [Self.key(1).publicKey])
            #expect(friend.peerID == Self.key(1).publicKey)
            await friend.close()
        }
    }

    /// What a relay over TLS would need: a hello of the impersonated key (here even with its
    /// valid proof, as if relayed in real time) inside a TLS session whose certificate is the
    /// relay's own, since it cannot present the impersonated key's. The listener refuses it on
    /// the certificate before any proof counts.
    @Test("over TLS a hello naming another key than the session's certificate (a relay) is refused")
    func relayedOverTLS() async throws {
        try await Self.withServer { server, group in
            let loop = group.next()
            let impersonated = HandshakeIdentity(key: Self.key(4), chainID: Self.chain)
            let relay = HandshakeIdentity(key: Self.key(7), chainID: Self.chain)
            let closed = loop.makePromise(of: Void.self)
            let goodbye = GoodbyeCatcher(closed: closed)
            let tls = try relay.tls()
            _ = try await ClientBootstrap(group: loop)
                .channelInitializer { c in
                    c.eventLoop.makeCompletedFuture {
                        try PeerClient.configureDialer(c, identity: impersonated, tls: tls, configuration: NetConfiguration())
                        try c.pipeline.syncOperations.addHandler(goodbye)
                    }
                }
                .connect(host: "127.0.0.1", port: server.port).get()
            try await closed.futureResult.get()
            let reasons = goodbye.reasons.withLock { $0 }
            #expect(reasons.contains { $0.contains("wrongPeer") && $0.contains("TLS certificate") }, "\(reasons)")
        }
    }

    @Test("a proof made for another session (relayed) or over the wrong bytes is refused")
    func relayedProof() async throws {
        try await Self.withServer(configuration: Self.plaintext()) { server, group in
            let key = Self.key(3)
            let hello = Hello(protocolVersion: SomaNet.protocolVersion, chainID: Self.chain, peerID: key.publicKey, nonce: Hashing.sha256([1]), nodeInfo: [])
            // Signed over a listener hello of another session (another nonce): what a relay would hold.
            let otherListener = Hello(protocolVersion: SomaNet.protocolVersion, chainID: Self.chain, peerID: Self.key(1).publicKey, nonce: Hashing.sha256([2]), nodeInfo: [])
            let proof = key.sign(Hello.proofMessage(role: .dialer, dialerHello: hello.bcsBytes, listenerHello: otherListener.bcsBytes))
            let answer = try await Self.raw(server.port, Self.frame(.hello, hello.bcsBytes) + Self.frame(.helloProof, proof.bytes), group: group)
            #expect(Self.goodbyes(answer).contains { $0.contains("badProof") }, "\(Self.goodbyes(answer)) \(answer.count)")
        }
    }

    @Test("a silent peer is dropped after the timeout; garbage and an oversized first frame are refused")
    func silenceAndGarbage() async throws {
        var config = Self.plaintext()
        config.handshakeTimeout = .milliseconds(300)
        try await Self.withServer(configuration: config) { server, group in
            // Silent: the server waits for the first byte, then the timeout closes it.
            let loop = group.next()
            let closed = loop.makePromise(of: Void.self)
            let started = ContinuousClock.now
            let channel = try await ClientBootstrap(group: loop)
                .channelInitializer { c in c.eventLoop.makeCompletedFuture { try c.pipeline.syncOperations.addHandler(ByteCollector(closed: closed)) } }
                .connect(host: "127.0.0.1", port: server.port).get()
            try await channel.writeAndFlush(ByteBuffer(bytes: [0]))
            try await closed.futureResult.get()
            #expect(ContinuousClock.now - started < .seconds(3))
            let garbage = try await Self.raw(server.port, [0, 0, 0, 14, 3, 0, 0, 0] + Array(repeating: 0xFF, count: 10), group: group)
            #expect(Self.goodbyes(garbage).contains { $0.contains("hello") }, "\(Self.goodbyes(garbage))")
            // A first frame larger than a hello is refused before its payload is read.
            let big = try await Self.raw(server.port, [0, 1, 0, 0, 3, 0, 0, 0] + [UInt8](repeating: 0, count: 8), group: group)
            #expect(big.isEmpty || Self.goodbyes(big).isEmpty == false)
        }
    }
}

extension Array where Element == UInt8 {
    /// Whether `run` occurs in these bytes.
    func containsRun(_ run: [UInt8]) -> Bool {
        guard run.count <= count else { return false }
        return (0...(count - run.count)).contains { Array(self[$0..<($0 + run.count)]) == run }
    }
}

/// Records the goodbye reasons and errors a dialer's pipeline sees until the connection closes.
final class GoodbyeCatcher: ChannelInboundHandler, Sendable {
    typealias InboundIn = Frame
    let reasons = Mutex<[String]>([])
    let closed: EventLoopPromise<Void>

    init(closed: EventLoopPromise<Void>) { self.closed = closed }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        reasons.withLock { $0.append("\(error)") }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) { closed.succeed() }
}

/// A service whose every call waits until cancelled (or 30 s), recording what happened.
final class SlowService: HistoryServing, Sendable {
    let started = Atomic<Int>(0)
    let cancelled = Atomic<Int>(0)
    let returned = Atomic<Int>(0)

    func handle(method: UInt16, payload: [UInt8]) async -> Result<ByteBuffer, RPCError> {
        started.add(1, ordering: .sequentiallyConsistent)
        try? await Task.sleep(for: .seconds(30))
        if Task.isCancelled { cancelled.add(1, ordering: .sequentiallyConsistent) }
        returned.add(1, ordering: .sequentiallyConsistent)
        return .failure(.unavailable("stopping"))
    }

    func blockItem(seq: UInt64, part: UInt32) async -> Result<(ByteBuffer, UInt32)?, RPCError> { .success(nil) }
}

@Suite("Clean stop of a server")
struct ServerStopTests {
    @Test("shutdown cancels the service calls still running after the drain and waits for them to return")
    func cancelsAndAwaits() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let service = SlowService()
        let server = try await NetServer.start(host: "127.0.0.1", port: 0, identity: HandshakeIdentity(key: HandshakeTests.key(1), chainID: HandshakeTests.chain),
                                               service: service, group: group)
        let client = try await PeerClient.connect(host: "127.0.0.1", port: server.port,
                                                  identity: HandshakeIdentity(key: HandshakeTests.key(2), chainID: HandshakeTests.chain), group: group)
        let calls = Task { for _ in 0..<3 { _ = try? await client.call(.getAvailability, []) } }
        let pending = (0..<3).map { _ in Task { _ = try? await client.call(.getEpochEndings, EpochEndingsRequest(fromEpoch: 0, max: 1).bcsBytes) } }
        let deadline = ContinuousClock.now + .seconds(10)
        while service.started.load(ordering: .sequentiallyConsistent) < 4 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(service.started.load(ordering: .sequentiallyConsistent) >= 4)
        let began = ContinuousClock.now
        await server.shutdown(drain: .milliseconds(200))
        // Every call that started has returned, cancelled, well before its 30 s sleep.
        #expect(service.returned.load(ordering: .sequentiallyConsistent) == service.started.load(ordering: .sequentiallyConsistent))
        #expect(service.cancelled.load(ordering: .sequentiallyConsistent) == service.started.load(ordering: .sequentiallyConsistent))
        #expect(ContinuousClock.now - began < .seconds(10))
        calls.cancel()
        for p in pending { p.cancel() }
        await client.close()
        try await group.shutdownGracefully()
    }
}
