import Foundation
import SomaCore
import SomaDevnet
@testable import SomaStore
import SomaTestSupport
import Testing

/// The snapshot builder reads located objects through a `FrameReader`: windows of a segment file
/// with the next window read ahead. Every read must return the frame `frame(_:part:)` returns,
/// whatever the order, the segment or the window it falls in.
@Suite("Frame reader: windows of segment files, read ahead")
struct FrameReaderTests {
    @Test("forward, backward and across segments and windows, each read equals frame(seq, part:); a short last window never leaves a read ahead to wait on")
    func windows() throws {
        let dir = TempDir("frame-reader")
        defer { dir.cleanup() }
        var configuration = HistorySegments.Configuration()
        configuration.maxSegmentBytes = 9 << 20  // a few windows per segment, several segments
        let segments = try HistorySegments.open(directory: dir.file("segments"), configuration: configuration)
        defer { segments.close() }
        var rng = DeterministicRandom(seed: 5)
        var parts: [UInt64: Int] = [:]
        for seq in UInt64(1)...40 {
            let count = Int(rng.next() % 3) + 1
            parts[seq] = count
            let frames = (0..<count).map { _ in
                let size = Int(rng.next() % 700_000) + 1
                return LZ4Frame.compress((0..<size).map { _ in UInt8(truncatingIfNeeded: rng.next()) })
            }
            try segments.append([(seq, frames)])
        }
        var reader = HistorySegments.FrameReader()
        func check(_ seq: UInt64, _ part: UInt32) throws {
            let got = try reader.read(seq, part: part, in: segments).map { Array($0) }
            #expect(got == (try segments.frame(seq, part: part)), "\(seq)/\(part)")
        }
        for seq in UInt64(1)...40 { for p in 0..<parts[seq]! { try check(seq, UInt32(p)) } }
        for seq in (UInt64(1)...40).reversed() { for p in 0..<parts[seq]! { try check(seq, UInt32(p)) } }
        for _ in 0..<200 {
            let seq = rng.next() % 40 + 1
            try check(seq, UInt32(rng.next() % UInt64(parts[seq]!)))
        }
        #expect(try reader.read(41, part: 0, in: segments) == nil)
        #expect(try reader.read(3, part: 7, in: segments) == nil)
    }
}
