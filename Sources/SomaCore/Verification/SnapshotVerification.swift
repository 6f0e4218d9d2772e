/// One snapshot chunk verified on its own against the certified state root
/// (``SnapshotManifest/verifyChunk(index:frame:proof:decompress:)``), ready to store. Only that
/// verification makes one.
public struct VerifiedChunk: Sendable {
    /// The chunk's index.
    public let index: UInt32
    /// The LZ4 frame as received (stored as it is, so the restored node serves the snapshot too).
    public let frame: [UInt8]
    /// The objects' references, in id order.
    public let references: [ObjectRef]
    /// The decompressed chunk, `bcs(Vec<Object>)`: the objects' encodings, as certified, lie in
    /// it at ``spans`` (kept in one buffer, not one array an object).
    public let raw: [UInt8]
    /// Where each object's encoding lies in `raw`.
    public let spans: [Range<Int>]

    fileprivate init(index: UInt32, frame: [UInt8], references: [ObjectRef], raw: [UInt8], spans: [Range<Int>]) {
        self.index = index
        self.frame = frame
        self.references = references
        self.raw = raw
        self.spans = spans
    }

    /// The number of objects.
    public var count: Int { references.count }
    /// The objects' encoded bytes.
    public var rawBytes: Int { spans.reduce(0) { $0 + $1.count } }

    /// The encoding of object `k`, as certified.
    public func encoding(_ k: Int) -> [UInt8] { Array(raw[spans[k]]) }
}

/// What a snapshot of an epoch's live object set holds: enough to verify every chunk on its
/// own against the certified state root.
public struct SnapshotManifest: Hashable, Sendable, BCSCodable {
    /// The epoch.
    public var epoch: UInt64
    /// Its last checkpoint (the snapshot is the live set after it).
    public var lastCheckpoint: UInt64
    /// The certified state root.
    public var stateRoot: Digest
    /// Live objects.
    public var objectCount: UInt64
    /// Objects per chunk (a power of two).
    public var chunkSize: UInt64
    /// The Merkle root of each chunk's leaves; the tree over them is the state tree.
    public var chunkRoots: [Digest]

    /// Creates a manifest.
    public init(epoch: UInt64, lastCheckpoint: UInt64, stateRoot: Digest, objectCount: UInt64, chunkSize: UInt64, chunkRoots: [Digest]) {
        self.epoch = epoch
        self.lastCheckpoint = lastCheckpoint
        self.stateRoot = stateRoot
        self.objectCount = objectCount
        self.chunkSize = chunkSize
        self.chunkRoots = chunkRoots
    }

    /// The subtree proof of chunk `index`.
    public func proof(chunk index: Int) throws(CoreError) -> [Digest] {
        try Merkle.subtreeProof(chunk: index, chunkRoots: chunkRoots)
    }

    /// Writes the fields in order.
    public func encode(to writer: inout BCSWriter) {
        writer.write(epoch)
        writer.write(lastCheckpoint)
        writer.write(stateRoot)
        writer.write(objectCount)
        writer.write(chunkSize)
        writer.write(chunkRoots)
    }

    /// Reads the fields in order.
    public init(from reader: inout BCSReader) throws(CoreError) {
        epoch = try reader.readU64()
        lastCheckpoint = try reader.readU64()
        stateRoot = try reader.readDigest()
        objectCount = try reader.readU64()
        chunkSize = try reader.readU64()
        chunkRoots = try reader.readVector(Digest.self, minElementSize: 32)
    }
}

extension SnapshotManifest {
    /// The most chunks a manifest may list, and the largest chunk size: bounds on what a source
    /// can make a restore allocate.
    public static let maxChunks = 1 << 20
    /// The smallest and the largest chunk size a restore accepts.
    public static let chunkSizes: ClosedRange<UInt64> = 64...(1 << 16)

    /// Checks the manifest against the certified end-of-epoch summary `end`: same epoch and
    /// checkpoint, the certified state root and live object count, a power-of-two chunk size,
    /// one root per chunk, and chunk roots whose tree is the certified state root.
    /// - Throws: ``CoreError/Code/snapshotMismatch`` naming the first disagreement.
    public func check(against end: CheckpointSummary) throws(CoreError) {
        func bad(_ m: String) -> CoreError { CoreError(.snapshotMismatch, "snapshot manifest of epoch \(epoch): \(m)") }
        guard let eoe = end.endOfEpoch else { throw bad("checkpoint \(end.sequenceNumber) does not end an epoch") }
        guard epoch == end.epoch, lastCheckpoint == end.sequenceNumber else {
            throw bad("names epoch \(epoch) ending at \(lastCheckpoint), the certified end is epoch \(end.epoch) at \(end.sequenceNumber)")
        }
        guard stateRoot == eoe.stateRoot else { throw bad("state root \(stateRoot.short) is not the certified \(eoe.stateRoot.short)") }
        guard objectCount == eoe.liveObjectCount else { throw bad("\(objectCount) objects, certified \(eoe.liveObjectCount)") }
        guard Self.chunkSizes.contains(chunkSize), chunkSize & (chunkSize - 1) == 0 else {
            throw bad("chunk size \(chunkSize) is not a power of two in \(Self.chunkSizes.lowerBound)...\(Self.chunkSizes.upperBound)")
        }
        let chunks = Merkle.chunkCount(treeSize: objectCount, chunkSize: chunkSize)
        guard chunks <= UInt64(Self.maxChunks), UInt64(chunkRoots.count) == chunks else {
            throw bad("\(chunkRoots.count) chunk roots for \(objectCount) objects in chunks of \(chunkSize)")
        }
        guard Merkle.root(leafHashes: chunkRoots) == stateRoot else { throw bad("the chunk roots do not make the certified state root") }
    }

    /// Verifies chunk `index` as a source sent it, on its own: the frame decompresses (by
    /// `decompress`, which bounds it) to `bcs(Vec<Object>)` of exactly the chunk's object count,
    /// ids strictly increasing; each object is hashed as received; the leaves' root with `proof`
    /// rebuilds the certified state root over `objectCount` objects (RFC 9162 subtree proof), and
    /// equals the manifest's root for the chunk. Call on a manifest that passed ``check(against:)``.
    /// - Throws: ``CoreError`` (`snapshotMismatch` for a chunk that disagrees with the certified
    ///   state, codec errors for one that does not decode), or what `decompress` throws.
    public func verifyChunk(index: UInt32, frame: [UInt8], proof: [Digest], decompress: ([UInt8]) throws -> [UInt8]) throws -> VerifiedChunk {
        let where_ = "snapshot chunk \(index) of epoch \(epoch)"
        guard Int(index) < chunkRoots.count else { throw CoreError(.snapshotMismatch, "\(where_): the snapshot has \(chunkRoots.count) chunks") }
        let raw = try decompress(frame)
        // The manifest passed check(against:) (chunk count and size agree with the object
        // count), but the arithmetic is checked anyway: the numbers came from a source.
        let (first, overflow) = UInt64(index).multipliedReportingOverflow(by: chunkSize)
        guard !overflow, first < objectCount, let expected = Int(exactly: min(chunkSize, objectCount - first)) else {
            throw CoreError(.snapshotMismatch, "\(where_): chunk \(index) of \(chunkSize) objects lies beyond the snapshot's \(objectCount) objects")
        }
        let decoded: ([ObjectRef], [Range<Int>])
        do throws(CoreError) {
            decoded = try BCS.read(from: raw[...]) { (r: inout BCSReader) throws(CoreError) in
                let n = try r.readLength(minElementSize: Object.minEncodedSize)
                guard n == expected else { throw CoreError(.snapshotMismatch, "\(n) objects, the chunk holds \(expected)") }
                var refs: [ObjectRef] = []
                var spans: [Range<Int>] = []
                refs.reserveCapacity(n)
                spans.reserveCapacity(n)
                for _ in 0..<n {
                    let (ref, span) = try r.readObjectSpan()
                    if let previous = refs.last, !(previous.id < ref.id) {
                        throw CoreError(.snapshotMismatch, "object \(ref.id.short) is out of id order")
                    }
                    refs.append(ref)
                    spans.append(span)
                }
                return (refs, spans)
            }
        } catch {
            throw CoreError(error.code, "\(where_): \(error.message)")
        }
        let leaves = decoded.0.map(\.leafHash)
        do throws(CoreError) {
            try Merkle.verifySubtree(
                chunkLeafHashes: leaves, chunk: UInt64(index), chunkSize: chunkSize, treeSize: objectCount, proof: proof, root: stateRoot)
        } catch {
            throw CoreError(.snapshotMismatch, "\(where_): \(error.message)")
        }
        // The proof ties the chunk to the certified root; the manifest's root was checked against it too.
        guard Merkle.root(leafHashes: leaves) == chunkRoots[Int(index)] else {
            throw CoreError(.snapshotMismatch, "\(where_): its root differs from the manifest's")
        }
        return VerifiedChunk(index: index, frame: frame, references: decoded.0, raw: raw, spans: decoded.1)
    }
}
