/// The start of a chain: the epoch-0 committee, checkpoint 0 certified by it, and the
/// contents of checkpoint 0 (the genesis transaction and the genesis objects).
public struct Genesis: Hashable, Sendable, BCSCodable {
    /// The committee of epoch 0.
    public var committee: Committee
    /// Checkpoint 0 with its certificate.
    public var checkpoint: CertifiedCheckpointSummary
    /// The contents of checkpoint 0.
    public var contents: CheckpointData

    /// Creates a genesis (unchecked; see ``verify()``).
    public init(committee: Committee, checkpoint: CertifiedCheckpointSummary, contents: CheckpointData) {
        self.committee = committee
        self.checkpoint = checkpoint
        self.contents = contents
    }

    /// The chain id: the digest of checkpoint 0's summary.
    public var chainID: Digest { checkpoint.summary.digest }

    /// Checks the genesis on its own: a valid epoch-0 committee, checkpoint 0 of epoch 0 without
    /// a previous digest, certified by that committee, with matching contents.
    public func verify() throws(CoreError) {
        guard committee.epoch == 0 else {
            throw CoreError(.invalidEpochTransition, "genesis committee is of epoch \(committee.epoch)")
        }
        try committee.validate()
        _ = try ChainVerifier.verifySummaryBatch(
            SummaryBatch(certified: [checkpoint]), after: nil, verifyAllCertificates: true,
            committee: { [committee] epoch in epoch == 0 ? committee : nil })
        try BlockVerifier.verify(contents, summary: checkpoint.summary, entryCount: checkpoint.summary.networkTotalTransactions)
    }

    /// Writes committee, checkpoint, contents.
    public func encode(to writer: inout BCSWriter) {
        writer.write(committee)
        writer.write(checkpoint)
        writer.write(contents)
    }

    /// Reads committee, checkpoint, contents.
    public init(from reader: inout BCSReader) throws(CoreError) {
        committee = try reader.read(Committee.self)
        checkpoint = try reader.read(CertifiedCheckpointSummary.self)
        contents = try reader.read(CheckpointData.self)
    }
}
