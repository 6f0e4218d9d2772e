/// What the last checkpoint of an epoch carries: the next committee and the state root.
public struct EndOfEpochData: Hashable, Sendable, BCSCodable {
    /// The committee of the next epoch.
    public var nextCommittee: Committee
    /// Merkle root of the live object set after this checkpoint.
    public var stateRoot: Digest
    /// The number of live objects then.
    public var liveObjectCount: UInt64

    /// Creates end-of-epoch data.
    public init(nextCommittee: Committee, stateRoot: Digest, liveObjectCount: UInt64) {
        self.nextCommittee = nextCommittee
        self.stateRoot = stateRoot
        self.liveObjectCount = liveObjectCount
    }

    /// Writes committee, root, count.
    public func encode(to writer: inout BCSWriter) {
        writer.write(nextCommittee)
        writer.write(stateRoot)
        writer.write(liveObjectCount)
    }

    /// Reads committee, root, count.
    public init(from reader: inout BCSReader) throws(CoreError) {
        nextCommittee = try reader.read(Committee.self)
        stateRoot = try reader.readDigest()
        liveObjectCount = try reader.readU64()
    }
}

/// The header of a checkpoint: links the chain and commits to the contents.
public struct CheckpointSummary: Hashable, Sendable, BCSCodable, DomainDigestible {
    /// The epoch.
    public var epoch: UInt64
    /// The sequence number (height).
    public var sequenceNumber: UInt64
    /// Transactions in the chain up to and including this checkpoint.
    public var networkTotalTransactions: UInt64
    /// Merkle root over the entries' leaves.
    public var contentDigest: Digest
    /// The digest of the previous summary; `nil` only for checkpoint 0.
    public var previousDigest: Digest?
    /// Wall-clock time in milliseconds since 1970.
    public var timestampMs: UInt64
    /// Present on the last checkpoint of an epoch.
    public var endOfEpoch: EndOfEpochData?
    /// The protocol version.
    public var protocolVersion: UInt64

    /// Creates a summary.
    public init(
        epoch: UInt64, sequenceNumber: UInt64, networkTotalTransactions: UInt64, contentDigest: Digest,
        previousDigest: Digest?, timestampMs: UInt64, endOfEpoch: EndOfEpochData?, protocolVersion: UInt64
    ) {
        self.epoch = epoch
        self.sequenceNumber = sequenceNumber
        self.networkTotalTransactions = networkTotalTransactions
        self.contentDigest = contentDigest
        self.previousDigest = previousDigest
        self.timestampMs = timestampMs
        self.endOfEpoch = endOfEpoch
        self.protocolVersion = protocolVersion
    }

    /// `"CheckpointSummary::"`.
    public static var domain: DomainPrefix { .checkpointSummary }

    /// The intent of a committee's signature: scope checkpoint-summary (2), version 0, app soma-node (7).
    public static let intent: [UInt8] = [2, 0, 7]

    /// The bytes a committee signs: `intent ‖ bcs(summary) ‖ bcs(epoch)`.
    public var signingMessage: [UInt8] {
        var writer = BCSWriter(capacity: 512)
        writer.writeRaw(CheckpointSummary.intent)
        encode(to: &writer)
        writer.write(epoch)
        return writer.bytes
    }

    /// Writes the fields in order.
    public func encode(to writer: inout BCSWriter) {
        writer.write(epoch)
        writer.write(sequenceNumber)
        writer.write(networkTotalTransactions)
        writer.write(contentDigest)
        writer.write(previousDigest)
        writer.write(timestampMs)
        writer.write(endOfEpoch)
        writer.write(protocolVersion)
    }

    /// Reads the fields in order.
    public init(from reader: inout BCSReader) throws(CoreError) {
        epoch = try reader.readU64()
        sequenceNumber = try reader.readU64()
        networkTotalTransactions = try reader.readU64()
        contentDigest = try reader.readDigest()
        previousDigest = try reader.readOptional(Digest.self)
        timestampMs = try reader.readU64()
        endOfEpoch = try reader.readOptional(EndOfEpochData.self)
        protocolVersion = try reader.readU64()
    }
}

/// A summary with its committee certificate.
public struct CertifiedCheckpointSummary: Hashable, Sendable, BCSCodable {
    /// The summary.
    public var summary: CheckpointSummary
    /// The quorum certificate over ``CheckpointSummary/signingMessage``.
    public var certificate: QuorumCertificate

    /// Creates a certified summary.
    public init(summary: CheckpointSummary, certificate: QuorumCertificate) {
        self.summary = summary
        self.certificate = certificate
    }

    /// The summary's digest.
    public var digest: Digest { summary.digest }

    /// Verifies the certificate against `committee`.
    public func verify(committee: Committee) throws(CoreError) {
        do {
            try certificate.verify(summary.signingMessage, committee: committee)
        } catch {
            throw CoreError(error.code, "checkpoint \(summary.sequenceNumber): \(error.message)")
        }
    }

    /// Writes summary, certificate.
    public func encode(to writer: inout BCSWriter) {
        writer.write(summary)
        writer.write(certificate)
    }

    /// Reads summary, certificate.
    public init(from reader: inout BCSReader) throws(CoreError) {
        summary = try reader.read(CheckpointSummary.self)
        certificate = try reader.read(QuorumCertificate.self)
    }
}
