public import SomaCore

/// The error answer of a request (an ``FrameKind/error`` frame's payload).
public enum RPCError: Error, Hashable, Sendable, BCSCodable {
    /// The node does not hold what was asked (tag 0).
    case notFound(String)
    /// The node is at its limit: ask again after `retryAfterMs` (tag 1).
    case busy(retryAfterMs: UInt64)
    /// The request is malformed or asks for too much (tag 2).
    case badRequest(String)
    /// The node cannot serve this now (tag 3).
    case unavailable(String)

    /// Writes the tag then the field.
    public func encode(to writer: inout BCSWriter) {
        switch self {
        case .notFound(let m): writer.writeULEB128(0); writer.write(m)
        case .busy(let ms): writer.writeULEB128(1); writer.write(ms)
        case .badRequest(let m): writer.writeULEB128(2); writer.write(m)
        case .unavailable(let m): writer.writeULEB128(3); writer.write(m)
        }
    }

    /// Reads the tag then the field.
    public init(from reader: inout BCSReader) throws(CoreError) {
        switch try reader.readTag(count: 4, type: "RPCError") {
        case 0: self = .notFound(try reader.readString())
        case 1: self = .busy(retryAfterMs: try reader.readU64())
        case 2: self = .badRequest(try reader.readString())
        default: self = .unavailable(try reader.readString())
        }
    }
}

/// `getAvailability` answer: what a node holds.
public struct Availability: Hashable, Sendable, BCSCodable {
    /// The first checkpoint whose blocks it holds.
    public var lowestAvailable: UInt64
    /// The last checkpoint whose blocks it holds (certified).
    public var highestSynced: UInt64
    /// The last checkpoint whose summary it holds.
    public var highestVerified: UInt64
    /// Epochs whose snapshots it serves.
    public var snapshotEpochs: [UInt64]

    /// Creates an answer.
    public init(lowestAvailable: UInt64, highestSynced: UInt64, highestVerified: UInt64, snapshotEpochs: [UInt64]) {
        self.lowestAvailable = lowestAvailable
        self.highestSynced = highestSynced
        self.highestVerified = highestVerified
        self.snapshotEpochs = snapshotEpochs
    }

    /// Writes the fields in order.
    public func encode(to writer: inout BCSWriter) {
        writer.write(lowestAvailable)
        writer.write(highestSynced)
        writer.write(highestVerified)
        writer.write(snapshotEpochs)
    }

    /// Reads the fields in order.
    public init(from reader: inout BCSReader) throws(CoreError) {
        lowestAvailable = try reader.readU64()
        highestSynced = try reader.readU64()
        highestVerified = try reader.readU64()
        let n = try reader.readLength(minElementSize: 8)
        guard n <= Availability.maxSnapshotEpochs else {
            throw CoreError(.lengthTooLarge, "\(n) snapshot epochs, at most \(Availability.maxSnapshotEpochs)")
        }
        snapshotEpochs = []
        snapshotEpochs.reserveCapacity(n)
        for _ in 0..<n { snapshotEpochs.append(try reader.readU64()) }
    }

    /// The most snapshot epochs an answer lists (checked before anything is allocated).
    public static let maxSnapshotEpochs = 64
}

/// `getEpochEndings` request.
public struct EpochEndingsRequest: Hashable, Sendable, BCSCodable {
    /// The first epoch whose end is wanted.
    public var fromEpoch: UInt64
    /// At most this many (the server caps it at ``maxCount``).
    public var max: UInt32
    /// The most end-of-epoch summaries one answer holds.
    public static let maxCount: UInt32 = 100

    /// Creates a request.
    public init(fromEpoch: UInt64, max: UInt32) {
        self.fromEpoch = fromEpoch
        self.max = max
    }

    /// Writes the fields in order.
    public func encode(to writer: inout BCSWriter) {
        writer.write(fromEpoch)
        writer.write(max)
    }

    /// Reads the fields in order.
    public init(from reader: inout BCSReader) throws(CoreError) {
        fromEpoch = try reader.readU64()
        max = try reader.readU32()
    }
}

/// `getSummaries` request.
public struct SummariesRequest: Hashable, Sendable, BCSCodable {
    /// The first sequence number.
    public var from: UInt64
    /// How many (at most ``maxCount``).
    public var count: UInt32
    /// Every certificate (`true`) or only the last one's.
    public var allCertificates: Bool
    /// The most summaries one answer holds.
    public static let maxCount: UInt32 = 1_000

    /// Creates a request.
    public init(from: UInt64, count: UInt32, allCertificates: Bool) {
        self.from = from
        self.count = count
        self.allCertificates = allCertificates
    }

    /// Writes the fields in order.
    public func encode(to writer: inout BCSWriter) {
        writer.write(from)
        writer.write(count)
        writer.write(allCertificates)
    }

    /// Reads the fields in order.
    public init(from reader: inout BCSReader) throws(CoreError) {
        from = try reader.readU64()
        count = try reader.readU32()
        allCertificates = try reader.readBool()
    }
}

extension SummariesRequest {
    /// The checkpoints asked for, `from...from + count - 1`, checked: `count` within
    /// `1...maxCount` and no sequence number past `UInt64.max`.
    /// - Throws: ``RPCError/badRequest(_:)`` otherwise.
    public func range() throws(RPCError) -> ClosedRange<UInt64> {
        guard count >= 1, count <= Self.maxCount else { throw .badRequest("count must be 1...\(Self.maxCount)") }
        return try RequestRange.checked(from: from, count: count)
    }
}

/// Checked arithmetic for the ranges requests name: a peer chooses `from` and `count`, so
/// `from + count - 1` must not be computed unchecked (it traps past `UInt64.max`).
public enum RequestRange {
    /// `from...from + count - 1`.
    /// - Throws: ``RPCError/badRequest(_:)`` when `count` is 0 or the range passes `UInt64.max`.
    public static func checked(from: UInt64, count: UInt32) throws(RPCError) -> ClosedRange<UInt64> {
        guard count >= 1 else { throw .badRequest("count must be at least 1") }
        let (last, overflow) = from.addingReportingOverflow(UInt64(count) - 1)
        guard !overflow else { throw .badRequest("checkpoints \(from) and \(count - 1) after it pass the largest sequence number") }
        return from...last
    }

    /// `from..<from + count` as a closed range, or `nil` when `count` is 0 or the range passes
    /// `UInt64.max` (for callers that answer with their own error).
    public static func of(from: UInt64, count: UInt32) -> ClosedRange<UInt64>? {
        try? checked(from: from, count: count)
    }
}

/// `getSummaries` answer: consecutive summaries from the request's `from`, each with its
/// certificate or none (the last always has one).
public struct SummariesResponse: Sendable, BCSCodable {
    /// The summaries.
    public var summaries: [CheckpointSummary]
    /// One per summary.
    public var certificates: [QuorumCertificate?]

    /// Creates an answer.
    public init(summaries: [CheckpointSummary], certificates: [QuorumCertificate?]) {
        self.summaries = summaries
        self.certificates = certificates
    }

    /// As a batch for ``ChainVerifier/verifySummaryBatch(_:after:verifyAllCertificates:committee:)``.
    public var batch: SummaryBatch { SummaryBatch(summaries: summaries, certificates: certificates) }

    /// Writes summaries, then the certificate options.
    public func encode(to writer: inout BCSWriter) {
        writer.write(summaries)
        writer.writeLength(certificates.count)
        for c in certificates { writer.write(c) }
    }

    /// Reads summaries, then as many certificate options.
    public init(from reader: inout BCSReader) throws(CoreError) {
        summaries = try reader.readVector(CheckpointSummary.self, minElementSize: 74)
        let n = try reader.readLength(minElementSize: 1)
        guard n == summaries.count else { throw CoreError(.invalidValue, "\(n) certificates for \(summaries.count) summaries") }
        certificates = []
        for _ in 0..<n { certificates.append(try reader.readOptional(QuorumCertificate.self)) }
    }
}

/// `getBlock` request.
public struct BlockRequest: Hashable, Sendable, BCSCodable {
    /// The checkpoint.
    public var seq: UInt64
    /// The part (0 for single-part checkpoints).
    public var part: UInt32

    /// Creates a request.
    public init(seq: UInt64, part: UInt32) {
        self.seq = seq
        self.part = part
    }

    /// Writes the fields in order.
    public func encode(to writer: inout BCSWriter) {
        writer.write(seq)
        writer.write(part)
    }

    /// Reads the fields in order.
    public init(from reader: inout BCSReader) throws(CoreError) {
        seq = try reader.readU64()
        part = try reader.readU32()
    }
}

/// `getBlock` and `getSnapshotChunk` answer: the stored LZ4 frame as it is, and its subtree
/// proof (empty for a single-part checkpoint).
public struct ProvenFrame: Sendable, BCSCodable {
    /// The LZ4 frame, never recompressed.
    public var frame: [UInt8]
    /// The subtree proof of the part or chunk.
    public var proof: [Digest]
    /// How many parts (blocks) or chunks there are.
    public var count: UInt32

    /// Creates an answer.
    public init(frame: [UInt8], proof: [Digest], count: UInt32) {
        self.frame = frame
        self.proof = proof
        self.count = count
    }

    /// Writes frame, proof, count.
    public func encode(to writer: inout BCSWriter) {
        writer.writeBytes(frame)
        writer.write(proof)
        writer.write(count)
    }

    /// Reads frame, proof, count.
    public init(from reader: inout BCSReader) throws(CoreError) {
        frame = try reader.readBytes()
        proof = try reader.readVector(Digest.self, minElementSize: 32)
        count = try reader.readU32()
    }
}

/// `getSnapshotManifest` request and `getSnapshotChunk` request.
public struct SnapshotRequest: Hashable, Sendable, BCSCodable {
    /// The epoch.
    public var epoch: UInt64
    /// The chunk (ignored for the manifest).
    public var index: UInt32

    /// Creates a request.
    public init(epoch: UInt64, index: UInt32 = 0) {
        self.epoch = epoch
        self.index = index
    }

    /// Writes the fields in order.
    public func encode(to writer: inout BCSWriter) {
        writer.write(epoch)
        writer.write(index)
    }

    /// Reads the fields in order.
    public init(from reader: inout BCSReader) throws(CoreError) {
        epoch = try reader.readU64()
        index = try reader.readU32()
    }
}

/// `getBlocks` request: blocks `from..<from+count`, streamed.
public struct BlocksRequest: Hashable, Sendable, BCSCodable {
    /// The first checkpoint.
    public var from: UInt64
    /// How many checkpoints (1...``maxCount``).
    public var count: UInt32
    /// The most checkpoints one stream carries.
    public static let maxCount: UInt32 = 32

    /// Creates a request.
    public init(from: UInt64, count: UInt32) {
        self.from = from
        self.count = count
    }

    /// Writes the fields in order.
    public func encode(to writer: inout BCSWriter) {
        writer.write(from)
        writer.write(count)
    }

    /// Reads the fields in order.
    public init(from reader: inout BCSReader) throws(CoreError) {
        from = try reader.readU64()
        count = try reader.readU32()
    }
}

extension BlocksRequest {
    /// The checkpoints asked for, `from...from + count - 1`, checked: `count` within
    /// `1...maxCount` and no sequence number past `UInt64.max` (the server's stream handler
    /// should use this instead of `from + UInt64(count)`).
    /// - Throws: ``RPCError/badRequest(_:)`` otherwise.
    public func range() throws(RPCError) -> ClosedRange<UInt64> {
        guard count >= 1, count <= Self.maxCount else { throw .badRequest("count must be 1...\(Self.maxCount), got \(count)") }
        return try RequestRange.checked(from: from, count: count)
    }
}

/// One stream item of `getBlocks`: which checkpoint and part, and the part as `getBlock` answers it.
public struct BlockItem: Sendable, BCSCodable {
    /// The checkpoint.
    public var seq: UInt64
    /// The part.
    public var part: UInt32
    /// The stored frame with its proof and the part count.
    public var block: ProvenFrame

    /// Creates an item.
    public init(seq: UInt64, part: UInt32, block: ProvenFrame) {
        self.seq = seq
        self.part = part
        self.block = block
    }

    /// Writes seq, part, block.
    public func encode(to writer: inout BCSWriter) {
        writer.write(seq)
        writer.write(part)
        writer.write(block)
    }

    /// Reads seq, part, block.
    public init(from reader: inout BCSReader) throws(CoreError) {
        seq = try reader.readU64()
        part = try reader.readU32()
        block = try reader.read(ProvenFrame.self)
    }
}
