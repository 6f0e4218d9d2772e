/// Appends values in BCS, the canonical encoding: little-endian fixed-width integers,
/// ULEB128 lengths and enum tags, no padding.
public struct BCSWriter: Sendable {
    @usableFromInline var storage: [UInt8]

    /// The bytes written so far.
    public var bytes: [UInt8] { storage }

    /// The number of bytes written so far.
    public var count: Int { storage.count }

    /// Creates an empty writer with room for `capacity` bytes.
    public init(capacity: Int = 256) {
        storage = []
        storage.reserveCapacity(capacity)
    }

    /// Writes one byte.
    @inlinable
    public mutating func write(_ value: UInt8) { storage.append(value) }

    /// Writes a bool as 0 or 1.
    @inlinable
    public mutating func write(_ value: Bool) { storage.append(value ? 1 : 0) }

    /// Writes a little-endian u16.
    @inlinable
    public mutating func write(_ value: UInt16) { writeFixed(value) }

    /// Writes a little-endian u32.
    @inlinable
    public mutating func write(_ value: UInt32) { writeFixed(value) }

    /// Writes a little-endian u64.
    @inlinable
    public mutating func write(_ value: UInt64) { writeFixed(value) }

    @inlinable
    mutating func writeFixed<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { storage.append(contentsOf: $0) }
    }

    /// Writes an unsigned integer as ULEB128 (7 bits a byte, least significant first).
    @inlinable
    public mutating func writeULEB128(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            storage.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        storage.append(UInt8(v))
    }

    /// Writes a sequence length (ULEB128).
    @inlinable
    public mutating func writeLength(_ count: Int) {
        precondition(count >= 0 && count <= BCS.maxSequenceLength, "BCS sequence too long")
        writeULEB128(UInt64(count))
    }

    /// Writes a byte vector: length, then the bytes.
    @inlinable
    public mutating func writeBytes(_ value: [UInt8]) {
        writeLength(value.count)
        storage.append(contentsOf: value)
    }

    /// Writes bytes without a length prefix (a fixed-size array).
    @inlinable
    public mutating func writeRaw(_ value: some Sequence<UInt8>) {
        storage.append(contentsOf: value)
    }

    /// Writes a UTF-8 string: length, then the bytes.
    @inlinable
    public mutating func write(_ value: String) {
        var s = value
        s.withUTF8 { utf8 in
            writeLength(utf8.count)
            storage.append(contentsOf: utf8)
        }
    }

    /// Writes a 32-byte value without a length prefix.
    @inlinable
    public mutating func write(_ value: Digest) {
        let start = storage.count
        storage.append(contentsOf: repeatElement(0, count: 32))
        storage.withUnsafeMutableBytes { value.store(into: $0, at: start) }
    }

    /// Writes an encodable value.
    @inlinable
    public mutating func write(_ value: some BCSEncodable) { value.encode(to: &self) }

    /// Writes an Option: 0, or 1 and the value.
    @inlinable
    public mutating func write<T: BCSEncodable>(_ value: T?) {
        if let value {
            storage.append(1)
            value.encode(to: &self)
        } else {
            storage.append(0)
        }
    }

    /// Writes a vector: length, then each element.
    @inlinable
    public mutating func write<T: BCSEncodable>(_ values: [T]) {
        writeLength(values.count)
        for v in values { v.encode(to: &self) }
    }

    /// Writes a vector of u64.
    @inlinable
    public mutating func write(_ values: [UInt64]) {
        writeLength(values.count)
        for v in values { writeFixed(v) }
    }
}
