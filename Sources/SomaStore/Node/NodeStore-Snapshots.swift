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
    /// Ordered passes, one per core over its own range of chunks: the live set is read in id
    /// order and each object version found by stepping one iterator over `objects` forward
    /// (keys `id ‖ version` are in the same order; a seek after 16 steps), so each stored block
    /// is read once. Each range's chunks go to their own SST file (keys `epoch ‖ chunk`, new to
    /// the store; the ranges do not overlap), the manifest to one more, all ingested at once at
    /// the bottom level: no write-ahead log, memtable, flush or compaction. The pending marker
    /// goes after the ingestion, so a crash in between builds the snapshot again (the same keys
    /// and values).
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
        let results = Mutex<[Int: (roots: [Digest], count: UInt64, file: String?)]>([:])
        let failures = Mutex<[any Error]>([])
        DispatchQueue.concurrentPerform(iterations: starts.count) { p in
            do {
                let end = p + 1 < starts.count ? starts[p + 1].id : nil
                let path = dir + "/chunks-\(p).sst"
                let part = try buildSnapshotRange(
                    epoch: epoch, firstChunk: starts[p].chunk, from: starts[p].id, to: end, chunkSize: k, path: path)
                results.withLock { $0[p] = part }
            } catch {
                failures.withLock { $0.append(error) }
            }
        }
        if let failure = failures.withLock({ $0.first }) { throw failure }
        var chunkRoots: [Digest] = []
        var count: UInt64 = 0
        var files: [String] = []
        let built = results.withLock { $0 }
        for p in starts.indices {
            guard let part = built[p] else { throw StoreError(.inconsistent, "snapshot of epoch \(epoch): range \(p) was not built") }
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

    /// Builds the chunks of the live objects with ids in `[from, to)` (to the end without
    /// `to`), numbered from `firstChunk`, into an SST file at `path` (none for an empty range):
    /// their roots and object count.
    func buildSnapshotRange(
        epoch: UInt64, firstChunk: Int, from: [UInt8], to: [UInt8]?, chunkSize k: Int, path: String
    ) throws -> (roots: [Digest], count: UInt64, file: String?) {
        var chunkRoots: [Digest] = []
        var count: UInt64 = 0
        var pendingRefs: [(ObjectID, VersionDigest)] = []
        pendingRefs.reserveCapacity(k)
        var file: SSTFileWriter? = nil
        var key = [UInt8](repeating: 0, count: 40)

        func flushChunk(_ objects: borrowing RocksIterator) throws {
            guard !pendingRefs.isEmpty else { return }
            // A chunk is bcs(Vec<Object>): the count, then the stored encodings back to back.
            // Each stored encoding is checked against the live digest by hashing it as it is
            // (digest(Object) = SHA256("Object::" ‖ bcs(Object))), without decoding.
            var w = BCSWriter(capacity: 64 + pendingRefs.count * 512)
            w.writeLength(pendingRefs.count)
            var leaves: [Digest] = []
            leaves.reserveCapacity(pendingRefs.count)
            for (id, vd) in pendingRefs {
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
                let found = objects.isValid && objects.withKey { $0.elementsEqual(key) }
                guard found else {
                    throw StoreError(.inconsistent, "snapshot of epoch \(epoch): live object \(id.short) v\(vd.version) is not stored")
                }
                let matches = objects.withValue { value -> Bool in
                    guard Hashing.sha256(domain: .object, raw: value) == vd.digest else { return false }
                    w.writeRaw(value)
                    return true
                }
                guard matches else {
                    throw StoreError(.inconsistent, "snapshot of epoch \(epoch): object \(id.short) v\(vd.version) does not match its live digest")
                }
                leaves.append(ObjectRef(id: id, version: vd.version, digest: vd.digest).leafHash)
            }
            chunkRoots.append(Merkle.root(leafHashes: leaves))
            if file == nil { file = try database.sstWriter(cf.snapshotChunks, path: path) }
            try file?.put(StoreKeys.chunk(epoch, UInt32(firstChunk + chunkRoots.count - 1)), LZ4Frame.compress(w.bytes))
            count += UInt64(pendingRefs.count)
            pendingRefs.removeAll(keepingCapacity: true)
        }

        try database.withIterator(cf.objects, from: from) { objects in
            try database.withIterator(cf.liveObjects, from: from, to: to) { it in
                while it.isValid {
                    pendingRefs.append(try liveEntry(it))
                    if pendingRefs.count == k { try flushChunk(objects) }
                    it.next()
                }
            }
            try flushChunk(objects)
        }
        try file?.finish()
        return (chunkRoots, count, file == nil ? nil : path)
    }
}
