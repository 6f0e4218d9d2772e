import CRocksDB
import Synchronization
#if canImport(Glibc)
import Glibc
#endif
import SomaCore

/// Calls a RocksDB C function that reports failure through `char **errptr`, frees the message
/// and throws it as a classified ``StoreError``.
@inline(__always)
func rocksCall<T>(_ operation: @autoclosure () -> String, _ body: (UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> T) throws(StoreError) -> T {
    var err: UnsafeMutablePointer<CChar>? = nil
    let result = body(&err)
    if let err {
        let message = String(cString: err)
        rocksdb_free(err)
        throw StoreError.rocks(message, operation: operation())
    }
    return result
}

/// Copies `count` bytes of C memory into an array.
@inline(__always)
func copyBytes(_ pointer: UnsafePointer<CChar>?, _ count: Int) -> [UInt8] {
    guard let pointer, count > 0 else { return [] }
    return [UInt8](UnsafeRawBufferPointer(start: pointer, count: count))
}

/// A column family of an open ``RocksDatabase``, by position.
public struct ColumnFamily: Hashable, Sendable, CustomStringConvertible {
    /// Its name.
    public let name: String
    let index: Int

    /// The name.
    public var description: String { name }
}

/// An open RocksDB database with its column families.
///
/// Owns the `rocksdb_t` handle and the column-family handles; frees them in ``close()``
/// (idempotent) or `deinit`. Calls block: run them on the store's ``BlockingPool``, never on an
/// event loop or the cooperative pool.
///
/// Thread-safety: `rocksdb_t` is safe for concurrent use by many threads, so this class is
/// `@unchecked Sendable`. Only `close()` mutates the handles, and it must not race with other
/// calls: owners stop every user first (the node closes the store last).
public final class RocksDatabase: @unchecked Sendable {
    private var db: OpaquePointer?
    private var handles: [OpaquePointer?]
    private let options: OpaquePointer
    let cfOptions: [OpaquePointer]
    private let tableOptions: [OpaquePointer]
    private let caches: [OpaquePointer]
    let writeOptions: OpaquePointer
    let syncWriteOptions: OpaquePointer
    let readOptions: OpaquePointer
    /// The path of the database directory.
    public let path: String
    /// The column families, in the order they were configured.
    public let columnFamilies: [ColumnFamily]
    private let writtenOperations = Atomic<Int>(0)
    private let writtenBytes = Atomic<Int>(0)

    /// Operations and key+value bytes written through ``write(_:sync:)`` since opening.
    public var writeTotals: (operations: Int, bytes: Int) {
        (writtenOperations.load(ordering: .relaxed), writtenBytes.load(ordering: .relaxed))
    }

    /// Opens (creating if missing) the database at `path` with the given column families.
    /// Column families that exist on disk but are not listed are opened with defaults and kept.
    /// - Throws: ``StoreError`` classified from RocksDB's message.
    public init(path: String, options config: DatabaseOptions, columnFamilies configs: [ColumnFamilyOptions]) throws(StoreError) {
        precondition(!configs.isEmpty && configs[0].name == "default", "the first column family is \"default\"")
        self.path = path
        let options = rocksdb_options_create()!
        rocksdb_options_set_create_if_missing(options, config.readOnly ? 0 : 1)
        rocksdb_options_set_create_missing_column_families(options, config.readOnly ? 0 : 1)
        rocksdb_options_increase_parallelism(options, Int32(config.backgroundThreads))
        rocksdb_options_set_max_background_jobs(options, Int32(config.backgroundThreads))
        rocksdb_options_set_max_open_files(options, Int32(config.maxOpenFiles))
        rocksdb_options_set_bytes_per_sync(options, 1 << 20)
        if config.maxTotalWALSize > 0 { rocksdb_options_set_max_total_wal_size(options, config.maxTotalWALSize) }
        // Flushes and compactions write files read back only by later compactions and lookups
        // (which have the block cache): direct, where the file system allows, they skip the
        // page cache, whose fresh pages cost the kernel more than the write itself here.
        if !config.readOnly && DirectIO.supported(in: path) {
            rocksdb_options_set_use_direct_io_for_flush_and_compaction(options, 1)
            rocksdb_options_compaction_readahead_size(options, 2 << 20)
        }
        self.options = options

        // Existing column families not in the configuration are opened too (with defaults).
        var names = configs.map(\.name)
        var listedCount = 0
        var listErr: UnsafeMutablePointer<CChar>? = nil
        if let listed = rocksdb_list_column_families(options, path, &listedCount, &listErr) {
            for i in 0..<listedCount {
                if let c = listed[i] {
                    let n = String(cString: c)
                    if !names.contains(n) { names.append(n) }
                }
            }
            rocksdb_list_column_families_destroy(listed, listedCount)
        }
        if let listErr { rocksdb_free(listErr) }  // A new database has no list yet.

        var cfOpts: [OpaquePointer] = []
        var tables: [OpaquePointer] = []
        var caches: [OpaquePointer] = []
        // Few shards: a shard holds 1/2^bits of the cache, and a block larger than its shard
        // (the full filter of a large SST file: 1.25 MB per million keys) is never kept, so
        // with the default 64 shards of 1 MB every lookup read such a filter from the file
        // again (a `verify` of the bench store ran for over 10 minutes on it).
        let lru = rocksdb_lru_cache_options_create()!
        defer { rocksdb_lru_cache_options_destroy(lru) }
        rocksdb_lru_cache_options_set_capacity(lru, config.blockCacheBytes)
        rocksdb_lru_cache_options_set_num_shard_bits(lru, 2)
        let sharedCache = rocksdb_cache_create_lru_opts(lru)!
        caches.append(sharedCache)
        for name in names {
            let c = configs.first { $0.name == name } ?? ColumnFamilyOptions(name: name)
            let o = rocksdb_options_create_copy(options)!
            let t = rocksdb_block_based_options_create()!
            rocksdb_block_based_options_set_block_cache(t, sharedCache)
            rocksdb_block_based_options_set_block_size(t, c.blockSize)
            rocksdb_block_based_options_set_cache_index_and_filter_blocks(t, 1)
            if c.bloomBitsPerKey > 0 {
                rocksdb_block_based_options_set_filter_policy(t, rocksdb_filterpolicy_create_bloom_full(Double(c.bloomBitsPerKey)))
            }
            rocksdb_options_set_block_based_table_factory(o, t)
            rocksdb_options_set_compression(o, c.compression.rawValue)
            rocksdb_options_set_write_buffer_size(o, c.writeBufferBytes)
            rocksdb_options_set_target_file_size_base(o, UInt64(c.targetFileBytes))
            rocksdb_options_set_max_bytes_for_level_base(o, UInt64(c.targetFileBytes) * 8)
            if c.universalCompaction {
                rocksdb_options_set_compaction_style(o, Int32(rocksdb_universal_compaction))
            }
            if let runs = c.compactionTriggerFiles {
                // Writes slow down and stop only well past the trigger (ingested files count).
                rocksdb_options_set_level0_file_num_compaction_trigger(o, Int32(runs))
                rocksdb_options_set_level0_slowdown_writes_trigger(o, Int32(runs * 8))
                rocksdb_options_set_level0_stop_writes_trigger(o, Int32(runs * 16))
            }
            if let blob = c.blobMinBytes {
                rocksdb_options_set_enable_blob_files(o, 1)
                rocksdb_options_set_min_blob_size(o, UInt64(blob))
                rocksdb_options_set_blob_compression_type(o, c.compression.rawValue)
                rocksdb_options_set_enable_blob_gc(o, 1)
            }
            cfOpts.append(o)
            tables.append(t)
        }
        self.cfOptions = cfOpts
        self.tableOptions = tables
        self.caches = caches

        var cNames = names.map { strdup($0) }
        defer { cNames.forEach { free($0) } }
        var handles = [OpaquePointer?](repeating: nil, count: names.count)
        var err: UnsafeMutablePointer<CChar>? = nil
        let db: OpaquePointer? = cNames.withUnsafeMutableBufferPointer { namePtrs in
            let constNames = UnsafeMutablePointer<UnsafePointer<CChar>?>.allocate(capacity: names.count)
            defer { constNames.deallocate() }
            for i in 0..<names.count { constNames[i] = UnsafePointer(namePtrs[i]) }
            let optPtrs = UnsafeMutablePointer<OpaquePointer?>.allocate(capacity: names.count)
            defer { optPtrs.deallocate() }
            for i in 0..<names.count { optPtrs[i] = cfOpts[i] }
            return handles.withUnsafeMutableBufferPointer { h in
                if config.readOnly {
                    return rocksdb_open_for_read_only_column_families(
                        options, path, Int32(names.count), constNames, optPtrs, h.baseAddress, 0, &err)
                }
                return rocksdb_open_column_families(options, path, Int32(names.count), constNames, optPtrs, h.baseAddress, &err)
            }
        }
        writeOptions = rocksdb_writeoptions_create()!
        syncWriteOptions = rocksdb_writeoptions_create()!
        rocksdb_writeoptions_set_sync(syncWriteOptions, 1)
        readOptions = rocksdb_readoptions_create()!
        if let err {
            let message = String(cString: err)
            rocksdb_free(err)
            self.db = nil
            self.handles = []
            self.columnFamilies = []
            if message.contains("/LOCK") && (message.contains("Resource temporarily unavailable") || message.contains("lock hold")) {
                throw StoreError(.busy, "the store at \(path) is in use by another process (another soma-node on this data directory?): stop it first; `soma-node inspect` reads a store in use")
            }
            throw StoreError.rocks(message, operation: "open \(path)")
        }
        self.db = db
        self.handles = handles
        self.columnFamilies = names.enumerated().map { ColumnFamily(name: $1, index: $0) }
    }

    deinit {
        close()
        rocksdb_writeoptions_destroy(writeOptions)
        rocksdb_writeoptions_destroy(syncWriteOptions)
        rocksdb_readoptions_destroy(readOptions)
        for o in cfOptions { rocksdb_options_destroy(o) }
        for t in tableOptions { rocksdb_block_based_options_destroy(t) }
        for c in caches { rocksdb_cache_destroy(c) }
        rocksdb_options_destroy(options)
    }

    /// Closes the database (idempotent). Every later call throws ``StoreError/Code/closed``.
    public func close() {
        guard let db else { return }
        for h in handles { if let h { rocksdb_column_family_handle_destroy(h) } }
        handles = []
        rocksdb_close(db)
        self.db = nil
    }

    /// Whether ``close()`` has been called.
    public var isClosed: Bool { db == nil }

    /// The column family named `name`, if the database has it.
    public func columnFamily(_ name: String) -> ColumnFamily? {
        columnFamilies.first { $0.name == name }
    }

    @inline(__always)
    func handle() throws(StoreError) -> OpaquePointer {
        guard let db else { throw StoreError(.closed, "database \(path) is closed") }
        return db
    }

    /// The column-family handles, for write batches (valid while the database is open).
    var rawHandles: [OpaquePointer?] { handles }

    @inline(__always)
    func cfHandle(_ cf: ColumnFamily) throws(StoreError) -> OpaquePointer {
        guard db != nil, cf.index < handles.count, let h = handles[cf.index] else {
            throw StoreError(.closed, "database \(path) is closed")
        }
        return h
    }

    /// The value of `key` in `cf`, or `nil` if absent.
    public func get(_ cf: ColumnFamily, _ key: [UInt8], snapshot: Snapshot? = nil) throws(StoreError) -> [UInt8]? {
        let db = try handle()
        let h = try cfHandle(cf)
        let ro = snapshot?.readOptions ?? readOptions
        var length = 0
        let value = try key.withUnsafeBufferPointer { k throws(StoreError) in
            try rocksCall("get \(cf)") { err in
                k.withMemoryRebound(to: CChar.self) { kc in
                    rocksdb_get_cf(db, ro, h, kc.baseAddress, kc.count, &length, err)
                }
            }
        }
        guard let value else { return nil }
        defer { rocksdb_free(value) }
        return copyBytes(value, length)
    }

    /// Reads `key` without RocksDB's intermediate copy (a pinned slice) and lends its bytes to
    /// `body`, valid only during the call; `nil` if absent.
    func withValue<R>(_ cf: ColumnFamily, _ key: [UInt8], _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R? {
        let db = try handle()
        let h = try cfHandle(cf)
        let pinned = try key.withUnsafeBufferPointer { k throws(StoreError) in
            try rocksCall("get \(cf)") { err in
                k.withMemoryRebound(to: CChar.self) { kc in rocksdb_get_pinned_cf(db, readOptions, h, kc.baseAddress, kc.count, err) }
            }
        }
        guard let pinned else { return nil }
        defer { rocksdb_pinnableslice_destroy(pinned) }
        var length = 0
        let value = rocksdb_pinnableslice_value(pinned, &length)
        return try body(UnsafeRawBufferPointer(start: value, count: length))
    }

    /// The values of `keys` in `cf`, `nil` for each absent key; one call for all.
    public func multiGet(_ cf: ColumnFamily, _ keys: [[UInt8]]) throws(StoreError) -> [[UInt8]?] {
        guard !keys.isEmpty else { return [] }
        let db = try handle()
        let h = try cfHandle(cf)
        let n = keys.count
        let keyPtrs = UnsafeMutablePointer<UnsafePointer<CChar>?>.allocate(capacity: n)
        let keySizes = UnsafeMutablePointer<Int>.allocate(capacity: n)
        let cfs = UnsafeMutablePointer<OpaquePointer?>.allocate(capacity: n)
        let values = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: n)
        let valueSizes = UnsafeMutablePointer<Int>.allocate(capacity: n)
        let errs = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: n)
        defer {
            keyPtrs.deallocate(); keySizes.deallocate(); cfs.deallocate()
            values.deallocate(); valueSizes.deallocate(); errs.deallocate()
        }
        // Keep the key storage alive for the call: one contiguous copy.
        var flat: [UInt8] = []
        flat.reserveCapacity(keys.reduce(0) { $0 + $1.count })
        var offsets: [Int] = []
        for k in keys {
            offsets.append(flat.count)
            flat += k
        }
        return try flat.withUnsafeBufferPointer { base throws(StoreError) in
            let raw = UnsafeRawPointer(base.baseAddress ?? UnsafePointer(bitPattern: 1)!)
            for i in 0..<n {
                keyPtrs[i] = raw.advanced(by: offsets[i]).assumingMemoryBound(to: CChar.self)
                keySizes[i] = keys[i].count
                cfs[i] = h
                values[i] = nil
                errs[i] = nil
            }
            rocksdb_multi_get_cf(db, readOptions, cfs, n, keyPtrs, keySizes, values, valueSizes, errs)
            var out: [[UInt8]?] = []
            out.reserveCapacity(n)
            var firstError: StoreError? = nil
            for i in 0..<n {
                if let e = errs[i] {
                    if firstError == nil { firstError = StoreError.rocks(String(cString: e), operation: "multiGet \(cf)") }
                    rocksdb_free(e)
                }
                if let v = values[i] {
                    out.append(copyBytes(v, valueSizes[i]))
                    rocksdb_free(v)
                } else {
                    out.append(nil)
                }
            }
            if let firstError { throw firstError }
            return out
        }
    }

    /// Writes one key.
    public func put(_ cf: ColumnFamily, _ key: [UInt8], _ value: [UInt8], sync: Bool = false) throws(StoreError) {
        let batch = WriteBatch(for: self)
        batch.put(cf, key, value)
        try write(batch, sync: sync)
    }

    /// Applies a write batch atomically.
    /// - Parameter sync: wait for the write-ahead log to reach the disk (survives power loss,
    ///   not only a process crash).
    public func write(_ batch: WriteBatch, sync: Bool = false) throws(StoreError) {
        let db = try handle()
        let wo = sync ? syncWriteOptions : writeOptions
        guard batch.database === self else { preconditionFailure("a write batch belongs to the database that made it") }
        guard !batch.detached else { throw StoreError(.closed, "database \(path) was closed while the batch was built") }
        try rocksCall("write batch of \(batch.count)") { err in rocksdb_write(db, wo, batch.raw, err) }
        writtenOperations.add(batch.count, ordering: .relaxed)
        writtenBytes.add(batch.byteCount, ordering: .relaxed)
    }

    /// Flushes the memtables of `cf` (or of every column family) to SST files; without `wait`,
    /// the memtable is only switched for an empty one and written in the background.
    public func flush(_ cf: ColumnFamily? = nil, wait: Bool = true) throws(StoreError) {
        let db = try handle()
        let fo = rocksdb_flushoptions_create()!
        defer { rocksdb_flushoptions_destroy(fo) }
        rocksdb_flushoptions_set_wait(fo, wait ? 1 : 0)
        for family in cf.map({ [$0] }) ?? columnFamilies {
            let h = try cfHandle(family)
            try rocksCall("flush \(family)") { err in rocksdb_flush_cf(db, fo, h, err) }
        }
    }

    /// Compacts the key range `[from, to)` of `cf` (`nil` bounds: open ends).
    public func compact(_ cf: ColumnFamily, from: [UInt8]? = nil, to: [UInt8]? = nil) throws(StoreError) {
        let db = try handle()
        let h = try cfHandle(cf)
        withOptionalBytes(from) { f, fl in
            withOptionalBytes(to) { t, tl in
                rocksdb_compact_range_cf(db, h, f, fl, t, tl)
            }
        }
    }

    /// A RocksDB property of `cf` (e.g. `rocksdb.estimate-num-keys`), or `nil` if unknown.
    public func property(_ name: String, of cf: ColumnFamily) throws(StoreError) -> String? {
        let db = try handle()
        let h = try cfHandle(cf)
        guard let value = rocksdb_property_value_cf(db, h, name) else { return nil }
        defer { rocksdb_free(value) }
        return String(cString: value)
    }

    /// An integer RocksDB property of `cf`, or `nil`.
    public func integerProperty(_ name: String, of cf: ColumnFamily) throws(StoreError) -> UInt64? {
        try property(name, of: cf).flatMap { UInt64($0) }
    }
}

private func withOptionalBytes<R>(_ bytes: [UInt8]?, _ body: (UnsafePointer<CChar>?, Int) -> R) -> R {
    guard let bytes else { return body(nil, 0) }
    return bytes.withUnsafeBufferPointer { b in
        b.withMemoryRebound(to: CChar.self) { body($0.baseAddress, $0.count) }
    }
}

/// Database-wide options.
public struct DatabaseOptions: Sendable {
    /// Background flush and compaction threads.
    public var backgroundThreads = 2
    /// Open file limit (-1: unlimited).
    public var maxOpenFiles = 512
    /// The shared LRU block cache, in bytes.
    public var blockCacheBytes = 64 << 20
    /// Write-ahead-log size that forces a flush (0: RocksDB's default).
    public var maxTotalWALSize: UInt64 = 256 << 20
    /// Open read-only (beside a process that writes it: RocksDB takes no lock then, and reads
    /// what was written up to the open, write-ahead log included). Writes fail.
    public var readOnly = false

    /// The defaults.
    public init() {}
}

/// Compression of a column family's SST files.
public enum Compression: Int32, Sendable {
    /// None (for values that are already compressed, like LZ4 blocks).
    case none = 0
    /// LZ4.
    case lz4 = 4
}

/// Options of one column family.
public struct ColumnFamilyOptions: Sendable {
    /// Its name.
    public var name: String
    /// SST compression.
    public var compression: Compression = .lz4
    /// Bloom filter bits per key (0: no filter).
    public var bloomBitsPerKey = 10
    /// SST block size.
    public var blockSize = 16 << 10
    /// Memtable size.
    public var writeBufferBytes = 64 << 20
    /// Target SST file size.
    public var targetFileBytes = 64 << 20
    /// Universal compaction (sorted runs merged by size) instead of levels: for a family whose
    /// keys are random and that is loaded by ingesting files that each span the whole key
    /// space, where leveled compaction rewrites all of level 1 for every few files.
    public var universalCompaction = false
    /// Files (sorted runs) at level 0 that start a compaction; `nil`: RocksDB's 4. Higher means
    /// fewer, larger merges (each rewrites what it merges) and more files per point read.
    public var compactionTriggerFiles: Int? = nil
    /// Values at least this large go to blob files (BlobDB); `nil`: off.
    public var blobMinBytes: Int? = nil

    /// Options with defaults for `name`.
    public init(name: String) {
        self.name = name
    }
}
