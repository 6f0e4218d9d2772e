import NIOCore
import NIOEmbedded
import SomaCore
import SomaDevnet
import SomaNet
import SomaStore

/// The frame decoder over an EmbeddedChannel: input `[chunk] ‖ stream`, the stream written in
/// pieces of `1 + chunk % 64` bytes. Decoding must not trap; the frames it yields, re-encoded,
/// must be exactly the bytes it consumed; a clean end (no error) means every byte was consumed.
let frameTarget = FuzzTarget(
    name: "frame",
    summary: "FrameDecoder over an EmbeddedChannel, input written in pieces; frames re-encode to the bytes consumed",
    seeds: {
        func frame(_ kind: FrameKind, _ method: UInt16, _ id: UInt64, _ payload: [UInt8]) -> [UInt8] {
            var b = ByteBuffer()
            Frame(kind: kind, method: method, requestID: id, payload: ByteBuffer(bytes: payload)).write(into: &b)
            return Array(b.readableBytesView)
        }
        func fragment(_ flags: UInt8, _ method: UInt16, _ id: UInt64, _ payload: [UInt8]) -> [UInt8] {
            var b = ByteBuffer()
            Frame(kind: .response, flags: flags, method: method, requestID: id, payload: ByteBuffer(bytes: payload)).write(into: &b)
            return Array(b.readableBytesView)
        }
        return [
            [7] + frame(.request, 19, 1, SummariesRequest(from: 0, count: 10, allCertificates: false).bcsBytes),
            [0] + frame(.oneWay, 0, 0, [1, 2, 3]) + frame(.response, 17, 9, []),
            [63] + frame(.streamItem, 25, 4, [UInt8](repeating: 0xab, count: 40)) + frame(.streamEnd, 25, 4, []),
            [3] + frame(.error, 20, 2, RPCError.badRequest("x").bcsBytes),
            // After the handshake's two frames: a bulk frame in two fragments, a consensus frame between them.
            [5] + frame(.oneWay, 0, 0, []) + frame(.oneWay, 1, 0, []) + fragment(0x05, 20, 3, [1, 2, 3]) + fragment(0x00, 24, 0, [0, 9])
                + fragment(0x04, 20, 3, [4, 5]),
        ]
    },
    run: { input in
        guard let first = input.first else { return }
        let chunk = 1 + Int(first) % 64
        let stream = Array(input.dropFirst())
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder(maxFrameBytes: 4_096)))
        var failed = false
        var offset = 0
        while offset < stream.count && !failed {
            let end = min(offset + chunk, stream.count)
            do { try channel.writeInbound(ByteBuffer(bytes: stream[offset..<end])) } catch { failed = true }
            offset = end
        }
        if !failed {
            do { _ = try channel.finish() } catch { failed = true }
        }
        var reencoded = ByteBuffer()
        while let frame = try? channel.readInbound(as: Frame.self) {
            guard frame.payload.readableBytes <= 4_096 - Frame.headerBytes, frame.flags & ~FrameFlags.priorityMask == 0,
                  frame.flags & FrameFlags.priorityMask != FrameFlags.priorityMask
            else {
                fail("frame beyond the limit or with flags: \(frame.payload.readableBytes) bytes, flags \(frame.flags)")
            }
            frame.write(into: &reencoded)
        }
        // Fragments come out joined: a stream with any (a `more` flag in a header) re-encodes
        // to something else; the checks above hold for it.
        var header = 0
        while header + 6 <= stream.count {
            if stream[header + 5] & FrameFlags.more != 0 { return }
            let length = stream[header..<header + 4].reduce(0) { $0 << 8 | Int($1) }
            header += 4 + length
        }
        let out = Array(reencoded.readableBytesView)
        guard out.count <= stream.count, out[...] == stream[..<out.count] else {
            fail("frames re-encode to \(out.count) bytes that are not a prefix of the \(stream.count)-byte stream")
        }
        if !failed && out.count != stream.count {
            fail("the stream ended cleanly with \(stream.count - out.count) bytes not decoded")
        }
    }
)

/// The request dispatcher: input `[selector] ‖ …` becomes one call of `HistoryService.handle`
/// (a method from the served set, or any u16) or `blockItem` on the fixture store. It must
/// answer without trapping, and every success must decode as the method's answer type.
let dispatchTarget = FuzzTarget(
    name: "dispatch",
    summary: "HistoryService.handle / blockItem over a devnet tiny store: any method and payload; answers decode as their type",
    seeds: {
        let m: [(UInt8, [UInt8])] = [
            (1, []), (2, EpochEndingsRequest(fromEpoch: 0, max: 100).bcsBytes),
            (3, SummariesRequest(from: 0, count: 30, allCertificates: true).bcsBytes),
            (3, SummariesRequest(from: 29, count: 1, allCertificates: false).bcsBytes),
            (4, BlockRequest(seq: 5, part: 0).bcsBytes), (5, SnapshotRequest(epoch: 1).bcsBytes),
            (6, SnapshotRequest(epoch: 2, index: 1).bcsBytes), (8, le(UInt64(7)) + le(UInt32(0))),
            (9, le(UInt16(24)) + [1, 2]),
        ]
        return m.map { [$0.0] + $0.1 }
    },
    run: { input in
        let service = Fixture.shared.service
        var r = FuzzInput(input)
        let selector = r.u8() % 12
        // The served methods first, then blockItem, then any method number.
        let methods: [Method] = [.getKnownPeers, .getAvailability, .getEpochEndings, .getSummaries, .getBlock,
                                 .getSnapshotManifest, .getSnapshotChunk, .getBlocks, .getTransactions, .getObjects]
        if selector == 10 {
            let seq = r.u64(), part = r.u32()
            let result = blockOn { await service.blockItem(seq: seq, part: part) }
            if case .success(let found?) = result {
                let item = Array(found.0.readableBytesView)
                guard let decoded = try? BlockItem(bcsBytes: item), decoded.seq == seq, decoded.part == part,
                      decoded.block.count == found.1
                else { fail("blockItem(\(seq), \(part)) is not a BlockItem of that part") }
            }
            return
        }
        let method = selector < 10 ? methods[Int(selector)].rawValue : r.u16()
        let payload = r.rest()
        let result = blockOn { await service.handle(method: method, payload: payload) }
        guard case .success(let buffer) = result else { return }
        let bytes = Array(buffer.readableBytesView)
        let ok: Bool
        switch Method(rawValue: method) {
        case .getAvailability: ok = (try? Availability(bcsBytes: bytes)) != nil
        case .getEpochEndings:
            ok = (try? BCS.read(from: bytes[...]) { (r: inout BCSReader) throws(CoreError) in
                try r.readVector(CertifiedCheckpointSummary.self)
            }) != nil
        case .getSummaries:
            if let s = try? SummariesResponse(bcsBytes: bytes), let req = try? SummariesRequest(bcsBytes: payload) {
                ok = !s.summaries.isEmpty && s.summaries.count <= Int(req.count) && s.summaries[0].sequenceNumber == req.from
                    && s.certificates.last.map { $0 != nil } == true
            } else { ok = false }
        case .getBlock, .getSnapshotChunk: ok = (try? ProvenFrame(bcsBytes: bytes)) != nil
        case .getSnapshotManifest: ok = (try? SnapshotManifest(bcsBytes: bytes)) != nil
        case .getTransactions:
            // A prefix of the digests asked, each answered with that transaction or none.
            if let a = try? ProvenItems<EntryWithProof>(bcsBytes: bytes), let req = try? TransactionsRequest(bcsBytes: payload) {
                ok = !a.items.isEmpty && a.items.count <= req.digests.count
                    && zip(a.items, req.digests).allSatisfy { $0.0 == nil || $0.0?.transaction.digest == $0.1 }
            } else { ok = false }
        case .getObjects:
            if let a = try? ProvenItems<ObjectWithProof>(bcsBytes: bytes), let req = try? ObjectsRequest(bcsBytes: payload) {
                ok = !a.items.isEmpty && a.items.count <= req.objects.count
                    && zip(a.items, req.objects).allSatisfy { $0.0 == nil || $0.0?.object.id == $0.1.id }
            } else { ok = false }
        default: ok = false
        }
        if !ok { fail("method \(method) answered \(bytes.count) bytes that are not its answer type") }
    }
)

/// The handshake (protocol 3, plaintext: TLS itself is BoringSSL's) over an EmbeddedChannel,
/// Ed25519 work inline: input `[mode] ‖ ops`. Mode bit 0 picks the dialer end (else the
/// listener), bit 1 pins the peer key, bit 2 makes the node private (allow-list: the peer key).
/// Each op is `[op] ‖ method u16 ‖ length u16 ‖ payload`: op 0xF0 sends a hello of the peer key
/// for this chain with the payload as its node info, 0xF1 the peer's valid proof over the real
/// transcript, 0xF2 a hello naming another key; any other op sends a frame of kind `op % 6`.
/// Invariants: no application frame before the handshake completes; it completes only with the
/// proof the target signed, for the key the hello named, within the policy; a private listener
/// sends nothing signed to a peer not on its list; a refusal sends a goodbye and closes.
let handshakeTarget = FuzzTarget(
    name: "handshake",
    summary: "HandshakeHandler, either end, open, pinned or private: fuzzed frames, a real proof on demand; completes only as the protocol allows",
    seeds: {
        func op(_ code: UInt8, _ method: UInt16 = 0, _ payload: [UInt8] = []) -> [UInt8] {
            [code] + le(method) + le(UInt16(payload.count)) + payload
        }
        let request = op(FrameKind.request.rawValue, Method.getAvailability.rawValue) // after the handshake: passes on
        return [
            [0] + op(0xF0) + op(0xF1) + request,
            [1] + op(0xF0, 0, [1, 2, 3]) + op(0xF1) + request,
            [2] + op(0xF2) + op(0xF1),
            [4] + op(0xF0) + op(0xF1) + request,
            [5] + op(0xF2),
            [0] + op(FrameKind.oneWay.rawValue, Method.hello.rawValue, [UInt8](repeating: 7, count: 120)),
            [0] + op(0xF0) + op(FrameKind.oneWay.rawValue, Method.helloProof.rawValue, [UInt8](repeating: 1, count: 64)),
            [1] + op(FrameKind.oneWay.rawValue, Method.goodbye.rawValue, Array("bye".utf8)),
            [0] + op(FrameKind.request.rawValue, 9) + op(0xF0) + op(0xF1),
        ]
    },
    run: { input in
        let fx = HandshakeFixture.shared
        var r = FuzzInput(input)
        let mode = r.u8()
        let role: HandshakeRole = mode & 1 == 0 ? .listener : .dialer
        let policy = HandshakePolicy(tls: false, expectedPeer: mode & 2 != 0 ? fx.peer.publicKey : nil,
                                     allowed: mode & 4 != 0 ? [fx.peer.publicKey] : nil)
        let recorder = HandshakeRecorder()
        let channel = EmbeddedChannel()
        do {
            try channel.pipeline.syncOperations.addHandler(HandshakeHandler(identity: fx.identity, role: role, policy: policy, pool: nil))
            try channel.pipeline.syncOperations.addHandler(recorder)
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        } catch { fail("embedded channel set-up: \(error)") }
        var outbound: [Frame] = []
        func collect() { while let f = try? channel.readOutbound(as: Frame.self) { outbound.append(f) } }
        var peerHello: [UInt8]?
        var signedProof = false
        var ops = 0
        collect()
        while r.remaining > 0, channel.isActive, ops < 64 {
            ops += 1
            let code = r.u8(), method = r.u16(), payload = r.take(Int(r.u16()) % 8_192)
            let frame: Frame
            switch code {
            case 0xF0, 0xF2:
                let key = code == 0xF0 ? fx.peer : fx.stranger
                let hello = Hello(protocolVersion: SomaNet.protocolVersion, chainID: fx.identity.chainID, peerID: key.publicKey,
                                  nonce: Digest(bytes: (payload + [UInt8](repeating: 0, count: 32)).prefix(32)) ?? .zero,
                                  nodeInfo: Array(payload.prefix(Hello.maxNodeInfoBytes)))
                if peerHello == nil { peerHello = hello.bcsBytes }
                frame = Frame(kind: .oneWay, method: Method.hello.rawValue, requestID: 0, payload: ByteBuffer(bytes: hello.bcsBytes))
            case 0xF1:
                // The proof of the peer key over the transcript as this end sees it.
                collect()
                let own = outbound.first { $0.kind == .oneWay && $0.method == Method.hello.rawValue }.map { Array($0.payload.readableBytesView) }
                guard let own, let peerHello else { continue }
                let (peerRole, dialer, listener): (HandshakeRole, [UInt8], [UInt8]) =
                    role == .dialer ? (.listener, own, peerHello) : (.dialer, peerHello, own)
                let proof = fx.peer.sign(Hello.proofMessage(role: peerRole, dialerHello: dialer, listenerHello: listener))
                signedProof = true
                frame = Frame(kind: .oneWay, method: Method.helloProof.rawValue, requestID: 0, payload: ByteBuffer(bytes: proof.bytes))
            default:
                guard let kind = FrameKind(rawValue: code % 6) else { fail("frame kind \(code % 6)") }
                if kind == .oneWay, method == Method.hello.rawValue, peerHello == nil { peerHello = payload }
                frame = Frame(kind: kind, method: method, requestID: UInt64(method), payload: ByteBuffer(bytes: payload))
            }
            do { try channel.writeInbound(frame) } catch { break }
            collect()
        }
        collect()
        let completed = recorder.completed
        if let completed {
            guard signedProof else { fail("the handshake completed without the peer's proof") }
            guard completed.peerID == fx.peer.publicKey else { fail("completed for \(completed.peerID.raw.short), not the key that signed") }
        } else if recorder.framesPassed > 0 {
            fail("\(recorder.framesPassed) frames passed on before the handshake completed")
        }
        if recorder.completedAfterFrame { fail("a frame passed on before the handshake completed") }
        if role == .listener, mode & 4 != 0 {
            // A private listener: nothing it signs goes to a stranger, and it never completes with one.
            let sentHello = outbound.contains { $0.kind == .oneWay && $0.method == Method.hello.rawValue }
            let sentProof = outbound.contains { $0.kind == .oneWay && $0.method == Method.helloProof.rawValue }
            if sentProof || sentHello, let peerHello, (try? Hello(bcsBytes: peerHello))?.peerID != fx.peer.publicKey {
                fail("a private listener answered a hello not from its allow-list")
            }
        }
        if completed == nil, !channel.isActive {
            guard outbound.contains(where: { $0.kind == .oneWay && $0.method == Method.goodbye.rawValue }) else {
                fail("closed without a goodbye")
            }
        }
        _ = try? channel.finish(acceptAlreadyClosed: true)
    }
)

/// The keys and identity of the handshake target, made once.
final class HandshakeFixture: Sendable {
    static let shared = HandshakeFixture()
    let identity: HandshakeIdentity
    let peer: SigningKey
    let stranger: SigningKey

    private init() {
        let own = DevnetKeys.validator(seed: 91, index: 0)
        identity = HandshakeIdentity(key: own, chainID: Digest(bytes: [UInt8](repeating: 0x5a, count: 32)) ?? .zero, nodeInfo: [9, 9, 9])
        peer = DevnetKeys.validator(seed: 91, index: 1)
        stranger = DevnetKeys.validator(seed: 91, index: 2)
    }
}

/// The inbound end after the handshake handler: what completed, what passed on, and in which order.
final class HandshakeRecorder: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = Frame
    private(set) var completed: HandshakeCompleted?
    private(set) var framesPassed = 0
    private(set) var completedAfterFrame = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        framesPassed += 1
        if completed == nil { completedAfterFrame = true }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let done = event as? HandshakeCompleted {
            if completed != nil { fail("the handshake completed twice") }
            completed = done
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {}
}
