public import SomaCore

/// Key and small-value layouts of the node's column families (DESIGN §6). Integers are
/// big-endian so that RocksDB's byte order is numeric order.
public enum StoreKeys {
    /// `u64` big-endian.
    public static func seq(_ value: UInt64) -> [UInt8] {
        withUnsafeBytes(of: value.bigEndian) { Array($0) }
    }

    /// `seq ‖ part (u32 BE)`.
    public static func block(_ seq: UInt64, part: UInt32) -> [UInt8] {
        var k = self.seq(seq)
        withUnsafeBytes(of: part.bigEndian) { k += $0 }
        return k
    }

    /// `epoch ‖ chunk (u32 BE)`.
    public static func chunk(_ epoch: UInt64, _ chunk: UInt32) -> [UInt8] { block(epoch, part: chunk) }

    /// `id ‖ version (BE)`.
    public static func object(_ id: ObjectID, version: UInt64) -> [UInt8] {
        digestThen(id, version)
    }

    /// Writes `id ‖ version (BE)` into a 40-byte key buffer (no allocation).
    static func writeObjectKey(_ id: ObjectID, _ version: UInt64, into key: inout [UInt8]) {
        key.withUnsafeMutableBytes { buf in
            id.withUnsafeBytes { buf.copyMemory(from: $0) }
            buf.storeBytes(of: version.bigEndian, toByteOffset: 32, as: UInt64.self)
        }
    }

    /// `digest ‖ value (BE)` in one allocation.
    static func digestThen(_ d: Digest, _ value: UInt64) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: 40) { buf, n in
            d.withUnsafeBytes { UnsafeMutableRawBufferPointer(buf).copyMemory(from: $0) }
            UnsafeMutableRawBufferPointer(rebasing: UnsafeMutableRawBufferPointer(buf)[32..<40]).storeBytes(of: value.bigEndian, as: UInt64.self)
            n = 40
        }
    }

    /// `version (BE) ‖ digest`.
    static func versionDigest(_ vd: VersionDigest) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: 40) { buf, n in
            UnsafeMutableRawBufferPointer(buf).storeBytes(of: vd.version.bigEndian, as: UInt64.self)
            vd.digest.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: UnsafeMutableRawBufferPointer(buf)[8..<40]).copyMemory(from: $0) }
            n = 40
        }
    }

    /// `seq (BE) ‖ digest`.
    /// `seq + 1`, for numbers read back from the store or taken from certified data: a stored
    /// value at `UInt64.max` is a bad value (``StoreError/Code/badValue``), never a trap.
    static func successor(_ seq: UInt64, _ what: @autoclosure () -> String) throws(StoreError) -> UInt64 {
        guard seq < UInt64.max else { throw StoreError(.badValue, "\(what()) is \(seq): there is no number after it") }
        return seq + 1
    }

    static func seqDigest(_ seq: UInt64, _ digest: Digest) -> [UInt8] { self.seq(seq) + digest.bytes }

    /// `seq (BE) ‖ index (u32 BE)`.
    static func position(_ seq: UInt64, _ index: UInt32) -> [UInt8] { block(seq, part: index) }

    /// Reads a big-endian u64 at `offset`, or `nil` if the bytes are short.
    static func readU64(_ bytes: [UInt8], at offset: Int = 0) -> UInt64? {
        guard bytes.count >= offset + 8 else { return nil }
        var v: UInt64 = 0
        for i in 0..<8 { v = v << 8 | UInt64(bytes[offset + i]) }
        return v
    }

    /// Reads a big-endian u32 at `offset`, or `nil` if the bytes are short.
    static func readU32(_ bytes: [UInt8], at offset: Int) -> UInt32? {
        guard bytes.count >= offset + 4 else { return nil }
        var v: UInt32 = 0
        for i in 0..<4 { v = v << 8 | UInt32(bytes[offset + i]) }
        return v
    }

    /// An object version stored as a locator into its block (archive stores, DESIGN §6.1):
    /// `seq (BE) ‖ part (u32 BE) ‖ offset (u32 BE) ‖ length (u32 BE)`, 20 bytes. An object
    /// version stored as its encoding is never 20 bytes long (`bcs(Object)` starts with a
    /// 32-byte id), so the length tells the two apart.
    static func objectLocator(_ locator: ObjectLocator) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: objectLocatorSize)
        writeObjectLocator(locator, into: &bytes)
        return bytes
    }

    /// Writes a locator into a 20-byte buffer (no allocation).
    static func writeObjectLocator(_ locator: ObjectLocator, into bytes: inout [UInt8]) {
        precondition(bytes.count == objectLocatorSize)
        bytes.withUnsafeMutableBytes { b in
            b.storeBytes(of: locator.seq.bigEndian, toByteOffset: 0, as: UInt64.self)
            b.storeBytes(of: locator.part.bigEndian, toByteOffset: 8, as: UInt32.self)
            b.storeBytes(of: locator.offset.bigEndian, toByteOffset: 12, as: UInt32.self)
            b.storeBytes(of: locator.length.bigEndian, toByteOffset: 16, as: UInt32.self)
        }
    }

    static let objectLocatorSize = 20

    /// Reads a locator, or `nil` for a value of another length (an encoding).
    static func readObjectLocator(_ bytes: [UInt8]) -> ObjectLocator? {
        bytes.withUnsafeBytes { readObjectLocator(raw: $0) }
    }

    /// ``readObjectLocator(_:)`` over borrowed bytes (an iterator's value, no copy).
    static func readObjectLocator(raw: UnsafeRawBufferPointer) -> ObjectLocator? {
        guard raw.count == objectLocatorSize else { return nil }
        return ObjectLocator(
            seq: UInt64(bigEndian: raw.loadUnaligned(as: UInt64.self)),
            part: UInt32(bigEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt32.self)),
            offset: UInt32(bigEndian: raw.loadUnaligned(fromByteOffset: 12, as: UInt32.self)),
            length: UInt32(bigEndian: raw.loadUnaligned(fromByteOffset: 16, as: UInt32.self)))
    }

    /// The size of a live entry that carries its version's locator.
    static let liveEntryWithLocatorSize = 40 + objectLocatorSize

    /// A live entry: version and digest, with the live version's locator when there is one (an
    /// archive's snapshot builds then read no `objects` entry for it).
    static func liveEntry(_ vd: VersionDigest, locator: ObjectLocator?) -> [UInt8] {
        guard let locator else { return versionDigest(vd) }
        // One allocation: each write-back makes one of these per changed object.
        return [UInt8](unsafeUninitializedCapacity: liveEntryWithLocatorSize) { buf, n in
            let b = UnsafeMutableRawBufferPointer(buf)
            b.storeBytes(of: vd.version.bigEndian, as: UInt64.self)
            vd.digest.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: b[8..<40]).copyMemory(from: $0) }
            b.storeBytes(of: locator.seq.bigEndian, toByteOffset: 40, as: UInt64.self)
            b.storeBytes(of: locator.part.bigEndian, toByteOffset: 48, as: UInt32.self)
            b.storeBytes(of: locator.offset.bigEndian, toByteOffset: 52, as: UInt32.self)
            b.storeBytes(of: locator.length.bigEndian, toByteOffset: 56, as: UInt32.self)
            n = liveEntryWithLocatorSize
        }
    }

    /// The locator part of a live entry, if it has one.
    static func liveLocator(raw: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer? {
        raw.count == liveEntryWithLocatorSize ? UnsafeRawBufferPointer(rebasing: raw[40...]) : nil
    }

    static func readVersionDigest(_ bytes: [UInt8]) -> VersionDigest? {
        bytes.withUnsafeBytes { readVersionDigest(raw: $0) }
    }

    /// A live entry's version and digest: the entry is those 40 bytes, or (archive stores) those
    /// followed by the live version's ``ObjectLocator`` (``liveEntry(_:locator:)``).
    static func readVersionDigest(raw: UnsafeRawBufferPointer) -> VersionDigest? {
        guard raw.count == 40 || raw.count == liveEntryWithLocatorSize else { return nil }
        let v = UInt64(bigEndian: raw.loadUnaligned(as: UInt64.self))
        guard let d = Digest(bytes: UnsafeRawBufferPointer(rebasing: raw[8..<40])) else { return nil }
        return VersionDigest(version: v, digest: d)
    }
}

/// Where an object version's encoding lies in the history segments: checkpoint, part, and the
/// byte range in that part's decompressed block. Read back from the store, so checked against
/// the block before use.
struct ObjectLocator: Hashable, Sendable {
    var seq: UInt64
    var part: UInt32
    var offset: UInt32
    var length: UInt32
}

/// The persisted heights (DESIGN §1).
public enum Watermark: String, CaseIterable, Sendable {
    /// Summaries verified and stored up to here.
    case highestVerified
    /// Blocks stored up to here.
    case highestSynced
    /// Effects applied to the live object set up to here.
    case highestExecuted
    /// The lowest checkpoint whose blocks are still held (after pruning).
    case lowestAvailable
}

/// A watermark's value: a sequence number and the digest of that checkpoint's summary.
public struct WatermarkValue: Hashable, Sendable {
    /// The sequence number.
    public var seq: UInt64
    /// The summary digest at `seq`.
    public var digest: Digest

    /// Creates a value.
    public init(seq: UInt64, digest: Digest) {
        self.seq = seq
        self.digest = digest
    }
}

/// What the `epochs` column family records of an epoch.
public struct EpochRecord: Hashable, Sendable, BCSCodable {
    /// The epoch.
    public var epoch: UInt64
    /// Its first checkpoint.
    public var firstCheckpoint: UInt64
    /// Its last checkpoint, once known.
    public var lastCheckpoint: UInt64?
    /// The state root after its last checkpoint, once executed and checked.
    public var stateRoot: Digest?
    /// The live object count then.
    public var liveObjectCount: UInt64?

    /// Creates a record.
    public init(epoch: UInt64, firstCheckpoint: UInt64, lastCheckpoint: UInt64? = nil, stateRoot: Digest? = nil, liveObjectCount: UInt64? = nil) {
        self.epoch = epoch
        self.firstCheckpoint = firstCheckpoint
        self.lastCheckpoint = lastCheckpoint
        self.stateRoot = stateRoot
        self.liveObjectCount = liveObjectCount
    }

    /// Writes the fields in order.
    public func encode(to writer: inout BCSWriter) {
        writer.write(epoch)
        writer.write(firstCheckpoint)
        writer.write(lastCheckpoint)
        writer.write(stateRoot)
        writer.write(liveObjectCount)
    }

    /// Reads the fields in order.
    public init(from reader: inout BCSReader) throws(CoreError) {
        epoch = try reader.readU64()
        firstCheckpoint = try reader.readU64()
        lastCheckpoint = try reader.readOptional(UInt64.self)
        stateRoot = try reader.readOptional(Digest.self)
        liveObjectCount = try reader.readOptional(UInt64.self)
    }
}
