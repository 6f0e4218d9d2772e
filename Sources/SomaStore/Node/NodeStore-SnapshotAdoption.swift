public import SomaCore
import Foundation

/// A snapshot fetched during a catch-up instead of built at its epoch end (see
/// ``NodeStore/beginSnapshotAdoption(_:)``): its manifest, checked against the certified epoch
/// end, and the chunks written so far.
struct SnapshotAdoption {
    let manifest: SnapshotManifest
    /// Chunks ingested.
    var written = Set<UInt32>()
    /// Chunks written to their SST files and not ingested yet, with the files.
    var staged: [(index: UInt32, path: String)] = []

    var isComplete: Bool { written.count == manifest.chunkRoots.count }

    /// Removes the staged files (the adoption is dropped).
    func discard() {
        for file in staged { try? FileManager.default.removeItem(atPath: file.path) }
    }
}

extension NodeStore {
    /// Starts taking the snapshot of `manifest.epoch` from a source while a catch-up commits the
    /// checkpoints up to its end, instead of building it there (DESIGN §6, `snapshotChunks`):
    /// the chunks come as a source serves them, each verified on its own against the manifest
    /// (``adoptSnapshotChunk(_:epoch:)``), and are written beside the commits. When the epoch
    /// end is committed and every chunk is written, the manifest is stored and no build runs:
    /// the chunks were proven against the certified state root, which the store's own live set
    /// reproduced at that end, so they hold exactly the objects a build would have cut (each
    /// chunk's LZ4 frame is the source's). Otherwise the snapshot is built as usual, over any
    /// chunk already written (same keys, same contents: the chunk size must be the store's).
    ///
    /// `manifest` must have passed ``SnapshotManifest/check(against:)`` with the certified end
    /// of its epoch. Replaces an adoption under way.
    /// - Returns: false (nothing started) when the store keeps no snapshots, cuts chunks of
    ///   another size, holds that snapshot already, or has executed past that epoch's end.
    public func beginSnapshotAdoption(_ manifest: SnapshotManifest) async throws -> Bool {
        try await blocking {
            guard self.configuration.retainSnapshots > 0, manifest.chunkSize == UInt64(self.configuration.snapshotChunkSize),
                  try self.snapshotManifestSync(manifest.epoch) == nil
            else { return false }
            if let executed = try self.watermarkSync(.highestExecuted), executed.seq >= manifest.lastCheckpoint { return false }
            try self.adoption.withLock { (state) throws(StoreError) in
                state?.discard()
                // Files a run that stopped left staged are removed with the directory.
                try Self.freshDirectory(self.adoptionDirectory)
                state = SnapshotAdoption(manifest: manifest)
            }
            return true
        }
    }

    /// Where adopted chunks wait in their SST files for their group's ingestion.
    var adoptionDirectory: String { database.path + "/ingest-adopted" }

    /// Adopted chunks ingested together: each ingestion writes the MANIFEST once (and syncs it),
    /// which the commits' own ingestions wait behind.
    static let adoptionGroup = 16

    /// Writes a chunk of the snapshot being adopted: `chunk` verified against the manifest given
    /// to ``beginSnapshotAdoption(_:)`` (``SnapshotManifest/verifyChunk(index:frame:proof:limit:)``).
    /// - Returns: false when no adoption of `epoch` is under way any more (its epoch end came
    ///   first): the chunk is not written.
    public func adoptSnapshotChunk(_ chunk: VerifiedChunk, epoch: UInt64) async throws -> Bool {
        try await blocking {
            // Held while the chunk is written: an epoch end that ends the adoption waits for it,
            // so nothing is written for an epoch after the store gave up on it.
            try self.adoption.withLock { (state) throws(StoreError) -> Bool in
                guard var a = state, a.manifest.epoch == epoch, Int(chunk.index) < a.manifest.chunkRoots.count else { return false }
                if a.written.contains(chunk.index) || a.staged.contains(where: { $0.index == chunk.index }) { return true }
                let path = self.adoptionDirectory + "/\(epoch)-\(chunk.index).sst"
                let file = try self.database.sstWriter(self.cf.snapshotChunks, path: path)
                try file.put(StoreKeys.chunk(epoch, chunk.index), chunk.frame)
                try file.finish()
                a.staged.append((chunk.index, path))
                // A group at a time (one key each: the files never overlap), and the last ones
                // as soon as every chunk is in.
                if a.staged.count >= Self.adoptionGroup || a.written.count + a.staged.count == a.manifest.chunkRoots.count {
                    try self.database.ingest(self.cf.snapshotChunks, files: a.staged.map(\.path))
                    a.discard()  // what the move left
                    a.written.formUnion(a.staged.map(\.index))
                    a.staged = []
                }
                state = a
                return true
            }
        }
    }

    /// The epoch of the last snapshot this store kept from an adoption since it was opened
    /// (nil: every snapshot since was built, or none).
    public var lastAdoptedSnapshot: UInt64? { adopted.withLock { $0 } }

    /// Ends the adoption of `epoch`'s snapshot at its committed end (`record`, with the store's
    /// own state root): its manifest when every chunk is written and the manifest names that
    /// end (checkpoint, state root, object count); nil otherwise (then the snapshot is built).
    /// An adoption of an earlier epoch is dropped too. Called with the writer lock.
    func takeAdoptedSnapshot(_ epoch: UInt64, _ record: EpochRecord) -> SnapshotManifest? {
        adoption.withLock { state in
            guard let a = state, a.manifest.epoch <= epoch else { return nil }
            state = nil
            a.discard()
            guard a.manifest.epoch == epoch, a.isComplete, a.manifest.lastCheckpoint == record.lastCheckpoint,
                  a.manifest.stateRoot == record.stateRoot, a.manifest.objectCount == record.liveObjectCount
            else { return nil }
            return a.manifest
        }
    }

    /// Stores `manifest` over its adopted chunks, with what an epoch end's build writes after
    /// its chunks: the pending marker dropped and snapshots past `retainSnapshots` deleted.
    func storeAdoptedSnapshot(_ manifest: SnapshotManifest) throws {
        let batch = WriteBatch(for: database)
        batch.put(cf.snapshotChunks, StoreKeys.chunk(manifest.epoch, Self.manifestChunk), manifest.bcsBytes)
        batch.delete(cf.meta, Self.pendingSnapshotKey)
        dropOldSnapshots(before: manifest.epoch, in: batch)
        try database.write(batch, sync: configuration.syncWrites)
        adopted.withLock { $0 = manifest.epoch }
    }

    /// Adds to `batch` the deletion of the snapshots that `epoch`'s leaves out of the retained
    /// window (epochs (epoch - retainSnapshots, epoch] are kept).
    func dropOldSnapshots(before epoch: UInt64, in batch: WriteBatch) {
        if configuration.retainSnapshots > 0, epoch >= configuration.retainSnapshots {
            // No `epoch + 1` (a certified epoch may be any number).
            batch.deleteRange(cf.snapshotChunks, from: StoreKeys.seq(0), to: StoreKeys.seq(epoch - configuration.retainSnapshots + 1))
        }
    }
}
