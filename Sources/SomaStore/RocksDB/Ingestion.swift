import CRocksDB
import Foundation

/// Writes one SST file of a column family, with that column family's options, from keys in
/// strictly increasing order, for ``RocksDatabase/ingest(_:files:)``.
///
/// Owns its `rocksdb_sstfilewriter_t` (freed in `deinit`). Not Sendable: use it on one thread.
public final class SSTFileWriter {
    private let raw: OpaquePointer
    private let env: OpaquePointer
    /// The file being written.
    public let path: String
    /// Entries added so far.
    public private(set) var count = 0
    private var finished = false

    init(options: OpaquePointer, path: String) throws(StoreError) {
        env = rocksdb_envoptions_create()!
        raw = rocksdb_sstfilewriter_create(env, options)!
        self.path = path
        do {
            try rocksCall("open sst \(path)") { err in rocksdb_sstfilewriter_open(raw, path, err) }
        } catch {
            rocksdb_sstfilewriter_destroy(raw)
            rocksdb_envoptions_destroy(env)
            throw error
        }
    }

    deinit {
        rocksdb_sstfilewriter_destroy(raw)
        rocksdb_envoptions_destroy(env)
    }

    /// Adds `key` → `value`; keys must come in strictly increasing order.
    public func put(_ key: [UInt8], _ value: [UInt8]) throws(StoreError) {
        try key.withUnsafeBufferPointer { (k) throws(StoreError) in
            try value.withUnsafeBufferPointer { (v) throws(StoreError) in
                try k.withMemoryRebound(to: CChar.self) { (kc) throws(StoreError) in
                    try v.withMemoryRebound(to: CChar.self) { (vc) throws(StoreError) in
                        try rocksCall("sst put") { err in rocksdb_sstfilewriter_put(raw, kc.baseAddress, kc.count, vc.baseAddress, vc.count, err) }
                    }
                }
            }
        }
        count += 1
    }

    /// Adds `key` → `value` from raw bytes (keys in strictly increasing order).
    func put(_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) throws(StoreError) {
        let k = key.bindMemory(to: CChar.self), v = value.bindMemory(to: CChar.self)
        try rocksCall("sst put") { err in rocksdb_sstfilewriter_put(raw, k.baseAddress, k.count, v.baseAddress, v.count, err) }
        count += 1
    }

    /// Completes the file (at least one entry must have been added).
    /// Adds a deletion of `key` (keys still strictly increasing).
    public func delete(_ key: [UInt8]) throws(StoreError) {
        try key.withUnsafeBufferPointer { (k) throws(StoreError) in
            try k.withMemoryRebound(to: CChar.self) { (kc) throws(StoreError) in
                try rocksCall("sst delete") { err in rocksdb_sstfilewriter_delete(raw, kc.baseAddress, kc.count, err) }
            }
        }
        count += 1
    }

    public func finish() throws(StoreError) {
        guard !finished else { return }
        try rocksCall("finish sst \(path)") { err in rocksdb_sstfilewriter_finish(raw, err) }
        finished = true
    }
}

extension RocksDatabase {
    /// A writer of an SST file at `path` for `cf`, with `cf`'s options (compression, blocks).
    public func sstWriter(_ cf: ColumnFamily, path: String) throws(StoreError) -> SSTFileWriter {
        guard cf.index < cfOptions.count else { throw StoreError(.invalidArgument, "no column family \(cf)") }
        return try SSTFileWriter(options: cfOptions[cf.index], path: path)
    }

    /// Ingests finished SST files into `cf`, moving them into the database: no write-ahead
    /// log, memtable or flush. Atomic for the column family; the files must not overlap each
    /// other. Files that overlap nothing already stored land at the bottom level.
    public func ingest(_ cf: ColumnFamily, files: [String]) throws(StoreError) {
        guard !files.isEmpty else { return }
        let db = try handle()
        let h = try cfHandle(cf)
        let options = rocksdb_ingestexternalfileoptions_create()!
        defer { rocksdb_ingestexternalfileoptions_destroy(options) }
        rocksdb_ingestexternalfileoptions_set_move_files(options, 1)
        var names = files.map { strdup($0) }
        defer { names.forEach { free($0) } }
        try names.withUnsafeMutableBufferPointer { (p) throws(StoreError) in
            let constNames = UnsafeMutablePointer<UnsafePointer<CChar>?>.allocate(capacity: p.count)
            defer { constNames.deallocate() }
            for i in 0..<p.count { constNames[i] = UnsafePointer(p[i]) }
            try rocksCall("ingest \(files.count) files into \(cf)") { err in
                rocksdb_ingest_external_file_cf(db, h, constNames, files.count, options, err)
            }
        }
    }
}
