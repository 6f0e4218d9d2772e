/// Reads BCS values from a contiguous byte buffer, rejecting anything non-canonical.
///
/// A reader exists only inside ``BCS/decode(_:from:)`` (or ``BCSDecodable/init(bcsBytes:)``),
/// which owns the buffer; every read checks the remaining length before it touches memory
/// or allocates.
public struct BCSReader: ~Copyable {
    @usableFromInline let buffer: UnsafeRawBufferPointer
    @usableFromInline var offset: Int
    /// Strings this reader made lately (at most ``recentStringLimit``): the same bytes read
    /// again (a block's objects repeat a few type tags) give the same string, shared, instead
    /// of a new allocation and a second UTF-8 validation.
    @usableFromInline var recentStrings: [String] = []

    /// Most strings a reader keeps for ``readString()`` to share.
    @usableFromInline static let recentStringLimit = 8

    @usableFromInline
    init(_ buffer: UnsafeRawBufferPointer) {
        self.buffer = buffer
        self.offset = 0
    }

    /// Bytes not yet read.
    @inlinable
    public var remaining: Int { buffer.count - offset }

    @inlinable
    mutating func need(_ n: Int) throws(CoreError) {
        guard n <= buffer.count - offset else {
            throw CoreError(.truncated, "need \(n) bytes at offset \(offset), \(buffer.count - offset) remain")
        }
    }

    /// Reads one byte.
    @inlinable
    public mutating func readU8() throws(CoreError) -> UInt8 {
        try need(1)
        let v = buffer[offset]
        offset += 1
        return v
    }

    /// Reads a bool (0 or 1).
    @inlinable
    public mutating func readBool() throws(CoreError) -> Bool {
        switch try readU8() {
        case 0: return false
        case 1: return true
        case let b: throw CoreError(.invalidBool, "bool byte \(b) at offset \(offset - 1)")
        }
    }

    @inlinable
    mutating func readFixed<T: FixedWidthInteger>(_: T.Type) throws(CoreError) -> T {
        try need(MemoryLayout<T>.size)
        let v = T(littleEndian: buffer.loadUnaligned(fromByteOffset: offset, as: T.self))
        offset += MemoryLayout<T>.size
        return v
    }

    /// Reads a little-endian u16.
    @inlinable
    public mutating func readU16() throws(CoreError) -> UInt16 { try readFixed(UInt16.self) }
    /// Reads a little-endian u32.
    @inlinable
    public mutating func readU32() throws(CoreError) -> UInt32 { try readFixed(UInt32.self) }
    /// Reads a little-endian u64.
    @inlinable
    public mutating func readU64() throws(CoreError) -> UInt64 { try readFixed(UInt64.self) }

    /// Reads a canonical ULEB128 integer no larger than `max`.
    ///
    /// Rejects encodings longer than needed (a final zero group), longer than 10 bytes,
    /// and values above `max`.
    @inlinable
    public mutating func readULEB128(max: UInt64 = .max) throws(CoreError) -> UInt64 {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        let start = offset
        while true {
            let byte = try readU8()
            let low = UInt64(byte & 0x7f)
            if shift == 63 && low > 1 {
                throw CoreError(.overlongULEB128, "ULEB128 at offset \(start) overflows 64 bits")
            }
            value |= low << shift
            if byte & 0x80 == 0 {
                if byte == 0 && shift > 0 {
                    throw CoreError(.nonCanonicalULEB128, "ULEB128 at offset \(start) has a redundant zero group")
                }
                break
            }
            shift += 7
            if shift > 63 {
                throw CoreError(.overlongULEB128, "ULEB128 at offset \(start) is longer than 10 bytes")
            }
        }
        guard value <= max else {
            throw CoreError(.overlongULEB128, "ULEB128 value \(value) at offset \(start) exceeds \(max)")
        }
        return value
    }

    /// Reads a sequence length and checks that `length * minElementSize` bytes remain,
    /// so that nothing is allocated for a length the input cannot back.
    @inlinable
    public mutating func readLength(minElementSize: Int = 1) throws(CoreError) -> Int {
        let start = offset
        let raw = try readULEB128()
        guard raw <= UInt64(BCS.maxSequenceLength) else {
            throw CoreError(.lengthTooLarge, "length \(raw) at offset \(start) exceeds the BCS maximum")
        }
        let length = Int(raw)
        let (bytesNeeded, overflow) = length.multipliedReportingOverflow(by: Swift.max(minElementSize, 0))
        guard !overflow, bytesNeeded <= remaining else {
            throw CoreError(.lengthTooLarge, "length \(length) at offset \(start) exceeds the \(remaining) bytes that remain")
        }
        return length
    }

    /// Reads an enum tag (ULEB128) and checks it is below `count`.
    @inlinable
    public mutating func readTag(count: Int, type: StaticString) throws(CoreError) -> Int {
        let start = offset
        let tag = try readULEB128(max: UInt64(UInt32.max))
        guard tag < UInt64(count) else {
            throw CoreError(.unknownTag, "unknown \(type) tag \(tag) at offset \(start)")
        }
        return Int(tag)
    }

    /// Reads an Option tag: `true` when a value follows.
    @inlinable
    public mutating func readOptionTag() throws(CoreError) -> Bool {
        switch try readU8() {
        case 0: return false
        case 1: return true
        case let b: throw CoreError(.invalidOptionTag, "option tag \(b) at offset \(offset - 1)")
        }
    }

    /// Reads `count` raw bytes (a fixed-size array).
    @inlinable
    public mutating func readRaw(count: Int) throws(CoreError) -> [UInt8] {
        try need(count)
        let out = Array(UnsafeRawBufferPointer(rebasing: buffer[offset..<(offset + count)]))
        offset += count
        return out
    }

    /// Reads a byte vector: length, then the bytes.
    @inlinable
    public mutating func readBytes() throws(CoreError) -> [UInt8] {
        let count = try readLength()
        return try readRaw(count: count)
    }

    /// Reads a UTF-8 string: length, then the bytes, which must be valid UTF-8.
    @inlinable
    public mutating func readString() throws(CoreError) -> String {
        let start = offset
        let count = try readLength()
        let slice = UnsafeRawBufferPointer(rebasing: buffer[offset..<(offset + count)])
        // Up to 15 bytes a string is stored inline (no allocation): only longer ones are shared.
        if count > 15 {
            for known in recentStrings where known.utf8.count == count {
                let same = known.utf8.withContiguousStorageIfAvailable { UnsafeRawBufferPointer($0).elementsEqual(slice) } ?? false
                if same {
                    offset += count
                    return known
                }
            }
        }
        guard let s = String(validating: slice.bindMemory(to: UInt8.self), as: UTF8.self) else {
            throw CoreError(.invalidUTF8, "invalid UTF-8 in string at offset \(start)")
        }
        offset += count
        if count > 15 && recentStrings.count < Self.recentStringLimit { recentStrings.append(s) }
        return s
    }

    /// Reads a 32-byte value.
    @inlinable
    public mutating func readDigest() throws(CoreError) -> Digest {
        try need(32)
        let d = Digest(loading: buffer, at: offset)
        offset += 32
        return d
    }

    /// Reads a decodable value.
    @inlinable
    public mutating func read<T: BCSDecodable>(_: T.Type = T.self) throws(CoreError) -> T {
        try T(from: &self)
    }

    /// Reads an Option of a decodable value.
    @inlinable
    public mutating func readOptional<T: BCSDecodable>(_: T.Type = T.self) throws(CoreError) -> T? {
        try readOptionTag() ? try T(from: &self) : nil
    }

    /// Reads a vector of decodable values; each element must take at least `minElementSize` bytes.
    @inlinable
    public mutating func readVector<T: BCSDecodable>(
        _: T.Type = T.self, minElementSize: Int = 1
    ) throws(CoreError) -> [T] {
        let count = try readLength(minElementSize: minElementSize)
        var out: [T] = []
        out.reserveCapacity(count)
        for _ in 0..<count { out.append(try T(from: &self)) }
        return out
    }

    /// Reads a vector of u64.
    @inlinable
    public mutating func readU64Vector() throws(CoreError) -> [UInt64] {
        let count = try readLength(minElementSize: 8)
        var out: [UInt64] = []
        out.reserveCapacity(count)
        for _ in 0..<count { out.append(try readU64()) }
        return out
    }

    /// Fails unless every byte was consumed.
    @inlinable
    public func finish() throws(CoreError) {
        guard offset == buffer.count else {
            throw CoreError(.trailingBytes, "\(buffer.count - offset) trailing bytes after offset \(offset)")
        }
    }
}
