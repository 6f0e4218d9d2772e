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
    /// - Parameter reusePrevious: take the objects that did not change since the previous
    ///   epoch's snapshot from it (if the store holds it); `false` reads every object from its
    ///   block (what the first build of a catch-up does).
    /// - Throws: ``StoreError/Code/outOfOrder`` otherwise.
    public func buildSnapshot(epoch: UInt64, reusePrevious: Bool = true) async throws -> SnapshotManifest {
        try await blocking {
            try self.writer.withLock { _ throws in
                try self.waitForSnapshotBuild()
                guard let record = try self.epochSync(epoch), let last = record.lastCheckpoint, record.stateRoot != nil,
                      try self.watermarkSync(.highestExecuted)?.seq == last
                else {
                    throw StoreError(.outOfOrder, "the live set is not epoch \(epoch)'s end: execute to its last checkpoint and no further")
                }
                if reusePrevious {
                    try self.buildSnapshotSync(epoch: epoch, record: record)
                } else {
                    try self.buildSnapshotSync(epoch: epoch, record: record, previous: nil)
                }
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
    /// An archive stores object versions as locators into their blocks, which lie in checkpoint
    /// order, not id order; the build regroups the bytes through **bucket files** (runs of
    /// whole chunks of about 32 MB each, written with large sequential writes beside the store)
    /// so that memory stays bounded whatever the live set's size. Passes, each on every core:
    /// 1. **scan**: the live set split at chunk boundaries into one range per core; per range,
    ///    `liveObjects` in id order beside one iterator stepped forward over `objects` (keys
    ///    `id ‖ version` are in the same order; a seek after 16 steps): each object's length,
    ///    the first id of each chunk, and the locators;
    /// 2. **spill**: the locators sorted by block and split between the cores at block
    ///    boundaries: each block is read and decompressed once and each located object's bytes
    ///    hashed (digest(Object) = SHA256("Object::" ‖ bcs(Object)), no decoding: this pass
    ///    waits on the device with a core to spare) and appended to its bucket's file with the
    ///    digest, tagged with its place (encodings stored as such, after a snapshot restore,
    ///    are appended by a second scan, hashed the same way);
    /// 3. **chunks**: per bucket, its files read in order (each record's bytes checked against
    ///    the checksum it was written with) and each object put at its place in the bucket's
    ///    buffer (each exactly once); then each chunk (`bcs(Vec<Object>)`: the count, then the
    ///    encodings back to back) with every object's digest checked against its live digest,
    ///    compressed into the bucket's own SST file (keys `epoch ‖ chunk`, new to the store; the
    ///    buckets do not overlap).
    /// The files and the manifest's are ingested at once at the bottom level: no write-ahead
    /// log, memtable, flush or compaction. The pending marker goes after the ingestion, so a
    /// crash in between builds the snapshot again (the same keys and values).
    ///
    /// After the previous epoch's snapshot, the objects that did not change since are taken
    /// from its chunks instead (see ``ReusedObject``); if that build fails, the snapshot is
    /// built again from the blocks alone.
    ///
    /// `counts`: how many live ids the epoch end has in each range of the id space split by
    /// first byte as its state root split it (range p: first bytes in [256·p/n, 256·(p+1)/n)),
    /// when the caller holds them (``LeafIndex``): the scan's ranges are those, each knowing
    /// where it starts, instead of a pass over the live set's keys to find chunk boundaries.
    func buildSnapshotSync(epoch: UInt64, record: EpochRecord, counts: [Int]? = nil) throws {
        let previous = previousSnapshot(before: epoch, chunkSize: configuration.snapshotChunkSize)
        if previous != nil || counts != nil {
            do {
                try buildSnapshotSync(epoch: epoch, record: record, previous: previous, counts: counts)
                return
            } catch {
                // A previous snapshot that does not hold what it should (or counts that do not
                // add up) is not this one's problem: built again without them.
            }
        }
        try buildSnapshotSync(epoch: epoch, record: record, previous: nil)
    }

    /// Returns how many objects came from `previous`'s chunks.
    @discardableResult
    func buildSnapshotSync(epoch: UInt64, record: EpochRecord, previous: PreviousSnapshot?, counts: [Int]? = nil) throws -> Int {
        guard let lastCheckpoint = record.lastCheckpoint, let root = record.stateRoot else { return 0 }
        let k = configuration.snapshotChunkSize
        let dir = database.path + "/ingest-snapshot"
        try Self.freshDirectory(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // The certified count, a hint for the split only (the pass below counts for itself).
        let live = Int(clamping: record.liveObjectCount ?? 0)
        let ranges: [SnapshotRange]
        if let counts, counts.count > 1, counts.count <= 256, counts.allSatisfy({ $0 >= 0 }), counts.reduce(0, &+) == live {
            // The ranges of the epoch end's state root (id first bytes), each from where the
            // ranges before it end; a count that is not right is caught by the scan below.
            let n = counts.count
            var first = 0
            ranges = (0..<n).map { p in
                defer { first += counts[p] }
                return SnapshotRange(
                    index: p, firstIndex: first, from: p == 0 ? [] : [UInt8(256 * p / n)], to: p + 1 < n ? [UInt8(256 * (p + 1) / n)] : nil)
            }
        } else {
            // Where each range starts: the live ids at chunk boundaries, one range per core (a
            // pass over the live set's keys only).
            let parts = max(1, min(Self.snapshotParallelism, live / max(1, k * 8)))
            let perPart = (live + parts - 1) / parts
            let chunksPerPart = max(1, (perPart + k - 1) / k)
            let starts: [(index: Int, id: [UInt8])] = try database.withIterator(cf.liveObjects, fillCache: false) { it in
                var found: [(index: Int, id: [UInt8])] = []
                var n = 0
                while it.isValid {
                    if n % (chunksPerPart * k) == 0 { found.append((n, it.withKey { Array($0) })) }
                    n += 1
                    it.next()
                }
                return found
            }
            ranges = starts.indices.map { p in
                SnapshotRange(index: p, firstIndex: starts[p].index, from: starts[p].id, to: p + 1 < starts.count ? starts[p + 1].id : nil)
            }
        }
        // 1. Scan.
        let scanned = try Self.onEveryCore(ranges) { r in try self.scanSnapshotRange(epoch: epoch, r, chunkSize: k, previous: previous) }
        var lengths: [UInt32] = []
        var chunkIDs: [[UInt8]] = []
        var located: [LocatedObject] = []
        var reused: [ReusedObject] = []
        var inline = false
        for (p, part) in scanned.enumerated() {
            guard ranges[p].firstIndex == lengths.count else {
                throw StoreError(.inconsistent, "snapshot of epoch \(epoch): the live set changed during the build")
            }
            lengths += part.lengths
            chunkIDs += part.chunkIDs
            located += part.located
            reused += part.reused
            inline = inline || part.inline
        }
        let layout = SnapshotLayout(lengths: lengths, chunkSize: k, bucketBytes: Self.snapshotBucketBytes)
        lengths = []
        // 2. Spill.
        var tags: [String] = []
        if inline {
            let inlineTags = try Self.onEveryCore(ranges) { r in
                try self.spillInline(epoch: epoch, r, layout, reused: scanned[r.index].reused, dir: dir)
            }
            tags += inlineTags
        }
        located.sort { ($0.locator.seq, $0.locator.part) < ($1.locator.seq, $1.locator.part) }
        let slices = Array(Self.blockAlignedSlices(located, count: Self.snapshotParallelism).enumerated())
        let sorted = located
        located = []
        tags += try Self.onEveryCore(slices) { t, slice in
            try self.spillLocated(sorted[slice], epoch: epoch, layout, dir: dir, tag: "l\(t)")
        }
        // 3. Chunks.
        let bucketTags = tags
        let firstIDs = chunkIDs
        let reusedObjects = reused
        reused = []
        let reusedCount = reusedObjects.count
        let scratch = ScratchBuffers()
        let built = try Self.onEveryCore(Array(layout.buckets.indices)) { b in
            // Reused objects are in index order: the bucket's are one slice.
            let objects = layout.objects(of: b)
            let lo = Self.firstReused(reusedObjects, atOrAfter: objects.lowerBound)
            let hi = Self.firstReused(reusedObjects, atOrAfter: objects.upperBound)
            return try self.buildSnapshotBucket(
                epoch: epoch, b, layout, firstID: firstIDs[layout.buckets[b].lowerBound], dir: dir, tags: bucketTags,
                reused: reusedObjects[lo..<hi], previous: previous, scratch: scratch)
        }
        var chunkRoots: [Digest] = []
        var count: UInt64 = 0
        var files: [String] = []
        for part in built {
            chunkRoots += part.roots
            count += part.count
            files.append(part.file)
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
        dropOldSnapshots(before: epoch, in: batch)
        try database.write(batch, sync: configuration.syncWrites)
        return reusedCount
    }

    /// Cores a snapshot build uses.
    static let snapshotParallelism = max(1, min(4, ProcessInfo.processInfo.activeProcessorCount))
    /// About how many bytes of objects a bucket of a snapshot build holds (whole chunks, at
    /// least one): the memory of pass 3 on each core.
    static let snapshotBucketBytes = 32 << 20

    /// One range of a snapshot build's scan: the live ids `[from, to)` (to the end without
    /// `to`), whose first object is the live set's `firstIndex`-th in id order.
    struct SnapshotRange: Sendable {
        var index: Int
        var firstIndex: Int
        var from: [UInt8]
        var to: [UInt8]?
    }

    /// A live object stored as a locator, and its index in the live set's id order.
    struct LocatedObject: Sendable {
        var locator: ObjectLocator
        var index: Int
    }

    /// The live set's objects in id order as a snapshot build lays them out: their lengths,
    /// and the buckets (runs of whole chunks) their bytes are regrouped in.
    struct SnapshotLayout: Sendable {
        let chunkSize: Int
        let lengths: [UInt32]
        /// Each bucket's chunks.
        let buckets: [Range<Int>]
        let bucketOfChunk: [Int]

        init(lengths: [UInt32], chunkSize k: Int, bucketBytes: Int) {
            self.chunkSize = k
            self.lengths = lengths
            let chunks = (lengths.count + k - 1) / k
            var buckets: [Range<Int>] = []
            var bucketOfChunk: [Int] = []
            bucketOfChunk.reserveCapacity(chunks)
            var first = 0
            var bytes = 0
            for c in 0..<chunks {
                let size = lengths[(c * k)..<min((c + 1) * k, lengths.count)].reduce(0) { $0 + Int($1) }
                if c > first && bytes + size > bucketBytes {
                    buckets.append(first..<c)
                    first = c
                    bytes = 0
                }
                bytes += size
                bucketOfChunk.append(buckets.count)
            }
            if chunks > first { buckets.append(first..<chunks) }
            self.buckets = buckets
            self.bucketOfChunk = bucketOfChunk
        }

        /// The objects (indices in id order) of bucket `b`.
        func objects(of b: Int) -> Range<Int> {
            (buckets[b].lowerBound * chunkSize)..<min(buckets[b].upperBound * chunkSize, lengths.count)
        }

        /// The bucket of object `index` and its place in that bucket.
        func place(of index: Int) -> (bucket: Int, index: Int) {
            let b = bucketOfChunk[index / chunkSize]
            return (b, index - buckets[b].lowerBound * chunkSize)
        }
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

    /// Calls `body` with each live object of range `r` in id order (its index in the range, id,
    /// live version) and what `objects` stores of that version: the locator its live entry
    /// carries (archive stores), else the `objects` entry.
    /// With `reuse`, an object for which it answers `true` is passed over: `objects` is not read.
    func walkLiveVersions(
        epoch: UInt64, _ r: SnapshotRange, reuse: ((Int, ObjectID, VersionDigest) throws -> Bool)? = nil,
        _ body: (Int, ObjectID, VersionDigest, UnsafeRawBufferPointer) throws -> Void
    ) throws {
        var key = [UInt8](repeating: 0, count: 40)
        var n = 0
        try database.withIterator(cf.objects, from: r.from, fillCache: false) { objects in
            try database.withIterator(cf.liveObjects, from: r.from, to: r.to, fillCache: false) { it in
                while it.isValid {
                    let (id, vd) = try liveEntry(it)
                    if let reuse, try reuse(n, id, vd) {
                        n += 1
                        it.next()
                        continue
                    }
                    let carried: Bool = try it.withValue { value in
                        guard let locator = StoreKeys.liveLocator(raw: value) else { return false }
                        try body(n, id, vd, locator)
                        return true
                    }
                    if carried {
                        n += 1
                        it.next()
                        continue
                    }
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
                    try objects.withValue { value in try body(n, id, vd, value) }
                    n += 1
                    it.next()
                }
            }
        }
    }

    /// Pass 1 of a snapshot build over one range: each live object's length, the first id of
    /// each chunk, the locators, and whether any object is stored as its encoding.
    func scanSnapshotRange(
        epoch: UInt64, _ r: SnapshotRange, chunkSize k: Int, previous: PreviousSnapshot? = nil
    ) throws -> (lengths: [UInt32], chunkIDs: [[UInt8]], located: [LocatedObject], reused: [ReusedObject], inline: Bool) {
        var lengths: [UInt32] = []
        var chunkIDs: [[UInt8]] = []
        var located: [LocatedObject] = []
        var reused: [ReusedObject] = []
        var inline = false
        let first = r.firstIndex
        // A range's start may be a first byte only: the least id with that prefix.
        let from = Digest(bytes: r.from + [UInt8](repeating: 0, count: max(0, 32 - r.from.count)))
        let cursor = try previous.map { try PreviousSnapshotCursor(self, $0, from: from) }
        let reuse: ((Int, ObjectID, VersionDigest) throws -> Bool)? = cursor.map { cursor in
            { n, id, vd in
                if (first + n) % k == 0 { chunkIDs.append(id.bytes) }
                guard let place = try cursor.find(id, version: vd.version) else { return false }
                reused.append(ReusedObject(chunk: place.chunk, offset: place.offset, length: place.length, index: first + n))
                lengths.append(place.length)
                return true
            }
        }
        try walkLiveVersions(epoch: epoch, r, reuse: reuse) { n, id, vd, value in
            if cursor == nil && (first + n) % k == 0 { chunkIDs.append(id.bytes) }
            if let locator = StoreKeys.readObjectLocator(raw: value) {
                located.append(LocatedObject(locator: locator, index: first + n))
                lengths.append(locator.length)
            } else {
                guard let length = UInt32(exactly: value.count) else {
                    throw StoreError(.badValue, "snapshot of epoch \(epoch): object \(id.short) v\(vd.version) is \(value.count) bytes")
                }
                lengths.append(length)
                inline = true
            }
        }
        return (lengths, chunkIDs, located, reused, inline)
    }

    /// Pass 2 for objects stored as their encodings (after a snapshot restore): range `r`'s
    /// appended to their buckets' files. Returns the files' tag.
    func spillInline(epoch: UInt64, _ r: SnapshotRange, _ layout: SnapshotLayout, reused: [ReusedObject], dir: String) throws -> String {
        let tag = "i\(r.index)"
        var writer = BucketWriter(dir: dir, tag: tag)
        let first = r.firstIndex
        // The range's reused objects, in index order, are passed over.
        var next = 0
        let reuse: (Int, ObjectID, VersionDigest) -> Bool = { n, _, _ in
            guard next < reused.count, reused[next].index == first + n else { return false }
            next += 1
            return true
        }
        try walkLiveVersions(epoch: epoch, r, reuse: reused.isEmpty ? nil : reuse) { n, _, _, value in
            // Locators were spilled block by block.
            guard value.count != StoreKeys.objectLocatorSize else { return }
            guard first + n < layout.lengths.count else {
                throw StoreError(.inconsistent, "snapshot of epoch \(epoch): the live set changed during the build")
            }
            let place = layout.place(of: first + n)
            // Hashed here, beside the reads, not in pass 3 (see spillLocated).
            try writer.append(bucket: place.bucket, index: place.index, digest: Hashing.sha256(domain: .object, raw: value), value)
        }
        try writer.finish()
        return tag
    }

    /// Pass 2 of a snapshot build: each block of `located` read and decompressed once, each
    /// located object's bytes appended to its bucket's file with their digest, hashed here:
    /// this pass waits on the device (its reads of the segments) with a core to spare, where
    /// pass 3 has none; pass 3 checks the digest against the live one. Returns the files' tag.
    func spillLocated(_ located: ArraySlice<LocatedObject>, epoch: UInt64, _ layout: SnapshotLayout, dir: String, tag: String) throws -> String {
        var writer = BucketWriter(dir: dir, tag: tag)
        var frames = HistorySegments.FrameReader()
        var i = located.startIndex
        while i < located.endIndex {
            let first = located[i].locator
            // The frame's checksum is not read: every object taken from it is hashed below,
            // and pass 3 checks that digest against the live one.
            let block = try heldBlock(first.seq, part: first.part, through: &frames, checksum: false, for: "snapshot of epoch \(epoch): a live object")
            try block.withUnsafeBytes { bytes in
                while i < located.endIndex && located[i].locator.seq == first.seq && located[i].locator.part == first.part {
                    let o = located[i]
                    let start = Int(o.locator.offset)
                    let end = start + Int(o.locator.length)  // two u32s: no overflow
                    guard end <= bytes.count else {
                        throw StoreError(.badValue, "snapshot of epoch \(epoch): a locator runs past the end of checkpoint \(first.seq) part \(first.part)")
                    }
                    let place = layout.place(of: o.index)
                    let object = UnsafeRawBufferPointer(rebasing: bytes[start..<end])
                    try writer.append(bucket: place.bucket, index: place.index, digest: Hashing.sha256(domain: .object, raw: object), object)
                    i += 1
                }
            }
        }
        try writer.finish()
        return tag
    }

    /// Pass 3 of a snapshot build over bucket `b`: its objects put in order from its files,
    /// then its chunks (each object's digest, from pass 2 or hashed here for an object taken
    /// from the previous snapshot, checked against its live digest), compressed into the
    /// bucket's SST file; their roots and object count.
    func buildSnapshotBucket(
        epoch: UInt64, _ b: Int, _ layout: SnapshotLayout, firstID: [UInt8], dir: String, tags: [String],
        reused: ArraySlice<ReusedObject> = [], previous: PreviousSnapshot? = nil, scratch: ScratchBuffers = ScratchBuffers()
    ) throws -> (roots: [Digest], count: UInt64, file: String) {
        let objects = layout.objects(of: b)
        var offsets: [Int] = [0]
        offsets.reserveCapacity(objects.count + 1)
        for i in objects { offsets.append(offsets[offsets.count - 1] + Int(layout.lengths[i])) }
        // Every byte of it is written below (each object placed exactly once, at its length).
        return try scratch.with(count: offsets[objects.count]) { bytes in
            try buildSnapshotBucket(
                epoch: epoch, b, layout, objects: objects, offsets: offsets, into: bytes, firstID: firstID, dir: dir, tags: tags,
                reused: reused, previous: previous)
        }
    }

    /// ``buildSnapshotBucket(epoch:_:_:firstID:dir:tags:reused:previous:scratch:)`` with the
    /// bucket's buffer (`offsets`: each object's place in it).
    private func buildSnapshotBucket(
        epoch: UInt64, _ b: Int, _ layout: SnapshotLayout, objects: Range<Int>, offsets: [Int], into bytes: UnsafeMutableRawBufferPointer,
        firstID: [UInt8], dir: String, tags: [String], reused: ArraySlice<ReusedObject>, previous: PreviousSnapshot?
    ) throws -> (roots: [Digest], count: UInt64, file: String) {
        var placed = [Bool](repeating: false, count: objects.count)
        // The digests pass 2 hashed (objects from bucket files); nil: hashed in the chunk below.
        var hashed = [Digest?](repeating: nil, count: objects.count)
        var placedCount = 0
        let changed = StoreError(.inconsistent, "snapshot of epoch \(epoch): a bucket file does not match the live set")
        for tag in tags {
            let path = BucketWriter.path(dir: dir, bucket: b, tag: tag)
            guard FileManager.default.fileExists(atPath: path) else { continue }
            let file = try SpillFile(reading: path)
            try file.forEachRecord { index, digest, object throws(StoreError) in
                guard index < objects.count, !placed[index], object.count == Int(layout.lengths[objects.lowerBound + index]) else { throw changed }
                UnsafeMutableRawBufferPointer(rebasing: bytes[offsets[index]..<offsets[index + 1]]).copyMemory(from: object)
                hashed[index] = digest
                placed[index] = true
                placedCount += 1
            }
        }
        if let previous {
            // Each previous chunk decompressed once (reused objects are in id order).
            var chunk: (index: UInt32, bytes: [UInt8])? = nil
            for o in reused {
                if chunk?.index != o.chunk { chunk = (o.chunk, try previousChunkBytes(previous, Int(o.chunk))) }
                let index = o.index - objects.lowerBound
                let start = Int(o.offset)
                let end = start + Int(o.length)  // two u32s: no overflow
                guard objects.contains(o.index), !placed[index], Int(o.length) == Int(layout.lengths[o.index]),
                      end <= chunk!.bytes.count
                else { throw changed }
                chunk!.bytes.withUnsafeBytes { from in
                    UnsafeMutableRawBufferPointer(rebasing: bytes[offsets[index]..<offsets[index + 1]])
                        .copyMemory(from: UnsafeRawBufferPointer(rebasing: from[start..<end]))
                }
                placed[index] = true
                placedCount += 1
            }
        }
        guard placedCount == objects.count else { throw changed }

        let k = layout.chunkSize
        var chunkRoots: [Digest] = []
        let path = dir + "/chunks-\(b).sst"
        let file = try database.sstWriter(cf.snapshotChunks, path: path)
        var refs: [(ObjectID, VersionDigest)] = []
        refs.reserveCapacity(k)
        var n = 0
        func flushChunk() throws {
            guard !refs.isEmpty else { return }
            // bcs(Vec<Object>): the count, then the encodings back to back, as the bucket has them.
            var w = BCSWriter(capacity: 16 + offsets[n + refs.count] - offsets[n])
            w.writeLength(refs.count)
            var leaves: [Digest] = []
            leaves.reserveCapacity(refs.count)
            let all = UnsafeRawBufferPointer(bytes)
            for (j, (id, vd)) in refs.enumerated() {
                let object = UnsafeRawBufferPointer(rebasing: all[offsets[n + j]..<offsets[n + j + 1]])
                guard (hashed[n + j] ?? Hashing.sha256(domain: .object, raw: object)) == vd.digest else {
                    throw StoreError(.inconsistent, "snapshot of epoch \(epoch): object \(id.short) v\(vd.version) does not match its live digest")
                }
                leaves.append(ObjectRef(id: id, version: vd.version, digest: vd.digest).leafHash)
            }
            w.writeRaw(UnsafeRawBufferPointer(rebasing: all[offsets[n]..<offsets[n + refs.count]]))
            chunkRoots.append(Merkle.root(leafHashes: leaves))
            let chunk = layout.buckets[b].lowerBound + chunkRoots.count - 1
            guard let index = UInt32(exactly: chunk), index != Self.manifestChunk else {
                throw StoreError(.badValue, "snapshot of epoch \(epoch): more chunks than a snapshot can number")
            }
            try file.put(StoreKeys.chunk(epoch, index), LZ4Frame.compress(w.bytes))
            n += refs.count
            refs.removeAll(keepingCapacity: true)
        }
        try database.withIterator(cf.liveObjects, from: firstID, fillCache: false) { it in
            while it.isValid && n + refs.count < objects.count {
                refs.append(try liveEntry(it))
                if refs.count == k { try flushChunk() }
                it.next()
            }
        }
        try flushChunk()
        guard n == objects.count else { throw changed }
        try file.finish()
        return (chunkRoots, UInt64(n), path)
    }
}

/// Buffers the buckets of one snapshot build take in turn (one per core at a time), so that a
/// bucket's tens of MB are pages an earlier bucket touched, not fresh ones to fault in and zero.
final class ScratchBuffers: Sendable {
    private struct Spare: @unchecked Sendable {
        var buffers: [UnsafeMutableRawBufferPointer] = []
    }
    private let spare = Mutex(Spare())

    /// `body` with a buffer of exactly `count` bytes (their contents undefined).
    func with<R>(count: Int, _ body: (UnsafeMutableRawBufferPointer) throws -> R) throws -> R {
        var buffer = spare.withLock { $0.buffers.popLast() } ?? UnsafeMutableRawBufferPointer(start: nil, count: 0)
        if buffer.count < count {
            buffer.deallocate()
            buffer = .allocate(byteCount: count, alignment: 64)
        }
        defer { spare.withLock { $0.buffers.append(buffer) } }
        return try body(UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count]))
    }

    deinit {
        spare.withLock { s in
            for b in s.buffers { b.deallocate() }
            s.buffers = []
        }
    }
}

/// The bucket files of one pass of a snapshot build: records `index (u32 LE) ‖ length (u32 LE)
/// ‖ XXH32 of the bytes (u32 LE) ‖ 0 (u32) ‖ digest (32 bytes) ‖ bytes` appended to
/// `b<bucket>-<tag>.bin` (the digest is the object's, hashed by the pass that read it; the
/// checksum catches a scratch file that does not read back as written), staged per bucket in
/// aligned buffers of ``flushBytes``. A full buffer is written by ``BackgroundWrites`` while the pass goes on (a
/// direct write returns only when the device holds the data: written in line, the pass waited
/// on the device most of its time); ``finish()`` writes the partial last buffers and waits for
/// every write.
struct BucketWriter {
    struct Bucket {
        let file: SpillFile
        var buffer: AlignedBuffer
        /// The file offset of the buffer's first byte.
        var base: UInt64 = 0
        var fill = 0
    }

    let dir: String
    let tag: String
    private var buckets: [Bucket?] = []
    private let writes = BackgroundWrites(bufferBytes: BucketWriter.flushBytes, inFlight: 8)
    static let flushBytes = 512 << 10

    init(dir: String, tag: String) {
        self.dir = dir
        self.tag = tag
    }

    static func path(dir: String, bucket: Int, tag: String) -> String { dir + "/b\(bucket)-\(tag).bin" }

    /// Bytes before a record's bytes: index, length, checksum, zero, digest.
    static let headerBytes = 48

    mutating func append(bucket: Int, index: Int, digest: Digest, _ bytes: UnsafeRawBufferPointer) throws(StoreError) {
        guard let i = UInt32(exactly: index), i != .max, let n = UInt32(exactly: bytes.count), bucket >= 0 else {
            throw StoreError(.badValue, "a snapshot record of \(bytes.count) bytes at \(index)")
        }
        if bucket >= buckets.count { buckets.append(contentsOf: repeatElement(nil, count: bucket + 1 - buckets.count)) }
        if buckets[bucket] == nil {
            let file = try SpillFile(path: Self.path(dir: dir, bucket: bucket, tag: tag))
            buckets[bucket] = Bucket(file: file, buffer: writes.buffer())
        }
        try stageHeader(bucket, index: i, length: n, checksum: XXH32.hash(bytes), digest: digest)
        try stage(bucket, bytes)
    }

    private mutating func stageHeader(_ bucket: Int, index: UInt32, length: UInt32, checksum: UInt32, digest: Digest) throws(StoreError) {
        var header: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0)  // headerBytes
        withUnsafeMutableBytes(of: &header) { h in
            h.storeBytes(of: index.littleEndian, toByteOffset: 0, as: UInt32.self)
            h.storeBytes(of: length.littleEndian, toByteOffset: 4, as: UInt32.self)
            h.storeBytes(of: checksum.littleEndian, toByteOffset: 8, as: UInt32.self)
            digest.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: h[16..<48]).copyMemory(from: $0) }
        }
        try withUnsafeBytes(of: &header) { (raw) throws(StoreError) in try stage(bucket, raw) }
    }

    /// Copies `bytes` into the bucket's buffer, handing each buffer that fills to the writer.
    private mutating func stage(_ bucket: Int, _ bytes: UnsafeRawBufferPointer) throws(StoreError) {
        var b = buckets[bucket]!
        defer { buckets[bucket] = b }
        var at = 0
        while at < bytes.count {
            let n = min(bytes.count - at, b.buffer.capacity - b.fill)
            (b.buffer.pointer + b.fill).copyMemory(from: bytes.baseAddress! + at, byteCount: n)
            at += n
            b.fill += n
            if b.fill == b.buffer.capacity {
                try writes.write(b.file, b.buffer, count: b.fill, at: b.base)
                b.base += UInt64(b.fill)
                b.fill = 0
                b.buffer = writes.buffer()
            }
        }
    }

    /// Writes the end record and what is staged (the last block padded to the alignment) and
    /// waits for every write.
    mutating func finish() throws(StoreError) {
        defer { buckets = [] }
        // Each file ends with the end record, then zeros up to the alignment (not cut back: a
        // cut makes the file system read the last block back to zero its tail).
        for bucket in buckets.indices where buckets[bucket] != nil {
            // index u32.max, length 0
            try stageHeader(bucket, index: .max, length: 0, checksum: 0, digest: .zero)
        }
        try writes.wait()
        for case let b? in buckets where b.fill > 0 {
            let padded = DirectIO.alignUp(b.fill)
            (b.buffer.pointer + b.fill).initializeMemory(as: UInt8.self, repeating: 0, count: padded - b.fill)
            try DirectIO.write(b.file.fd, b.buffer.pointer, count: padded, at: b.base, b.file.path)
        }
    }
}

/// Writes whole buffers to files on a queue of its own, at most `inFlight` at a time; each
/// buffer comes back as a spare when written. A write keeps its file (and so its descriptor)
/// and its buffer alive until it is done, whatever the writer's owner does meanwhile.
final class BackgroundWrites: @unchecked Sendable {
    private let queue = DispatchQueue(label: "soma.snapshot.bucket-writes")
    private let group = DispatchGroup()
    private let slots: DispatchSemaphore
    private let spare = Mutex<[AlignedBuffer]>([])
    private let failure = Mutex<StoreError?>(nil)
    let bufferBytes: Int

    init(bufferBytes: Int, inFlight: Int) {
        self.bufferBytes = bufferBytes
        slots = DispatchSemaphore(value: inFlight)
    }

    /// A buffer to fill: a spare one, or a new one.
    func buffer() -> AlignedBuffer {
        spare.withLock { $0.popLast() } ?? AlignedBuffer(capacity: bufferBytes)
    }

    /// Writes `count` bytes of `buffer` at `offset` of `file` in the background (waiting first
    /// while `inFlight` writes are under way). Throws the failure of an earlier write, if any.
    func write(_ file: SpillFile, _ buffer: AlignedBuffer, count: Int, at offset: UInt64) throws(StoreError) {
        if let failed = failure.withLock({ $0 }) { throw failed }
        slots.wait()
        group.enter()
        queue.async { [self] in
            do throws(StoreError) {
                try DirectIO.write(file.fd, buffer.pointer, count: count, at: offset, file.path)
            } catch {
                failure.withLock { if $0 == nil { $0 = error } }
            }
            spare.withLock { $0.append(buffer) }
            slots.signal()
            group.leave()
        }
    }

    /// Waits for every write; throws the first failure.
    func wait() throws(StoreError) {
        group.wait()
        if let failed = failure.withLock({ $0 }) { throw failed }
    }

    deinit { group.wait() }
}

/// A scratch file of a snapshot build (a bucket file), opened for direct I/O where the file
/// system allows, written by a ``BucketWriter`` and read back record by record; removed
/// with its directory.
final class SpillFile: Sendable {
    let path: String
    let fd: Int32

    /// Creates (or empties) the file for writing.
    init(path: String) throws(StoreError) {
        self.path = path
        let flags = O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC
        fd = DirectIO.open(path, flags, 0o600) ?? open(path, flags, 0o600)
        guard fd >= 0 else { throw StoreError(.ioError, "cannot create \(path): \(String(cString: strerror(errno)))") }
    }

    /// Opens the file for reading.
    init(reading path: String) throws(StoreError) {
        self.path = path
        fd = DirectIO.open(path, O_RDONLY | O_CLOEXEC) ?? open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw StoreError(.ioError, "cannot open \(path): \(String(cString: strerror(errno)))") }
    }

    deinit { close(fd) }

    /// Reads the file's records (see ``BucketWriter``) in order, up to the end record (index
    /// `u32.max`, length 0; what follows it, the padding of the last direct write, is not read)
    /// or the end of the file: each record's index, digest and bytes. A record cut short, or
    /// whose bytes fail its checksum, is an error. Reads 1 MiB at a time, the next piece while
    /// this one's records are handled.
    func forEachRecord(_ body: (Int, Digest, UnsafeRawBufferPointer) throws(StoreError) -> Void) throws(StoreError) {
        final class Read: @unchecked Sendable {
            let buffer = AlignedBuffer(capacity: 1 << 20)
            let done = DispatchSemaphore(value: 0)
            var count = 0
            var failure: StoreError?
        }
        let queue = DispatchQueue(label: "soma.snapshot.bucket-reads")
        var current = Read()
        var spare = Read()
        var inFlight: Read? = nil
        defer { inFlight?.done.wait() }
        var pending: [UInt8] = []
        // Whole aligned pieces from aligned offsets: valid direct reads; a short one is the end.
        current.count = try DirectIO.read(fd, current.buffer.pointer, count: current.buffer.capacity, at: 0, path)
        var offset = UInt64(current.count)
        var ended = false
        while current.count > 0 && !ended {
            if current.count == current.buffer.capacity {
                let next = spare
                let from = offset
                inFlight = next
                queue.async { [self] in
                    do throws(StoreError) {
                        next.count = try DirectIO.read(fd, next.buffer.pointer, count: next.buffer.capacity, at: from, path)
                    } catch {
                        next.failure = error
                    }
                    next.done.signal()
                }
            }
            pending.append(contentsOf: UnsafeRawBufferPointer(start: current.buffer.pointer, count: current.count))
            var at = 0
            let failure: StoreError? = pending.withUnsafeBytes { p in
                let h = BucketWriter.headerBytes
                while p.count - at >= h {
                    let index = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: at, as: UInt32.self))
                    let length = Int(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: at + 4, as: UInt32.self)))
                    if index == UInt32.max && length == 0 {
                        ended = true
                        at = p.count
                        break
                    }
                    guard p.count - at - h >= length else { break }
                    let checksum = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: at + 8, as: UInt32.self))
                    let bytes = UnsafeRawBufferPointer(rebasing: p[(at + h)..<(at + h + length)])
                    guard let digest = Digest(bytes: UnsafeRawBufferPointer(rebasing: p[(at + 16)..<(at + 48)])), XXH32.hash(bytes) == checksum else {
                        return StoreError(.ioError, "\(path): record \(index) does not read back as written")
                    }
                    do throws(StoreError) {
                        try body(Int(index), digest, bytes)
                    } catch {
                        return error
                    }
                    at += h + length
                }
                return nil
            }
            if let failure { throw failure }
            pending.removeFirst(at)
            guard let next = inFlight else { break }
            inFlight = nil
            next.done.wait()
            if let failure = next.failure { throw failure }
            offset += UInt64(next.count)
            (current, spare) = (next, current)
        }
        guard pending.isEmpty else { throw StoreError(.ioError, "\(path) ends in the middle of a record") }
    }
}
