import Foundation
import Glibc
import SomaCore
import SomaDevnet
import SomaStore
import SomaTestSupport
import Testing

@Suite("History segments: append-only frames with an offset index, repaired after a crash")
struct HistorySegmentsTests {
    /// A checkpoint's frames: `parts` LZ4 frames of distinct content.
    static func frames(_ seq: UInt64, parts: Int = 1, size: Int = 3_000) -> [[UInt8]] {
        (0..<parts).map { p in
            var rng = DeterministicRandom(seed: seq &* 31 &+ UInt64(p))
            return LZ4Frame.compress((0..<size).map { _ in UInt8(truncatingIfNeeded: rng.next() % 7) })
        }
    }

    static func size(_ path: String) -> Int {
        ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int) ?? -1
    }

    @Test("frames read back exactly, by checkpoint and part; `lz4 -dc` reads a segment whole")
    func roundTrip() throws {
        let dir = TempDir("segments")
        defer { dir.cleanup() }
        let segments = try HistorySegments.open(directory: dir.file("segments"))
        try segments.append([(1, Self.frames(1)), (2, Self.frames(2, parts: 3)), (3, Self.frames(3))])
        try segments.append([(5, Self.frames(5, parts: 2))])
        #expect(segments.firstSeq == 1 && segments.lastSeq == 5)
        #expect(segments.partCount(2) == 3 && segments.partCount(4) == 0 && segments.partCount(5) == 2)
        for (seq, parts) in [(UInt64(1), 1), (2, 3), (3, 1), (5, 2)] {
            #expect(try segments.frames(seq) == Self.frames(seq, parts: parts))
        }
        #expect(try segments.frame(2, part: 3) == nil)
        #expect(try segments.frame(2, part: UInt32.max) == nil)
        #expect(try segments.frame(4, part: 0) == nil && segments.frame(0, part: 0) == nil && segments.frame(.max, part: 0) == nil)

        // The real lz4 tool reads the segment as one stream: every frame's content in order.
        let data = dir.file("segments/00000000000000000001.seg")
        let (status, out, err) = try run("/usr/bin/lz4", ["-dc", data])
        #expect(status == 0, "\(err)")
        var expected: [UInt8] = []
        for (seq, parts) in [(UInt64(1), 1), (2, 3), (3, 1), (5, 2)] {
            for f in Self.frames(seq, parts: parts) { expected += try LZ4Frame.decompress(f, limit: 1 << 20) }
        }
        #expect(Array(out) == expected)
        segments.close()
        #expect(throws: StoreError.self) { _ = try segments.frame(1, part: 0) }
        #expect(throws: StoreError.self) { try segments.append([(6, Self.frames(6))]) }
    }

    @Test("appends go through a staging buffer (direct I/O where allowed) and keep the file exactly the frames back to back: frames across the buffer's bound, partial blocks written again, a reopen mid-block, a truncate")
    func stagedAppends() throws {
        let dir = TempDir("segments-staged")
        defer { dir.cleanup() }
        // Incompressible content, so frame sizes are odd and one spans the 4 MiB buffer.
        func frame(_ seq: UInt64, size: Int) -> [UInt8] {
            var rng = DeterministicRandom(seed: seq)
            return LZ4Frame.compress((0..<size).map { _ in UInt8(truncatingIfNeeded: rng.next()) })
        }
        var expected: [UInt8] = []
        var segments = try HistorySegments.open(directory: dir.file("segments"))
        let sizes = [1, 5_000, 4_093, 6 << 20, 77, 4_096, 300_001]
        for (i, size) in sizes.enumerated() {
            let f = frame(UInt64(i + 1), size: size)
            try segments.append([(UInt64(i + 1), [f])])
            expected += f
        }
        let data = dir.file("segments/00000000000000000001.seg")
        #expect(try Array(Data(contentsOf: URL(fileURLWithPath: data))) == expected)
        // Reopened with a partial last block: the next append reads it back and extends it.
        segments.close()
        segments = try HistorySegments.open(directory: dir.file("segments"))
        #expect(segments.repairs.isEmpty)
        let more = [(UInt64(8), [frame(8, size: 10_000)]), (9, [frame(9, size: 123)])]
        try segments.append(more)
        expected += more[0].1[0] + more[1].1[0]
        #expect(try Array(Data(contentsOf: URL(fileURLWithPath: data))) == expected)
        // Truncated in the middle, then appended again: the appender starts from the cut.
        try segments.truncate(after: 4)
        expected = []
        for (i, size) in sizes.prefix(4).enumerated() { expected += frame(UInt64(i + 1), size: size) }
        let again = frame(50, size: 9_999)
        try segments.append([(5, [again])])
        expected += again
        #expect(try Array(Data(contentsOf: URL(fileURLWithPath: data))) == expected)
        for seq in UInt64(1)...4 { #expect(try segments.frame(seq, part: 0) == frame(seq, size: sizes[Int(seq) - 1])) }
        #expect(try segments.frame(5, part: 0) == again)
        let (status, out, err) = try run("/usr/bin/lz4", ["-dc", data])
        #expect(status == 0, "\(err)")
        #expect(out.count == sizes.prefix(4).reduce(0, +) + 9_999)
        segments.close()
    }

    @Test("appends out of order, without a frame or with an oversized frame are refused; nothing is written")
    func refusals() throws {
        let dir = TempDir("segments")
        defer { dir.cleanup() }
        var config = HistorySegments.Configuration()
        config.maxFrameBytes = 10_000
        let segments = try HistorySegments.open(directory: dir.path, configuration: config)
        try segments.append([(10, Self.frames(10))])
        let bads: [[(seq: UInt64, frames: [[UInt8]])]] = [
            [(10, Self.frames(10))], [(9, Self.frames(9))], [(11, [])], [(11, [[UInt8]()])],
            [(11, [[UInt8](repeating: 1, count: 10_001)])], [(12, Self.frames(12)), (12, Self.frames(12))],
        ]
        for bad in bads {
            #expect(throws: StoreError.self) { try segments.append(bad) }
        }
        #expect(segments.lastSeq == 10)
        #expect(Self.size(dir.file("00000000000000000010.idx")) == HistorySegments.indexRecordBytes)
    }

    @Test("segments roll at the size bound and at a seal; truncate and prune work on whole segments")
    func rollTruncatePrune() throws {
        let dir = TempDir("segments")
        defer { dir.cleanup() }
        var config = HistorySegments.Configuration()
        config.maxSegmentBytes = 10_000
        let segments = try HistorySegments.open(directory: dir.path, configuration: config)
        try segments.append((1...12).map { ($0, Self.frames($0)) })
        try segments.seal()
        try segments.append((13...14).map { ($0, Self.frames($0)) })
        let closed = segments.closedSegments()
        #expect(closed.count >= 2, "\(closed)")
        #expect(closed.first?.first == 1 && closed.last?.last == 12)
        for (a, b) in zip(closed, closed.dropFirst()) { #expect(b.first == a.last + 1) }
        for seq in UInt64(1)...14 { #expect(try segments.frames(seq) == Self.frames(seq)) }

        // A crash left checkpoints 9...14 ahead of the watermark (8).
        try segments.truncate(after: 8)
        #expect(segments.lastSeq == 8)
        #expect(try segments.frame(9, part: 0) == nil && segments.frame(13, part: 0) == nil)
        #expect(try segments.frames(8) == Self.frames(8))
        try segments.append([(9, Self.frames(9))])
        #expect(try segments.frames(9) == Self.frames(9))

        // Pruning below 6 deletes the segments that end before it, never a partial one.
        let before = segments.closedSegments()
        let removed = try segments.prune(below: 6)
        let after = segments.closedSegments()
        #expect(removed == before.filter { $0.last < 6 }.count)
        #expect(after.allSatisfy { $0.last >= 6 })
        for gone in before where gone.last < 6 { #expect(!FileManager.default.fileExists(atPath: gone.data)) }
        #expect(try segments.frames(6) == Self.frames(6))
        let firstKept = segments.firstSeq
        segments.close()

        // All of it again after a reopen.
        let again = try HistorySegments.open(directory: dir.path, configuration: config)
        #expect(again.repairs.isEmpty, "\(again.repairs)")
        #expect(again.lastSeq == 9 && again.firstSeq == firstKept)
        for seq in (again.firstSeq ?? 1)...9 { #expect(try again.frames(seq) == Self.frames(seq)) }
        // The seal holds across a reopen: the next append starts a new segment.
        try again.seal()
        again.close()
        let sealed = try HistorySegments.open(directory: dir.path, configuration: config)
        let segmentsBefore = sealed.closedSegments().count
        try sealed.append([(10, Self.frames(10))])
        #expect(sealed.closedSegments().count == segmentsBefore)
        #expect(FileManager.default.fileExists(atPath: dir.file("00000000000000000010.seg")))
        // An empty segment left at the end (a crash right after it was created) does not stop
        // a truncation of the one before it.
        sealed.close()
        FileManager.default.createFile(atPath: dir.file("00000000000000000011.seg"), contents: Data())
        FileManager.default.createFile(atPath: dir.file("00000000000000000011.idx"), contents: Data())
        let withEmpty = try HistorySegments.open(directory: dir.path, configuration: config)
        try withEmpty.truncate(after: 7)
        #expect(withEmpty.lastSeq == 7)
        try withEmpty.append([(8, Self.frames(8))])
        #expect(try withEmpty.frames(8) == Self.frames(8))
        try withEmpty.truncate(after: 0)
        #expect(withEmpty.lastSeq == nil)
    }

    @Test("after a torn write the data is cut to the last indexed frame and the index to its last good record")
    func crashRepair() throws {
        let dir = TempDir("segments")
        defer { dir.cleanup() }
        let data = dir.file("00000000000000000001.seg"), index = dir.file("00000000000000000001.idx")
        do {
            let segments = try HistorySegments.open(directory: dir.path)
            try segments.append((1...3).map { ($0, Self.frames($0)) })
            segments.close()
        }
        let goodData = Self.size(data), goodIndex = Self.size(index)

        // The data of checkpoint 4 written, its index not: a crash between the two syncs.
        var handle = try #require(FileHandle(forWritingAtPath: data))
        handle.seekToEndOfFile()
        handle.write(Data(Self.frames(4)[0]))
        try handle.close()
        // And half an index record.
        handle = try #require(FileHandle(forWritingAtPath: index))
        handle.seekToEndOfFile()
        handle.write(Data([1, 2, 3, 4, 5]))
        try handle.close()
        var segments = try HistorySegments.open(directory: dir.path)
        #expect(segments.repairs.count == 2, "\(segments.repairs)")
        #expect(segments.lastSeq == 3)
        #expect(Self.size(data) == goodData && Self.size(index) == goodIndex)
        try segments.append([(4, Self.frames(4))])
        #expect(try segments.frames(4) == Self.frames(4))
        segments.close()

        // The data cut short under its index (a lost write): the records past it are dropped.
        let truncated = Int32(goodData - 10)
        #expect(Glibc.truncate(data, off_t(truncated)) == 0)
        segments = try HistorySegments.open(directory: dir.path)
        #expect(segments.lastSeq == 2, "\(segments.repairs)")
        #expect(try segments.frames(2) == Self.frames(2) && segments.frame(3, part: 0) == nil)
        segments.close()

        // Records with impossible numbers (all ones; checkpoint 3 with a length of 2 GiB at offset
        // 0): cut on open, never a trap or an allocation of that size.
        for record in [[UInt8](repeating: 0xFF, count: 24), [3, 0, 0, 0, 0, 0, 0, 0] + [0, 0, 0, 0] + [0, 0, 0, 0x7F] + Array(repeating: 0, count: 8)] {
            handle = try #require(FileHandle(forWritingAtPath: index))
            handle.seekToEndOfFile()
            handle.write(Data(record))
            try handle.close()
            segments = try HistorySegments.open(directory: dir.path)
            #expect(segments.lastSeq == 2 && segments.repairs.count == 1, "\(segments.repairs)")
            segments.close()
        }
    }
}
