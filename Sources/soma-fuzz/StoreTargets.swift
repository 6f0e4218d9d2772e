import Foundation
import SomaCore
import SomaDiscovery
import SomaDevnet
import SomaStore

/// LZ4 frames: input `[mode] ‖ limit u24 ‖ frame`. Mode bit 0 decodes the bytes as a frame
/// (within the limit: output no larger than the limit, exactly the declared size, and it
/// recompresses to the same content); otherwise the bytes are compressed and must come back.
let lz4Target = FuzzTarget(
    name: "lz4",
    summary: "LZ4Frame.decompress with a fuzzed limit (and declaredContentSize); compress→decompress is the identity",
    seeds: {
        let text = Array("soma-node stores blocks as standard LZ4 frames, soma-node, soma-node".utf8)
        let frame = LZ4Frame.compress(text)
        let big = LZ4Frame.compress([UInt8](repeating: 7, count: 3_000))
        return [
            [1] + le(UInt32(1 << 16)).prefix(3) + frame, [1] + le(UInt32(10)).prefix(3) + frame,
            [1] + le(UInt32(4_096)).prefix(3) + big, [0] + le(UInt32(100)).prefix(3) + text,
            [1] + le(UInt32(1 << 16)).prefix(3) + Array(Fixture.shared.chunkFrames[0]),
        ]
    },
    run: { input in
        var r = FuzzInput(input)
        let mode = r.u8()
        let limit = Int(r.u8()) | Int(r.u8()) << 8 | Int(r.u8()) << 16
        let bytes = r.rest()
        if mode & 1 == 1 {
            let declared = try? LZ4Frame.declaredContentSize(of: bytes)
            guard let out = try? LZ4Frame.decompress(bytes, limit: limit) else { return }
            if out.count > limit { fail("decompressed \(out.count) bytes past the limit \(limit)") }
            if let d = declared, d != UInt64(out.count) { fail("declared \(d) bytes, produced \(out.count)") }
            guard let again = try? LZ4Frame.decompress(LZ4Frame.compress(out), limit: out.count), again == out else {
                fail("recompressing a decoded frame does not give its content back")
            }
        } else {
            let frame = LZ4Frame.compress(bytes)
            do {
                let out = try LZ4Frame.decompress(frame, limit: limit)
                if out != bytes { fail("compress→decompress changed \(bytes.count) bytes") }
            } catch {
                if bytes.count <= limit { fail("our own frame of \(bytes.count) bytes refused within \(limit): \(error)") }
            }
        }
    }
)

/// Node records: input `[mode] ‖ …`. Mode 0: `SignedNodeInfo.verified(bytes, nowMs:)` with
/// `nowMs` from the input (a record that passes must re-encode to its bytes); 1: KnownPeers,
/// 2: PeerRecord, 3: SignedNodeInfo round trips; 4: `NodeInfo.split(address:)`.
let nodeInfoTarget = FuzzTarget(
    name: "nodeinfo",
    summary: "SignedNodeInfo decode + verify (fuzzed clock), KnownPeers/PeerRecord round trips, address split",
    seeds: {
        let key = DevnetKeys.validator(seed: 77, index: 0)
        let now: UInt64 = 1_767_225_600_000
        let info = NodeInfo(peerID: key.publicKey, addresses: ["127.0.0.1:9000", "[::1]:9001"], timestampMs: now,
                            holds: [HeldRange(lowest: 0, highest: 29)], snapshotEpochs: [1, 2])
        let signed = SignedNodeInfo(signing: info, with: key)
        let other = SignedNodeInfo(signing: NodeInfo(peerID: DevnetKeys.validator(seed: 77, index: 1).publicKey,
                                                     addresses: ["node.example:80"], timestampMs: now - 1_000, access: .private),
                                   with: DevnetKeys.validator(seed: 77, index: 1))
        let record = PeerRecord(info: other, introducer: .peer(key.publicKey), direct: false, nowMs: now)
        return [
            [0] + le(now + 5) + signed.bcsBytes, [1] + KnownPeers(own: signed, peers: [other]).bcsBytes,
            [2] + record.bcsBytes, [3] + other.bcsBytes, [4] + Array("[2001:db8::1]:65535".utf8),
        ]
    },
    run: { input in
        var r = FuzzInput(input)
        switch r.u8() % 5 {
        case 0:
            let now = r.u64()
            let bytes = r.rest()
            if let record = try? SignedNodeInfo.verified(bytes, nowMs: now), record.bcsBytes != bytes {
                fail("a verified record does not re-encode to its bytes")
            }
        case 1: checkRoundTrip(KnownPeers.self, r.rest())
        case 2:
            // A version 1 record (an older store) is migrated on decode, so it re-encodes as
            // version 2: the exact round trip holds for the current version; an old one must
            // re-encode to a current record that round-trips.
            let bytes = r.rest()
            if bytes.first == 1 {
                if let migrated = try? PeerRecord(bcsBytes: bytes) { _ = checkRoundTrip(PeerRecord.self, migrated.bcsBytes) }
            } else {
                _ = checkRoundTrip(PeerRecord.self, bytes)
            }
        case 3:
            if let record = checkRoundTrip(SignedNodeInfo.self, r.rest()) { _ = try? record.verify(nowMs: record.info.timestampMs) }
        default:
            if let (host, port) = NodeInfo.split(address: String(decoding: r.rest(), as: UTF8.self)),
               host.isEmpty || !(0...65_535).contains(port) {
                fail("split gave host '\(host)' port \(port)")
            }
        }
    }
)

/// Snapshot chunks against the fixture's epoch-1 manifest: input `[mode] ‖ index u32 ‖
/// proofCount u8 ‖ proof ‖ bytes`. Mode bit 0 compresses `bytes` into the frame (so the fuzzer
/// controls the decompressed chunk), otherwise `bytes` is the frame; bit 1 uses the honest
/// proof; bit 2 decodes `bytes` as a manifest and checks it against the certified epoch end.
/// A chunk that verifies must be the stored chunk.
let snapshotChunkTarget = FuzzTarget(
    name: "snapshot-chunk",
    summary: "SnapshotManifest.verifyChunk and check(against:) on the fixture's epoch-1 snapshot, fuzzed frame/proof/index",
    seeds: {
        let f = Fixture.shared
        var seeds: [[UInt8]] = []
        for i in 0..<min(2, f.chunkFrames.count) {
            let proof = (try? f.manifest.proof(chunk: i)) ?? []
            seeds.append([0] + le(UInt32(i)) + [UInt8(proof.count)] + proof.flatMap(\.bytes) + f.chunkFrames[i])
            if let raw = try? LZ4Frame.decompress(f.chunkFrames[i], limit: 1 << 20) {
                seeds.append([3] + le(UInt32(i)) + [0] + raw)
            }
        }
        seeds.append([4] + le(UInt32(0)) + [0] + f.manifest.bcsBytes)
        return seeds
    },
    run: { input in
        let f = Fixture.shared
        var r = FuzzInput(input)
        let mode = r.u8()
        let index = r.u32() % UInt32(f.chunkFrames.count + 2)
        let fuzzedProof = r.digests(Int(r.u8() % 24))
        let bytes = r.rest()
        if mode & 4 != 0 {
            guard let manifest = try? SnapshotManifest(bcsBytes: bytes), (try? manifest.check(against: f.epochEnd)) != nil else { return }
            if manifest != f.manifest { fail("a manifest other than the stored one passes check(against:)") }
            return
        }
        let frame = mode & 1 != 0 ? LZ4Frame.compress(bytes) : bytes
        let proof = mode & 2 != 0 ? ((try? f.manifest.proof(chunk: Int(index))) ?? fuzzedProof) : fuzzedProof
        guard let chunk = try? f.manifest.verifyChunk(index: index, frame: frame, proof: proof, limit: 1 << 20) else { return }
        guard Int(index) < f.chunkFrames.count,
              let got = try? LZ4Frame.decompress(chunk.frame, limit: 1 << 20),
              let stored = try? LZ4Frame.decompress(f.chunkFrames[Int(index)], limit: 1 << 20), got == stored
        else { fail("chunk \(index) verified but is not the stored chunk") }
    }
)

/// History segment files as a crash or a disk might leave them: input `index length u16 LE ‖
/// index bytes ‖ data bytes` written as one segment's `.idx` and `.seg`. Opening repairs them
/// without a trap; every frame still indexed is then readable and within the data; a second
/// open repairs nothing more; and a read-only open beside them sees the same frames.
let segmentsTarget = FuzzTarget(
    name: "segments",
    summary: "HistorySegments.open on fuzzed index and data files: repair, reads, idempotent reopen",
    seeds: {
        let frames = (1...3).map { LZ4Frame.compress(Array(repeating: UInt8($0), count: 40 * $0)) }
        func index(_ records: [(UInt64, UInt32, UInt32, UInt64)]) -> [UInt8] {
            records.flatMap { le($0.0) + le($0.1) + le($0.2) + le($0.3) }
        }
        let lengths = frames.map { UInt32($0.count) }
        let good = index([(5, 0, lengths[0], 0), (5, 1, lengths[1], UInt64(lengths[0])), (6, 0, lengths[2], UInt64(lengths[0] + lengths[1]))])
        let data = frames.flatMap { $0 }
        return [
            le(UInt16(good.count)) + good + data,
            le(UInt16(good.count)) + good + data.prefix(data.count - 5),
            le(UInt16(good.count - 7)) + good.prefix(good.count - 7) + data,
            le(UInt16(24)) + index([(9, 0, UInt32.max, 0)]) + data,
        ]
    },
    run: { input in
        var r = FuzzInput(input)
        let indexLength = Int(r.u8()) | Int(r.u8()) << 8
        let rest = r.rest()
        let index = Array(rest.prefix(indexLength)), data = Array(rest.dropFirst(min(indexLength, rest.count)))
        let dir = NSTemporaryDirectory() + "soma-fuzz-segments-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let name = dir + "/00000000000000000005"
        _ = FileManager.default.createFile(atPath: name + ".idx", contents: Data(index))
        _ = FileManager.default.createFile(atPath: name + ".seg", contents: Data(data))
        var config = HistorySegments.Configuration()
        config.sync = false
        config.maxFrameBytes = 1 << 16
        var readOnly = config
        readOnly.readOnly = true
        guard let reader = try? HistorySegments.open(directory: dir, configuration: readOnly) else { return }
        let seen = frames(of: reader)
        reader.close()
        guard let segments = try? HistorySegments.open(directory: dir, configuration: config) else { return }
        let held = frames(of: segments)
        if held != seen { fail("a read-only open sees other frames than a repairing one") }
        for (seq, parts) in held {
            for f in parts where f.count < HistorySegments.minFrameBytes || f.count > config.maxFrameBytes {
                fail("checkpoint \(seq) holds a frame of \(f.count) bytes")
            }
        }
        segments.close()
        guard let again = try? HistorySegments.open(directory: dir, configuration: config) else { fail("a repaired segment does not reopen") }
        if !again.repairs.isEmpty { fail("a second open repaired again: \(again.repairs)") }
        if frames(of: again) != held { fail("reopening changed the frames") }
        again.close()
    }
)

/// Every frame a segment directory holds, by checkpoint (first to last held).
private func frames(of segments: HistorySegments) -> [UInt64: [[UInt8]]] {
    guard let first = segments.firstSeq, let last = segments.lastSeq, last >= first, last - first < 100_000 else { return [:] }
    var out: [UInt64: [[UInt8]]] = [:]
    for seq in first...last {
        let parts = (try? segments.frames(seq)) ?? []
        if !parts.isEmpty { out[seq] = parts }
    }
    return out
}
