import Crypto

/// An Ed25519 public key (32 bytes): a peer id, an authority name or a user key.
public struct PublicKey: Hashable, Comparable, Sendable, CustomStringConvertible, BCSCodable {
    /// The 32 key bytes.
    public let raw: Digest

    /// Wraps 32 key bytes (not checked to be a curve point until used).
    public init(raw: Digest) { self.raw = raw }

    /// Reads 32 key bytes; `nil` for another length.
    public init?(bytes: some Collection<UInt8>) {
        guard let d = Digest(bytes: bytes) else { return nil }
        raw = d
    }

    /// The address of this key: `SHA256("Address::" ‖ key)`.
    public var address: Address { raw.withUnsafeBytes { Hashing.sha256(domain: .address, raw: $0) } }

    /// Whether `signature` is a valid Ed25519 signature of `message` by this key.
    public func isValidSignature(_ signature: Signature, for message: [UInt8]) -> Bool {
        guard let key = try? raw.withUnsafeBytes({ try Curve25519.Signing.PublicKey(rawRepresentation: $0) }) else {
            return false
        }
        return signature.withUnsafeBytes { sig in
            message.withUnsafeBytes { msg in key.isValidSignature(sig, for: msg) }
        }
    }

    /// Lexicographic order of the key bytes (the order of committee members).
    public static func < (lhs: PublicKey, rhs: PublicKey) -> Bool { lhs.raw < rhs.raw }
    /// The key in hexadecimal.
    public var description: String { raw.hex }

    /// Writes the 32 bytes.
    public func encode(to writer: inout BCSWriter) { writer.write(raw) }
    /// Reads 32 bytes.
    public init(from reader: inout BCSReader) throws(CoreError) { raw = try reader.readDigest() }
}

/// A peer's identity on the network: its Ed25519 key.
public typealias PeerID = PublicKey

/// A validator's name in a committee: its Ed25519 key.
public typealias AuthorityName = PublicKey

/// An Ed25519 signature (64 bytes), stored inline.
public struct Signature: Hashable, Sendable, CustomStringConvertible, BCSCodable {
    /// Bytes 0..<32 (R).
    public let r: Digest
    /// Bytes 32..<64 (S).
    public let s: Digest

    /// Reads 64 signature bytes; `nil` for another length.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 64,
              let r = Digest(bytes: bytes.prefix(32)),
              let s = Digest(bytes: bytes.dropFirst(32))
        else { return nil }
        self.r = r
        self.s = s
    }

    init(r: Digest, s: Digest) {
        self.r = r
        self.s = s
    }

    /// Calls `body` with the 64 bytes.
    public func withUnsafeBytes<T>(_ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        var buf = (r, s)
        return try Swift.withUnsafeMutableBytes(of: &buf) { raw in
            r.store(into: raw, at: 0)
            s.store(into: raw, at: 32)
            return try body(UnsafeRawBufferPointer(rebasing: raw[0..<64]))
        }
    }

    /// The 64 bytes.
    public var bytes: [UInt8] { r.bytes + s.bytes }
    /// The signature in hexadecimal.
    public var description: String { HexCoding.encode(bytes) }

    /// Writes the 64 bytes (a fixed-size array, no length prefix).
    public func encode(to writer: inout BCSWriter) {
        writer.write(r)
        writer.write(s)
    }

    /// Reads 64 bytes.
    public init(from reader: inout BCSReader) throws(CoreError) {
        r = try reader.readDigest()
        s = try reader.readDigest()
    }
}

/// An Ed25519 signing key (from a 32-byte seed, RFC 8032).
public struct SigningKey: Sendable {
    private let key: Curve25519.Signing.PrivateKey
    /// The matching public key.
    public let publicKey: PublicKey

    /// Derives the key pair from a 32-byte seed.
    /// - Throws: ``CoreError/Code/invalidValue`` if `seed` is not 32 bytes.
    public init(seed: [UInt8]) throws(CoreError) {
        let count = seed.withUnsafeBytes { $0.count }
        guard count == 32, let k = try? Curve25519.Signing.PrivateKey(rawRepresentation: seed) else {
            throw CoreError(.invalidValue, "an Ed25519 seed is 32 bytes, got \(count)")
        }
        key = k
        guard let pk = PublicKey(bytes: Array(k.publicKey.rawRepresentation)) else {
            preconditionFailure("Ed25519 public key is not 32 bytes")
        }
        publicKey = pk
    }

    /// A fresh random key.
    public static func generate() -> SigningKey {
        var seed = [UInt8](repeating: 0, count: 32)
        var rng = SystemRandomNumberGenerator()
        for i in 0..<32 { seed[i] = UInt8.random(in: .min ... .max, using: &rng) }
        // A 32-byte seed always makes a key.
        return try! SigningKey(seed: seed)
    }

    /// The 32-byte seed (keep secret).
    public var seed: [UInt8] { Array(key.rawRepresentation) }

    /// Signs `message` (deterministic, RFC 8032).
    public func sign(_ message: [UInt8]) -> Signature {
        let sig = message.withUnsafeBytes { msg in
            // Signing with a well-formed key cannot fail.
            try! key.signature(for: msg)
        }
        guard let s = Signature(bytes: Array(sig)) else {
            preconditionFailure("Ed25519 signature is not 64 bytes")
        }
        return s
    }
}
