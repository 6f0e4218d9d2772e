/// A type with a canonical BCS encoding.
public protocol BCSEncodable {
    /// Appends the value's BCS encoding.
    func encode(to writer: inout BCSWriter)
}

/// A type that can be decoded from BCS, strictly.
public protocol BCSDecodable {
    /// Reads one value; throws ``CoreError`` on any malformed or non-canonical input.
    init(from reader: inout BCSReader) throws(CoreError)
}

/// Both directions.
public typealias BCSCodable = BCSEncodable & BCSDecodable

/// Entry points of the BCS codec.
public enum BCS {
    /// The largest sequence length BCS allows (2^31 - 1).
    public static let maxSequenceLength = Int(Int32.max)

    /// Decodes exactly one value from `bytes`, rejecting trailing bytes.
    @inlinable
    public static func decode<T: BCSDecodable>(_: T.Type, from bytes: [UInt8]) throws(CoreError) -> T {
        try decode(T.self, from: bytes[...])
    }

    /// Decodes exactly one value from a slice, rejecting trailing bytes.
    @inlinable
    public static func decode<T: BCSDecodable>(_: T.Type, from bytes: ArraySlice<UInt8>) throws(CoreError) -> T {
        try read(from: bytes) { (reader: inout BCSReader) throws(CoreError) in try T(from: &reader) }
    }

    /// Decodes exactly one value from any contiguous byte collection (a `ByteBuffer`'s readable
    /// view, a `Data`), in place when the collection exposes contiguous storage.
    @inlinable
    public static func decode<T: BCSDecodable, C: Collection<UInt8>>(_: T.Type, fromContiguous bytes: C) throws(CoreError) -> T {
        let result: Result<T, CoreError>? = bytes.withContiguousStorageIfAvailable { storage in
            var reader = BCSReader(UnsafeRawBufferPointer(storage))
            do throws(CoreError) {
                let value = try T(from: &reader)
                try reader.finish()
                return .success(value)
            } catch {
                return .failure(error)
            }
        }
        if let result { return try result.get() }
        return try decode(T.self, from: Array(bytes))
    }

    /// Decodes a value with a closure over a reader, rejecting trailing bytes.
    @inlinable
    public static func read<T>(
        from bytes: ArraySlice<UInt8>, _ body: (inout BCSReader) throws(CoreError) -> T
    ) throws(CoreError) -> T {
        let result: Result<T, CoreError> = bytes.withUnsafeBytes { raw in
            var reader = BCSReader(raw)
            do throws(CoreError) {
                let value = try body(&reader)
                try reader.finish()
                return .success(value)
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    /// The BCS encoding of `value`.
    @inlinable
    public static func encode(_ value: some BCSEncodable, capacity: Int = 256) -> [UInt8] {
        var writer = BCSWriter(capacity: capacity)
        value.encode(to: &writer)
        return writer.bytes
    }
}

extension BCSEncodable {
    /// The value's BCS encoding.
    @inlinable
    public var bcsBytes: [UInt8] { BCS.encode(self) }
}

extension BCSDecodable {
    /// Decodes exactly one value from `bytes`.
    @inlinable
    public init(bcsBytes bytes: [UInt8]) throws(CoreError) {
        self = try BCS.decode(Self.self, from: bytes)
    }
}

extension Digest: BCSCodable {
    /// Writes the 32 bytes without a length prefix.
    @inlinable
    public func encode(to writer: inout BCSWriter) { writer.write(self) }
    /// Reads 32 bytes.
    @inlinable
    public init(from reader: inout BCSReader) throws(CoreError) { self = try reader.readDigest() }
}

extension UInt64: BCSCodable {
    /// Writes 8 little-endian bytes.
    @inlinable
    public func encode(to writer: inout BCSWriter) { writer.write(self) }
    /// Reads 8 little-endian bytes.
    @inlinable
    public init(from reader: inout BCSReader) throws(CoreError) { self = try reader.readU64() }
}
