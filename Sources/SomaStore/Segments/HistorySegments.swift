import Dispatch
import Glibc
public import NIOCore
import Synchronization

/// Immutable history outside RocksDB (DESIGN §6.1): the frames of each checkpoint (its LZ4
/// blocks exactly as received, one per part, or LZ4 skippable frames), appended to segment files
/// with an offset index beside each.
///
/// Files, in one directory: `<first>.seg` holds the frames back to back (a concatenation of
/// standard LZ4 frames, so `lz4 -dc` reads a segment whole) and `<first>.idx` one 24-byte
/// record per frame (little-endian: checkpoint u64, part u32, length u32, offset u64), where
/// `<first>` is the segment's first checkpoint as 20 decimal digits. Frames are in checkpoint
/// order, parts from 0 without a gap, each starting where the previous one ended. The last
/// segment takes appends until it is sealed (at an epoch end) or passes `maxSegmentBytes`; the
/// others are immutable.
///
/// Crash order: an append writes the data, `fdatasync`s it, then writes the index records and
/// `fdatasync`s them; only then does the caller commit its RocksDB batch with the watermark. On
/// open every segment is checked record by record: the index is cut at its first record that is
/// malformed, out of order or points past the data, and the data is cut to the end of the last
/// record kept (a partial frame or frames never indexed go). The caller then calls
/// ``truncate(after:)`` with its watermark (frames a crash left ahead of it go) or lowers its
/// watermark to ``lastSeq``. Pruning deletes whole segments.
///
/// Every number read from a file is checked before arithmetic or allocation. Reads (`pread`)
/// run concurrently with an append; appends are serialized.
public final class HistorySegments: Sendable {
    /// Limits of a segment directory.
    public struct Configuration: Sendable {
        /// A segment is closed once its data passes this size (the frame that passes it stays).
        public var maxSegmentBytes: UInt64 = 1 << 30
        /// The largest frame accepted, written or read.
        public var maxFrameBytes: Int = 256 << 20
        /// Whether appends `fdatasync` (off only for tests and bulk loads that can re-apply).
        public var sync = true
        /// Open for reading only, beside a process that may be appending: nothing is created,
        /// cut or deleted (a partial record at the end is left out of the index in memory), and
        /// every write throws `invalidArgument`.
        public var readOnly = false

        /// The defaults: 1 GiB segments, frames up to 256 MiB, synced appends.
        public init() {}
    }

    /// Where one frame lives.
    struct Entry: Sendable {
        var seq: UInt64
        var part: UInt32
        var length: UInt32
        var offset: UInt64
        var end: UInt64 { offset + UInt64(length) }
    }

    /// One segment: its files and its index in memory.
    final class Segment: @unchecked Sendable {
        let first: UInt64
        let dataFD: Int32
        let indexFD: Int32
        /// The data file opened with `O_DIRECT` (appends, and bulk reads that should not fill
        /// the page cache), or -1 where the file system refuses direct I/O.
        let directFD: Int32
        // Guarded by the owner's mutex (appends and truncation); reads copy an entry out under it.
        var entries: [Entry]
        var dataSize: UInt64

        init(first: UInt64, dataFD: Int32, indexFD: Int32, directFD: Int32, entries: [Entry], dataSize: UInt64) {
            self.first = first
            self.dataFD = dataFD
            self.indexFD = indexFD
            self.directFD = directFD
            self.entries = entries
            self.dataSize = dataSize
        }

        var lastSeq: UInt64? { entries.last?.seq }

        /// The files close with the last reference: a read in flight keeps its segment (and
        /// its descriptors) alive even if the segment is pruned or the directory closed meanwhile.
        deinit {
            _ = Glibc.close(dataFD)
            _ = Glibc.close(indexFD)
            if directFD >= 0 { _ = Glibc.close(directFD) }
        }
    }

    struct State: @unchecked Sendable {
        var segments: [Segment] = []
        /// The last segment takes no more appends (sealed at an epoch end, or full).
        var sealed = false
        var closed = false
        /// The staging buffer of appends (allocated at the first append, then reused).
        var staging: AlignedBuffer?
        /// The appender of the last segment written, valid while its size is the segment's.
        var appender: (first: UInt64, appender: DirectAppender)?
    }

    /// The staging buffer of appends: data is written in pieces of this size.
    static let stagingBytes = 4 << 20

    /// The size of one index record.
    public static let indexRecordBytes = 24
    /// The smallest frame: an LZ4 frame (header and end mark) or a skippable frame is at least
    /// 8 bytes. It also bounds the index held in memory to 3 times the data it indexes.
    public static let minFrameBytes = 8

    /// The directory of the segments.
    public let directory: String
    /// Its limits.
    public let configuration: Configuration
    private let state: Mutex<State>
    /// What `open` repaired: bytes cut from data files and index records dropped.
    public let repairs: [String]

    private init(directory: String, configuration: Configuration, segments: [Segment], repairs: [String]) {
        self.directory = directory
        self.configuration = configuration
        self.state = Mutex(State(segments: segments))
        self.repairs = repairs
    }

    /// Opens (creating if needed) the segments in `directory`, repairing what a crash left: each
    /// index is cut at its first bad record and each data file to the end of its last record.
    /// - Throws: ``StoreError`` `ioError` for a file that cannot be opened, read or cut.
    public static func open(directory: String, configuration: Configuration = Configuration()) throws(StoreError) -> HistorySegments {
        if configuration.readOnly {
            guard access(directory, F_OK) == 0 else {
                return HistorySegments(directory: directory, configuration: configuration, segments: [], repairs: [])
            }
        } else if mkdir(directory, 0o755) != 0 && errno != EEXIST {
            throw StoreError(.ioError, "cannot create \(directory): \(String(cString: strerror(errno)))")
        }
        var firsts: [UInt64] = []
        guard let dir = opendir(directory) else {
            throw StoreError(.ioError, "cannot read \(directory): \(String(cString: strerror(errno)))")
        }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            let stem = name.utf8.dropLast(4)
            guard name.hasSuffix(".seg"), stem.count == 20, stem.allSatisfy({ (0x30...0x39).contains($0) }),
                  let first = UInt64(String(decoding: stem, as: UTF8.self))
            else { continue }
            firsts.append(first)
        }
        closedir(dir)
        firsts.sort()
        var segments: [Segment] = []
        var repairs: [String] = []
        for first in firsts {
            let (segment, repaired) = try openSegment(directory: directory, first: first, configuration: configuration)
            repairs += repaired
            // Segments must follow each other; one that overlaps its predecessor (only a
            // foreign file could) is refused rather than guessed at.
            if let previous = segments.last?.lastSeq, let start = segment.entries.first?.seq, start <= previous {
                throw StoreError(.inconsistent, "segment \(name(first)) starts at checkpoint \(start), not after \(previous)")
            }
            segments.append(segment)
        }
        // Empty segments other than the last hold nothing: drop them.
        var kept: [Segment] = []
        for (i, s) in segments.enumerated() {
            if s.entries.isEmpty && i != segments.count - 1 && !configuration.readOnly {
                for ext in ["seg", "idx", "sealed"] { unlink(path(directory, s.first, ext)) }
                repairs.append("removed empty segment \(name(s.first))")
            } else {
                kept.append(s)
            }
        }
        let result = HistorySegments(directory: directory, configuration: configuration, segments: kept, repairs: repairs)
        // The last segment takes appends unless it was sealed (a marker file) or is full.
        if let last = kept.last, !last.entries.isEmpty,
           access(path(directory, last.first, "sealed"), F_OK) == 0 || last.dataSize >= configuration.maxSegmentBytes {
            result.state.withLock { $0.sealed = true }
        }
        return result
    }

    static func name(_ first: UInt64) -> String {
        let digits = String(first)
        return String(repeating: "0", count: 20 - digits.count) + digits
    }

    static func path(_ directory: String, _ first: UInt64, _ ext: String) -> String {
        "\(directory)/\(name(first)).\(ext)"
    }

    private static func openSegment(directory: String, first: UInt64, configuration: Configuration) throws(StoreError) -> (Segment, [String]) {
        let dataPath = path(directory, first, "seg"), indexPath = path(directory, first, "idx")
        let flags = configuration.readOnly ? O_RDONLY | O_CLOEXEC : O_RDWR | O_CREAT | O_CLOEXEC
        let dataFD = Glibc.open(dataPath, flags, 0o644)
        guard dataFD >= 0 else { throw StoreError(.ioError, "cannot open \(dataPath): \(String(cString: strerror(errno)))") }
        let indexFD = Glibc.open(indexPath, flags, 0o644)
        guard indexFD >= 0 else {
            _ = Glibc.close(dataFD)
            throw StoreError(.ioError, "cannot open \(indexPath): \(String(cString: strerror(errno)))")
        }
        do throws(StoreError) {
            let dataSize = try fileSize(dataFD, dataPath)
            let indexSize = try fileSize(indexFD, indexPath)
            // Every good record indexes at least minFrameBytes of data: no more are read
            // (a forged or sparse index cannot make this allocate beyond its data), in chunks.
            let records = min(indexSize / UInt64(indexRecordBytes), dataSize / UInt64(minFrameBytes))
            var entries: [Entry] = []
            var reason: String?
            var chunk: [UInt8] = []
            var chunkStart: UInt64 = 0
            let chunkRecords: UInt64 = 4_096
            for r in 0..<records {
                if chunk.isEmpty || r == chunkStart + UInt64(chunk.count / indexRecordBytes) {
                    chunkStart = r
                    chunk = [UInt8](repeating: 0, count: Int(min(chunkRecords, records - r)) * indexRecordBytes)
                    try readFully(indexFD, into: &chunk, at: r * UInt64(indexRecordBytes), indexPath)
                }
                let b = Int(r - chunkStart) * indexRecordBytes
                let seq = le64(chunk, b), part = le32(chunk, b + 8), length = le32(chunk, b + 12), offset = le64(chunk, b + 16)
                let expectedOffset = entries.last?.end ?? 0
                let inOrder: Bool
                if let last = entries.last {
                    inOrder = (seq == last.seq && last.part < UInt32.max && part == last.part + 1) || (seq > last.seq && part == 0)
                } else {
                    inOrder = part == 0 && seq >= first
                }
                let (end, overflow) = offset.addingReportingOverflow(UInt64(length))
                guard inOrder, offset == expectedOffset, !overflow, length >= UInt32(minFrameBytes), Int(length) <= configuration.maxFrameBytes else {
                    reason = "record \(r) (checkpoint \(seq) part \(part), \(length) bytes at \(offset)) is out of order or malformed"
                    break
                }
                guard end <= dataSize else {
                    reason = "record \(r) (checkpoint \(seq) part \(part)) points past the data (\(end) > \(dataSize) bytes)"
                    break
                }
                entries.append(Entry(seq: seq, part: part, length: length, offset: offset))
            }
            if reason == nil, records < indexSize / UInt64(indexRecordBytes) {
                reason = "more records than its data can hold"
            }
            var repairs: [String] = []
            let keptIndex = UInt64(entries.count * indexRecordBytes)
            if configuration.readOnly {
                // Nothing is cut: what a writer has not finished is simply not indexed here.
                let directFD = DirectIO.open(dataPath, O_RDONLY | O_CLOEXEC) ?? -1
                return (Segment(first: first, dataFD: dataFD, indexFD: indexFD, directFD: directFD, entries: entries, dataSize: entries.last?.end ?? 0), [])
            }
            if keptIndex != indexSize {
                try cut(indexFD, to: keptIndex, indexPath)
                repairs.append("\(name(first)).idx: cut to \(entries.count) records" + (reason.map { ": \($0)" } ?? " (a partial record)"))
            }
            let keptData = entries.last?.end ?? 0
            if keptData != dataSize {
                try cut(dataFD, to: keptData, dataPath)
                repairs.append("\(name(first)).seg: cut \(dataSize - keptData) bytes after the last indexed frame")
            }
            // Last: nothing after it can fail, so the descriptors above are the only ones to close.
            let directFD = DirectIO.open(dataPath, O_RDWR | O_CLOEXEC) ?? -1
            return (Segment(first: first, dataFD: dataFD, indexFD: indexFD, directFD: directFD, entries: entries, dataSize: keptData), repairs)
        } catch {
            _ = Glibc.close(dataFD)
            _ = Glibc.close(indexFD)
            throw error
        }
    }

    // MARK: Reading

    /// The first and last checkpoint held (nil when empty).
    public var firstSeq: UInt64? { state.withLock { s in s.segments.first { !$0.entries.isEmpty }?.entries.first?.seq } }

    /// Bytes of frames held in all segments (data files; their indexes add 24 bytes a frame).
    public var dataBytes: UInt64 { state.withLock { s in s.segments.reduce(0) { $0 + $1.dataSize } } }

    /// The last checkpoint held.
    public var lastSeq: UInt64? { state.withLock { s in s.segments.last { !$0.entries.isEmpty }?.lastSeq } }

    /// The number of frames (parts) held for checkpoint `seq` (0: none).
    public func partCount(_ seq: UInt64) -> Int {
        state.withLock { s in
            guard let seg = Self.segment(holding: seq, in: s.segments) else { return 0 }
            let i = Self.firstIndex(of: seq, in: seg.entries)
            var n = 0
            while i + n < seg.entries.count && seg.entries[i + n].seq == seq { n += 1 }
            return n
        }
    }

    /// Frame `part` of checkpoint `seq`, exactly as appended, or nil if not held.
    /// - Throws: ``StoreError`` `ioError` or `closed`.
    public func frame(_ seq: UInt64, part: UInt32) throws(StoreError) -> [UInt8]? {
        guard let (segment, entry) = try locate(seq, part: part) else { return nil }
        var bytes = [UInt8](repeating: 0, count: Int(entry.length))
        try Self.readFully(segment.dataFD, into: &bytes, at: entry.offset, "segment frame \(seq)/\(part)")
        return bytes
    }

    /// Appends frame `part` of checkpoint `seq` to `buffer` straight from the file (one copy,
    /// kernel to buffer), after `prefix(length)` bytes the caller writes first (a length
    /// header); returns false if the frame is not held.
    public func read(_ seq: UInt64, part: UInt32, into buffer: inout ByteBuffer, prefix: (Int, inout ByteBuffer) -> Void = { _, _ in }) throws(StoreError) -> Bool {
        guard let (segment, entry) = try locate(seq, part: part) else { return false }
        let length = Int(entry.length)
        prefix(length, &buffer)
        var failure: StoreError?
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { raw in
            var done = 0
            while done < length {
                let n = pread(segment.dataFD, raw.baseAddress! + done, length - done, off_t(entry.offset) + off_t(done))
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else {
                    failure = StoreError(.ioError, "segment frame \(seq)/\(part): " + (n == 0 ? "the file ends early" : String(cString: strerror(errno))))
                    return 0
                }
                done += n
            }
            return length
        }
        if let failure { throw failure }
        return true
    }

    /// Reads frames in file order through windows of the file: one large read covers many
    /// frames, and the next window is read ahead while the caller works on this one (direct
    /// where the file system allows, so a bulk read, such as a snapshot build reading most
    /// blocks once, neither passes through the page cache nor waits on the disk per frame).
    struct FrameReader {
        /// A window of one segment's data file.
        final class Window: @unchecked Sendable {
            var buffer: AlignedBuffer
            var segment: Segment?
            var start: UInt64 = 0
            var count = 0
            /// A read ahead: signalled when it is done; its failure, if any.
            let done = DispatchSemaphore(value: 0)
            var failure: StoreError?

            init(capacity: Int) { buffer = AlignedBuffer(capacity: capacity) }

            func holds(_ seg: Segment, _ entry: Entry) -> Bool {
                segment === seg && entry.offset >= start && entry.end <= start + UInt64(count)
            }

            func fill(_ seg: Segment, from: UInt64, _ what: @autoclosure () -> String) throws(StoreError) {
                segment = nil
                let fd = seg.directFD >= 0 ? seg.directFD : seg.dataFD
                count = try DirectIO.read(fd, buffer.pointer, count: buffer.capacity, at: from, what())
                segment = seg
                start = from
            }
        }

        private var current = Window(capacity: HistorySegments.stagingBytes)
        /// The window after `current`, being read on `queue`: set only while that read is in
        /// flight, so that waiting on it always ends.
        private var ahead: Window?
        /// A window with no read in flight, kept for the next read ahead.
        private var spare: Window?
        private let queue = DispatchQueue(label: "soma.segments.read-ahead")

        init() {}

        /// Frame `part` of checkpoint `seq`, or nil if not held; valid until the next read.
        mutating func read(_ seq: UInt64, part: UInt32, in segments: HistorySegments) throws(StoreError) -> UnsafeRawBufferPointer? {
            guard let (seg, entry) = try segments.locate(seq, part: part) else { return nil }
            if !current.holds(seg, entry) {
                if let next = ahead {
                    ahead = nil
                    next.done.wait()
                    if next.failure == nil && next.holds(seg, entry) { (current, spare) = (next, current) } else { spare = next }
                }
                if !current.holds(seg, entry) {
                    let from = DirectIO.alignDown(entry.offset)
                    let needed = DirectIO.alignUp(Int(entry.end - from))
                    if current.buffer.capacity < needed { current.buffer = AlignedBuffer(capacity: needed) }
                    try current.fill(seg, from: from, "segment frame \(seq)/\(part)")
                    guard current.holds(seg, entry) else { throw StoreError(.ioError, "segment frame \(seq)/\(part): the file ends early") }
                }
                // The next window of the same file, read while this one is used.
                if current.count == current.buffer.capacity {
                    let reuse = spare.flatMap { $0.buffer.capacity == current.buffer.capacity ? $0 : nil }
                    let next = reuse ?? Window(capacity: current.buffer.capacity)
                    spare = nil
                    next.failure = nil
                    ahead = next
                    // From the frame that the window's end cuts (aligned down): a window starting at
                    // its end would not hold that frame, which would then be read again in line
                    // (half the reads of a snapshot build's block pass were). A frame longer than
                    // the window is read in line anyway.
                    let end = current.start + UInt64(current.count)
                    let cut = DirectIO.alignDown(segments.startOfFrame(endingAfter: end, in: seg) ?? end)
                    let from = cut > current.start ? cut : end
                    queue.async {
                        do throws(StoreError) { try next.fill(seg, from: from, "segment \(seg.first) at \(from)") } catch { next.failure = error }
                        next.done.signal()
                    }
                }
            }
            return UnsafeRawBufferPointer(start: current.buffer.pointer + Int(entry.offset - current.start), count: Int(entry.length))
        }
    }

    /// The offset of the first frame of `seg` that ends after `offset`, if any.
    fileprivate func startOfFrame(endingAfter offset: UInt64, in seg: Segment) -> UInt64? {
        state.withLock { _ in
            var lo = 0, hi = seg.entries.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if seg.entries[mid].end <= offset { lo = mid + 1 } else { hi = mid }
            }
            return lo < seg.entries.count ? seg.entries[lo].offset : nil
        }
    }

    /// The segment and index entry of frame `part` of checkpoint `seq`.
    fileprivate func locate(_ seq: UInt64, part: UInt32) throws(StoreError) -> (Segment, Entry)? {
        // The segment itself comes out of the lock: it keeps its descriptor open for the read.
        try state.withLock { s throws(StoreError) in
            guard !s.closed else { throw StoreError(.closed, "the history segments are closed") }
            guard let seg = Self.segment(holding: seq, in: s.segments) else { return nil }
            let i = Self.firstIndex(of: seq, in: seg.entries)
            guard i < seg.entries.count, seg.entries[i].seq == seq else { return nil }
            let (j, overflow) = i.addingReportingOverflow(Int(part))
            guard !overflow, j < seg.entries.count, seg.entries[j].seq == seq else { return nil }
            return (seg, seg.entries[j])
        }
    }

    /// Every frame of checkpoint `seq`, in part order (empty if not held).
    public func frames(_ seq: UInt64) throws(StoreError) -> [[UInt8]] {
        var out: [[UInt8]] = []
        var part: UInt32 = 0
        while let f = try frame(seq, part: part) {
            out.append(f)
            guard part < UInt32.max else { break }
            part += 1
        }
        return out
    }

    /// The segment files (data and index paths) whose every checkpoint is at most `seq`, oldest
    /// first: the closed segments an archive may copy.
    public func closedSegments() -> [(first: UInt64, last: UInt64, data: String, index: String)] {
        state.withLock { s in
            s.segments.enumerated().compactMap { i, seg in
                guard i < s.segments.count - 1 || s.sealed, let first = seg.entries.first?.seq, let last = seg.lastSeq else { return nil }
                return (first, last, Self.path(directory, seg.first, "seg"), Self.path(directory, seg.first, "idx"))
            }
        }
    }

    private static func segment(holding seq: UInt64, in segments: [Segment]) -> Segment? {
        // The last segment whose first checkpoint is at most seq.
        var lo = 0, hi = segments.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if segments[mid].first <= seq { lo = mid + 1 } else { hi = mid }
        }
        return lo == 0 ? nil : segments[lo - 1]
    }

    private static func firstIndex(of seq: UInt64, in entries: [Entry]) -> Int {
        var lo = 0, hi = entries.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if entries[mid].seq < seq { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    // MARK: Writing

    /// Appends the frames of checkpoints, in order, each after ``lastSeq``; the data is synced,
    /// then the index (with `sync`). A checkpoint's frames are its parts 0, 1, ….
    /// - Throws: ``StoreError`` `outOfOrder` (a checkpoint not after the last, or without a
    ///   frame), `frameTooLarge` (a frame outside `minFrameBytes...maxFrameBytes`), `ioError`,
    ///   `closed`; those found in the arguments before anything is written. After an I/O error
    ///   the checkpoints of the batch that went to an earlier segment stay indexed: the caller
    ///   calls ``truncate(after:)`` with its watermark before it appends again.
    public func append(_ checkpoints: [(seq: UInt64, frames: [[UInt8]])]) throws(StoreError) {
        try state.withLock { s throws(StoreError) in
            guard !s.closed else { throw StoreError(.closed, "the history segments are closed") }
            try refuseReadOnly()
            var last = s.segments.last { !$0.entries.isEmpty }?.lastSeq
            for c in checkpoints {
                if let l = last, c.seq <= l { throw StoreError(.outOfOrder, "checkpoint \(c.seq) appended after \(l)") }
                guard !c.frames.isEmpty else { throw StoreError(.outOfOrder, "checkpoint \(c.seq) has no frame") }
                for f in c.frames where f.count < Self.minFrameBytes || f.count > configuration.maxFrameBytes {
                    throw StoreError(.frameTooLarge, "a frame of \(f.count) bytes for checkpoint \(c.seq) (\(Self.minFrameBytes)...\(configuration.maxFrameBytes))")
                }
                last = c.seq
            }
            var pending = checkpoints[...]
            while let next = pending.first {
                let seg = try writable(&s, startingAt: next.seq)
                // As many checkpoints as fit before the size bound (at least one).
                var take = 0
                var size = seg.dataSize
                for c in pending {
                    if take > 0 && size >= configuration.maxSegmentBytes { break }
                    size += c.frames.reduce(UInt64(0)) { $0 + UInt64($1.count) }
                    take += 1
                }
                try write(Array(pending.prefix(take)), to: seg, &s)
                pending = pending.dropFirst(take)
                if seg.dataSize >= configuration.maxSegmentBytes { s.sealed = true }
            }
        }
    }

    /// Closes the current segment (at an epoch end): the next append starts a new one. The seal
    /// is a marker file (`<first>.sealed`), so it holds across a restart.
    /// - Throws: ``StoreError`` `ioError` if the marker cannot be written, `closed`.
    public func seal() throws(StoreError) {
        try state.withLock { s throws(StoreError) in
            guard !s.closed else { throw StoreError(.closed, "the history segments are closed") }
            try refuseReadOnly()
            guard let last = s.segments.last, !last.entries.isEmpty, !s.sealed else { return }
            let marker = Self.path(directory, last.first, "sealed")
            let fd = Glibc.open(marker, O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw StoreError(.ioError, "cannot create \(marker): \(String(cString: strerror(errno)))") }
            _ = Glibc.close(fd)
            try syncDirectory()
            s.sealed = true
        }
    }

    /// The segment the next append goes to: the last one unless it is sealed, else a new one
    /// named after `seq`.
    private func writable(_ s: inout State, startingAt seq: UInt64) throws(StoreError) -> Segment {
        if let last = s.segments.last, !s.sealed {
            if !last.entries.isEmpty || last.first == seq { return last }
            // An empty segment named after another checkpoint (a crash right after creating
            // it, then a re-apply from elsewhere): replaced by one named after `seq`.
            s.segments.removeLast()
            try remove(last.first)
        }
        let (seg, _) = try Self.openSegment(directory: directory, first: seq, configuration: configuration)
        // In the list before the directory sync: if that fails, the (empty) segment is still
        // owned, and dropped or reused by the next append or open.
        s.segments.append(seg)
        s.sealed = false
        try syncDirectory()
        return seg
    }

    private func write(_ batch: [(seq: UInt64, frames: [[UInt8]])], to seg: Segment, _ s: inout State) throws(StoreError) {
        let dataPath = Self.path(directory, seg.first, "seg"), indexPath = Self.path(directory, seg.first, "idx")
        // The data: through the staging buffer, direct where the file system allows (the
        // last partial block is written padded, the file cut back, and written again with the
        // next append).
        var appender: DirectAppender
        if let held = s.appender, held.first == seg.first, held.appender.size == seg.dataSize {
            appender = held.appender
        } else {
            let buffer = s.staging ?? AlignedBuffer(capacity: Self.stagingBytes)
            s.staging = buffer
            appender = try DirectAppender(
                fd: seg.directFD >= 0 ? seg.directFD : seg.dataFD, readFD: seg.dataFD, path: dataPath, buffer: buffer, size: seg.dataSize)
        }
        // Unknown until this write succeeds: a failure leaves the file to the caller's truncate.
        s.appender = nil
        // The index records in one buffer, sized once.
        let frames = batch.reduce(0) { $0 + $1.frames.count }
        var index: [UInt8] = []
        index.reserveCapacity(frames * Self.indexRecordBytes)
        var added: [Entry] = []
        added.reserveCapacity(frames)
        var offset = seg.dataSize
        for c in batch {
            for (part, f) in c.frames.enumerated() {
                var failure: StoreError?
                f.withUnsafeBytes { raw in
                    do throws(StoreError) { try appender.append(raw) } catch { failure = error }
                }
                if let failure { throw failure }
                let e = Entry(seq: c.seq, part: UInt32(part), length: UInt32(f.count), offset: offset)
                Self.append(e.seq, to: &index)
                Self.append(e.part, to: &index)
                Self.append(e.length, to: &index)
                Self.append(e.offset, to: &index)
                added.append(e)
                offset += UInt64(f.count)
            }
        }
        try appender.flush()
        if configuration.sync { try Self.dataSync(seg.dataFD, dataPath) }
        try Self.writeFully(seg.indexFD, index, at: UInt64(seg.entries.count * Self.indexRecordBytes), indexPath)
        if configuration.sync { try Self.dataSync(seg.indexFD, indexPath) }
        seg.entries += added
        seg.dataSize = offset
        s.appender = (seg.first, appender)
    }

    /// Drops every frame of the checkpoints after `seq` (what a crash left ahead of the
    /// watermark), deleting whole segments and cutting the one that holds `seq`.
    public func truncate(after seq: UInt64) throws(StoreError) {
        try state.withLock { s throws(StoreError) in
            guard !s.closed else { throw StoreError(.closed, "the history segments are closed") }
            try refuseReadOnly()
            s.appender = nil
            // Whole segments after seq go, and empty ones (a crash right after one was created).
            while let last = s.segments.last, (last.entries.first?.seq).map({ $0 > seq }) ?? true {
                s.segments.removeLast()
                s.sealed = true
                try remove(last.first)
            }
            guard let last = s.segments.last else { return }
            let keep = Self.firstIndex(of: seq &+ 1, in: last.entries)
            guard seq < UInt64.max, keep < last.entries.count else { return }
            let dataEnd = last.entries[keep].offset
            let indexPath = Self.path(directory, last.first, "idx"), dataPath = Self.path(directory, last.first, "seg")
            // The index first: a crash in between leaves data past the index, cut on open.
            try Self.cut(last.indexFD, to: UInt64(keep * Self.indexRecordBytes), indexPath)
            try Self.cut(last.dataFD, to: dataEnd, dataPath)
            last.entries.removeSubrange(keep...)
            last.dataSize = dataEnd
            // Cut, it is no longer what was sealed: appends go on in it (unless it is full).
            let marker = Self.path(directory, last.first, "sealed")
            if unlink(marker) != 0 && errno != ENOENT {
                throw StoreError(.ioError, "cannot delete \(marker): \(String(cString: strerror(errno)))")
            }
            if last.entries.isEmpty {
                s.segments.removeLast()
                s.sealed = true
                try remove(last.first)
            } else {
                s.sealed = last.dataSize >= configuration.maxSegmentBytes
            }
        }
    }

    /// Deletes every whole segment whose checkpoints are all below `seq` (never the one that
    /// takes appends). Returns how many were deleted.
    @discardableResult
    public func prune(below seq: UInt64) throws(StoreError) -> Int {
        try state.withLock { s throws(StoreError) in
            guard !s.closed else { throw StoreError(.closed, "the history segments are closed") }
            try refuseReadOnly()
            var removed = 0
            while s.segments.count > 1, (s.segments[0].lastSeq ?? 0) < seq {
                let seg = s.segments.removeFirst()
                try remove(seg.first)
                removed += 1
            }
            return removed
        }
    }

    /// Deletes every segment (a store that rebuilds its history from elsewhere).
    public func removeAll() throws(StoreError) {
        try state.withLock { s throws(StoreError) in
            guard !s.closed else { throw StoreError(.closed, "the history segments are closed") }
            try refuseReadOnly()
            s.appender = nil
            while let last = s.segments.popLast() { try remove(last.first) }
            s.sealed = false
        }
    }

    private func refuseReadOnly() throws(StoreError) {
        if configuration.readOnly { throw StoreError(.invalidArgument, "the history segments in \(directory) are open read-only") }
    }

    /// Closes the files (once reads in flight are done with them); later calls throw `closed`.
    public func close() {
        state.withLock { s in
            s.segments = []
            s.appender = nil
            s.staging = nil
            s.closed = true
        }
    }

    /// Deletes a segment's files (index first, so a crash in between leaves data without an
    /// index, which open cuts to nothing).
    private func remove(_ first: UInt64) throws(StoreError) {
        for ext in ["idx", "sealed", "seg"] {
            let p = Self.path(directory, first, ext)
            if unlink(p) != 0 && errno != ENOENT { throw StoreError(.ioError, "cannot delete \(p): \(String(cString: strerror(errno)))") }
        }
        try syncDirectory()
    }

    private func syncDirectory() throws(StoreError) {
        guard configuration.sync else { return }
        try DirectIO.syncDirectory(directory)
    }

    // MARK: Files

    private static func fileSize(_ fd: Int32, _ path: String) throws(StoreError) -> UInt64 {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw StoreError(.ioError, "stat \(path): \(String(cString: strerror(errno)))") }
        return UInt64(max(0, st.st_size))
    }

    private static func readFully(_ fd: Int32, into bytes: inout [UInt8], at offset: UInt64, _ what: String) throws(StoreError) {
        var done = 0
        let total = bytes.count
        while done < total {
            let n = bytes.withUnsafeMutableBytes { raw in
                pread(fd, raw.baseAddress! + done, total - done, off_t(offset + UInt64(done)))
            }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                throw StoreError(.ioError, "read \(what): \(n == 0 ? "unexpected end of file" : String(cString: strerror(errno)))")
            }
            done += n
        }
    }

    /// Writes all of `bytes` at `offset` (also the snapshot build's bucket files).
    static func writeFully(_ fd: Int32, _ bytes: [UInt8], at offset: UInt64, _ path: String) throws(StoreError) {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { raw in
                pwrite(fd, raw.baseAddress! + done, bytes.count - done, off_t(offset + UInt64(done)))
            }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw StoreError(.ioError, "write \(path): \(String(cString: strerror(errno)))") }
            done += n
        }
    }

    private static func dataSync(_ fd: Int32, _ path: String) throws(StoreError) {
        guard fdatasync(fd) == 0 else { throw StoreError(.ioError, "fdatasync \(path): \(String(cString: strerror(errno)))") }
    }

    private static func cut(_ fd: Int32, to size: UInt64, _ path: String) throws(StoreError) {
        guard ftruncate(fd, off_t(size)) == 0, fdatasync(fd) == 0 else {
            throw StoreError(.ioError, "cannot cut \(path) to \(size) bytes: \(String(cString: strerror(errno)))")
        }
    }

    private static func le64(_ b: [UInt8], _ i: Int) -> UInt64 {
        var v: UInt64 = 0
        for k in 0..<8 { v |= UInt64(b[i + k]) << (8 * k) }
        return v
    }

    private static func le32(_ b: [UInt8], _ i: Int) -> UInt32 {
        var v: UInt32 = 0
        for k in 0..<4 { v |= UInt32(b[i + k]) << (8 * k) }
        return v
    }

    private static func append<T: FixedWidthInteger>(_ v: T, to out: inout [UInt8]) {
        withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) }
    }
}
