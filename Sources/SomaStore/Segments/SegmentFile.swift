public import SomaCore

/// A history segment read back from the bytes of its two files (an archive's copy of a closed
/// segment, DESIGN §11): the data file, LZ4 frames back to back, and the index, 24-byte
/// little-endian records (checkpoint u64, part u32, length u32, offset u64). Everything is
/// checked before it is used: a file from an archive is outside data.
public enum SegmentFile {
    /// One checkpoint of a segment: its stored blocks, one per part, and each part's proof
    /// (one empty proof for a single part).
    public struct Checkpoint: Sendable, Equatable {
        /// The checkpoint's sequence number.
        public var seq: UInt64
        /// Its blocks (LZ4 frames as stored).
        public var frames: [[UInt8]]
        /// One proof per block.
        public var proofs: [[Digest]]
    }

    /// The checkpoints of a segment, in order.
    /// - Throws: ``StoreError`` `badValue` naming the first fault: an index that is not whole
    ///   records, a record out of order (checkpoints consecutive, parts 0, 1, … of each), a frame
    ///   not right after the previous one, outside the data or outside `8...maxFrameBytes`, data
    ///   left over after the last frame, a checkpoint of exactly two frames (one block, or
    ///   blocks and their proofs frame), or a proofs frame that does not decode.
    public static func checkpoints(data: [UInt8], index: [UInt8], maxFrameBytes: Int = 256 << 20) throws(StoreError) -> [Checkpoint] {
        let size = HistorySegments.indexRecordBytes
        guard index.count % size == 0 else { throw StoreError(.badValue, "a segment index of \(index.count) bytes is not whole 24-byte records") }
        func le(_ at: Int, _ width: Int) -> UInt64 { (0..<width).reduce(UInt64(0)) { $0 | UInt64(index[at + $1]) << (8 * $1) } }
        var groups: [(seq: UInt64, frames: [[UInt8]])] = []
        var expectedOffset: UInt64 = 0
        var last: (seq: UInt64, part: UInt32)? = nil
        for r in 0..<(index.count / size) {
            let b = r * size
            let seq = le(b, 8), part = UInt32(le(b + 8, 4)), length = UInt32(le(b + 12, 4)), offset = le(b + 16, 8)
            let inOrder: Bool
            if let last {
                inOrder = (seq == last.seq && last.part < UInt32.max && part == last.part + 1) || (last.seq < UInt64.max && seq == last.seq + 1 && part == 0)
            } else {
                inOrder = part == 0
            }
            let (end, overflow) = offset.addingReportingOverflow(UInt64(length))
            guard inOrder, offset == expectedOffset, !overflow, length >= UInt32(HistorySegments.minFrameBytes), Int(length) <= maxFrameBytes else {
                throw StoreError(.badValue, "segment index record \(r) (checkpoint \(seq) part \(part), \(length) bytes at \(offset)) is out of order or malformed")
            }
            guard end <= UInt64(data.count) else {
                throw StoreError(.badValue, "segment index record \(r) (checkpoint \(seq) part \(part)) points past the data (\(end) > \(data.count) bytes)")
            }
            let frame = Array(data[Int(offset)..<Int(end)])
            if part == 0 { groups.append((seq, [frame])) } else { groups[groups.count - 1].frames.append(frame) }
            expectedOffset = end
            last = (seq, part)
        }
        guard expectedOffset == UInt64(data.count) else {
            throw StoreError(.badValue, "segment data of \(data.count) bytes, its index covers \(expectedOffset)")
        }
        return try groups.map { g throws(StoreError) in
            switch g.frames.count {
            case 1:
                return Checkpoint(seq: g.seq, frames: g.frames, proofs: [[]])
            case 2:
                throw StoreError(.badValue, "checkpoint \(g.seq) has 2 frames in its segment (one block, or blocks and their proofs)")
            default:
                let parts = g.frames.count - 1
                return Checkpoint(seq: g.seq, frames: Array(g.frames.prefix(parts)), proofs: try PartProofFrame.decode(g.frames[parts], parts: parts, seq: g.seq))
            }
        }
    }
}
