import Foundation
public import SomaCore

/// Checks an answer of the HTTP API that carries a proof (a transaction, an object version, an
/// object live at an epoch end) against a genesis, offline: `soma-node proof verify`. The facts
/// come from the BCS bytes the proof covers; the answer's JSON fields must agree with them.
public enum ProofCheck {
    /// What a checked answer proves, in one line.
    public struct Verdict: Sendable, Equatable {
        /// `transaction`, `object version` or `live object`.
        public var kind: String
        /// The sentence `proof verify` prints.
        public var summary: String
    }

    /// Verifies `answer` (the JSON body of `/v1/transactions/{d}` or `/v1/objects/{id}`).
    /// - Parameter committee: a committee the caller already trusts for the proof's epoch
    ///   (otherwise the genesis committee and the proof's epoch chain).
    /// - Throws: ``CoreError`` for a proof that does not hold, ``NodeError`` for an answer that
    ///   is not one of those documents or carries no proof.
    public static func verify(answer: [UInt8], genesis: Genesis, committee: Committee? = nil) throws -> Verdict {
        let data = Data(answer)
        let decoder = JSONDecoder()
        if let tx = try? decoder.decode(TransactionAnswerJSON.self, from: data) {
            guard let proof = tx.proof else { throw NodeError("the answer carries no proof: ask without ?proof=false") }
            let transaction = try Transaction(bcsBytes: try bytes(tx.transaction.transactionBcs, "transactionBcs"))
            let effects = try TransactionEffects(bcsBytes: try bytes(tx.transaction.effectsBcs, "effectsBcs"))
            let entry = try ProofVerifier.verify(
                transaction: transaction, effects: effects, proof: try proof.entryProof(), genesis: genesis.committee, committee: committee)
            guard tx.transaction.digest == entry.transaction.hex, tx.transaction.checkpoint == entry.checkpoint.summary.sequenceNumber,
                  UInt64(tx.transaction.index) == entry.index
            else { throw CoreError(.invalidProof, "the answer's fields disagree with the bytes its proof covers") }
            return Verdict(kind: "transaction", summary: "transaction \(entry.transaction.hex) is entry \(entry.index) of checkpoint \(entry.checkpoint.summary.sequenceNumber) (epoch \(entry.checkpoint.summary.epoch)), certified by that epoch's committee")
        }
        if let answer = try? decoder.decode(ObjectAnswerJSON.self, from: data) {
            guard let proof = answer.proof else { throw NodeError("the answer carries no proof: ask without ?proof=false") }
            let object = try Object(bcsBytes: try bytes(answer.object.bcs, "object.bcs"))
            guard answer.object.id == object.id.hex, answer.object.version == object.version, answer.object.digest == object.digest.hex else {
                throw CoreError(.invalidProof, "the answer's object fields disagree with its bytes")
            }
            switch proof.kind {
            case "entry":
                guard let t = proof.transactionBcs, let e = proof.effectsBcs else {
                    throw NodeError("an object version's proof names the transaction that wrote it (transactionBcs, effectsBcs): they are missing")
                }
                let entry = try ProofVerifier.verify(
                    object: object, writtenBy: try Transaction(bcsBytes: try bytes(t, "transactionBcs")),
                    effects: try TransactionEffects(bcsBytes: try bytes(e, "effectsBcs")), proof: try proof.entryProof(),
                    genesis: genesis.committee, committee: committee)
                return Verdict(kind: "object version", summary: "object \(object.id.hex) version \(object.version) was written by transaction \(entry.transaction.hex), entry \(entry.index) of checkpoint \(entry.checkpoint.summary.sequenceNumber) (epoch \(entry.checkpoint.summary.epoch)), certified by that epoch's committee")
            case "state":
                let state = try proof.stateProof()
                let end = try ProofVerifier.verify(reference: object.reference, proof: state, genesis: genesis.committee, committee: committee)
                return Verdict(kind: "live object", summary: "object \(object.id.hex) version \(object.version) was live at the end of epoch \(end.summary.epoch) (checkpoint \(end.summary.sequenceNumber)): leaf \(state.index) of the state root \(end.summary.endOfEpoch?.stateRoot.hex ?? "") its committee certified")
            default:
                throw NodeError("unknown proof kind '\(proof.kind.prefix(40))': expected entry or state")
            }
        }
        throw NodeError("not an answer with a proof: expected the JSON of /v1/transactions/{digest} or /v1/objects/{id}")
    }

    static func bytes(_ hex: String, _ field: String) throws -> [UInt8] {
        guard let b = HexCoding.decode(hex) else { throw NodeError("'\(field)' is not hexadecimal") }
        return b
    }

    static func digest(_ hex: String) throws -> Digest {
        guard let b = HexCoding.decode(hex), let d = Digest(bytes: b) else { throw NodeError("a path entry is not 32 bytes of hex") }
        return d
    }
}

extension ProofJSON {
    /// The ``EntryProof`` these fields describe (kind `entry`).
    /// - Throws: ``NodeError`` for another kind or a field that is not hex of its type, or the
    ///   codec's ``CoreError``.
    public func entryProof() throws -> EntryProof {
        guard kind == "entry" else { throw NodeError("an entry proof is of kind entry, not '\(kind.prefix(40))'") }
        return EntryProof(
            checkpoint: try CertifiedCheckpointSummary(bcsBytes: try ProofCheck.bytes(checkpoint, "checkpoint")),
            previous: try previousSummary.map { try CheckpointSummary(bcsBytes: try ProofCheck.bytes($0, "previousSummary")) },
            index: index, path: try path.map { try ProofCheck.digest($0) }, epochEnds: try decodedEpochEnds())
    }

    /// The ``StateProof`` these fields describe (kind `state`).
    public func stateProof() throws -> StateProof {
        guard kind == "state" else { throw NodeError("a state proof is of kind state, not '\(kind.prefix(40))'") }
        return StateProof(
            epochEnd: try CertifiedCheckpointSummary(bcsBytes: try ProofCheck.bytes(checkpoint, "checkpoint")), index: index,
            path: try path.map { try ProofCheck.digest($0) }, epochEnds: try decodedEpochEnds())
    }

    func decodedEpochEnds() throws -> [CertifiedCheckpointSummary] {
        try (epochEnds ?? []).map { try CertifiedCheckpointSummary(bcsBytes: try ProofCheck.bytes($0, "epochEnds")) }
    }
}
