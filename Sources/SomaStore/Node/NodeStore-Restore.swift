public import SomaCore
import Foundation

/// A snapshot restore the store is part-way through (the `restore` column family).
public struct RestoreState: Sendable {
    /// The manifest being restored, checked against the certified epoch end.
    public var manifest: SnapshotManifest
    /// The certified end-of-epoch summaries from epoch 0 to the snapshot's epoch.
    public var epochEnds: [CertifiedCheckpointSummary]
    /// Chunks already verified and written.
    public var done: Set<UInt32>

    /// The snapshot's epoch end.
    public var end: CertifiedCheckpointSummary { epochEnds[epochEnds.count - 1] }
}

extension SnapshotManifest {
    /// ``verifyChunk(index:frame:proof:decompress:)`` of an LZ4 frame of at most `limit`
    /// decompressed bytes.
    /// - Throws: ``StoreError`` (`corruptFrame`, `frameTooLarge`, `badValue`, `verificationFailed`).
    public func verifyChunk(index: UInt32, frame: [UInt8], proof: [Digest], limit: Int) throws(StoreError) -> VerifiedChunk {
        do {
            return try verifyChunk(index: index, frame: frame, proof: proof) { frame throws(StoreError) in
                do throws(StoreError) {
                    return try LZ4Frame.decompress(frame, limit: limit)
                } catch {
                    throw StoreError(error.code, "snapshot chunk \(index) of epoch \(epoch): \(error.message)")
                }
            }
        } catch let e as StoreError {
            throw e
        } catch let e as CoreError {
            throw StoreError(e.code == .snapshotMismatch ? .verificationFailed : .badValue, e)
        } catch {
            throw StoreError(.verificationFailed, "snapshot chunk \(index) of epoch \(epoch): \(error)")
        }
    }
}

extension NodeStore {
    static let restoreManifestKey = Array("manifest".utf8)
    static let restoreEndsKey = Array("ends".utf8)
    static let restoreChunkPrefix = Array("chunk".utf8)
    static let restoredEpochKey = Array("restoredEpoch".utf8)
    static let restoreEmptiedKey = Array("emptied".utf8)

    static func restoreChunkKey(_ index: UInt32) -> [UInt8] {
        var k = restoreChunkPrefix
        withUnsafeBytes(of: index.bigEndian) { k += $0 }
        return k
    }

    /// The restore in progress, if any.
    public func restoreState() async throws -> RestoreState? {
        try await blocking { try self.restoreStateSync() }
    }

    func restoreInProgressSync() throws(StoreError) -> Bool {
        try database.get(cf.restore, Self.restoreManifestKey) != nil
    }

    func restoreStateSync() throws -> RestoreState? {
        guard let m = try database.get(cf.restore, Self.restoreManifestKey) else { return nil }
        guard let e = try database.get(cf.restore, Self.restoreEndsKey) else {
            throw StoreError(.inconsistent, "a restore is recorded without its epoch chain")
        }
        let manifest: SnapshotManifest
        let ends: [CertifiedCheckpointSummary]
        do throws(CoreError) {
            manifest = try SnapshotManifest(bcsBytes: m)
            ends = try BCS.read(from: e[...]) { (r: inout BCSReader) throws(CoreError) in
                try r.readVector(CertifiedCheckpointSummary.self, minElementSize: 64)
            }
        } catch {
            throw StoreError(.badValue, error, context: "restore record")
        }
        guard !ends.isEmpty else { throw StoreError(.inconsistent, "a restore is recorded with an empty epoch chain") }
        var done = Set<UInt32>()
        var upper = Self.restoreChunkPrefix
        upper[upper.count - 1] += 1
        for kv in try database.scan(cf.restore, from: Self.restoreChunkPrefix, to: upper) {
            guard let index = StoreKeys.readU32(kv.key, at: Self.restoreChunkPrefix.count), kv.key.count == Self.restoreChunkPrefix.count + 4 else {
                throw StoreError(.badValue, "a restore chunk marker is malformed")
            }
            done.insert(index)
        }
        return RestoreState(manifest: manifest, epochEnds: ends, done: done)
    }

    /// The epoch whose snapshot this store was restored from, if it was.
    public func restoredEpoch() async throws -> UInt64? {
        try await blocking { try self.restoredEpochSync() }
    }

    func restoredEpochSync() throws(StoreError) -> UInt64? {
        try database.get(cf.meta, Self.restoredEpochKey).flatMap { StoreKeys.readU64($0) }
    }

    /// Starts restoring the snapshot `manifest` into a store that holds only its genesis:
    /// re-verifies the epoch chain `epochEnds` (epoch 0 to the snapshot's epoch) from the genesis
    /// committee and the manifest against the last end, records both in the `restore` column
    /// family, and empties the live object set (the genesis's objects give way to the
    /// snapshot's), all in one write batch. Calling it again with the same manifest does nothing;
    /// with `replacing`, another restore in progress is dropped in the same batch (its chunks
    /// with it).
    /// - Throws: ``StoreError`` `invalidArgument` when the store holds checkpoints beyond the
    ///   genesis or another restore is in progress (without `replacing`), `verificationFailed`
    ///   for a chain or manifest that does not verify.
    public func beginRestore(manifest: SnapshotManifest, epochEnds: [CertifiedCheckpointSummary], replacing: Bool = false) async throws {
        try await blocking { try self.beginRestoreSync(manifest: manifest, epochEnds: epochEnds, replacing: replacing) }
    }

    func beginRestoreSync(manifest: SnapshotManifest, epochEnds: [CertifiedCheckpointSummary], replacing: Bool) throws {
        try writer.withLock { _ throws in
            if let state = try restoreStateSync() {
                if state.manifest == manifest { return }
                guard replacing else {
                    throw StoreError(.invalidArgument, "a restore of epoch \(state.manifest.epoch)'s snapshot is in progress in this store")
                }
            }
            guard let genesis = try genesisSync() else { throw StoreError(.inconsistent, "the store has no genesis") }
            guard let synced = try watermarkSync(.highestSynced), synced.seq == 0, try restoredEpochSync() == nil else {
                throw StoreError(.invalidArgument, "a snapshot restore needs a store that holds only its genesis")
            }
            // The epoch is the source's: compared as UInt64 (the count converts exactly), never `+ 1`.
            guard !epochEnds.isEmpty, UInt64(epochEnds.count - 1) == manifest.epoch, let end = epochEnds.last else {
                throw StoreError(.invalidArgument, "a restore of epoch \(manifest.epoch) needs the epoch ends from 0 to it, got \(epochEnds.count)")
            }
            do throws(CoreError) {
                _ = try ChainVerifier.verifyEpochChain(genesis: genesis.committee, endOfEpochSummaries: epochEnds)
            } catch {
                throw StoreError(.verificationFailed, error, context: "epoch chain of the restore")
            }
            do throws(CoreError) {
                try manifest.check(against: end.summary)
            } catch {
                throw StoreError(.verificationFailed, error)
            }
            let batch = WriteBatch(for: database)
            batch.deleteRange(cf.restore, from: [], to: [UInt8](repeating: 0xFF, count: 16))
            var w = BCSWriter(capacity: epochEnds.count * 4_096)
            w.write(epochEnds)
            batch.put(cf.restore, Self.restoreEndsKey, w.bytes)
            batch.put(cf.restore, Self.restoreManifestKey, manifest.bcsBytes)
            // The genesis's objects give way to the snapshot's (a restored store is a pruned
            // one: it keeps no superseded version).
            let all = [UInt8](repeating: 0xFF, count: 41)
            batch.deleteRange(cf.liveObjects, from: [], to: all)
            batch.deleteRange(cf.objects, from: [], to: all)
            batch.deleteRange(cf.snapshotChunks, from: [], to: all)
            liveCache.withLock { $0 = nil }
            try database.write(batch, sync: true)
            try emptyRestoredFamiliesSync()
        }
    }

    /// Makes sure the column families a restore fills were compacted empty after
    /// ``beginRestore(manifest:epochEnds:replacing:)`` (a crash may have come in between);
    /// call before writing chunks.
    public func prepareRestore() async throws {
        try await blocking {
            try self.writer.withLock { _ throws in
                guard try self.restoreInProgressSync(), try self.database.get(self.cf.restore, Self.restoreEmptiedKey) == nil else { return }
                try self.emptyRestoredFamiliesSync()
            }
        }
    }

    /// Flushes and compacts the three column families a restore fills, so that the range
    /// deletions are gone and the chunks' SST files overlap nothing and land at the bottom level
    /// (see commitRestored); then records that it is done.
    func emptyRestoredFamiliesSync() throws {
        for family in [cf.liveObjects, cf.objects, cf.snapshotChunks] {
            try database.flush(family)
            try database.compact(family)
        }
        try database.put(cf.restore, Self.restoreEmptiedKey, [], sync: configuration.syncWrites)
    }

    /// Writes verified chunks of the restore in progress: their objects, live entries and
    /// frames (served later as this node's snapshot) as SST files ingested into the store, then
    /// their progress markers. Chunks already written are skipped.
    ///
    /// Ingestion skips the write-ahead log, the memtables and the rewrite of a flush and of
    /// compactions: each run of consecutive chunks is one file per column family, and chunks
    /// cover disjoint key ranges of column families emptied when the restore began, so every
    /// file lands at the bottom level. The markers follow in a write batch once every file is
    /// in; a crash in between leaves objects without markers, and those chunks are fetched and
    /// ingested again: the same keys with the same values.
    public func commitRestored(_ chunks: [VerifiedChunk]) async throws {
        guard let (epoch, runs) = try await blocking({ try self.restoreRunsSync(chunks) }) else { return }
        let dir = database.path + "/restore-ingest"
        try await blocking { try Self.freshDirectory(dir) }
        // The three column families' files are built at once, on three of the pool's threads.
        async let objects = blocking { try self.buildRestoreFiles(runs, into: dir, name: "objects", self.cf.objects) { chunk, w in
            var key = [UInt8](repeating: 0, count: 40)
            try chunk.raw.withUnsafeBytes { raw in
                for (ref, span) in zip(chunk.references, chunk.spans) {
                    StoreKeys.writeObjectKey(ref.id, ref.version, into: &key)
                    try key.withUnsafeBytes { k in try w.put(k, UnsafeRawBufferPointer(rebasing: raw[span])) }
                }
            }
        } }
        async let live = blocking { try self.buildRestoreFiles(runs, into: dir, name: "live", self.cf.liveObjects) { chunk, w in
            for ref in chunk.references {
                try w.put(ref.id.bytes, StoreKeys.versionDigest(VersionDigest(version: ref.version, digest: ref.digest)))
            }
        } }
        // The frames are kept (to serve the snapshot) unless the node keeps no snapshots.
        let keepFrames = configuration.retainSnapshots > 0
        async let frames = blocking { keepFrames ? try self.buildRestoreFiles(runs, into: dir, name: "chunks", self.cf.snapshotChunks) { chunk, w in
            try w.put(StoreKeys.chunk(epoch, chunk.index), chunk.frame)
        } : [] }
        let files = try await [(cf.objects, objects), (cf.liveObjects, live), (cf.snapshotChunks, frames)]
        try await blocking { try self.ingestRestoredSync(files, markers: runs.flatMap { $0.map(\.index) }) }
        try? await blocking { try FileManager.default.removeItem(atPath: dir) }
    }

    /// The snapshot's epoch and the chunks not written yet, sorted and cut into runs of
    /// consecutive indices (one file a column family each); `nil` if none is left to write.
    func restoreRunsSync(_ chunks: [VerifiedChunk]) throws -> (UInt64, [[VerifiedChunk]])? {
        guard let m = try database.get(cf.restore, Self.restoreManifestKey) else {
            throw StoreError(.outOfOrder, "no snapshot restore is in progress")
        }
        let manifest: SnapshotManifest
        do throws(CoreError) { manifest = try SnapshotManifest(bcsBytes: m) } catch { throw StoreError(.badValue, error, context: "restore manifest") }
        let markers = try database.multiGet(cf.restore, chunks.map { Self.restoreChunkKey($0.index) })
        var seen = Set<UInt32>()
        let todo = zip(chunks, markers).filter { $1 == nil && seen.insert($0.index).inserted }.map(\.0).sorted { $0.index < $1.index }
        guard !todo.isEmpty else { return nil }
        for chunk in todo where Int(chunk.index) >= manifest.chunkRoots.count {
            throw StoreError(.outOfOrder, "chunk \(chunk.index) is not part of epoch \(manifest.epoch)'s snapshot")
        }
        var runs: [[VerifiedChunk]] = []
        for chunk in todo {
            if let last = runs.last?.last, last.index + 1 == chunk.index { runs[runs.count - 1].append(chunk) } else { runs.append([chunk]) }
        }
        return (manifest.epoch, runs)
    }

    static func freshDirectory(_ dir: String) throws(StoreError) {
        try? FileManager.default.removeItem(atPath: dir)
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        } catch {
            throw StoreError(.ioError, "cannot create \(dir): \(error)")
        }
    }

    /// One SST file of `family` per run, filled by `fill` chunk by chunk (keys in order).
    func buildRestoreFiles(
        _ runs: [[VerifiedChunk]], into dir: String, name: String, _ family: ColumnFamily,
        _ fill: (VerifiedChunk, SSTFileWriter) throws -> Void
    ) throws -> [String] {
        var paths: [String] = []
        for (r, run) in runs.enumerated() {
            let w = try database.sstWriter(family, path: "\(dir)/\(name)-\(r).sst")
            for chunk in run { try fill(chunk, w) }
            try w.finish()
            paths.append(w.path)
        }
        return paths
    }

    /// Ingests the built files, then writes the chunks' markers (under the writer lock).
    func ingestRestoredSync(_ files: [(ColumnFamily, [String])], markers: [UInt32]) throws {
        try writer.withLock { _ throws in
            guard try restoreInProgressSync() else { throw StoreError(.outOfOrder, "no snapshot restore is in progress") }
            for (family, paths) in files { try database.ingest(family, files: paths) }
            let batch = WriteBatch(for: database)
            for index in markers { batch.put(cf.restore, Self.restoreChunkKey(index), []) }
            try database.write(batch, sync: configuration.syncWrites)
        }
    }

    /// Completes the restore once every chunk is written: recomputes the state root over the
    /// stored live set (one ordered pass) and compares it with the certified one, then in one
    /// write batch stores the epoch ends' summaries, the committees they name, the epoch records,
    /// the snapshot's manifest (so this node serves the snapshot), sets `highestVerified`,
    /// `highestSynced` and `highestExecuted` to the epoch's last checkpoint and
    /// `lowestAvailable` to the next one, and clears the `restore` column family.
    /// - Returns: the new `highestExecuted`.
    /// - Throws: ``StoreError`` `outOfOrder` when chunks are missing, `verificationFailed` when
    ///   the stored live set does not make the certified root.
    public func finishRestore() async throws -> WatermarkValue {
        try await blocking { try self.finishRestoreSync() }
    }

    func finishRestoreSync() throws -> WatermarkValue {
        try writer.withLock { _ throws in
            guard let state = try restoreStateSync() else { throw StoreError(.outOfOrder, "no snapshot restore is in progress") }
            let manifest = state.manifest
            let missing = manifest.chunkRoots.count - state.done.count
            guard missing == 0 else { throw StoreError(.outOfOrder, "\(missing) chunks of epoch \(manifest.epoch)'s snapshot are not written yet") }
            let (root, count) = try stateRoot(overlay: LiveObjectSet(), touched: [])
            guard root == manifest.stateRoot, count == manifest.objectCount else {
                throw StoreError(.verificationFailed,
                    "the restored live set's root \(root.short) over \(count) objects is not the certified \(manifest.stateRoot.short) over \(manifest.objectCount)")
            }
            // Certified, but read back from the store: every `+ 1` below is checked first.
            guard manifest.epoch < UInt64.max, state.end.summary.sequenceNumber < UInt64.max,
                  state.epochEnds.allSatisfy({ $0.summary.epoch < UInt64.max && $0.summary.sequenceNumber < UInt64.max })
            else {
                throw StoreError(.badValue, "the restore record names epoch or checkpoint numbers at the largest value")
            }
            let batch = WriteBatch(for: database)
            var first: UInt64 = 0
            for end in state.epochEnds {
                let s = end.summary
                guard let eoe = s.endOfEpoch else { throw StoreError(.inconsistent, "restore epoch end \(s.sequenceNumber) ends no epoch") }
                batch.put(cf.summaries, StoreKeys.seq(s.sequenceNumber), end.bcsBytes)
                batch.put(cf.summaryByDigest, end.digest.bytes, StoreKeys.seq(s.sequenceNumber))
                batch.put(cf.committees, StoreKeys.seq(s.epoch + 1), eoe.nextCommittee.bcsBytes)
                let last = s.epoch == manifest.epoch
                let record = EpochRecord(
                    epoch: s.epoch, firstCheckpoint: first, lastCheckpoint: s.sequenceNumber,
                    stateRoot: last ? eoe.stateRoot : nil, liveObjectCount: last ? eoe.liveObjectCount : nil)
                batch.put(cf.epochs, StoreKeys.seq(s.epoch), record.bcsBytes)
                first = s.sequenceNumber + 1
            }
            batch.put(cf.epochs, StoreKeys.seq(manifest.epoch + 1), EpochRecord(epoch: manifest.epoch + 1, firstCheckpoint: first).bcsBytes)
            let tip = WatermarkValue(seq: state.end.summary.sequenceNumber, digest: state.end.digest)
            for w in [Watermark.highestVerified, .highestSynced, .highestExecuted] { setWatermark(w, tip, in: batch) }
            // Nothing at or below the snapshot's checkpoint is held; the digest of the next is
            // not known yet (zero until the pruner moves the watermark).
            setWatermark(.lowestAvailable, WatermarkValue(seq: tip.seq + 1, digest: .zero), in: batch)
            if configuration.retainSnapshots > 0 {
                batch.put(cf.snapshotChunks, StoreKeys.chunk(manifest.epoch, Self.manifestChunk), manifest.bcsBytes)
            }
            batch.put(cf.meta, Self.restoredEpochKey, StoreKeys.seq(manifest.epoch))
            batch.deleteRange(cf.restore, from: [], to: [UInt8](repeating: 0xFF, count: 16))
            try database.write(batch, sync: true)
            // Nothing below the snapshot is held (the genesis block goes); a crash before this
            // leaves segments below lowestAvailable, deleted on open.
            held.withLock { $0 = HeldRange(lowest: tip.seq + 1, synced: tip.seq) }
            try segments.removeAll()
            return tip
        }
    }
}
