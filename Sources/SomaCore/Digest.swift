/// A 32-byte value: a SHA-256 digest, an object id or an address.
///
/// Stored inline as four big-endian words, so it never allocates; ordering is the
/// lexicographic order of the bytes.
public struct Digest: Hashable, Comparable, Sendable, CustomStringConvertible {
    @usableFromInline var w0: UInt64
    @usableFromInline var w1: UInt64
    @usableFromInline var w2: UInt64
    @usableFromInline var w3: UInt64

    /// The all-zero value.
    public static let zero = Digest(w0: 0, w1: 0, w2: 0, w3: 0)

    @inlinable
    init(w0: UInt64, w1: UInt64, w2: UInt64, w3: UInt64) {
        self.w0 = w0
        self.w1 = w1
        self.w2 = w2
        self.w3 = w3
    }

    /// Reads 32 bytes; returns `nil` if `bytes` does not hold exactly 32.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 32 else { return nil }
        if let d = bytes.withContiguousStorageIfAvailable({ Digest(loading: UnsafeRawBufferPointer($0), at: 0) }) {
            self = d
            return
        }
        var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        var i = 0
        for b in bytes {
            let shift = UInt64(56 - 8 * (i % 8))
            switch i / 8 {
            case 0: words.0 |= UInt64(b) << shift
            case 1: words.1 |= UInt64(b) << shift
            case 2: words.2 |= UInt64(b) << shift
            default: words.3 |= UInt64(b) << shift
            }
            i += 1
        }
        self.init(w0: words.0, w1: words.1, w2: words.2, w3: words.3)
    }

    /// Parses 64 hexadecimal characters; `nil` for anything else.
    public init?(hex: String) {
        guard let bytes = HexCoding.decode(hex), bytes.count == 32 else { return nil }
        self.init(bytes: bytes)
    }

    /// Loads 32 bytes from raw memory at `offset`; the caller guarantees they are there.
    @inlinable
    init(loading buffer: UnsafeRawBufferPointer, at offset: Int) {
        self.w0 = UInt64(bigEndian: buffer.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
        self.w1 = UInt64(bigEndian: buffer.loadUnaligned(fromByteOffset: offset + 8, as: UInt64.self))
        self.w2 = UInt64(bigEndian: buffer.loadUnaligned(fromByteOffset: offset + 16, as: UInt64.self))
        self.w3 = UInt64(bigEndian: buffer.loadUnaligned(fromByteOffset: offset + 24, as: UInt64.self))
    }

    /// Stores the 32 bytes into raw memory at `offset`; the caller guarantees the room.
    @inlinable
    func store(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) {
        buffer.storeBytes(of: w0.bigEndian, toByteOffset: offset, as: UInt64.self)
        buffer.storeBytes(of: w1.bigEndian, toByteOffset: offset + 8, as: UInt64.self)
        buffer.storeBytes(of: w2.bigEndian, toByteOffset: offset + 16, as: UInt64.self)
        buffer.storeBytes(of: w3.bigEndian, toByteOffset: offset + 24, as: UInt64.self)
    }

    /// Calls `body` with the 32 bytes in order.
    @inlinable
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        var words = (w0.bigEndian, w1.bigEndian, w2.bigEndian, w3.bigEndian)
        return try Swift.withUnsafeBytes(of: &words) { try body($0) }
    }

    /// The 32 bytes as an array.
    public var bytes: [UInt8] { withUnsafeBytes { Array($0) } }

    /// The first 8 bytes as a big-endian number: ordering by it orders by the bytes, up to
    /// values that share their first 8 bytes.
    @inlinable
    public var prefix64: UInt64 { w0 }

    /// Lowercase hexadecimal, 64 characters.
    public var hex: String { HexCoding.encode(bytes) }

    /// The first 8 bytes in hexadecimal, for logs.
    public var short: String { String(hex.prefix(16)) }

    /// Lowercase hexadecimal.
    public var description: String { hex }

    /// Hashes the first 8 bytes only: digests, ids and addresses are SHA-256 outputs (or
    /// Ed25519 keys), so those bytes are already uniform, and `Hasher` is keyed per process, so
    /// a key whose bucket collides with another's needs the same 64 bits (about 2^64 tries to
    /// make one on purpose). Maps of a million ids hash a quarter of the bytes. Equality still
    /// compares all 32.
    @inlinable
    public func hash(into hasher: inout Hasher) {
        hasher.combine(w0)
    }

    /// Lexicographic order of the bytes.
    @inlinable
    public static func < (lhs: Digest, rhs: Digest) -> Bool {
        if lhs.w0 != rhs.w0 { return lhs.w0 < rhs.w0 }
        if lhs.w1 != rhs.w1 { return lhs.w1 < rhs.w1 }
        if lhs.w2 != rhs.w2 { return lhs.w2 < rhs.w2 }
        return lhs.w3 < rhs.w3
    }
}

/// An object's identifier (32 bytes).
public typealias ObjectID = Digest

/// An account address: `SHA256("Address::" ‖ publicKey)`.
public typealias Address = Digest

/// Hexadecimal encoding and decoding.
public enum HexCoding {
    private static let digits: [UInt8] = Array("0123456789abcdef".utf8)

    /// Lowercase hexadecimal of `bytes`.
    public static func encode(_ bytes: some Sequence<UInt8>) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.underestimatedCount * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The bytes of an even-length hexadecimal string (either case); `nil` on anything else.
    public static func decode(_ text: String) -> [UInt8]? {
        let utf8 = Array(text.utf8)
        guard utf8.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(utf8.count / 2)
        var i = 0
        while i < utf8.count {
            guard let hi = nibble(utf8[i]), let lo = nibble(utf8[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
