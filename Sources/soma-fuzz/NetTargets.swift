import NIOCore
import NIOEmbedded
import SomaCore
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
        return [
            [7] + frame(.request, 19, 1, SummariesRequest(from: 0, count: 10, allCertificates: false).bcsBytes),
            [0] + frame(.oneWay, 0, 0, [1, 2, 3]) + frame(.response, 17, 9, []),
            [63] + frame(.streamItem, 25, 4, [UInt8](repeating: 0xab, count: 40)) + frame(.streamEnd, 25, 4, []),
            [3] + frame(.error, 20, 2, RPCError.badRequest("x").bcsBytes),
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
            guard frame.payload.readableBytes <= 4_096 - Frame.headerBytes, frame.flags == 0 else {
                fail("frame beyond the limit or with flags: \(frame.payload.readableBytes) bytes, flags \(frame.flags)")
            }
            frame.write(into: &reencoded)
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
        let selector = r.u8() % 10
        // The served methods first, then blockItem, then any method number.
        let methods: [Method] = [.getKnownPeers, .getAvailability, .getEpochEndings, .getSummaries, .getBlock,
                                 .getSnapshotManifest, .getSnapshotChunk, .getBlocks]
        if selector == 8 {
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
        let method = selector < 8 ? methods[Int(selector)].rawValue : r.u16()
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
        default: ok = false
        }
        if !ok { fail("method \(method) answered \(bytes.count) bytes that are not its answer type") }
    }
)
