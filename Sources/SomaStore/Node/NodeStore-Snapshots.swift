public import SomaCore
import Foundation
import Synchronization

extension NodeStore {
    static let manifestChunk = UInt32.max

    /// The manifest of the snapshot of `epoch`, if the store holds one.
    public func snapshotManifest(epoch: UInt64) async throws -> SnapshotManifest? {
        try await blocking { try self.snapshotManifestSync(epoch) }
    }

    func snapshotManifestSync(_ epoch: UInt64) throws(StoreError) -> SnapshotManifest? {
        guard let bytes = try database.get(cf.snapshotChunks, StoreKeys.chunk(epoch, Self.manifestChunk)) else { return nil }
        do {
            return try SnapshotManifest(bcsBytes: bytes)
        } catch {
            throw StoreError(.badValue, error, context: "snapshot manifest \(epoch)")
        }
    }

    /// Chunk `index` of the snapshot of `epoch`: an LZ4 frame of `bcs(Vec<Object>)`, as stored.
    public func snapshotChunk(epoch: UInt64, index: UInt32) async throws -> [UInt8]? {
        try await blocking {
            guard index != Self.manifestChunk else { return nil }
            return try self.database.get(self.cf.snapshotChunks, StoreKeys.chunk(epoch, index))
        }
    }

    /// The epochs whose snapshots the store holds. A manifest is the last key of its epoch
    /// (`epoch ‖ u32.max`), so this seeks from epoch to epoch instead of reading the chunks:
    /// a few seeks per epoch held, however large the snapshots (it answers every `getAvailability`).
    public func snapshotEpochs() async throws -> [UInt64] {
        try await blocking {
            try self.database.withIterator(self.cf.snapshotChunks) { it in
                var out: [UInt64] = []
                var epoch: UInt64 = 0
                while true {
                    it.seek(StoreKeys.chunk(epoch, Self.manifestChunk))
                    guard it.isValid else { break }
                    let key = it.key
                    guard let found = StoreKeys.readU64(key), let index = StoreKeys.readU32(key, at: 8) else { break }
                    if found == epoch && index == Self.manifestChunk {
                        out.append(epoch)
                        guard epoch < UInt64.max else { break }
                        epoch += 1
                    } else {
                        // An epoch with chunks but no manifest yet (being built): look at the next.
                        guard found > epoch || index != Self.manifestChunk else { break }
                        epoch = found > epoch ? found : epoch + 1
                    }
                }
                return out
            }
        }
    }

    /// Builds (or rebuilds) the snapshot of `epoch` now. The live set must still be that
    /// epoch's: `highestExecuted` must be its last checkpoint.
    /// - Throws: ``StoreError/Code/outOfOrder`` otherwise.
    public func buildSnapshot(epoch: UInt64) async throws -> SnapshotManifest {
        try await blocking {
            try self.writer.withLock { _ throws in
                guard let record = try self.epochSync(epoch), let last = record.lastCheckpoint, record.stateRoot != nil,
                      try self.watermarkSync(.highestExecuted)?.seq == last
                else {
                    throw StoreError(.outOfOrder, "the live set is not epoch \(epoch)'s end: execute to its last checkpoint and no further")
                }
                try self.buildSnapshotSync(epoch: epoch, record: record)
                guard let manifest = try self.snapshotManifestSync(epoch) else {
                    throw StoreError(.inconsistent, "the snapshot of epoch \(epoch) was not written")
                }
                return manifest
            }
        }
    }

    /// Cuts the live object set (just after `record`'s epoch end was committed) into chunks of
    /// `snapshotChunkSize` objects sorted by id, checks every object against its live digest,
    /// checks the chunk roots against the certified state root, stores chunks and manifest, and
    /// drops snapshots older than `retainSnapshots` epochs.
    ///
    /// The live set is split at chunk boundaries into ranges, one per core. Three passes, each
    /// on every core, put each range's objects' bytes, in id order, into a spill file of its
    /// own beside the store (memory stays bounded whatever the live set's size):
    /// 1. per range, the live set in id order with one iterator stepping forward over
    ///    `objects` (keys `id ‖ version` are in the same order; a seek after 16 steps): an
    ///    encoding stored as such goes to its place in the spill file; a locator into a block
    ///    (archive stores) is collected;
    /// 2. the locators of all ranges sorted by block: each block is read and decompressed once
    ///    and each located object copied to its place;
    /// 3. per range, the spill file read in order a chunk at a time: each object hashed against
    ///    its live digest, the chunk (`bcs(Vec<Object>)`: the count, then the encodings back to
    ///    back) compressed into the range's own SST file (keys `epoch ‖ chunk`, new to the
    ///    store; the ranges do not overlap).
    /// The files and the manifest's are ingested at once at the bottom level: no write-ahead
    /// log, memtable, flush or compaction. The pending marker goes after the ingestion, so a
    /// crash in between builds the snapshot again (the same keys and values).
    func buildSnapshotSync(epoch: UInt64, record: EpochRecord) throws {
        guard let lastCheckpoint = record.lastCheckpoint, let root = record.stateRoot else { return }
        let k = configuration.snapshotChunkSize
        let dir = database.path + "/ingest-snapshot"
        try Self.freshDirectory(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Where each range starts: the live ids at chunk boundaries, one range per core (a
        // pass over the live set's keys only).
        // The certified count, a hint for the split only (the pass below counts for itself).
        let live = Int(clamping: record.liveObjectCount ?? 0)
        let parts = max(1, min(Self.snapshotParallelism, live / max(1, k * 8)))
        let perPart = (live + parts - 1) / parts
        let chunksPerPart = max(1, (perPart + k - 1) / k)
        let starts: [(chunk: Int, id: [UInt8])] = try database.withIterator(cf.liveObjects) { it in
            var found: [(chunk: Int, id: [UInt8])] = []
            var n = 0
            while it.isValid {
                if n % (chunksPerPart * k) == 0 { found.append((n / k, it.withKey { Array($0) })) }
                n += 1
                it.next()
            }
            return found
        }
        let ranges = starts.indices.map { p in
            SnapshotRange(
                index: p, firstChunk: starts[p].chunk, from: starts[p].id, to: p + 1 < starts.count ? starts[p + 1].id : nil,
                spill: dir + "/range-\(p).bin", file: dir + "/chunks-\(p).sst")
        }
        let spills = try ranges.map { (r) throws(StoreError) in try SpillFile(path: r.spill) }
        // 1. Object versions: encodings to their places, locators collected.
        let gathered = try Self.onEveryCore(ranges) { r in try self.gatherSnapshotRange(epoch: epoch, r, spill: spills[r.index]) }
        // 2. Located objects, block by block.
        let located = gathered.flatMap(\.located).sorted {
            ($0.locator.seq, $0.locator.part) < ($1.locator.seq, $1.locator.part)
        }
        let slices = Self.blockAlignedSlices(located, count: Self.snapshotParallelism)
        _ = try Self.onEveryCore(slices) { slice in try self.copyLocated(located[slice], epoch: epoch, spills: spills) }
        // 3. Chunks, range by range.
        let built = try Self.onEveryCore(ranges) { r in
            try self.buildSnapshotChunks(epoch: epoch, r, chunkSize: k, lengths: gathered[r.index].lengths, spill: spills[r.index])
        }
        var chunkRoots: [Digest] = []
        var count: UInt64 = 0
        var files: [String] = []
        for part in built {
            chunkRoots += part.roots
            count += part.count
            if let f = part.file { files.append(f) }
        }
        guard Merkle.root(leafHashes: chunkRoots) == root, count == record.liveObjectCount else {
            throw StoreError(.inconsistent, "snapshot of epoch \(epoch) does not reproduce the certified state root")
        }
        let manifest = SnapshotManifest(
            epoch: epoch, lastCheckpoint: lastCheckpoint, stateRoot: root, objectCount: count, chunkSize: UInt64(k),
            chunkRoots: chunkRoots)
        let file = try database.sstWriter(cf.snapshotChunks, path: dir + "/manifest.sst")
        try file.put(StoreKeys.chunk(epoch, Self.manifestChunk), manifest.bcsBytes)
        try file.finish()
        try database.ingest(cf.snapshotChunks, files: files + [file.path])
        let batch = WriteBatch(for: database)
        batch.delete(cf.meta, Self.pendingSnapshotKey)
        if configuration.retainSnapshots > 0, epoch >= configuration.retainSnapshots {
            // Keep epochs (epoch - retainSnapshots, epoch]; no `epoch + 1` (a certified epoch may be any number).
            batch.deleteRange(cf.snapshotChunks, from: StoreKeys.seq(0), to: StoreKeys.seq(epoch - configuration.retainSnapshots + 1))
        }
        try database.write(batch, sync: configuration.syncWrites)
    }

    /// Cores a snapshot build uses.
    static let snapshotParallelism = max(1, min(4, ProcessInfo.processInfo.activeProcessorCount))

    /// One range of a snapshot build: the live ids `[from, to)` (to the end without `to`),
    /// whose chunks are numbered from `firstChunk`.
    struct SnapshotRange: Sendable {
        var index: Int
        var firstChunk: Int
        var from: [UInt8]
        var to: [UInt8]?
        var spill: String
        var file: String
    }

    /// An object of a snapshot stored as a locator: where its bytes go in its range's spill file.
    struct LocatedObject: Sendable {
        var locator: ObjectLocator
        var range: Int
        var at: UInt64
    }

    /// `body` on every element at once (one thread each); the results in order, or the first error.
    static func onEveryCore<T: Sendable, R: Sendable>(_ items: [T], _ body: @Sendable (T) throws -> R) throws -> [R] {
        let results = Mutex<[Int: R]>([:])
        let failures = Mutex<[any Error]>([])
        DispatchQueue.concurrentPerform(iterations: items.count) { i in
            do {
                let r = try body(items[i])
                results.withLock { $0[i] = r }
            } catch {
                failures.withLock { $0.append(error) }
            }
        }
        if let failure = failures.withLock({ $0.first }) { throw failure }
        let all = results.withLock { $0 }
        return try items.indices.map { (i) throws(StoreError) in
            guard let r = all[i] else { throw StoreError(.inconsistent, "a parallel pass left part \(i) undone") }
            return r
        }
    }

    /// At most `count` contiguous slices of `located` (sorted by block) that never split a block.
    static func blockAlignedSlices(_ located: [LocatedObject], count: Int) -> [Range<Int>] {
        guard !located.isEmpty else { return [] }
        let target = max(1, (located.count + count - 1) / count)
        var slices: [Range<Int>] = []
        var lo = 0
        while lo < located.count {
            var hi = min(located.count, lo + target)
            while hi < located.count && located[hi].locator.seq == located[hi - 1].locator.seq
                && located[hi].locator.part == located[hi - 1].locator.part {
                hi += 1
            }
            slices.append(lo..<hi)
            lo = hi
        }
        return slices
    }

    /// Pass 1 of a snapshot build over one range: each live object's stored version, in id
    /// order; its length in the spill file; its encoding written there, or its locator collected.
    func gatherSnapshotRange(
        epoch: UInt64, _ r: SnapshotRange, spill: SpillFile
    ) throws -> (lengths: [UInt32], located: [LocatedObject]) {
        var lengths: [UInt32] = []
        var located: [LocatedObject] = []
        var at: UInt64 = 0
        var key = [UInt8](repeating: 0, count: 40)
        var writer = spill.sequentialWriter()
        try database.withIterator(cf.objects, from: r.from) { objects in
            try database.withIterator(cf.liveObjects, from: r.from, to: r.to) { it in
                while it.isValid {
                    let (id, vd) = try liveEntry(it)
                    StoreKeys.writeObjectKey(id, vd.version, into: &key)
                    // The next live version is usually a few entries ahead (the versions between
                    // are superseded ones): stepping is far cheaper than a seek, which repositions
                    // every file of the merging iterator.
                    var steps = 0
                    while steps < 16, objects.isValid, objects.withKey({ $0.lexicographicallyPrecedes(key) }) {
                        objects.next()
                        steps += 1
                    }
                    if steps == 16 { objects.seek(key) }
                    guard objects.isValid && objects.withKey({ $0.elementsEqual(key) }) else {
                        throw StoreError(.inconsistent, "snapshot of epoch \(epoch): live object \(id.short) v\(vd.version) is not stored")
                    }
                    let length: UInt32 = try objects.withValue { (value) throws(StoreError) -> UInt32 in
                        if value.count == StoreKeys.objectLocatorSize, let locator = StoreKeys.readObjectLocator(Array(value)) {
                            located.append(LocatedObject(locator: locator, range: r.index, at: at))
                            return locator.length
                        }
                        guard let n = UInt32(exactly: value.count) else {
                            throw StoreError(.badValue, "snapshot of epoch \(epoch): object \(id.short) v\(vd.version) is \(value.count) bytes")
                        }
                        try writer.write(value, at: at)
                        return n
                    }
                    lengths.append(length)
                    at += UInt64(length)
                    it.next()
                }
            }
        }
        try writer.flush()
        return (lengths, located)
    }

    /// Pass 2 of a snapshot build: each block of `located` read and decompressed once, each
    /// located object's bytes copied to its place in its range's spill file.
    func copyLocated(_ located: ArraySlice<LocatedObject>, epoch: UInt64, spills: [SpillFile]) throws {
        var i = located.startIndex
        while i < located.endIndex {
            let first = located[i].locator
            guard held.withLock({ $0.contains(first.seq) }), let frame = try segments.frame(first.seq, part: first.part) else {
                throw StoreError(.inconsistent, "snapshot of epoch \(epoch): a live object lies in checkpoint \(first.seq) part \(first.part), whose block is not held")
            }
            let block = try LZ4Frame.decompress(frame, limit: configuration.maxBlockBytes)
            try block.withUnsafeBytes { bytes in
                while i < located.endIndex && located[i].locator.seq == first.seq && located[i].locator.part == first.part {
                    let o = located[i]
                    let start = Int(o.locator.offset)
                    let end = start + Int(o.locator.length)  // two u32s: no overflow
                    guard end <= bytes.count else {
                        throw StoreError(.badValue, "snapshot of epoch \(epoch): a locator runs past the end of checkpoint \(first.seq) part \(first.part)")
                    }
                    try spills[o.range].write(UnsafeRawBufferPointer(rebasing: bytes[start..<end]), at: o.at)
                    i += 1
                }
            }
        }
    }

    /// Pass 3 of a snapshot build over one range: the chunks from the spill file, each object
    /// checked against its live digest by hashing its encoding as it is (digest(Object) =
    /// SHA256("Object::" ‖ bcs(Object))), without decoding; their roots and object count.
    func buildSnapshotChunks(
        epoch: UInt64, _ r: SnapshotRange, chunkSize k: Int, lengths: [UInt32], spill: SpillFile
    ) throws -> (roots: [Digest], count: UInt64, file: String?) {
        var chunkRoots: [Digest] = []
        var count: UInt64 = 0
        var file: SSTFileWriter? = nil
        var refs: [(ObjectID, VersionDigest)] = []
        refs.reserveCapacity(k)
        var at: UInt64 = 0
        var n = 0

        func flushChunk() throws {
            guard !refs.isEmpty else { return }
            guard n + refs.count <= lengths.count else {
                throw StoreError(.inconsistent, "snapshot of epoch \(epoch): the live set changed during the build")
            }
            // bcs(Vec<Object>): the count, then the encodings back to back, as the spill file has them.
            var w = BCSWriter(capacity: 16)
            w.writeLength(refs.count)
            let span = lengths[n..<n + refs.count].reduce(0) { $0 + Int($1) }
            var chunk = w.bytes
            let prefix = chunk.count
            chunk += repeatElement(0, count: span)
            try chunk.withUnsafeMutableBytes { b in
                try spill.read(into: UnsafeMutableRawBufferPointer(rebasing: b[prefix...]), at: at)
            }
            var leaves: [Digest] = []
            leaves.reserveCapacity(refs.count)
            try chunk.withUnsafeBytes { b in
                var offset = prefix
                for (j, (id, vd)) in refs.enumerated() {
                    let length = Int(lengths[n + j])
                    guard Hashing.sha256(domain: .object, raw: UnsafeRawBufferPointer(rebasing: b[offset..<offset + length])) == vd.digest else {
                        throw StoreError(.inconsistent, "snapshot of epoch \(epoch): object \(id.short) v\(vd.version) does not match its live digest")
                    }
                    offset += length
                    leaves.append(ObjectRef(id: id, version: vd.version, digest: vd.digest).leafHash)
                }
            }
            chunkRoots.append(Merkle.root(leafHashes: leaves))
            if file == nil { file = try database.sstWriter(cf.snapshotChunks, path: r.file) }
            try file?.put(StoreKeys.chunk(epoch, UInt32(r.firstChunk + chunkRoots.count - 1)), LZ4Frame.compress(chunk))
            count += UInt64(refs.count)
            n += refs.count
            at += UInt64(span)
            refs.removeAll(keepingCapacity: true)
        }

        try database.withIterator(cf.liveObjects, from: r.from, to: r.to) { it in
            while it.isValid {
                refs.append(try liveEntry(it))
                if refs.count == k { try flushChunk() }
                it.next()
            }
        }
        try flushChunk()
        guard n == lengths.count else {
            throw StoreError(.inconsistent, "snapshot of epoch \(epoch): the live set changed during the build")
        }
        try file?.finish()
        return (chunkRoots, count, file == nil ? nil : r.file)
    }
}

/// A scratch file of a snapshot build, written and read at offsets (`pwrite`/`pread`, safe
/// from several threads at once); removed with its directory.
final class SpillFile: Sendable {
    let path: String
    let fd: Int32

    init(path: String) throws(StoreError) {
        self.path = path
        fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw StoreError(.ioError, "cannot create \(path): \(String(cString: strerror(errno)))") }
    }

    deinit { close(fd) }

    /// Writes all of `bytes` at `offset`.
    func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws(StoreError) {
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw StoreError(.ioError, "cannot write \(path): \(String(cString: strerror(errno)))") }
            done += n
        }
    }

    /// Fills `bytes` from `offset`.
    func read(into bytes: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(StoreError) {
        var done = 0
        while done < bytes.count {
            let n = pread(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                throw StoreError(.ioError, "cannot read \(path): " + (n == 0 ? "the file ends early" : String(cString: strerror(errno))))
            }
            done += n
        }
    }

    /// A writer that joins writes each starting where the one before ended into one.
    func sequentialWriter() -> SequentialWriter { SequentialWriter(file: self) }

    struct SequentialWriter {
        let file: SpillFile
        var buffer: [UInt8] = []
        var start: UInt64 = 0

        mutating func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws(StoreError) {
            if buffer.isEmpty || start + UInt64(buffer.count) != offset || buffer.count >= 1 << 20 {
                try flush()
                start = offset
            }
            buffer.append(contentsOf: bytes)
        }

        mutating func flush() throws(StoreError) {
            guard !buffer.isEmpty else { return }
            let (file, start) = (self.file, self.start)
            let failure: StoreError? = buffer.withUnsafeBytes { b in
                do throws(StoreError) { try file.write(b, at: start) } catch { return error }
                return nil
            }
            if let failure { throw failure }
            buffer.removeAll(keepingCapacity: true)
        }
    }
}
