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
        let parsed = try SegmentIndex(index, dataSize: UInt64(data.count), maxFrameBytes: maxFrameBytes)
        guard parsed.dataEnd == UInt64(data.count) else {
            throw StoreError(.badValue, "segment data of \(data.count) bytes, its index covers \(parsed.dataEnd)")
        }
        return try parsed.checkpoints(0..<parsed.count, bytes: data[...], at: 0)
    }
}

/// A segment's index file read and checked (``SegmentFile``): where each checkpoint's frames lie
/// in the data file, so that a reader can fetch any run of checkpoints with one ranged read. The
/// same 24-byte records index an archived snapshot's chunks (the epoch as the checkpoint, the
/// chunk index as the part).
public struct SegmentIndex: Sendable {
    /// The first checkpoint (the first record's).
    public let first: UInt64
    /// Each frame's offset and length, in order.
    public let offsets: [UInt64]
    public let lengths: [UInt32]
    /// Each checkpoint's first frame, and one past the last frame at the end.
    let starts: [Int]

    /// The number of checkpoints.
    public var count: Int { starts.count - 1 }
    /// The last checkpoint (``first`` for an empty index).
    public var last: UInt64 { count == 0 ? first : first + UInt64(count - 1) }
    /// Where the last frame ends (0 for an empty index).
    public var dataEnd: UInt64 { offsets.last.map { $0 + UInt64(lengths[lengths.count - 1]) } ?? 0 }

    /// Reads `bytes`, an index of a data file of `dataSize` bytes.
    /// - Throws: ``StoreError`` `badValue` naming the first record out of order or malformed
    ///   (checkpoints consecutive, parts 0, 1, … of each, each frame right after the previous
    ///   one, within the data and `8...maxFrameBytes`).
    public init(_ bytes: [UInt8], dataSize: UInt64, maxFrameBytes: Int = 256 << 20) throws(StoreError) {
        let size = HistorySegments.indexRecordBytes
        guard bytes.count % size == 0 else { throw StoreError(.badValue, "a segment index of \(bytes.count) bytes is not whole 24-byte records") }
        func le(_ at: Int, _ width: Int) -> UInt64 { (0..<width).reduce(UInt64(0)) { $0 | UInt64(bytes[at + $1]) << (8 * $1) } }
        let n = bytes.count / size
        var offsets: [UInt64] = [], lengths: [UInt32] = [], starts: [Int] = []
        offsets.reserveCapacity(n)
        lengths.reserveCapacity(n)
        var expectedOffset: UInt64 = 0
        var last: (seq: UInt64, part: UInt32)? = nil
        var first: UInt64 = 0
        for r in 0..<n {
            let b = r * size
            let seq = le(b, 8), part = UInt32(le(b + 8, 4)), length = UInt32(le(b + 12, 4)), offset = le(b + 16, 8)
            let inOrder: Bool
            if let last {
                inOrder = (seq == last.seq && last.part < UInt32.max && part == last.part + 1) || (last.seq < UInt64.max && seq == last.seq + 1 && part == 0)
            } else {
                inOrder = part == 0
                first = seq
            }
            let (end, overflow) = offset.addingReportingOverflow(UInt64(length))
            guard inOrder, offset == expectedOffset, !overflow, length >= UInt32(HistorySegments.minFrameBytes), Int(length) <= maxFrameBytes else {
                throw StoreError(.badValue, "segment index record \(r) (checkpoint \(seq) part \(part), \(length) bytes at \(offset)) is out of order or malformed")
            }
            guard end <= dataSize else {
                throw StoreError(.badValue, "segment index record \(r) (checkpoint \(seq) part \(part)) points past the data (\(end) > \(dataSize) bytes)")
            }
            if part == 0 { starts.append(r) }
            offsets.append(offset)
            lengths.append(length)
            expectedOffset = end
            last = (seq, part)
        }
        starts.append(n)
        self.first = first
        self.offsets = offsets
        self.lengths = lengths
        self.starts = starts
    }

    /// The frames (record indices) of checkpoint `k` (0-based).
    public func frames(of k: Int) -> Range<Int> { starts[k]..<starts[k + 1] }

    /// The bytes of the data file holding checkpoints `ks` (0-based, not empty, within ``count``).
    public func byteRange(of ks: Range<Int>) -> Range<UInt64> {
        let from = starts[ks.lowerBound], through = starts[ks.upperBound] - 1
        return offsets[from]..<(offsets[through] + UInt64(lengths[through]))
    }

    /// Checkpoints `ks` cut from `bytes`, the data file's bytes from offset `at` on (at least
    /// ``byteRange(of:)``): each checkpoint's blocks and, for more than one, the proofs decoded
    /// from its last frame.
    /// - Throws: ``StoreError`` `badValue` when `bytes` does not cover them, a checkpoint has
    ///   exactly two frames, or a proofs frame does not decode.
    public func checkpoints(_ ks: Range<Int>, bytes: ArraySlice<UInt8>, at: UInt64) throws(StoreError) -> [SegmentFile.Checkpoint] {
        guard !ks.isEmpty else { return [] }
        let span = byteRange(of: ks)
        guard span.lowerBound >= at, span.upperBound - at <= UInt64(bytes.count) else {
            throw StoreError(.badValue, "segment bytes \(at)..<\(at + UInt64(bytes.count)) do not hold checkpoints \(first + UInt64(ks.lowerBound))...\(first + UInt64(ks.upperBound - 1))")
        }
        var out: [SegmentFile.Checkpoint] = []
        out.reserveCapacity(ks.count)
        for k in ks {
            let seq = first + UInt64(k)
            let frames = self.frames(of: k).map { r in
                let from = bytes.startIndex + Int(offsets[r] - at)
                return Array(bytes[from..<(from + Int(lengths[r]))])
            }
            switch frames.count {
            case 1:
                out.append(SegmentFile.Checkpoint(seq: seq, frames: frames, proofs: [[]]))
            case 2:
                throw StoreError(.badValue, "checkpoint \(seq) has 2 frames in its segment (one block, or blocks and their proofs)")
            default:
                let parts = frames.count - 1
                out.append(SegmentFile.Checkpoint(seq: seq, frames: Array(frames.prefix(parts)), proofs: try PartProofFrame.decode(frames[parts], parts: parts, seq: seq)))
            }
        }
        return out
    }
}
