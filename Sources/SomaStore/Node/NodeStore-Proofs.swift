public import SomaCore

/// An entry of a held checkpoint with its audit path in the checkpoint's `contentDigest`.
public struct ProvableEntry: Sendable {
    /// The checkpoint.
    public var seq: UInt64
    /// The entry's index there.
    public var index: UInt64
    /// The transaction, its effects and output objects.
    public var entry: ExecutionData
    /// The RFC 9162 audit path of its leaf, leaf first.
    public var path: [Digest]
}

/// An object of an epoch's snapshot with its audit path in the certified state root.
public struct ProvableLiveObject: Sendable {
    /// The epoch whose end the snapshot is of.
    public var epoch: UInt64
    /// The object.
    public var object: Object
    /// Its index in the live set sorted by id.
    public var index: UInt64
    /// The audit path of `bcs(ObjectRef)`, leaf first.
    public var path: [Digest]
}

extension NodeStore {
    /// Entry `index` of checkpoint `seq` with its audit path: only the entry's part is read and
    /// decoded; the path within the part is computed from its leaves and the part's stored
    /// subtree proof completes it (`withPath: false`: the entry alone, path empty). `nil` if the
    /// checkpoint's block is not held or has no such entry.
    public func provableEntry(seq: UInt64, index: UInt64, withPath: Bool = true) async throws -> ProvableEntry? {
        try await blocking { () throws -> ProvableEntry? in
            let parts = try self.blockPartCountSync(seq)
            let partSize = UInt64(BlockVerifier.partSize)
            guard parts > 0, index / partSize < UInt64(parts) else { return nil }
            let part = UInt32(index / partSize)
            guard let frame = try self.segments.frame(seq, part: part) else { return nil }
            let data = try self.decodeBlock(frame, seq: seq, part: Int(part))
            let local = Int(index % partSize)
            guard local < data.entries.count else { return nil }
            guard withPath else { return ProvableEntry(seq: seq, index: index, entry: data.entries[local], path: []) }
            let leaves = data.entries.map(\.leaf.leafHash)
            let inner = try Merkle.inclusionProof(index: local, leafHashes: leaves)
            return ProvableEntry(seq: seq, index: index, entry: data.entries[local], path: inner + (try self.partProofSync(seq, part)))
        }
    }

    /// The certified last summaries of the epochs before `epoch`, from the genesis's on: the
    /// epoch chain a proof carries so that a client holding only the genesis finds `epoch`'s
    /// committee.
    /// - Throws: ``StoreError`` `inconsistent` when an ended epoch's last summary is missing.
    public func epochEnds(before epoch: UInt64) async throws -> [CertifiedCheckpointSummary] {
        try await blocking {
            var out: [CertifiedCheckpointSummary] = []
            for record in try self.epochsSync() where record.epoch < epoch {
                guard let last = record.lastCheckpoint, let summary = try self.summarySync(last) else {
                    throw StoreError(.inconsistent, "epoch \(record.epoch) ended before epoch \(epoch), but its last summary is not held")
                }
                out.append(summary)
            }
            return out
        }
    }

    /// Object `id` as it was live at the end of `epoch`, from that epoch's snapshot, with its
    /// audit path in the certified state root; `nil` if the snapshot is not held or the object
    /// was not live then. Each chunk read on the way is verified against the manifest.
    public func provableLiveObject(epoch: UInt64, id: ObjectID) async throws -> ProvableLiveObject? {
        try await blocking { () throws -> ProvableLiveObject? in
            guard let manifest = try self.snapshotManifestSync(epoch), !manifest.chunkRoots.isEmpty else { return nil }
            var lo = 0
            var hi = manifest.chunkRoots.count - 1
            // Binary search over the chunks (each sorted by id, together the live set in id order).
            while lo <= hi {
                let mid = (lo + hi) / 2
                guard let frame = try self.database.get(self.cf.snapshotChunks, StoreKeys.chunk(epoch, UInt32(mid))) else {
                    throw StoreError(.inconsistent, "snapshot \(epoch) lacks chunk \(mid) of \(manifest.chunkRoots.count)")
                }
                let chunk = try manifest.verifyChunk(
                    index: UInt32(mid), frame: frame, proof: try manifest.proof(chunk: mid), limit: self.configuration.maxBlockBytes)
                guard let first = chunk.references.first, let last = chunk.references.last else { return nil }
                if id < first.id {
                    hi = mid - 1
                } else if last.id < id {
                    lo = mid + 1
                } else {
                    guard let k = chunk.references.firstIndex(where: { $0.id == id }) else { return nil }
                    let object: Object
                    do throws(CoreError) {
                        object = try Object(bcsBytes: chunk.encoding(k))
                    } catch {
                        throw StoreError(.badValue, error, context: "snapshot \(epoch) chunk \(mid) object \(k)")
                    }
                    let inner = try Merkle.inclusionProof(index: k, leafHashes: chunk.references.map(\.leafHash))
                    let outer = try manifest.proof(chunk: mid)
                    return ProvableLiveObject(
                        epoch: epoch, object: object, index: UInt64(mid) * manifest.chunkSize + UInt64(k), path: inner + outer)
                }
            }
            return nil
        }
    }
}

extension NodeStore {
    /// Entry `index` of checkpoint `seq` with its ``EntryProof`` (the certified summary, the one
    /// before it, the audit path; with `epochChain`, the certified last summaries of the epochs
    /// before the checkpoint's); `nil` if the checkpoint's block is not held.
    /// - Throws: ``StoreError`` `inconsistent` when a summary the proof needs is missing.
    public func entryProof(seq: UInt64, index: UInt64, epochChain: Bool = false) async throws -> (entry: ExecutionData, proof: EntryProof)? {
        guard let provable = try await provableEntry(seq: seq, index: index) else { return nil }
        guard let certified = try await summary(at: seq) else {
            throw StoreError(.inconsistent, "checkpoint \(seq)'s block is held but not its summary")
        }
        var previous: CheckpointSummary? = nil
        if seq > 0 {
            guard let p = try await summary(at: seq - 1) else {
                throw StoreError(.inconsistent, "checkpoint \(seq - 1)'s summary is missing below a held checkpoint")
            }
            previous = p.summary
        }
        let ends = epochChain ? try await epochEnds(before: certified.summary.epoch) : []
        return (provable.entry, EntryProof(checkpoint: certified, previous: previous, index: index, path: provable.path, epochEnds: ends))
    }
}
