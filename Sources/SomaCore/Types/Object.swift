/// Who owns an object.
public enum Owner: Hashable, Sendable, BCSCodable {
    /// Owned by one address (tag 0).
    case address(Address)
    /// Shared, created shared at `initialVersion` (tag 1).
    case shared(initialVersion: UInt64)
    /// Immutable, owned by nobody (tag 2).
    case immutable

    /// Writes the tag (ULEB128) then the fields.
    public func encode(to writer: inout BCSWriter) {
        switch self {
        case .address(let a):
            writer.writeULEB128(0)
            writer.write(a)
        case .shared(let v):
            writer.writeULEB128(1)
            writer.write(v)
        case .immutable:
            writer.writeULEB128(2)
        }
    }

    /// Reads the tag then the fields; unknown tags are rejected.
    public init(from reader: inout BCSReader) throws(CoreError) {
        switch try reader.readTag(count: 3, type: "Owner") {
        case 0: self = .address(try reader.readDigest())
        case 1: self = .shared(initialVersion: try reader.readU64())
        default: self = .immutable
        }
    }
}

/// A versioned object: the unit of state.
public struct Object: Hashable, Sendable, BCSCodable, DomainDigestible {
    /// The object's id.
    public var id: ObjectID
    /// Its version; grows with every write.
    public var version: UInt64
    /// Its owner.
    public var owner: Owner
    /// Its Move-like type, e.g. `0x2::coin::Coin`.
    public var typeTag: String
    /// Its contents.
    public var contents: [UInt8]
    /// The transaction that wrote this version.
    public var previousTransaction: Digest

    /// Creates an object.
    public init(id: ObjectID, version: UInt64, owner: Owner, typeTag: String, contents: [UInt8], previousTransaction: Digest) {
        self.id = id
        self.version = version
        self.owner = owner
        self.typeTag = typeTag
        self.contents = contents
        self.previousTransaction = previousTransaction
    }

    /// `"Object::"`.
    public static var domain: DomainPrefix { .object }

    /// The fewest bytes an encoding can take: id, version, an owner tag, two empty lengths,
    /// the previous transaction (what a decoder checks a sequence length against).
    public static let minEncodedSize = 32 + 8 + 1 + 1 + 1 + 32

    /// The reference to this version: id, version, digest.
    public var reference: ObjectRef { ObjectRef(id: id, version: version, digest: digest) }

    /// Writes the fields in order.
    public func encode(to writer: inout BCSWriter) {
        writer.write(id)
        writer.write(version)
        writer.write(owner)
        writer.write(typeTag)
        writer.writeBytes(contents)
        writer.write(previousTransaction)
    }

    /// Reads the fields in order.
    public init(from reader: inout BCSReader) throws(CoreError) {
        id = try reader.readDigest()
        version = try reader.readU64()
        owner = try reader.read(Owner.self)
        typeTag = try reader.readString()
        contents = try reader.readBytes()
        previousTransaction = try reader.readDigest()
    }
}

/// A reference to one version of an object. Its BCS encoding (72 bytes) is a state-tree leaf.
public struct ObjectRef: Hashable, Sendable, BCSCodable {
    /// The object's id.
    public var id: ObjectID
    /// The version.
    public var version: UInt64
    /// `digest(Object)` of that version.
    public var digest: Digest

    /// Creates a reference.
    public init(id: ObjectID, version: UInt64, digest: Digest) {
        self.id = id
        self.version = version
        self.digest = digest
    }

    /// The encoded size: 32 + 8 + 32 bytes.
    public static let encodedSize = 72

    /// Writes id, version, digest.
    public func encode(to writer: inout BCSWriter) {
        writer.write(id)
        writer.write(version)
        writer.write(digest)
    }

    /// Reads id, version, digest.
    public init(from reader: inout BCSReader) throws(CoreError) {
        id = try reader.readDigest()
        version = try reader.readU64()
        digest = try reader.readDigest()
    }

    /// The RFC 9162 leaf hash of this reference's encoding (a state-tree leaf).
    public var leafHash: Digest {
        withUnsafeTemporaryAllocation(byteCount: 73, alignment: 8) { buf in
            buf[0] = 0
            id.store(into: buf, at: 1)
            buf.storeBytes(of: version.littleEndian, toByteOffset: 33, as: UInt64.self)
            digest.store(into: buf, at: 41)
            return Hashing.sha256(raw: UnsafeRawBufferPointer(buf))
        }
    }
}
