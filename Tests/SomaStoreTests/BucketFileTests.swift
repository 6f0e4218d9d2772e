import Foundation
import SomaCore
import SomaDevnet
@testable import SomaStore
import SomaTestSupport
import Testing

/// A snapshot build regroups objects through bucket files: records appended per bucket in
/// staged buffers written in the background, read back in order up to the end record.
@Suite("Bucket files of a snapshot build: background writes, end record, read-ahead")
struct BucketFileTests {
    @Test("records of every size (empty, a few bytes, several staging buffers) come back per bucket in order; the padding after the end record is never read as records")
    func roundTrip() throws {
        let dir = TempDir("buckets")
        defer { dir.cleanup() }
        var rng = DeterministicRandom(seed: 11)
        var written: [Int: [(Int, [UInt8])]] = [:]
        var writer = BucketWriter(dir: dir.path, tag: "t")
        for i in 0..<3_000 {
            let bucket = Int(rng.next() % 5)
            let size: Int
            switch rng.next() % 100 {
            case 0: size = 0
            case 1: size = 1_300_000  // more than two staging buffers
            default: size = Int(rng.next() % 3_000) + 1
            }
            let bytes = (0..<size).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            try bytes.withUnsafeBytes { try writer.append(bucket: bucket, index: i, digest: Hashing.sha256(domain: .object, raw: $0), $0) }
            written[bucket, default: []].append((i, bytes))
        }
        try writer.finish()
        for (bucket, records) in written {
            let path = BucketWriter.path(dir: dir.path, bucket: bucket, tag: "t")
            let size = try #require(try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int)
            #expect(size % DirectIO.alignment == 0, "whole blocks, padded after the end record")
            var read: [(Int, [UInt8])] = []
            var digests: [Digest] = []
            try SpillFile(reading: path).forEachRecord { index, digest, bytes in
                read.append((index, Array(bytes)))
                digests.append(digest)
            }
            #expect(read.count == records.count)
            #expect(read.map(\.0) == records.map(\.0) && read.map(\.1) == records.map(\.1), "bucket \(bucket)")
            #expect(digests == records.map { r in r.1.withUnsafeBytes { Hashing.sha256(domain: .object, raw: $0) } }, "each record's digest as written")
        }
    }

    @Test("a file cut in the middle of a record is refused")
    func cut() throws {
        let dir = TempDir("buckets-cut")
        defer { dir.cleanup() }
        var writer = BucketWriter(dir: dir.path, tag: "t")
        let bytes = [UInt8](repeating: 7, count: 10_000)
        try bytes.withUnsafeBytes { try writer.append(bucket: 0, index: 3, digest: .zero, $0) }
        try writer.finish()
        let path = BucketWriter.path(dir: dir.path, bucket: 0, tag: "t")
        #expect(truncate(path, 4_096) == 0)
        #expect(throws: StoreError.self) { try SpillFile(reading: path).forEachRecord { _, _, _ in } }
    }

    @Test("a record whose bytes changed on the device after they were written is refused (its checksum), the others before it read")
    func changed() throws {
        let dir = TempDir("buckets-changed")
        defer { dir.cleanup() }
        var writer = BucketWriter(dir: dir.path, tag: "t")
        for i in 0..<3 {
            let bytes = [UInt8](repeating: UInt8(i + 1), count: 1_000)
            try bytes.withUnsafeBytes { try writer.append(bucket: 0, index: i, digest: .zero, $0) }
        }
        try writer.finish()
        let path = BucketWriter.path(dir: dir.path, bucket: 0, tag: "t")
        // One byte of the second record's bytes flipped.
        let fd = open(path, O_RDWR)
        #expect(fd >= 0)
        var byte: UInt8 = 0
        let at = off_t(BucketWriter.headerBytes + 1_000 + BucketWriter.headerBytes + 500)
        #expect(pread(fd, &byte, 1, at) == 1)
        byte ^= 0x40
        #expect(pwrite(fd, &byte, 1, at) == 1)
        close(fd)
        var seen: [Int] = []
        #expect(throws: StoreError.self) { try SpillFile(reading: path).forEachRecord { index, _, _ in seen.append(index) } }
        #expect(seen == [0])
    }
}
