/// A version and digest pair: the state of an object before or after a transaction.
public struct VersionDigest: Hashable, Sendable, BCSCodable {
    /// The version.
    public var version: UInt64
    /// The object digest at that version.
    public var digest: Digest

    /// Creates a pair.
    public init(version: UInt64, digest: Digest) {
        self.version = version
        self.digest = digest
    }

    /// Writes version, digest.
    public func encode(to writer: inout BCSWriter) {
        writer.write(version)
        writer.write(digest)
    }

    /// Reads version, digest.
    public init(from reader: inout BCSReader) throws(CoreError) {
        version = try reader.readU64()
        digest = try reader.readDigest()
    }
}

/// What a transaction left of an object.
public enum ObjectOutput: Hashable, Sendable, BCSCodable {
    /// Written at a new version (tag 0).
    case written(VersionDigest)
    /// Deleted (tag 1).
    case deleted

    /// Writes the tag then the fields.
    public func encode(to writer: inout BCSWriter) {
        switch self {
        case .written(let vd):
            writer.writeULEB128(0)
            writer.write(vd)
        case .deleted:
            writer.writeULEB128(1)
        }
    }

    /// Reads the tag then the fields.
    public init(from reader: inout BCSReader) throws(CoreError) {
        switch try reader.readTag(count: 2, type: "ObjectOutput") {
        case 0: self = .written(try reader.read(VersionDigest.self))
        default: self = .deleted
        }
    }
}

/// One object's change in a transaction: its input state (none for a creation) and its output.
public struct ObjectChange: Hashable, Sendable, BCSCodable {
    /// The object's id.
    public var id: ObjectID
    /// The state read, or `nil` when the transaction created the object.
    public var input: VersionDigest?
    /// The state written, or deletion.
    public var output: ObjectOutput

    /// Creates a change.
    public init(id: ObjectID, input: VersionDigest?, output: ObjectOutput) {
        self.id = id
        self.input = input
        self.output = output
    }

    /// Writes id, input option, output.
    public func encode(to writer: inout BCSWriter) {
        writer.write(id)
        writer.write(input)
        writer.write(output)
    }

    /// Reads id, input option, output.
    public init(from reader: inout BCSReader) throws(CoreError) {
        id = try reader.readDigest()
        input = try reader.readOptional(VersionDigest.self)
        output = try reader.read(ObjectOutput.self)
    }
}

/// Whether a transaction succeeded.
public enum ExecutionStatus: Hashable, Sendable, BCSCodable {
    /// Success (tag 0).
    case success
    /// Failure with an abort code (tag 1).
    case failure(code: UInt32)

    /// Writes the tag then the code.
    public func encode(to writer: inout BCSWriter) {
        switch self {
        case .success: writer.writeULEB128(0)
        case .failure(let code):
            writer.writeULEB128(1)
            writer.write(code)
        }
    }

    /// Reads the tag then the code.
    public init(from reader: inout BCSReader) throws(CoreError) {
        switch try reader.readTag(count: 2, type: "ExecutionStatus") {
        case 0: self = .success
        default: self = .failure(code: try reader.readU32())
        }
    }
}

/// The effects of executing a transaction.
public struct TransactionEffects: Hashable, Sendable, BCSCodable, DomainDigestible {
    /// The transaction these effects belong to.
    public var transactionDigest: Digest
    /// Success or failure.
    public var status: ExecutionStatus
    /// The epoch it was executed in.
    public var executedEpoch: UInt64
    /// Gas used.
    public var gasUsed: UInt64
    /// Object changes, sorted by id, ids unique.
    public var changes: [ObjectChange]
    /// Transactions whose outputs this one read.
    public var dependencies: [Digest]

    /// Creates effects.
    public init(
        transactionDigest: Digest, status: ExecutionStatus, executedEpoch: UInt64, gasUsed: UInt64,
        changes: [ObjectChange], dependencies: [Digest]
    ) {
        self.transactionDigest = transactionDigest
        self.status = status
        self.executedEpoch = executedEpoch
        self.gasUsed = gasUsed
        self.changes = changes
        self.dependencies = dependencies
    }

    /// `"TransactionEffects::"`.
    public static var domain: DomainPrefix { .transactionEffects }

    /// Writes the fields in order.
    public func encode(to writer: inout BCSWriter) {
        writer.write(transactionDigest)
        writer.write(status)
        writer.write(executedEpoch)
        writer.write(gasUsed)
        writer.write(changes)
        writer.write(dependencies)
    }

    /// Reads the fields in order.
    public init(from reader: inout BCSReader) throws(CoreError) {
        transactionDigest = try reader.readDigest()
        status = try reader.read(ExecutionStatus.self)
        executedEpoch = try reader.readU64()
        gasUsed = try reader.readU64()
        changes = try reader.readVector(ObjectChange.self, minElementSize: 34)
        dependencies = try reader.readVector(Digest.self, minElementSize: 32)
    }
}

/// One transaction, its effects and the objects it wrote: one entry of a checkpoint.
public struct ExecutionData: Hashable, Sendable, BCSCodable {
    /// The transaction.
    public var transaction: Transaction
    /// Its effects.
    public var effects: TransactionEffects
    /// Every object version it wrote, in the order of `effects.changes`.
    public var outputObjects: [Object]

    /// Creates an entry.
    public init(transaction: Transaction, effects: TransactionEffects, outputObjects: [Object]) {
        self.transaction = transaction
        self.effects = effects
        self.outputObjects = outputObjects
    }

    /// The Merkle leaf of this entry.
    public var leaf: ExecutionLeaf {
        ExecutionLeaf(
            transaction: transaction.digest, effects: effects.digest, signatures: transaction.signaturesDigest)
    }

    /// Writes transaction, effects, objects.
    public func encode(to writer: inout BCSWriter) {
        writer.write(transaction)
        writer.write(effects)
        writer.write(outputObjects)
    }

    /// The fewest bytes an entry's encoding takes (what a decoder checks a sequence length against).
    public static let minEncodedSize = 96

    /// Reads transaction, effects, objects.
    public init(from reader: inout BCSReader) throws(CoreError) {
        transaction = try reader.read(Transaction.self)
        effects = try reader.read(TransactionEffects.self)
        outputObjects = try reader.readVector(Object.self, minElementSize: Object.minEncodedSize)
    }
}

/// The Merkle leaf of a checkpoint entry: the digests of its transaction, effects and user signatures.
public struct ExecutionLeaf: Hashable, Sendable, BCSCodable {
    /// `digest(TransactionData)`.
    public var transaction: Digest
    /// `digest(TransactionEffects)`.
    public var effects: Digest
    /// `SHA256("Signatures::" ‖ bcs(signatures))`.
    public var signatures: Digest

    /// Creates a leaf.
    public init(transaction: Digest, effects: Digest, signatures: Digest) {
        self.transaction = transaction
        self.effects = effects
        self.signatures = signatures
    }

    /// Writes the three digests.
    public func encode(to writer: inout BCSWriter) {
        writer.write(transaction)
        writer.write(effects)
        writer.write(signatures)
    }

    /// Reads the three digests.
    public init(from reader: inout BCSReader) throws(CoreError) {
        transaction = try reader.readDigest()
        effects = try reader.readDigest()
        signatures = try reader.readDigest()
    }

    /// The RFC 9162 leaf hash of `bcs(self)`.
    public var leafHash: Digest {
        withUnsafeTemporaryAllocation(byteCount: 97, alignment: 8) { buf in
            buf[0] = 0
            transaction.store(into: buf, at: 1)
            effects.store(into: buf, at: 33)
            signatures.store(into: buf, at: 65)
            return Hashing.sha256(raw: UnsafeRawBufferPointer(buf))
        }
    }
}

/// The full contents of one checkpoint (or one part of it): what a block holds.
public struct CheckpointData: Hashable, Sendable, BCSCodable {
    /// The checkpoint's sequence number.
    public var sequenceNumber: UInt64
    /// Its entries, in order (for a part: the part's entries).
    public var entries: [ExecutionData]

    /// Creates checkpoint data.
    public init(sequenceNumber: UInt64, entries: [ExecutionData]) {
        self.sequenceNumber = sequenceNumber
        self.entries = entries
    }

    /// Writes sequence number, entries.
    public func encode(to writer: inout BCSWriter) {
        writer.write(sequenceNumber)
        writer.write(entries)
    }

    /// Reads sequence number, entries.
    public init(from reader: inout BCSReader) throws(CoreError) {
        sequenceNumber = try reader.readU64()
        entries = try reader.readVector(ExecutionData.self, minElementSize: ExecutionData.minEncodedSize)
    }
}
