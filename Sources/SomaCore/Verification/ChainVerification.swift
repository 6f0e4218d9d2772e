/// A verified position in the chain: the last summary that is known good.
public struct VerifiedTip: Hashable, Sendable {
    /// The summary.
    public var summary: CheckpointSummary
    /// Its digest.
    public var digest: Digest

    /// Wraps a summary that has been verified.
    public init(summary: CheckpointSummary) {
        self.summary = summary
        self.digest = summary.digest
    }

    /// The epoch the next checkpoint belongs to.
    public var nextEpoch: UInt64 { summary.endOfEpoch == nil ? summary.epoch : summary.epoch + 1 }
}

/// A batch of consecutive summaries as fetched from a source: the certificate of the last is
/// required, the others may be present (archive mode) or absent.
public struct SummaryBatch: Sendable {
    /// Consecutive summaries.
    public var summaries: [CheckpointSummary]
    /// One entry per summary; the last must be present.
    public var certificates: [QuorumCertificate?]

    /// Creates a batch.
    public init(summaries: [CheckpointSummary], certificates: [QuorumCertificate?]) {
        self.summaries = summaries
        self.certificates = certificates
    }

    /// A batch carrying every certificate.
    public init(certified: [CertifiedCheckpointSummary]) {
        summaries = certified.map(\.summary)
        certificates = certified.map(\.certificate)
    }

    /// A batch carrying only the last certificate.
    public init(lastCertifiedOf certified: [CertifiedCheckpointSummary]) {
        summaries = certified.map(\.summary)
        certificates = certified.indices.map { $0 == certified.count - 1 ? certified[$0].certificate : nil }
    }
}

/// The verification rules of the chain (DESIGN §5.1–§5.3), as pure functions.
public enum ChainVerifier {
    /// Verifies the epoch chain: end-of-epoch summaries of epochs `genesis.epoch`, +1, … in order,
    /// each certified by the committee of its own epoch, which the previous one named.
    ///
    /// - Returns: every committee, from the genesis committee to the one named by the last summary.
    /// - Throws: ``CoreError`` (`invalidEpochTransition`, `invalidCommittee`, or a certificate error).
    public static func verifyEpochChain(
        genesis: Committee, endOfEpochSummaries: [CertifiedCheckpointSummary]
    ) throws(CoreError) -> [Committee] {
        try genesis.validate()
        var committees = [genesis]
        var lastSeq: UInt64? = nil
        for certified in endOfEpochSummaries {
            let summary = certified.summary
            let current = committees[committees.count - 1]
            guard summary.epoch == current.epoch else {
                throw CoreError(.invalidEpochTransition,
                    "end-of-epoch summary \(summary.sequenceNumber) is of epoch \(summary.epoch), expected \(current.epoch)")
            }
            guard let end = summary.endOfEpoch else {
                throw CoreError(.invalidEpochTransition, "summary \(summary.sequenceNumber) does not end epoch \(summary.epoch)")
            }
            if let lastSeq, summary.sequenceNumber <= lastSeq {
                throw CoreError(.invalidEpochTransition, "end-of-epoch summary \(summary.sequenceNumber) does not follow \(lastSeq)")
            }
            try certified.verify(committee: current)
            guard end.nextCommittee.epoch == current.epoch + 1 else {
                throw CoreError(.invalidEpochTransition,
                    "epoch \(current.epoch) hands over to a committee of epoch \(end.nextCommittee.epoch)")
            }
            try end.nextCommittee.validate()
            committees.append(end.nextCommittee)
            lastSeq = summary.sequenceNumber
        }
        return committees
    }

    /// Verifies a batch of consecutive summaries following `tip` (or starting at checkpoint 0
    /// when `tip` is `nil`).
    ///
    /// Checks contiguous sequence numbers, the hash chain back to `tip`, epochs (a change only
    /// right after an end-of-epoch summary, by one, and the next committee as the epoch chain
    /// says), non-decreasing transaction totals and timestamps, then the certificate of the last
    /// summary: one quorum check per batch. With `verifyAllCertificates`, every certificate must
    /// be present and is checked.
    ///
    /// - Parameter committee: the verified committee of an epoch (from ``verifyEpochChain(genesis:endOfEpochSummaries:)``).
    /// - Returns: the new tip.
    public static func verifySummaryBatch(
        _ batch: SummaryBatch, after tip: VerifiedTip?, verifyAllCertificates: Bool = false,
        committee: (UInt64) -> Committee?
    ) throws(CoreError) -> VerifiedTip {
        let summaries = batch.summaries
        guard let last = summaries.last, batch.certificates.count == summaries.count else {
            throw CoreError(.invalidBatch, "batch of \(summaries.count) summaries and \(batch.certificates.count) certificates")
        }
        var previous = tip?.summary
        var previousDigest = tip?.digest
        for summary in summaries {
            if let p = previous, let pd = previousDigest {
                guard summary.sequenceNumber == p.sequenceNumber &+ 1 else {
                    throw CoreError(.nonContiguous, "summary \(summary.sequenceNumber) follows \(p.sequenceNumber)")
                }
                guard summary.previousDigest == pd else {
                    throw CoreError(.brokenHashChain, "summary \(summary.sequenceNumber) does not link to \(p.sequenceNumber)")
                }
                let expectedEpoch = p.endOfEpoch == nil ? p.epoch : p.epoch + 1
                guard summary.epoch == expectedEpoch else {
                    throw CoreError(.invalidEpochTransition,
                        "summary \(summary.sequenceNumber) is of epoch \(summary.epoch), expected \(expectedEpoch)")
                }
                guard summary.networkTotalTransactions >= p.networkTotalTransactions,
                      summary.timestampMs >= p.timestampMs
                else {
                    throw CoreError(.invalidBatch, "summary \(summary.sequenceNumber) goes back in transactions or time")
                }
            } else {
                guard summary.sequenceNumber == 0, summary.previousDigest == nil, summary.epoch == 0 else {
                    throw CoreError(.nonContiguous, "the chain must start at checkpoint 0 of epoch 0 with no previous digest")
                }
            }
            if let end = summary.endOfEpoch {
                guard let known = committee(summary.epoch + 1) else {
                    throw CoreError(.unknownCommittee, "no verified committee for epoch \(summary.epoch + 1)")
                }
                guard known == end.nextCommittee else {
                    throw CoreError(.invalidEpochTransition,
                        "summary \(summary.sequenceNumber) names a committee for epoch \(summary.epoch + 1) other than the verified one")
                }
            }
            previousDigest = summary.digest
            previous = summary
        }
        if verifyAllCertificates {
            for (summary, certificate) in zip(summaries, batch.certificates) {
                guard let certificate else {
                    throw CoreError(.missingCertificate, "summary \(summary.sequenceNumber) has no certificate")
                }
                try verifyCertificate(certificate, of: summary, committee: committee)
            }
        } else {
            guard let certificate = batch.certificates[batch.certificates.count - 1] else {
                throw CoreError(.missingCertificate, "the last summary \(last.sequenceNumber) of the batch has no certificate")
            }
            try verifyCertificate(certificate, of: last, committee: committee)
        }
        return VerifiedTip(summary: last)
    }

    static func verifyCertificate(
        _ certificate: QuorumCertificate, of summary: CheckpointSummary, committee: (UInt64) -> Committee?
    ) throws(CoreError) {
        guard let c = committee(summary.epoch) else {
            throw CoreError(.unknownCommittee, "no verified committee for epoch \(summary.epoch)")
        }
        try CertifiedCheckpointSummary(summary: summary, certificate: certificate).verify(committee: c)
    }

    /// The number of entries of a checkpoint, from its verified summary and its predecessor's.
    public static func entryCount(of summary: CheckpointSummary, previous: CheckpointSummary?) throws(CoreError) -> UInt64 {
        let before = previous?.networkTotalTransactions ?? 0
        guard summary.networkTotalTransactions >= before else {
            throw CoreError(.invalidBatch, "summary \(summary.sequenceNumber) has fewer transactions than its predecessor")
        }
        return summary.networkTotalTransactions - before
    }
}
