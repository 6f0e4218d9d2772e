import COpenSSL

/// SHA-256 helpers: plain, domain-separated (`"Type::" ‖ bytes`) and the RFC 9162 leaf and
/// node hashes.
public enum Hashing {
    /// SHA-256 of `bytes`.
    public static func sha256(_ bytes: [UInt8]) -> Digest {
        bytes.withUnsafeBytes { sha256(raw: $0) }
    }

    static func sha256(raw: UnsafeRawBufferPointer) -> Digest {
        var hasher = SHA256Hasher()
        hasher.update(raw)
        return hasher.finalize()
    }

    /// SHA-256 of `domain ‖ bytes`, where `domain` is a type name followed by `::`.
    public static func sha256(domain: DomainPrefix, _ bytes: [UInt8]) -> Digest {
        bytes.withUnsafeBytes { sha256(domain: domain, raw: $0) }
    }

    /// SHA-256 of `domain ‖ bytes`, for bytes that are not an array (a pinned value).
    public static func sha256(domain: DomainPrefix, raw: UnsafeRawBufferPointer) -> Digest {
        var hasher = SHA256Hasher()
        domain.bytes.withUnsafeBytes { hasher.update($0) }
        hasher.update(raw)
        return hasher.finalize()
    }

    /// RFC 9162 leaf hash: `SHA256(0x00 ‖ data)`.
    public static func leafHash(_ data: [UInt8]) -> Digest {
        data.withUnsafeBytes { leafHash(raw: $0) }
    }

    static func leafHash(raw: UnsafeRawBufferPointer) -> Digest {
        // Small leaves (state-tree leaves are 72 bytes, content leaves 96) go through one
        // update of a stack buffer: the prefix byte and the leaf together.
        if raw.count <= 127 {
            return withUnsafeTemporaryAllocation(byteCount: 128, alignment: 8) { buf in
                buf[0] = 0
                if let base = raw.baseAddress {
                    UnsafeMutableRawBufferPointer(rebasing: buf[1..<(1 + raw.count)]).copyMemory(from: UnsafeRawBufferPointer(start: base, count: raw.count))
                }
                var hasher = SHA256Hasher()
                hasher.update(UnsafeRawBufferPointer(rebasing: buf[0..<(1 + raw.count)]))
                return hasher.finalize()
            }
        }
        var hasher = SHA256Hasher()
        hasher.update(byte: 0)
        hasher.update(raw)
        return hasher.finalize()
    }

    /// RFC 9162 interior node hash: `SHA256(0x01 ‖ left ‖ right)`.
    public static func nodeHash(_ left: Digest, _ right: Digest) -> Digest {
        // Serialise into a 65-byte stack buffer and hash it in one update.
        return withUnsafeTemporaryAllocation(byteCount: 65, alignment: 8) { buf in
            buf[0] = 1
            left.store(into: buf, at: 1)
            right.store(into: buf, at: 33)
            var hasher = SHA256Hasher()
            hasher.update(UnsafeRawBufferPointer(buf))
            return hasher.finalize()
        }
    }

}

/// Incremental SHA-256 on the stack (libcrypto's context API: SHA-NI where the CPU has it,
/// no allocation). A value type: copying it forks the hash state.
public struct SHA256Hasher {
    private var context = SHA256_CTX()

    /// A fresh hash state.
    public init() {
        SHA256_Init(&context)
    }

    /// Adds bytes.
    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        if let base = bytes.baseAddress { SHA256_Update(&context, base, bytes.count) }
    }

    /// Adds bytes.
    public mutating func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }

    /// Adds one byte.
    public mutating func update(byte: UInt8) {
        var b = byte
        SHA256_Update(&context, &b, 1)
    }

    /// Adds a 32-byte value.
    public mutating func update(_ digest: Digest) {
        digest.withUnsafeBytes { update($0) }
    }

    /// The digest of everything added.
    public mutating func finalize() -> Digest {
        var out: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        return withUnsafeMutableBytes(of: &out) { raw in
            SHA256_Final(raw.baseAddress!.assumingMemoryBound(to: UInt8.self), &context)
            return Digest(loading: UnsafeRawBufferPointer(raw), at: 0)
        }
    }
}

/// A digest domain: the UTF-8 bytes of `"TypeName::"`.
public struct DomainPrefix: Sendable {
    /// The prefix bytes.
    public let bytes: [UInt8]

    /// The domain of a type name, e.g. `DomainPrefix("CheckpointSummary")` is `"CheckpointSummary::"`.
    public init(_ typeName: String) {
        bytes = Array((typeName + "::").utf8)
    }

    /// `"Object::"`.
    public static let object = DomainPrefix("Object")
    /// `"TransactionData::"`.
    public static let transactionData = DomainPrefix("TransactionData")
    /// `"TransactionEffects::"`.
    public static let transactionEffects = DomainPrefix("TransactionEffects")
    /// `"Signatures::"`.
    public static let signatures = DomainPrefix("Signatures")
    /// `"CheckpointSummary::"`.
    public static let checkpointSummary = DomainPrefix("CheckpointSummary")
    /// `"CheckpointData::"`.
    public static let checkpointData = DomainPrefix("CheckpointData")
    /// `"Address::"`.
    public static let address = DomainPrefix("Address")
    /// `"Committee::"`.
    public static let committee = DomainPrefix("Committee")
    /// `"ExecutionLeaf::"`.
    public static let executionLeaf = DomainPrefix("ExecutionLeaf")
}

/// A type whose digest is `SHA256("TypeName::" ‖ bcs(value))`.
public protocol DomainDigestible: BCSEncodable {
    /// The type's domain prefix.
    static var domain: DomainPrefix { get }
}

extension DomainDigestible {
    /// `SHA256("TypeName::" ‖ bcs(self))`.
    public var digest: Digest {
        var writer = BCSWriter(capacity: 512)
        encode(to: &writer)
        return Hashing.sha256(domain: Self.domain, writer.bytes)
    }
}
