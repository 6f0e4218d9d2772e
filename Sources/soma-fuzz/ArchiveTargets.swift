import Foundation
import SomaArchive
import SomaCore
import SomaStore

/// An archive's files from an untrusted store (PROTOCOL §10): the manifest (decoded strictly,
/// re-encoding to the same bytes; its signature checked without a trap), a segment's data and
/// index (`SegmentFile`: every checkpoint it accepts is back-to-back frames covering the data,
/// consecutive, each with one proof per block), a segment index's ranged reads (`SegmentIndex`:
/// the checkpoints cut from the bytes of any run equal those of the whole file, as an archive
/// source reads them), and archive names (checked before any I/O).
let archiveTarget = FuzzTarget(
    name: "archive",
    summary: "archive files: manifest decoding and signature, SegmentFile on fuzzed data and index, archive names",
    seeds: {
        let key = try! SigningKey(seed: Hashing.sha256([0xA7]).bytes)
        let genesis = ArchiveFile(name: "genesis.bcs", bytes: [1, 2, 3])
        let manifest = ArchiveManifest(chainID: Hashing.sha256([1]), genesis: genesis, ranges: [], key: key, createdMs: 1)
        let snapshot = ArchiveSnapshot(
            epoch: 3, manifest: ArchiveFile(name: "snapshots/00000000000000000003.bcs", bytes: [1]),
            data: ArchiveFile(name: "snapshots/00000000000000000003.chunks", bytes: [2]), index: ArchiveFile(name: "snapshots/00000000000000000003.idx", bytes: [3]))
        let withSnapshots = ArchiveManifest(chainID: Hashing.sha256([1]), genesis: genesis, ranges: [], snapshots: [snapshot], key: key, createdMs: 2)
        let frames = (1...3).map { LZ4Frame.compress(Array(repeating: UInt8($0), count: 30 * $0)) }
        func record(_ seq: UInt64, _ part: UInt32, _ length: Int, _ offset: Int) -> [UInt8] {
            le(seq) + le(part) + le(UInt32(length)) + le(UInt64(offset))
        }
        let index = record(7, 0, frames[0].count, 0) + record(8, 0, frames[1].count, frames[0].count)
            + record(9, 0, frames[2].count, frames[0].count + frames[1].count)
        let data = frames.flatMap { $0 }
        return [
            [0] + manifest.bcsBytes,
            [1] + le(UInt16(index.count)) + index + data,
            [1] + le(UInt16(24)) + record(3, 0, 8, 0) + [UInt8](repeating: 0, count: 8),
            [2] + Array("segments/00000000000000000007.seg".utf8),
            [2] + Array("../x".utf8),
            [0] + withSnapshots.bcsBytes,
            [3, 1, 1] + le(UInt16(index.count)) + index + data,
        ]
    },
    run: { input in
        var r = FuzzInput(input)
        switch r.u8() % 4 {
        case 0:
            let bytes = r.rest()
            guard let manifest = try? BCS.decode(ArchiveManifest.self, from: bytes) else { return }
            if manifest.bcsBytes != bytes { fail("an archive manifest decoded but re-encodes to other bytes") }
            for (a, b) in zip(manifest.ranges, manifest.ranges.dropFirst()) where b.first != a.last &+ 1 {
                fail("a manifest with ranges out of order decoded")
            }
            for (a, b) in zip(manifest.snapshots, manifest.snapshots.dropFirst()) where b.epoch <= a.epoch {
                fail("a manifest with snapshots out of order decoded")
            }
            for (k, end) in manifest.epochEnds.enumerated() where end.summary.epoch != UInt64(k) || end.summary.endOfEpoch == nil {
                fail("a manifest whose epoch end \(k) is not epoch \(k)'s end decoded")
            }
            _ = try? manifest.verifySignature()
        case 3:
            // A run of checkpoints read by its byte range, as an archive source reads it.
            let from = Int(r.u8()), count = Int(r.u8())
            let indexLength = Int(r.u8()) | Int(r.u8()) << 8
            let rest = r.rest()
            let indexBytes = Array(rest.prefix(indexLength)), data = Array(rest.dropFirst(min(indexLength, rest.count)))
            guard let index = try? SegmentIndex(indexBytes, dataSize: UInt64(data.count), maxFrameBytes: 1 << 16), index.count > 0 else { return }
            if index.dataEnd > UInt64(data.count) { fail("SegmentIndex accepted frames past the data") }
            let k = from % index.count, n = 1 + count % (index.count - k)
            let span = index.byteRange(of: k..<(k + n))
            if span.lowerBound > span.upperBound || span.upperBound > UInt64(data.count) { fail("a byte range outside the data") }
            let part = try? index.checkpoints(k..<(k + n), bytes: data[Int(span.lowerBound)..<Int(span.upperBound)], at: span.lowerBound)
            let whole = try? index.checkpoints(0..<index.count, bytes: data[...], at: 0)
            if let whole, part == nil || Array(whole[k..<(k + n)]) != part! { fail("a ranged read cut other checkpoints than the whole file") }
        case 1:
            let indexLength = Int(r.u8()) | Int(r.u8()) << 8
            let rest = r.rest()
            let index = Array(rest.prefix(indexLength)), data = Array(rest.dropFirst(min(indexLength, rest.count)))
            guard let checkpoints = try? SegmentFile.checkpoints(data: data, index: index, maxFrameBytes: 1 << 16) else { return }
            var covered = 0
            for (i, cp) in checkpoints.enumerated() {
                if i > 0, cp.seq != checkpoints[i - 1].seq &+ 1 { fail("SegmentFile accepted checkpoints that are not consecutive") }
                if cp.frames.isEmpty || cp.frames.count != cp.proofs.count { fail("SegmentFile gave a checkpoint without one proof per block") }
                covered += cp.frames.reduce(0) { $0 + $1.count }
            }
            // Multi-part checkpoints also hold a proofs frame, not returned as a block.
            if covered > data.count { fail("SegmentFile returned more bytes than the data holds") }
        default:
            let name = String(decoding: r.rest(), as: UTF8.self)
            if (try? ArchiveName.check(name)) != nil {
                let parts = name.split(separator: "/", omittingEmptySubsequences: false)
                if name.hasPrefix("/") || parts.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }) {
                    fail("an archive name that could leave the archive was accepted: \(name.debugDescription)")
                }
            }
        }
    }
)
