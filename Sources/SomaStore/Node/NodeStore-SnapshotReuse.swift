import SomaCore

/// A snapshot build that follows the previous epoch's snapshot takes the bytes of every object
/// that did not change since (same id, same version) from that snapshot's chunks, which are in
/// id order, instead of from the blocks it lies in: only the objects the epoch wrote are read
/// from their blocks and regrouped through bucket files. Every object is still hashed against
/// its live digest before it goes into a chunk, so a previous chunk that does not hold what it
/// should fails the build, which then starts again without it.
extension NodeStore {
    /// A live object whose bytes a snapshot build takes from the previous epoch's snapshot:
    /// where they lie in that snapshot's decompressed chunk, and the object's index in the live
    /// set's id order.
    struct ReusedObject: Sendable {
        var chunk: UInt32
        var offset: UInt32
        var length: UInt32
        var index: Int
    }

    /// The snapshot a build reuses: its epoch and chunk count.
    struct PreviousSnapshot: Sendable {
        let epoch: UInt64
        let chunks: Int
    }

    /// The position of the first of `reused` (in index order) whose index is at least `index`.
    static func firstReused(_ reused: [ReusedObject], atOrAfter index: Int) -> Int {
        var lo = 0
        var hi = reused.count
        while lo < hi {
            let mid = lo + (hi - lo) / 2
            if reused[mid].index < index { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// Most bytes one decompressed chunk of a previous snapshot may hold.
    static let maxReusedChunkBytes = 256 << 20

    /// The snapshot of the epoch before `epoch`, if the store holds one cut with the same chunk size.
    func previousSnapshot(before epoch: UInt64, chunkSize k: Int) -> PreviousSnapshot? {
        guard epoch > 0, let manifest = try? snapshotManifestSync(epoch - 1), manifest.chunkSize == UInt64(k),
              !manifest.chunkRoots.isEmpty, manifest.chunkRoots.count < Int(Self.manifestChunk)
        else { return nil }
        return PreviousSnapshot(epoch: epoch - 1, chunks: manifest.chunkRoots.count)
    }

    /// Chunk `index` of `previous`, decompressed.
    func previousChunkBytes(_ previous: PreviousSnapshot, _ index: Int) throws -> [UInt8] {
        guard let i = UInt32(exactly: index), i != Self.manifestChunk,
              let frame = try database.get(cf.snapshotChunks, StoreKeys.chunk(previous.epoch, i))
        else {
            throw StoreError(.inconsistent, "snapshot of epoch \(previous.epoch): chunk \(index) is missing")
        }
        return try LZ4Frame.decompress(frame, limit: Self.maxReusedChunkBytes)
    }

    /// Chunk `index` of `previous`, decompressed, with each object's id, version and place.
    func previousChunk(_ previous: PreviousSnapshot, _ index: Int) throws -> PreviousChunk {
        let bytes = try previousChunkBytes(previous, index)
        var entries: [PreviousChunk.Entry] = []
        do {
            try BCS.read(from: bytes[...]) { (reader) throws(CoreError) in
                let count = try reader.readLength(minElementSize: Object.minEncodedSize)
                entries.reserveCapacity(count)
                for _ in 0..<count {
                    let (id, version, range) = try reader.skipObject()
                    // The chunk is at most maxReusedChunkBytes: offsets fit in a u32.
                    entries.append(PreviousChunk.Entry(id: id, version: version, offset: UInt32(range.lowerBound), length: UInt32(range.count)))
                }
            }
        } catch {
            throw StoreError(.badValue, error, context: "snapshot of epoch \(previous.epoch) chunk \(index)")
        }
        return PreviousChunk(index: index, entries: entries)
    }
}

/// The objects of one chunk of a previous snapshot, in id order.
struct PreviousChunk {
    struct Entry {
        var id: ObjectID
        var version: UInt64
        var offset: UInt32
        var length: UInt32
    }

    let index: Int
    let entries: [Entry]
}

/// Walks a previous snapshot's objects in id order, forward only, one chunk in memory at a
/// time (each scan range of a build has its own).
final class PreviousSnapshotCursor {
    let store: NodeStore
    let previous: NodeStore.PreviousSnapshot
    private var chunk: PreviousChunk?
    private var i = 0

    /// Placed at the first object whose id is at least `from` (the start without it): the chunk
    /// to start in is found by a binary search on the chunks' first ids.
    init(_ store: NodeStore, _ previous: NodeStore.PreviousSnapshot, from: ObjectID?) throws {
        self.store = store
        self.previous = previous
        var lo = 0
        if let from {
            // The last chunk whose first id is at most `from`.
            var hi = previous.chunks - 1
            while lo < hi {
                let mid = lo + (hi - lo + 1) / 2
                let c = try store.previousChunk(previous, mid)
                if let first = c.entries.first, first.id <= from { lo = mid } else { hi = mid - 1 }
            }
        }
        chunk = try store.previousChunk(previous, lo)
        if let from { _ = try find(from, version: .max) }
    }

    /// The place of object `id` at `version` in the previous snapshot, if it is there;
    /// steps past every smaller id. Ids must be asked for in increasing order.
    func find(_ id: ObjectID, version: UInt64) throws -> (chunk: UInt32, offset: UInt32, length: UInt32)? {
        while let c = chunk {
            if i == c.entries.count {
                guard c.index + 1 < previous.chunks else {
                    chunk = nil
                    return nil
                }
                chunk = try store.previousChunk(previous, c.index + 1)
                i = 0
                continue
            }
            let e = c.entries[i]
            if e.id < id {
                i += 1
                continue
            }
            guard e.id == id, e.version == version else { return nil }
            // Chunk indices are below the manifest's u32.max.
            return (UInt32(c.index), e.offset, e.length)
        }
        return nil
    }
}
