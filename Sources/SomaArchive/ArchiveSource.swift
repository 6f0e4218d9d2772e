public import NIOCore
public import SomaCore
public import SomaNet
import SomaStore
public import SomaSync

/// An archive as a source of the sync scheduler (DESIGN §10, §11), raced against peers like any
/// other: what it holds comes from its signed manifest (read again at every poll, so a growing
/// archive is followed), summaries from its summary files, epoch ends from the manifest, blocks
/// by ranged reads of the runs of frames its segment indexes locate, snapshot chunks the same
/// way. Files read whole (indexes, summaries, snapshot manifests) are checked against the
/// manifest's SHA-256s; blocks and chunks are verified by the sync on their own against their
/// certified digests, as from a peer. A file that is missing, differs or does not decode makes
/// the sync set the archive aside with the reason (bad data); a store that fails past its
/// retries counts as a stall.
public actor ArchiveSource: SyncSource {
    /// The archive's location.
    public nonisolated let sourceID: SourceID
    /// An archive is always there to ask.
    public nonisolated var isConnected: Bool { true }
    nonisolated let reader: ArchiveReader
    nonisolated let chainID: Digest
    var manifest: ArchiveManifest?
    /// Indexes and summary files read, the newest last (a few kept: a segment's index is 24
    /// bytes a frame, its summaries a few hundred bytes a checkpoint).
    var indexes: [(name: String, task: Task<SegmentIndex, any Error>)] = []
    var summaryFiles: [(name: String, task: Task<[CertifiedCheckpointSummary], any Error>)] = []
    var snapshotManifests: [UInt64: SnapshotManifest] = [:]
    /// Pages of segment and snapshot data files read from an object store
    /// (``ArchiveBackend/readPageBytes``), named `FILE@SHA256@PAGE`, the newest last.
    var pages: [(name: String, task: Task<[UInt8], any Error>)] = []
    static let cachedIndexes = 8
    static let cachedSummaryFiles = 4
    /// Pages kept: 8 of 8 MiB hold the spans a sync has in flight (a window of 12 spans of
    /// about 2 MB) and the pages they start.
    static let cachedPages = 8

    /// The most bytes one read of blocks takes (a peer's stream of blocks is held to the same), and
    /// the largest snapshot chunk frame (a peer sends a chunk in one wire frame of at most 16 MiB):
    /// what a lying index can make a sync allocate.
    public static let maxReadBytes: UInt64 = 128 << 20
    public static let maxChunkFrameBytes: UInt32 = 16 << 20

    /// The most requests a sync sends an archive at once: ranged reads of an object store gain
    /// from more in parallel than a peer's requests do.
    public static let parallelReads = 8

    /// A source reading the archive `reader` reads, which must hold the chain `chainID`.
    public init(reader: ArchiveReader, chainID: Digest) {
        self.reader = reader
        self.chainID = chainID
        sourceID = .archive("\(reader.backend)")
    }

    /// The manifest, read again (its signature checked, its chain this sync's).
    func reload() async throws -> ArchiveManifest {
        guard let m = try await Self.mapped({ try await self.reader.manifest() }) else {
            throw SourceFailure("\(reader.backend) holds no \(ArchiveManifest.fileName)", stalled: false)
        }
        guard m.chainID == chainID else {
            throw ArchiveError("\(reader.backend) is an archive of chain \(m.chainID.hex.prefix(16))…, not this node's (\(chainID.hex.prefix(16))…)")
        }
        manifest = m
        return m
    }

    func current() async throws -> ArchiveManifest {
        if let manifest { return manifest }
        return try await reload()
    }

    public func availability() async throws -> Availability {
        let m = try await reload()
        let snapshotEpochs = m.snapshots.map(\.epoch).filter { Int(exactly: $0).map { $0 < m.epochEnds.count } ?? false }
        guard let first = m.ranges.first, let last = m.ranges.last else {
            return Availability(lowestAvailable: 0, highestSynced: 0, highestVerified: 0, snapshotEpochs: Array(snapshotEpochs.suffix(Availability.maxSnapshotEpochs)))
        }
        return Availability(
            lowestAvailable: first.first, highestSynced: last.last, highestVerified: last.last,
            snapshotEpochs: Array(snapshotEpochs.suffix(Availability.maxSnapshotEpochs)))
    }

    public func epochEndings(from epoch: UInt64, max: UInt32) async throws -> [CertifiedCheckpointSummary] {
        let ends = try await current().epochEnds
        guard let from = Int(exactly: epoch), from < ends.count else { return [] }
        return Array(ends[from...].prefix(Int(max)))
    }

    public func summaries(from seq: UInt64, count: UInt32, allCertificates: Bool) async throws -> SummariesResponse {
        let m = try await current()
        var out: [CertifiedCheckpointSummary] = []
        out.reserveCapacity(Int(min(count, 1_000)))
        var next = seq
        while out.count < Int(count), let range = Self.range(holding: next, in: m) {
            let all = try await summaries(range)
            let from = Int(next - range.first)
            let n = min(Int(count) - out.count, all.count - from)
            out += all[from..<(from + n)]
            guard n > 0, out.count < Int(count), range.last < .max else { break }
            next = range.last + 1
        }
        guard !out.isEmpty else { throw RPCError.notFound("\(reader.backend) holds no summary of checkpoint \(seq)") }
        // Without `allCertificates`, only the last summary's certificate (as a peer answers).
        let certificates = out.indices.map { allCertificates || $0 == out.count - 1 ? out[$0].certificate : nil }
        return SummariesResponse(summaries: out.map(\.summary), certificates: certificates)
    }

    /// The blocks of `count` checkpoints from `seq` (a prefix where the archive ends), read with
    /// one ranged read a segment. `timeout` is the object store client's own (its connect and
    /// read timeouts, its retries).
    public func blocks(from seq: UInt64, count: UInt32, timeout: TimeAmount?) async throws -> [BlockItem] {
        let m = try await current()
        var items: [BlockItem] = []
        var next = seq
        var left = Int(count)
        while left > 0, let range = Self.range(holding: next, in: m) {
            let index = try await index(range)
            let k = Int(next - range.first)
            var n = min(left, index.count - k)
            // Within the read bound: a prefix (the sync asks again for the rest), one checkpoint at least.
            func size(_ n: Int) -> UInt64 {
                let r = index.byteRange(of: k..<(k + n))
                return r.upperBound - r.lowerBound
            }
            while n > 1, size(n) > Self.maxReadBytes { n -= 1 }
            let span = index.byteRange(of: k..<(k + n))
            guard size(n) <= Self.maxReadBytes else {
                throw ArchiveError("\(reader.backend)/\(range.index.name): checkpoint \(next)'s frames take \(size(n)) bytes, more than a read takes (\(Self.maxReadBytes))")
            }
            // Within the data file's listed size (the index was checked against it).
            let bytes = try await read(range.data, span)
            let checkpoints: [SegmentFile.Checkpoint]
            do {
                checkpoints = try index.checkpoints(k..<(k + n), bytes: bytes, at: span.lowerBound)
            } catch {
                throw ArchiveError("\(reader.backend)/\(range.data.name): \(error)")
            }
            for cp in checkpoints {
                let parts = UInt32(cp.frames.count)
                for (p, (frame, proof)) in zip(cp.frames, cp.proofs).enumerated() {
                    items.append(BlockItem(seq: cp.seq, part: UInt32(p), block: ProvenFrame(frame: frame, proof: proof, count: parts)))
                }
            }
            left -= n
            // A prefix cut by the read bound ends the answer; so does the archive's end.
            guard k + n == index.count, range.last < .max else { break }
            next = range.last + 1
        }
        guard !items.isEmpty else { throw RPCError.notFound("\(reader.backend) holds no blocks of checkpoint \(seq)") }
        return items
    }

    public func snapshotManifest(epoch: UInt64) async throws -> SnapshotManifest {
        if let cached = snapshotManifests[epoch] { return cached }
        guard let entry = try await current().snapshots.first(where: { $0.epoch == epoch }) else {
            throw RPCError.notFound("\(reader.backend) holds no snapshot of epoch \(epoch)")
        }
        let bytes = try await Self.mapped { try await self.reader.fetch(entry.manifest) }
        let manifest: SnapshotManifest
        do {
            manifest = try SnapshotManifest(bcsBytes: bytes)
        } catch {
            throw ArchiveError("\(reader.backend)/\(entry.manifest.name): not a snapshot manifest: \(error)")
        }
        guard manifest.epoch == epoch else { throw ArchiveError("\(reader.backend)/\(entry.manifest.name): the manifest of epoch \(manifest.epoch)") }
        snapshotManifests[epoch] = manifest
        return manifest
    }

    public func snapshotChunk(epoch: UInt64, index chunk: UInt32, timeout: TimeAmount?) async throws -> ProvenFrame {
        let manifest = try await snapshotManifest(epoch: epoch)
        guard let entry = try await current().snapshots.first(where: { $0.epoch == epoch }) else {
            throw RPCError.notFound("\(reader.backend) holds no snapshot of epoch \(epoch)")
        }
        guard Int(chunk) < manifest.chunkRoots.count else {
            throw RPCError.badRequest("the snapshot of epoch \(epoch) has \(manifest.chunkRoots.count) chunks; chunk \(chunk) does not exist")
        }
        let index = try await index(entry, chunks: manifest.chunkRoots.count)
        let k = Int(chunk)
        let from = index.offsets[k], length = index.lengths[k]
        guard length <= Self.maxChunkFrameBytes else {
            throw ArchiveError("\(reader.backend)/\(entry.index.name): chunk \(k) of epoch \(epoch) takes \(length) bytes, more than a chunk frame may (\(Self.maxChunkFrameBytes))")
        }
        let frame = Array(try await read(entry.data, from..<(from + UInt64(length))))
        let proof: [Digest]
        do { proof = try manifest.proof(chunk: k) } catch { throw ArchiveError("\(reader.backend)/\(entry.manifest.name): \(error)") }
        return ProvenFrame(frame: frame, proof: proof, count: UInt32(manifest.chunkRoots.count))
    }

    /// Lets go of the files and pages read.
    public func close() async {
        indexes = []
        summaryFiles = []
        pages = []
    }

    // MARK: files

    static func range(holding seq: UInt64, in m: ArchiveManifest) -> ArchiveRange? {
        // Ranges are in order and contiguous (the manifest's decoding checks it).
        var lo = 0, hi = m.ranges.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if m.ranges[mid].last < seq { lo = mid + 1 } else { hi = mid }
        }
        return lo < m.ranges.count && m.ranges[lo].first <= seq ? m.ranges[lo] : nil
    }

    func index(_ range: ArchiveRange) async throws -> SegmentIndex {
        let reader = self.reader
        let task = Self.task(&indexes, name: range.index.name, keep: Self.cachedIndexes) { try await reader.index(range) }
        return try await value(task, name: range.index.name)
    }

    /// A snapshot's chunk index (the segment index format, one "checkpoint": the epoch).
    func index(_ snapshot: ArchiveSnapshot, chunks: Int) async throws -> SegmentIndex {
        let reader = self.reader
        let task = Self.task(&indexes, name: snapshot.index.name, keep: Self.cachedIndexes) { try await reader.index(snapshot, chunks: chunks) }
        return try await value(task, name: snapshot.index.name)
    }

    func summaries(_ range: ArchiveRange) async throws -> [CertifiedCheckpointSummary] {
        let reader = self.reader
        let task = Self.task(&summaryFiles, name: range.summaries.name, keep: Self.cachedSummaryFiles) { try await reader.summaries(range) }
        return try await value(task, name: range.summaries.name)
    }

    /// The task reading `name` (one read for concurrent askers), started if there is none.
    static func task<T: Sendable>(
        _ cache: inout [(name: String, task: Task<T, any Error>)], name: String, keep: Int, read: @escaping @Sendable () async throws -> T
    ) -> Task<T, any Error> {
        let task: Task<T, any Error>
        if let i = cache.firstIndex(where: { $0.name == name }) {
            task = cache.remove(at: i).task
        } else {
            task = Task { try await Self.mapped(read) }
        }
        cache.append((name, task))
        if cache.count > keep { cache.removeFirst() }
        return task
    }

    /// The value of `task`; a failed read is forgotten, so that the next ask reads again.
    func value<T: Sendable>(_ task: Task<T, any Error>, name: String) async throws -> T {
        do {
            return try await task.value
        } catch {
            forget(name)
            throw error
        }
    }

    func forget(_ name: String) {
        indexes.removeAll { $0.name == name }
        summaryFiles.removeAll { $0.name == name }
        pages.removeAll { $0.name == name }
    }

    /// The bytes `span` of `file`, a segment's or a snapshot's data file (`span` within its
    /// listed size). From a store that reads in pages (``ArchiveBackend/readPageBytes``), a span
    /// of at most a page is cut from the one or two aligned pages that hold it, each read once
    /// for every span it holds (the sync asks for neighbouring spans side by side); a span over a
    /// page, or any span from a folder, is read as asked.
    /// - Throws: ``ArchiveError`` when `span` is not within the file's listed size, or the store
    ///   sends a page of another length (the file is not the one listed).
    func read(_ file: ArchiveFile, _ span: Range<UInt64>) async throws -> ArraySlice<UInt8> {
        // An archive file's listed size fits an Int (the manifest's decoding bounds it), so do
        // the offsets within it.
        guard span.upperBound <= file.size, let size = Int(exactly: file.size) else {
            throw ArchiveError("\(reader.backend)/\(file.name): bytes \(span.lowerBound)..<\(span.upperBound) asked of a file of \(file.size)")
        }
        let lower = Int(span.lowerBound), upper = Int(span.upperBound)
        let reader = self.reader
        guard let page = reader.backend.readPageBytes, page > 0, upper - lower <= page, lower < upper else {
            return try await Self.mapped { try await reader.backend.read(file.name, range: lower..<upper, limit: upper - lower) }[...]
        }
        var parts: [ArraySlice<UInt8>] = []
        for p in (lower / page)...((upper - 1) / page) {
            let start = p * page, end = min(start + page, size)
            // Named by the file's listed digest too: a file the manifest lists anew (another
            // export wrote it again) is never served from pages of its former bytes.
            let name = "\(file.name)@\(file.sha256.hex.prefix(16))@\(p)"
            let task = Self.task(&pages, name: name, keep: Self.cachedPages) {
                try await reader.backend.read(file.name, range: start..<end, limit: end - start)
            }
            let bytes = try await value(task, name: name)
            guard bytes.count == end - start else {
                forget(name)
                throw ArchiveError("\(reader.backend)/\(file.name): \(bytes.count) bytes read at \(start), \(end - start) asked")
            }
            parts.append(bytes[(max(lower, start) - start)..<(min(upper, end) - start)])
        }
        if parts.count == 1 { return parts[0] }
        var joined: [UInt8] = []
        joined.reserveCapacity(upper - lower)
        for part in parts { joined.append(contentsOf: part) }
        return joined[...]
    }

    /// Runs a read; an object store that failed past its retries (unreachable, overloaded) is a
    /// stall of this source, refused credentials a failure; a missing or wrong file stays an
    /// archive error (bad data).
    static func mapped<T: Sendable>(_ read: @Sendable () async throws -> T) async throws -> T {
        do {
            return try await read()
        } catch let e as S3Error {
            if e.status == 404 { throw ArchiveError("missing archive file: \(e)") }
            if e.code == "TooLarge" || e.code == "ShortRead" { throw ArchiveError("\(e)") }
            if e.retryable { throw SourceFailure("the object store failed: \(e)", stalled: true) }
            if e.status == 401 || e.status == 403 { throw SourceFailure("the object store refused: \(e)", stalled: false) }
            throw ArchiveError("\(e)")
        }
    }
}
