public import SomaCore

/// `getTransactions` request: transactions by digest, each answered with its effects and its
/// entry proof in a certified checkpoint.
public struct TransactionsRequest: Hashable, Sendable, BCSCodable {
    /// The digests (1...``maxCount``).
    public var digests: [Digest]
    /// The most digests one request names.
    public static let maxCount = 64

    /// Creates a request.
    public init(digests: [Digest]) { self.digests = digests }

    public func encode(to writer: inout BCSWriter) { writer.write(digests) }

    public init(from reader: inout BCSReader) throws(CoreError) {
        digests = try reader.readVector(minElementSize: 32)
    }
}

/// An object version asked for: `version` nil is the live version.
public struct ObjectQuery: Hashable, Sendable, BCSCodable {
    /// The object.
    public var id: ObjectID
    /// The version (nil: the live one).
    public var version: UInt64?

    /// Creates a query.
    public init(id: ObjectID, version: UInt64? = nil) {
        self.id = id
        self.version = version
    }

    public func encode(to writer: inout BCSWriter) {
        writer.write(id)
        writer.write(version)
    }

    public init(from reader: inout BCSReader) throws(CoreError) {
        id = try reader.readDigest()
        version = try reader.readOptional()
    }
}

/// `getObjects` request: object versions, each answered with the transaction that wrote it and
/// that transaction's entry proof.
public struct ObjectsRequest: Hashable, Sendable, BCSCodable {
    /// The objects (1...``TransactionsRequest/maxCount``).
    public var objects: [ObjectQuery]

    /// Creates a request.
    public init(objects: [ObjectQuery]) { self.objects = objects }

    public func encode(to writer: inout BCSWriter) { writer.write(objects) }

    public init(from reader: inout BCSReader) throws(CoreError) {
        objects = try reader.readVector(minElementSize: 33)
    }
}

/// A transaction with its effects and the proof of its entry in a certified checkpoint.
public struct EntryWithProof: Hashable, Sendable, BCSCodable {
    public var transaction: Transaction
    public var effects: TransactionEffects
    public var proof: EntryProof

    /// Creates one.
    public init(transaction: Transaction, effects: TransactionEffects, proof: EntryProof) {
        self.transaction = transaction
        self.effects = effects
        self.proof = proof
    }

    public func encode(to writer: inout BCSWriter) {
        writer.write(transaction)
        writer.write(effects)
        writer.write(proof)
    }

    public init(from reader: inout BCSReader) throws(CoreError) {
        transaction = try reader.read()
        effects = try reader.read()
        proof = try reader.read()
    }
}

/// An object version with the entry that wrote it.
public struct ObjectWithProof: Hashable, Sendable, BCSCodable {
    public var object: Object
    public var writer: EntryWithProof

    /// Creates one.
    public init(object: Object, writer: EntryWithProof) {
        self.object = object
        self.writer = writer
    }

    public func encode(to w: inout BCSWriter) {
        w.write(object)
        w.write(writer)
    }

    public init(from reader: inout BCSReader) throws(CoreError) {
        object = try reader.read()
        writer = try reader.read()
    }
}

/// The answer to `getTransactions` or `getObjects`: one item per query, in order, for a prefix
/// of the queries (at least one; an answer would otherwise pass ``maxBytes``): `nil` where the
/// node does not hold it. The asker asks again for the rest.
public struct ProvenItems<Item: BCSCodable & Sendable & Hashable>: Hashable, Sendable, BCSCodable {
    /// The items.
    public var items: [Item?]
    /// The most bytes an answer grows to before it stops at a prefix.
    public static var maxBytes: Int { 8 << 20 }

    /// Creates an answer.
    public init(items: [Item?]) { self.items = items }

    public func encode(to writer: inout BCSWriter) {
        writer.writeLength(items.count)
        for item in items { writer.write(item) }
    }

    /// The encoding of an answer whose items are already encoded (`nil`: not held): the same
    /// bytes as encoding the items, without encoding them again.
    public static func encode(encodedItems: [[UInt8]?]) -> [UInt8] {
        var w = BCSWriter(capacity: encodedItems.reduce(10) { $0 + 1 + ($1?.count ?? 0) })
        w.writeLength(encodedItems.count)
        for item in encodedItems {
            if let item {
                w.write(UInt8(1))
                w.writeRaw(item)
            } else {
                w.write(UInt8(0))
            }
        }
        return w.bytes
    }

    public init(from reader: inout BCSReader) throws(CoreError) {
        let n = try reader.readLength(minElementSize: 1)
        var out: [Item?] = []
        out.reserveCapacity(n)
        for _ in 0..<n { out.append(try reader.readOptional(Item.self)) }
        items = out
    }
}
