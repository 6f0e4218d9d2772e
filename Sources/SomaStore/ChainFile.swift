import Foundation
public import SomaCore

/// A chain file: the genesis and then every checkpoint's certified summary with its stored
/// blocks (LZ4 frames) and part proofs, as length-prefixed BCS records. It is what
/// `devnet export` writes and `import` reads: an ordered local source of checkpoints.
///
/// Layout: `"SOMACHN1"`, then records `u32 BE length ‖ bcs(record)`; the first record is the
/// genesis, every later one a ``ChainRecord``.
public enum ChainFile {
    /// The file's first 8 bytes.
    public static let magic = Array("SOMACHN1".utf8)
    /// The largest record a reader accepts (checked before allocating).
    public static let maxRecordBytes = 512 << 20
}

/// One checkpoint in a chain file.
public struct ChainRecord: BCSCodable, Sendable {
    /// The certified summary.
    public var certified: CertifiedCheckpointSummary
    /// The stored blocks (LZ4 frames), one per part.
    public var frames: [[UInt8]]
    /// Each part's proof (empty for a single part).
    public var proofs: [[Digest]]

    /// Writes summary, frames, proofs.
    public func encode(to writer: inout BCSWriter) {
        writer.write(certified)
        writer.writeLength(frames.count)
        for f in frames { writer.writeBytes(f) }
        writer.writeLength(proofs.count)
        for p in proofs { writer.write(p) }
    }

    /// Creates a record.
    public init(certified: CertifiedCheckpointSummary, frames: [[UInt8]], proofs: [[Digest]]) {
        self.certified = certified
        self.frames = frames
        self.proofs = proofs
    }

    /// Reads summary, frames, proofs; at least one frame, one proof per frame.
    public init(from reader: inout BCSReader) throws(CoreError) {
        certified = try reader.read(CertifiedCheckpointSummary.self)
        let n = try reader.readLength(minElementSize: 1)
        frames = []
        for _ in 0..<n { frames.append(try reader.readBytes()) }
        let m = try reader.readLength(minElementSize: 1)
        proofs = []
        for _ in 0..<m { proofs.append(try reader.readVector(Digest.self, minElementSize: 32)) }
        guard !frames.isEmpty, frames.count == proofs.count else {
            throw CoreError(.invalidValue, "checkpoint \(certified.summary.sequenceNumber): \(frames.count) blocks and \(proofs.count) proofs")
        }
    }
}

/// Writes a chain file.
public final class ChainFileWriter {
    private let handle: FileHandle
    private var buffer: [UInt8] = []

    /// Creates (or truncates) `path` and writes the magic and the genesis.
    public init(path: String, genesis: Genesis) throws {
        guard FileManager.default.createFile(atPath: path, contents: nil) else { throw StoreError(.ioError, "cannot create \(path)") }
        guard let h = FileHandle(forWritingAtPath: path) else { throw StoreError(.ioError, "cannot open \(path) for writing: \(String(cString: strerror(errno)))") }
        handle = h
        buffer = ChainFile.magic
        append(genesis.bcsBytes)
    }

    private func append(_ record: [UInt8]) {
        withUnsafeBytes(of: UInt32(record.count).bigEndian) { buffer += $0 }
        buffer += record
    }

    /// Appends a checkpoint record.
    public func write(_ record: ChainRecord) throws {
        append(BCS.encode(record, capacity: record.frames.reduce(512) { $0 + $1.count + 8 }))
        if buffer.count >= 8 << 20 { try flush() }
    }

    /// Writes buffered records to the file.
    public func flush() throws {
        try handle.write(contentsOf: buffer)
        buffer.removeAll(keepingCapacity: true)
    }

    /// Flushes and closes the file.
    public func close() throws {
        try flush()
        try handle.close()
    }
}

/// Reads a chain file in order; every length is checked before anything is allocated.
public final class ChainFileReader {
    private var stream: RecordStream
    /// The genesis, from the first record.
    public let genesis: Genesis

    /// Opens `path` and reads its magic and genesis.
    public init(path: String) throws {
        var stream = try RecordStream(path: path)
        guard try stream.read(exactly: 8) == ChainFile.magic else { throw StoreError(.badValue, "\(path) is not a chain file (no chain-file magic at its start; `soma-node devnet export` writes one)") }
        guard let bytes = try stream.nextRecord() else { throw StoreError(.badValue, "\(path) has no genesis") }
        do {
            genesis = try Genesis(bcsBytes: bytes)
        } catch {
            throw StoreError(.badValue, error, context: "\(path): the genesis record")
        }
        self.stream = stream
    }

    deinit { try? stream.handle.close() }

    /// The next checkpoint record, or `nil` at the end of the file.
    public func next() throws -> ChainRecord? {
        guard let bytes = try stream.nextRecord() else { return nil }
        do {
            return try ChainRecord(bcsBytes: bytes)
        } catch {
            throw StoreError(.badValue, error, context: "\(stream.path): a checkpoint record")
        }
    }
}

/// Buffered reads of length-prefixed records from a file.
struct RecordStream {
    let handle: FileHandle
    let path: String
    private var buffer: [UInt8] = []
    private var position = 0
    private var eof = false

    init(path: String) throws {
        guard let h = FileHandle(forReadingAtPath: path) else { throw StoreError(.ioError, "cannot open \(path): \(String(cString: strerror(errno)))") }
        handle = h
        self.path = path
    }

    private mutating func fill(_ n: Int) throws {
        while buffer.count - position < n && !eof {
            if position > 0 {
                buffer.removeFirst(position)
                position = 0
            }
            guard let data = try handle.read(upToCount: max(4 << 20, n - buffer.count)), !data.isEmpty else {
                eof = true
                break
            }
            buffer += data
        }
    }

    mutating func read(exactly n: Int) throws -> [UInt8]? {
        try fill(n)
        guard buffer.count - position >= n else { return nil }
        defer { position += n }
        return Array(buffer[position..<(position + n)])
    }

    mutating func nextRecord() throws -> [UInt8]? {
        try fill(4)
        if buffer.count == position { return nil }
        guard let header = try read(exactly: 4) else { throw StoreError(.badValue, "\(path): truncated record header") }
        let length = header.reduce(0) { $0 << 8 | Int($1) }
        guard length <= ChainFile.maxRecordBytes else {
            throw StoreError(.badValue, "\(path): a record declares \(length) bytes, more than \(ChainFile.maxRecordBytes)")
        }
        guard let bytes = try read(exactly: length) else { throw StoreError(.badValue, "\(path): truncated record") }
        return bytes
    }
}
