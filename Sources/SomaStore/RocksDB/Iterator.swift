import CRocksDB

/// A point-in-time view of a ``RocksDatabase`` for consistent multi-key reads.
/// Lives only inside ``RocksDatabase/withSnapshot(_:)``.
public final class Snapshot {
    let raw: OpaquePointer
    let readOptions: OpaquePointer

    init(raw: OpaquePointer) {
        self.raw = raw
        readOptions = rocksdb_readoptions_create()!
        rocksdb_readoptions_set_snapshot(readOptions, raw)
    }

    deinit { rocksdb_readoptions_destroy(readOptions) }
}

/// A cursor over one column family, in key order. Lives only inside
/// ``RocksDatabase/withIterator(_:from:to:snapshot:_:)``; keys and values are copied out
/// (``key``/``value``) or lent for the current position only (``withKey(_:)``).
public struct RocksIterator: ~Copyable {
    let raw: OpaquePointer

    /// Whether the cursor is on an entry.
    public var isValid: Bool { rocksdb_iter_valid(raw) != 0 }

    /// Moves to the first key ≥ `key`.
    public func seek(_ key: [UInt8]) {
        key.withUnsafeBufferPointer { k in
            k.withMemoryRebound(to: CChar.self) { rocksdb_iter_seek(raw, $0.baseAddress, $0.count) }
        }
    }

    /// Moves to the first key.
    public func seekToFirst() { rocksdb_iter_seek_to_first(raw) }

    /// Moves to the last key.
    public func seekToLast() { rocksdb_iter_seek_to_last(raw) }

    /// Moves to the next key.
    public func next() { rocksdb_iter_next(raw) }

    /// Moves to the previous key.
    public func previous() { rocksdb_iter_prev(raw) }

    /// A copy of the current key.
    public var key: [UInt8] {
        var n = 0
        let p = rocksdb_iter_key(raw, &n)
        return copyBytes(p, n)
    }

    /// A copy of the current value.
    public var value: [UInt8] {
        var n = 0
        let p = rocksdb_iter_value(raw, &n)
        return copyBytes(p, n)
    }

    /// Lends the current key's bytes, valid only inside `body`.
    public func withKey<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        var n = 0
        let p = rocksdb_iter_key(raw, &n)
        return try body(UnsafeRawBufferPointer(start: p, count: n))
    }

    /// Lends the current value's bytes, valid only inside `body`.
    public func withValue<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        var n = 0
        let p = rocksdb_iter_value(raw, &n)
        return try body(UnsafeRawBufferPointer(start: p, count: n))
    }
}

extension RocksDatabase {
    /// What each file of a scan (`fillCache: false`) reads ahead.
    static let scanReadahead = 2 << 20

    /// Runs `body` with a cursor over `cf`, bounded to `[from, to)` when given. A scan that
    /// reads much once passes `fillCache: false`, so that the blocks it reads do not push what
    /// the writer reads again (filters, indexes, hot blocks) out of the block cache.
    /// - Throws: the iterator's own error (corruption, I/O) after `body`, or what `body` throws.
    public func withIterator<R>(
        _ cf: ColumnFamily, from: [UInt8]? = nil, to: [UInt8]? = nil, snapshot: Snapshot? = nil, fillCache: Bool = true,
        _ body: (borrowing RocksIterator) throws -> R
    ) throws -> R {
        let db = try handle()
        let h = try cfHandle(cf)
        let ro = rocksdb_readoptions_create()!
        defer { rocksdb_readoptions_destroy(ro) }
        if let snapshot { rocksdb_readoptions_set_snapshot(ro, snapshot.raw) }
        if !fillCache {
            // A scan reading much once: also larger reads (each file of the merge reads ahead).
            rocksdb_readoptions_set_fill_cache(ro, 0)
            rocksdb_readoptions_set_readahead_size(ro, Self.scanReadahead)
        }
        // The upper bound's bytes must outlive the iterator.
        let upper = to.map { bytes -> UnsafeMutableBufferPointer<CChar> in
            let b = UnsafeMutableBufferPointer<CChar>.allocate(capacity: max(bytes.count, 1))
            for (i, x) in bytes.enumerated() { b[i] = CChar(bitPattern: x) }
            return b
        }
        defer { upper?.deallocate() }
        if let upper, let to { rocksdb_readoptions_set_iterate_upper_bound(ro, upper.baseAddress, to.count) }
        let it = rocksdb_create_iterator_cf(db, ro, h)!
        defer { rocksdb_iter_destroy(it) }
        let cursor = RocksIterator(raw: it)
        if let from { cursor.seek(from) } else { cursor.seekToFirst() }
        let result = try body(cursor)
        try rocksCall("iterate \(cf)") { err in rocksdb_iter_get_error(it, err) }
        return result
    }

    /// The entries of `cf` in `[from, to)`, at most `limit` of them, in key order.
    public func scan(_ cf: ColumnFamily, from: [UInt8]? = nil, to: [UInt8]? = nil, limit: Int = .max) throws -> [(key: [UInt8], value: [UInt8])] {
        try withIterator(cf, from: from, to: to) { it in
            var out: [(key: [UInt8], value: [UInt8])] = []
            while it.isValid && out.count < limit {
                out.append((it.key, it.value))
                it.next()
            }
            return out
        }
    }

    /// Runs `body` with a consistent point-in-time view.
    public func withSnapshot<R>(_ body: (Snapshot) throws -> R) throws -> R {
        let db = try handle()
        let raw = rocksdb_create_snapshot(db)!
        defer { rocksdb_release_snapshot(db, raw) }
        return try body(Snapshot(raw: raw))
    }
}
