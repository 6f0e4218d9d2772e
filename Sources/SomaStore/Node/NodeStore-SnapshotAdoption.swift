public import SomaCore
import Foundation
import Synchronization

/// A snapshot fetched during a catch-up instead of built at its epoch end (see
/// ``NodeStore/beginSnapshotAdoption(_:)``): its manifest, checked against the certified epoch
/// end, and the chunks written so far.
struct SnapshotAdoption {
    let manifest: SnapshotManifest
    /// No other adoption in this process has it: a group written outside the lock is ingested
    /// only if its adoption is still the one under way.
    let id = SnapshotAdoption.ids.add(1, ordering: .relaxed).newValue
    /// Chunks ingested.
    var written = Set<UInt32>()
    /// The frames of verified chunks held until a group is full (only the frames: a verified
    /// chunk also holds its decompressed objects).
    var held: [(index: UInt32, frame: [UInt8])] = []
    /// Chunks of groups being written to their SST file (outside the lock), not ingested yet.
    var writing = Set<UInt32>()

    static let ids = Atomic<UInt64>(0)

    var isComplete: Bool { written.count == manifest.chunkRoots.count }

    /// Whether `index` is written, being written or held.
    func has(_ index: UInt32) -> Bool {
        written.contains(index) || writing.contains(index) || held.contains { $0.index == index }
    }

    /// The held chunks, taken as a group to write when there are enough of them (by count or
    /// bytes) or when they are the last the snapshot needs; nil otherwise.
    mutating func takeGroup(count: Int, bytes: Int) -> [(index: UInt32, frame: [UInt8])]? {
        let last = written.count + writing.count + held.count == manifest.chunkRoots.count
        guard !held.isEmpty, held.count >= count || held.reduce(0, { $0 + $1.frame.count }) >= bytes || last else { return nil }
        let group = held.sorted { $0.index < $1.index }
        writing.formUnion(group.map(\.index))
        held = []
        return group
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
                // Files a run that stopped left staged are removed with the directory (a group
                // of the replaced adoption still being written fails, or is dropped when its
                // writer finds the adoption replaced).
                try Self.freshDirectory(self.adoptionDirectory)
                state = SnapshotAdoption(manifest: manifest)
            }
            return true
        }
    }

    /// Where adopted chunks wait in their SST files for their group's ingestion.
    var adoptionDirectory: String { database.path + "/ingest-adopted" }

    /// Takes a chunk of the snapshot being adopted: `chunk` verified against the manifest given
    /// to ``beginSnapshotAdoption(_:)`` (``SnapshotManifest/verifyChunk(index:frame:proof:limit:)``).
    /// Chunks are held until a group is complete (``StoreConfiguration/adoptionGroupChunks`` or
    /// ``StoreConfiguration/adoptionGroupBytes``, or the last ones), then written as one SST
    /// file outside the lock an epoch end takes, and ingested under it: each file is synced and
    /// each ingestion writes the MANIFEST once (and syncs it), which the commits' own writes
    /// wait behind, so one a group instead of one a chunk.
    /// - Returns: false when no adoption of `epoch` is under way any more (its epoch end came
    ///   first): the chunk is not written, nor is a group it completed.
    public func adoptSnapshotChunk(_ chunk: VerifiedChunk, epoch: UInt64) async throws -> Bool {
        try await blocking {
            let taken = self.adoption.withLock { (state) -> (id: UInt64, group: [(index: UInt32, frame: [UInt8])]?)? in
                guard var a = state, a.manifest.epoch == epoch, Int(chunk.index) < a.manifest.chunkRoots.count else { return nil }
                if !a.has(chunk.index) { a.held.append((chunk.index, chunk.frame)) }
                let group = a.takeGroup(count: self.configuration.adoptionGroupChunks, bytes: self.configuration.adoptionGroupBytes)
                state = a
                return (a.id, group)
            }
            guard let taken else { return false }
            guard let group = taken.group, let first = group.first else { return true }
            let path = self.adoptionDirectory + "/\(taken.id)-\(epoch)-\(first.index).sst"
            defer { try? FileManager.default.removeItem(atPath: path) }  // what the move leaves
            let indices = group.map(\.index)
            let written: Result<Void, StoreError> = Result { () throws(StoreError) in
                let file = try self.database.sstWriter(self.cf.snapshotChunks, path: path)
                for c in group { try file.put(StoreKeys.chunk(epoch, c.index), c.frame) }
                try file.finish()
            }
            // Ingested under the lock, only into the adoption it was taken from: an epoch end
            // that ended it (or a new adoption) comes before or after, never between. A group
            // that fails is given up (its chunks may be taken again).
            return try self.adoption.withLock { (state) throws(StoreError) -> Bool in
                guard var a = state, a.id == taken.id else { return false }
                a.writing.subtract(indices)
                defer { state = a }
                try written.get()
                try self.database.ingest(self.cf.snapshotChunks, files: [path])
                a.written.formUnion(indices)
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
