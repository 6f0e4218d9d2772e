import Foundation
import SomaCore

/// A chain file: the genesis and then every checkpoint's certified summary with its stored
/// blocks (LZ4 frames) and part proofs, as length-prefixed BCS records. It is what
/// `devnet export` writes and `import` reads: an ordered local source of checkpoints.
///
/// Layout: `"SOMACHN1"`, then records `u32 BE length ‖ bcs(record)`; the first record is the
/// genesis, every later one a ``ChainRecord``.
enum ChainFile {
    static let magic = Array("SOMACHN1".utf8)
    /// The largest record a reader accepts (checked before allocating).
    static let maxRecordBytes = 512 << 20
}

/// One checkpoint in a chain file.
struct ChainRecord: BCSCodable {
    var certified: CertifiedCheckpointSummary
    var frames: [[UInt8]]
    var proofs: [[Digest]]

    func encode(to writer: inout BCSWriter) {
        writer.write(certified)
        writer.writeLength(frames.count)
        for f in frames { writer.writeBytes(f) }
        writer.writeLength(proofs.count)
        for p in proofs { writer.write(p) }
    }

    init(certified: CertifiedCheckpointSummary, frames: [[UInt8]], proofs: [[Digest]]) {
        self.certified = certified
        self.frames = frames
        self.proofs = proofs
    }

    init(from reader: inout BCSReader) throws(CoreError) {
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
final class ChainFileWriter {
    private let handle: FileHandle
    private var buffer: [UInt8] = []

    init(path: String, genesis: Genesis) throws {
        guard FileManager.default.createFile(atPath: path, contents: nil) else { throw CLIError("cannot create \(path)") }
        guard let h = FileHandle(forWritingAtPath: path) else { throw CLIError("cannot open \(path)") }
        handle = h
        buffer = ChainFile.magic
        append(genesis.bcsBytes)
    }

    private func append(_ record: [UInt8]) {
        withUnsafeBytes(of: UInt32(record.count).bigEndian) { buffer += $0 }
        buffer += record
    }

    func write(_ record: ChainRecord) throws {
        append(BCS.encode(record, capacity: record.frames.reduce(512) { $0 + $1.count + 8 }))
        if buffer.count >= 8 << 20 { try flush() }
    }

    func flush() throws {
        try handle.write(contentsOf: buffer)
        buffer.removeAll(keepingCapacity: true)
    }

    func close() throws {
        try flush()
        try handle.close()
    }
}

/// Reads a chain file in order; every length is checked before anything is allocated.
final class ChainFileReader {
    private let handle: FileHandle
    private let path: String
    private var buffer: [UInt8] = []
    private var position = 0
    private var eof = false
    /// The genesis, from the first record.
    private(set) var genesis: Genesis! = nil

    init(path: String) throws {
        guard let h = FileHandle(forReadingAtPath: path) else { throw CLIError("cannot open \(path)") }
        handle = h
        self.path = path
        guard try read(exactly: 8) == ChainFile.magic else { throw CLIError("\(path) is not a chain file") }
        guard let bytes = try nextRecordBytes() else { throw CLIError("\(path) has no genesis") }
        do {
            genesis = try Genesis(bcsBytes: bytes)
        } catch {
            throw CLIError("\(path): the genesis record does not decode: \(error)")
        }
    }

    deinit { try? handle.close() }

    private func fill(_ n: Int) throws {
        while buffer.count - position < n && !eof {
            if position > 0 && position == buffer.count {
                buffer.removeAll(keepingCapacity: true)
                position = 0
            }
            guard let data = try handle.read(upToCount: max(4 << 20, n)), !data.isEmpty else {
                eof = true
                break
            }
            if position > 0 {
                buffer.removeFirst(position)
                position = 0
            }
            buffer += data
        }
    }

    private func read(exactly n: Int) throws -> [UInt8]? {
        try fill(n)
        guard buffer.count - position >= n else { return nil }
        defer { position += n }
        return Array(buffer[position..<(position + n)])
    }

    private func nextRecordBytes() throws -> [UInt8]? {
        try fill(4)
        if buffer.count - position == 0 { return nil }
        guard let header = try read(exactly: 4) else { throw CLIError("\(path): truncated record header") }
        let length = header.reduce(0) { $0 << 8 | Int($1) }
        guard length <= ChainFile.maxRecordBytes else {
            throw CLIError("\(path): a record declares \(length) bytes, more than \(ChainFile.maxRecordBytes)")
        }
        guard let bytes = try read(exactly: length) else { throw CLIError("\(path): truncated record") }
        return bytes
    }

    /// The next checkpoint record, or `nil` at the end of the file.
    func next() throws -> ChainRecord? {
        guard let bytes = try nextRecordBytes() else { return nil }
        do {
            return try ChainRecord(bcsBytes: bytes)
        } catch {
            throw CLIError("\(path): a checkpoint record does not decode: \(error)")
        }
    }
}
