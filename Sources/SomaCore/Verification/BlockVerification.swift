/// Verification of checkpoint contents (blocks) against a verified summary (DESIGN §5.3).
public enum BlockVerifier {
    /// Checkpoints with more entries than this are stored and sent in parts of this many entries.
    public static let partSize = 1024

    /// The number of parts of a checkpoint with `entryCount` entries (at least 1).
    public static func partCount(entryCount: UInt64) -> UInt64 {
        max(1, Merkle.chunkCount(treeSize: entryCount, chunkSize: UInt64(partSize)))
    }

    /// The leaf hashes of `entries`, checking each entry on the way.
    static func leafHashes(of data: CheckpointData, verifyUserSignatures: Bool) throws(CoreError) -> [Digest] {
        var digests: [Digest] = []
        var encodings: [[UInt8]] = []
        return try leafHashes(of: data, verifyUserSignatures: verifyUserSignatures, digests: &digests, encodings: &encodings)
    }

    /// The leaf hashes of `entries`, checking each entry on the way; appends each transaction's
    /// digest to `digests` and, without `block`, each output object's encoding to `encodings`
    /// (what the checks compute anyway, kept so that nobody computes them again).
    ///
    /// With `block` (the bytes `data` was decoded from, and where each part of each entry lies
    /// in them), the digests are computed over those bytes instead of encodings made again from
    /// the decoded values: BCS decoding is canonical, so they are the same bytes.
    static func leafHashes(
        of data: CheckpointData, verifyUserSignatures: Bool, digests: inout [Digest], encodings: inout [[UInt8]],
        block: (bytes: [UInt8], spans: BlockSpans)? = nil
    ) throws(CoreError) -> [Digest] {
        var hashes: [Digest] = []
        hashes.reserveCapacity(data.entries.count)
        var objectBase = 0
        for (i, entry) in data.entries.enumerated() {
            let txDigest: Digest
            let leaf: ExecutionLeaf
            if let block {
                let span = block.spans.entries[i]
                let base = objectBase
                (txDigest, leaf) = block.bytes.withUnsafeBytes { raw in
                    let tx = Hashing.sha256(domain: .transactionData, raw: UnsafeRawBufferPointer(rebasing: raw[span.data]))
                    return (tx, ExecutionLeaf(
                        transaction: tx, effects: Hashing.sha256(domain: .transactionEffects, raw: UnsafeRawBufferPointer(rebasing: raw[span.effects])),
                        signatures: Hashing.sha256(domain: .signatures, raw: UnsafeRawBufferPointer(rebasing: raw[span.signatures]))))
                }
                try checkEntry(entry, transactionDigest: txDigest, checkpoint: data.sequenceNumber, index: i) { k, _ in
                    // The decoder recorded one range per output object, in this order.
                    block.bytes.withUnsafeBytes { raw in
                        Hashing.sha256(domain: Object.domain, raw: UnsafeRawBufferPointer(rebasing: raw[block.spans.objects[base + k]]))
                    }
                }
            } else {
                txDigest = entry.transaction.digest
                leaf = ExecutionLeaf(transaction: txDigest, effects: entry.effects.digest, signatures: entry.transaction.signaturesDigest)
                try checkEntry(entry, transactionDigest: txDigest, checkpoint: data.sequenceNumber, index: i) { _, object in
                    let encoding = object.bcsBytes
                    encodings.append(encoding)
                    return Hashing.sha256(domain: Object.domain, encoding)
                }
            }
            objectBase += entry.outputObjects.count
            if verifyUserSignatures && !(data.sequenceNumber == 0 && entry.transaction.data.kind == TransactionData.genesisKind) {
                do {
                    try entry.transaction.verifyUserSignatures()
                } catch {
                    throw CoreError(error.code, "checkpoint \(data.sequenceNumber) entry \(i): \(error.message)")
                }
            }
            hashes.append(leaf.leafHash)
            digests.append(txDigest)
        }
        return hashes
    }

    /// Checks one entry on its own: effects belong to the transaction, changes are sorted and
    /// unique, versions grow, and every written output has its object (in order), nothing more.
    public static func checkEntry(
        _ entry: ExecutionData, transactionDigest: Digest, checkpoint: UInt64, index: Int
    ) throws(CoreError) {
        try checkEntry(entry, transactionDigest: transactionDigest, checkpoint: checkpoint, index: index) { _, object in
            object.digest
        }
    }

    /// ``checkEntry(_:transactionDigest:checkpoint:index:)`` with `digestOf` giving the digest
    /// of the entry's `k`-th output object (computed over the bytes it was decoded from, or
    /// over its encoding).
    static func checkEntry(
        _ entry: ExecutionData, transactionDigest: Digest, checkpoint: UInt64, index: Int,
        digest digestOf: (Int, Object) -> Digest
    ) throws(CoreError) {
        let effects = entry.effects
        guard effects.transactionDigest == transactionDigest else {
            throw CoreError(.effectsMismatch, "checkpoint \(checkpoint) entry \(index): effects are for another transaction")
        }
        var objectIndex = 0
        var previousID: ObjectID? = nil
        for change in effects.changes {
            if let previousID, !(previousID < change.id) {
                throw CoreError(.effectsMismatch, "checkpoint \(checkpoint) entry \(index): changes not sorted by id or repeated")
            }
            previousID = change.id
            guard case .written(let out) = change.output else { continue }
            if let input = change.input, out.version <= input.version {
                throw CoreError(.effectsMismatch,
                    "checkpoint \(checkpoint) entry \(index): object \(change.id.short) output version \(out.version) is not above input \(input.version)")
            }
            guard objectIndex < entry.outputObjects.count else {
                throw CoreError(.outputObjectMismatch,
                    "checkpoint \(checkpoint) entry \(index): written object \(change.id.short) has no output object")
            }
            let object = entry.outputObjects[objectIndex]
            let objectDigest = digestOf(objectIndex, object)
            objectIndex += 1
            guard object.id == change.id, object.version == out.version, object.previousTransaction == transactionDigest,
                  objectDigest == out.digest
            else {
                throw CoreError(.outputObjectMismatch,
                    "checkpoint \(checkpoint) entry \(index): output object \(object.id.short) v\(object.version) does not match the effects")
            }
        }
        guard objectIndex == entry.outputObjects.count else {
            throw CoreError(.outputObjectMismatch,
                "checkpoint \(checkpoint) entry \(index): \(entry.outputObjects.count - objectIndex) output objects not in the effects")
        }
    }

    /// Verifies a whole checkpoint's contents against its verified summary.
    /// - Parameters:
    ///   - entryCount: the entry count from the summaries (``ChainVerifier/entryCount(of:previous:)``), if known.
    ///   - verifyUserSignatures: also re-check every user signature.
    /// - Throws: ``CoreError`` (`contentMismatch`, `effectsMismatch`, `outputObjectMismatch`, `invalidSignature`).
    public static func verify(
        _ data: CheckpointData, summary: CheckpointSummary, entryCount: UInt64? = nil, verifyUserSignatures: Bool = false
    ) throws(CoreError) {
        guard data.sequenceNumber == summary.sequenceNumber else {
            throw CoreError(.contentMismatch, "block of checkpoint \(data.sequenceNumber) offered for \(summary.sequenceNumber)")
        }
        if let entryCount, UInt64(data.entries.count) != entryCount {
            throw CoreError(.contentMismatch,
                "checkpoint \(data.sequenceNumber) has \(data.entries.count) entries, the summaries say \(entryCount)")
        }
        try checkRoot(try leafHashes(of: data, verifyUserSignatures: verifyUserSignatures), of: data, summary: summary, entryCount: entryCount)
    }

    /// Checks a whole checkpoint's leaf hashes against the certified content digest (and the
    /// entry count, if known).
    static func checkRoot(_ hashes: [Digest], of data: CheckpointData, summary: CheckpointSummary, entryCount: UInt64?) throws(CoreError) {
        guard data.sequenceNumber == summary.sequenceNumber else {
            throw CoreError(.contentMismatch, "block of checkpoint \(data.sequenceNumber) offered for \(summary.sequenceNumber)")
        }
        if let entryCount, UInt64(data.entries.count) != entryCount {
            throw CoreError(.contentMismatch,
                "checkpoint \(data.sequenceNumber) has \(data.entries.count) entries, the summaries say \(entryCount)")
        }
        guard Merkle.root(leafHashes: hashes) == summary.contentDigest else {
            throw CoreError(.contentMismatch, "checkpoint \(data.sequenceNumber): contents do not match the certified content digest")
        }
    }

    /// Verifies one part of a checkpoint's contents with its subtree proof.
    /// - Parameters:
    ///   - part: the part index; the part holds entries `[part·1024, min((part+1)·1024, entryCount))`.
    ///   - entryCount: the checkpoint's entry count from the verified summaries.
    public static func verifyPart(
        _ data: CheckpointData, part: UInt64, proof: [Digest], summary: CheckpointSummary, entryCount: UInt64,
        verifyUserSignatures: Bool = false
    ) throws(CoreError) {
        guard data.sequenceNumber == summary.sequenceNumber else {
            throw CoreError(.contentMismatch, "part of checkpoint \(data.sequenceNumber) offered for \(summary.sequenceNumber)")
        }
        try checkPart(
            try leafHashes(of: data, verifyUserSignatures: verifyUserSignatures), of: data, part: part, proof: proof, summary: summary,
            entryCount: entryCount)
    }

    /// Checks one part's leaf hashes with its subtree proof against the certified content digest.
    static func checkPart(
        _ hashes: [Digest], of data: CheckpointData, part: UInt64, proof: [Digest], summary: CheckpointSummary, entryCount: UInt64
    ) throws(CoreError) {
        guard data.sequenceNumber == summary.sequenceNumber else {
            throw CoreError(.contentMismatch, "part of checkpoint \(data.sequenceNumber) offered for \(summary.sequenceNumber)")
        }
        do {
            try Merkle.verifySubtree(
                chunkLeafHashes: hashes, chunk: part, chunkSize: UInt64(partSize), treeSize: entryCount, proof: proof,
                root: summary.contentDigest)
        } catch {
            throw CoreError(.contentMismatch, "checkpoint \(data.sequenceNumber) part \(part): \(error.message)")
        }
    }

    /// Splits a checkpoint's contents into parts of ``partSize`` entries, each with its proof.
    /// A checkpoint of at most ``partSize`` entries is one part with an empty proof.
    public static func parts(of data: CheckpointData) -> [(data: CheckpointData, proof: [Digest])] {
        guard data.entries.count > partSize else { return [(data, [])] }
        return parts(of: data, leafHashes: data.entries.map { $0.leaf.leafHash })
    }

    /// ``parts(of:)`` with the entries' leaf hashes already computed.
    static func parts(of data: CheckpointData, leafHashes hashes: [Digest]) -> [(data: CheckpointData, proof: [Digest])] {
        guard data.entries.count > partSize else { return [(data, [])] }
        let roots = Merkle.chunkRoots(leafHashes: hashes, chunkSize: partSize)
        return roots.indices.map { p in
            let lo = p * partSize
            let part = CheckpointData(
                sequenceNumber: data.sequenceNumber,
                entries: Array(data.entries[lo..<min(lo + partSize, data.entries.count)]))
            // The index is in range by construction.
            let proof = (try? Merkle.subtreeProof(chunk: p, chunkRoots: roots)) ?? []
            return (part, proof)
        }
    }

    /// The content digest of a checkpoint's entries.
    public static func contentDigest(of entries: [ExecutionData]) -> Digest {
        Merkle.root(leafHashes: entries.map { $0.leaf.leafHash })
    }
}

extension TransactionData {
    /// The kind of the genesis transaction (only in checkpoint 0, unsigned).
    public static let genesisKind: UInt8 = 0
    /// The kind of an ordinary user transaction.
    public static let userKind: UInt8 = 1
}

/// Where each entry's encoded parts lie in a decompressed block (byte ranges), recorded while
/// decoding it (``CheckpointData/decodeRecordingSpans(_:)``).
struct BlockSpans {
    struct Entry {
        /// `bcs(TransactionData)`.
        var data: Range<Int>
        /// `bcs(Vec<UserSignature>)`.
        var signatures: Range<Int>
        /// `bcs(TransactionEffects)`.
        var effects: Range<Int>
    }

    var entries: [Entry] = []
    /// Every output object's `bcs(Object)`, in entry order then output order.
    var objects: [Range<Int>] = []
}

extension CheckpointData {
    /// Decodes `bcs(CheckpointData)` exactly as ``init(bcsBytes:)`` does (the same reads, the
    /// same checks, nothing trailing) and records where each entry's transaction data,
    /// signatures, effects and output objects lie in `bytes`.
    static func decodeRecordingSpans(_ bytes: [UInt8]) throws(CoreError) -> (CheckpointData, BlockSpans) {
        try BCS.read(from: bytes[...]) { (r: inout BCSReader) throws(CoreError) -> (CheckpointData, BlockSpans) in
            let sequenceNumber = try r.readU64()
            // As CheckpointData, ExecutionData and Transaction read themselves.
            let count = try r.readLength(minElementSize: ExecutionData.minEncodedSize)
            var entries: [ExecutionData] = []
            entries.reserveCapacity(count)
            var spans = BlockSpans()
            spans.entries.reserveCapacity(count)
            for _ in 0..<count {
                let a = r.offset
                let data = try r.read(TransactionData.self)
                let b = r.offset
                let signatures = try r.readVector(UserSignature.self, minElementSize: UserSignature.encodedSize)
                let c = r.offset
                let effects = try r.read(TransactionEffects.self)
                let d = r.offset
                let n = try r.readLength(minElementSize: Object.minEncodedSize)
                var objects: [Object] = []
                objects.reserveCapacity(n)
                for _ in 0..<n {
                    let start = r.offset
                    objects.append(try r.read(Object.self))
                    spans.objects.append(start..<r.offset)
                }
                entries.append(ExecutionData(transaction: Transaction(data: data, signatures: signatures), effects: effects, outputObjects: objects))
                spans.entries.append(BlockSpans.Entry(data: a..<b, signatures: b..<c, effects: c..<d))
            }
            return (CheckpointData(sequenceNumber: sequenceNumber, entries: entries), spans)
        }
    }
}
