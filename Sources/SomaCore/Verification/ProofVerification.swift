/// Proof that an entry (a transaction with its effects and user signatures) is entry `index` of
/// a certified checkpoint: the RFC 9162 audit path of its `ExecutionLeaf` in the checkpoint's
/// `contentDigest` (docs/API.md, "Proofs").
///
/// BCS: `checkpoint, previous: Option<CheckpointSummary>, index: u64, path: Vec<Digest>,
/// epochEnds: Vec<CertifiedCheckpointSummary>`.
public struct EntryProof: Hashable, Sendable, BCSCodable {
    /// The certified summary whose `contentDigest` holds the entry.
    public var checkpoint: CertifiedCheckpointSummary
    /// The summary before it (absent for checkpoint 0): its digest is the checkpoint's
    /// `previousDigest`, and its `networkTotalTransactions` gives the number of leaves.
    public var previous: CheckpointSummary?
    /// The entry's index in the checkpoint.
    public var index: UInt64
    /// The audit path, leaf first.
    public var path: [Digest]
    /// End-of-epoch certified summaries of the epochs from the genesis's to the checkpoint's,
    /// exclusive: each names the next committee (empty when the verifier holds the committee).
    public var epochEnds: [CertifiedCheckpointSummary]

    /// A proof.
    public init(checkpoint: CertifiedCheckpointSummary, previous: CheckpointSummary?, index: UInt64, path: [Digest], epochEnds: [CertifiedCheckpointSummary] = []) {
        self.checkpoint = checkpoint
        self.previous = previous
        self.index = index
        self.path = path
        self.epochEnds = epochEnds
    }

    public func encode(to writer: inout BCSWriter) {
        writer.write(checkpoint)
        writer.write(previous)
        writer.write(index)
        writer.write(path)
        writer.write(epochEnds)
    }

    public init(from reader: inout BCSReader) throws(CoreError) {
        checkpoint = try reader.read()
        previous = try reader.readOptional()
        index = try reader.readU64()
        path = try reader.readVector(minElementSize: 32)
        epochEnds = try reader.readVector(minElementSize: 32)
    }
}

/// Proof that an object reference is in the live object set at the end of an epoch: the RFC
/// 9162 audit path of `bcs(ObjectRef)` among the live set sorted by id, against the certified
/// `stateRoot` of the epoch's last checkpoint.
///
/// BCS: `epochEnd: CertifiedCheckpointSummary, index: u64, path: Vec<Digest>,
/// epochEnds: Vec<CertifiedCheckpointSummary>`.
public struct StateProof: Hashable, Sendable, BCSCodable {
    /// The certified last checkpoint of the epoch (it carries `endOfEpoch.stateRoot` and
    /// `liveObjectCount`).
    public var epochEnd: CertifiedCheckpointSummary
    /// The object's index in the live set sorted by id.
    public var index: UInt64
    /// The audit path, leaf first.
    public var path: [Digest]
    /// End-of-epoch certified summaries before `epochEnd`'s epoch, as in ``EntryProof``.
    public var epochEnds: [CertifiedCheckpointSummary]

    /// A proof.
    public init(epochEnd: CertifiedCheckpointSummary, index: UInt64, path: [Digest], epochEnds: [CertifiedCheckpointSummary] = []) {
        self.epochEnd = epochEnd
        self.index = index
        self.path = path
        self.epochEnds = epochEnds
    }

    public func encode(to writer: inout BCSWriter) {
        writer.write(epochEnd)
        writer.write(index)
        writer.write(path)
        writer.write(epochEnds)
    }

    public init(from reader: inout BCSReader) throws(CoreError) {
        epochEnd = try reader.read()
        index = try reader.readU64()
        path = try reader.readVector(minElementSize: 32)
        epochEnds = try reader.readVector(minElementSize: 32)
    }
}

/// What a verified entry proof established.
public struct ProvenEntry: Sendable, Hashable {
    /// The checkpoint, certified by its epoch's committee.
    public let checkpoint: CertifiedCheckpointSummary
    /// The entry's index there.
    public let index: UInt64
    /// The transaction's digest.
    public let transaction: Digest
}

/// Checks proofs against committees that a genesis (and the epoch chain) establish: a client that
/// holds only the genesis can check any answer without trusting whoever sent it. Pure functions.
public enum ProofVerifier {
    /// The committee of `epoch`: the genesis committee for its epoch, otherwise the one the verified
    /// epoch chain `epochEnds` names.
    /// - Throws: ``CoreError`` `unknownCommittee` when the chain stops short of `epoch`, or the
    ///   chain's own errors.
    public static func committee(of epoch: UInt64, genesis: Committee, epochEnds: [CertifiedCheckpointSummary]) throws(CoreError) -> Committee {
        guard epoch >= genesis.epoch else {
            throw CoreError(.unknownCommittee, "epoch \(epoch) is before the genesis committee's epoch \(genesis.epoch)")
        }
        // Only the summaries the proof needs are verified; more would be a chain past the epoch.
        let needed = epoch - genesis.epoch
        guard UInt64(epochEnds.count) >= needed else {
            throw CoreError(.unknownCommittee,
                "the proof's epoch chain ends \(epochEnds.count) epochs after the genesis; epoch \(epoch)'s committee needs \(needed): ask for it with the epoch chain (?epochs=true)")
        }
        guard UInt64(epochEnds.count) == needed else {
            throw CoreError(.invalidEpochTransition, "the proof's epoch chain holds \(epochEnds.count) epoch ends, epoch \(epoch) needs \(needed)")
        }
        let committees = try ChainVerifier.verifyEpochChain(genesis: genesis, endOfEpochSummaries: epochEnds)
        return committees[committees.count - 1]
    }

    /// Verifies that `transaction` with `effects` is entry `proof.index` of `proof.checkpoint`,
    /// and that the checkpoint is certified by its epoch's committee (from `committee`, or from
    /// the genesis committee and the proof's epoch chain when `committee` is nil).
    /// - Throws: ``CoreError``: `invalidProof`, `brokenHashChain`, `effectsMismatch`, or a
    ///   certificate or epoch-chain error.
    public static func verify(
        transaction: Transaction, effects: TransactionEffects, proof: EntryProof, genesis: Committee, committee trusted: Committee? = nil
    ) throws(CoreError) -> ProvenEntry {
        let summary = proof.checkpoint.summary
        let committee: Committee
        if let trusted { committee = trusted } else { committee = try self.committee(of: summary.epoch, genesis: genesis, epochEnds: proof.epochEnds) }
        guard committee.epoch == summary.epoch else {
            throw CoreError(.wrongEpoch, "checkpoint \(summary.sequenceNumber) is of epoch \(summary.epoch), the committee of epoch \(committee.epoch)")
        }
        try proof.checkpoint.verify(committee: committee)
        let count = try entryCount(summary, previous: proof.previous)
        let digest = transaction.digest
        guard effects.transactionDigest == digest else {
            throw CoreError(.effectsMismatch, "the effects are of transaction \(effects.transactionDigest.short), not \(digest.short)")
        }
        let leaf = ExecutionLeaf(transaction: digest, effects: effects.digest, signatures: transaction.signaturesDigest)
        guard proof.index < count else {
            throw CoreError(.proofOutOfRange, "entry \(proof.index) of checkpoint \(summary.sequenceNumber), which has \(count)")
        }
        do {
            try Merkle.verifyInclusion(leafHash: leaf.leafHash, index: proof.index, treeSize: count, proof: proof.path, root: summary.contentDigest)
        } catch {
            throw CoreError(.invalidProof, "transaction \(digest.short) is not entry \(proof.index) of checkpoint \(summary.sequenceNumber): \(error.message)")
        }
        return ProvenEntry(checkpoint: proof.checkpoint, index: proof.index, transaction: digest)
    }

    /// Verifies that `object` is the version an entry wrote: its transaction is proven in a
    /// certified checkpoint (``verify(transaction:effects:proof:genesis:committee:)``) and its
    /// effects list it as written, with its digest.
    public static func verify(
        object: Object, writtenBy transaction: Transaction, effects: TransactionEffects, proof: EntryProof, genesis: Committee,
        committee: Committee? = nil
    ) throws(CoreError) -> ProvenEntry {
        let entry = try verify(transaction: transaction, effects: effects, proof: proof, genesis: genesis, committee: committee)
        try verifyWritten(object: object, by: entry.transaction, effects: effects)
        return entry
    }

    /// Checks that `effects` (of transaction `digest`) write `object`: the object names the
    /// transaction, and the effects list it as written with its version and digest.
    public static func verifyWritten(object: Object, by digest: Digest, effects: TransactionEffects) throws(CoreError) {
        guard object.previousTransaction == digest, effects.transactionDigest == digest else {
            throw CoreError(.outputObjectMismatch, "object \(object.id.short) v\(object.version) names transaction \(object.previousTransaction.short), not \(digest.short)")
        }
        guard let change = effects.changes.first(where: { $0.id == object.id }),
              case .written(let written) = change.output, written.version == object.version, written.digest == object.digest
        else {
            throw CoreError(.outputObjectMismatch, "the effects of \(digest.short) do not write object \(object.id.short) v\(object.version) with this digest")
        }
    }

    /// Verifies that `reference` is in the live set at the end of `proof.epochEnd`'s epoch.
    /// - Returns: the certified epoch end.
    public static func verify(reference: ObjectRef, proof: StateProof, genesis: Committee, committee trusted: Committee? = nil) throws(CoreError) -> CertifiedCheckpointSummary {
        let summary = proof.epochEnd.summary
        guard let end = summary.endOfEpoch else {
            throw CoreError(.invalidProof, "checkpoint \(summary.sequenceNumber) ends no epoch: it has no state root")
        }
        let committee: Committee
        if let trusted { committee = trusted } else { committee = try self.committee(of: summary.epoch, genesis: genesis, epochEnds: proof.epochEnds) }
        guard committee.epoch == summary.epoch else {
            throw CoreError(.wrongEpoch, "checkpoint \(summary.sequenceNumber) is of epoch \(summary.epoch), the committee of epoch \(committee.epoch)")
        }
        try proof.epochEnd.verify(committee: committee)
        guard proof.index < end.liveObjectCount else {
            throw CoreError(.proofOutOfRange, "object \(proof.index) of a live set of \(end.liveObjectCount)")
        }
        do {
            try Merkle.verifyInclusion(leafHash: reference.leafHash, index: proof.index, treeSize: end.liveObjectCount, proof: proof.path, root: end.stateRoot)
        } catch {
            throw CoreError(.invalidProof, "object \(reference.id.short) v\(reference.version) is not in epoch \(summary.epoch)'s live set: \(error.message)")
        }
        return proof.epochEnd
    }

    /// The number of entries of `summary`, from the summary before it, whose digest it names.
    static func entryCount(_ summary: CheckpointSummary, previous: CheckpointSummary?) throws(CoreError) -> UInt64 {
        switch (summary.previousDigest, previous) {
        case (nil, nil):
            guard summary.sequenceNumber == 0 else { throw CoreError(.brokenHashChain, "checkpoint \(summary.sequenceNumber) names no previous digest") }
            return summary.networkTotalTransactions
        case (let expected?, let previous?):
            guard previous.digest == expected, previous.sequenceNumber &+ 1 == summary.sequenceNumber else {
                throw CoreError(.brokenHashChain, "the previous summary given is not the one checkpoint \(summary.sequenceNumber) names")
            }
            return try ChainVerifier.entryCount(of: summary, previous: previous)
        default:
            throw CoreError(.brokenHashChain, "checkpoint \(summary.sequenceNumber): the previous summary is \(previous == nil ? "missing" : "given for a first checkpoint")")
        }
    }
}
