import CRocksDB

/// A set of writes applied atomically by ``RocksDatabase/write(_:sync:)``.
///
/// Owns its `rocksdb_writebatch_t` (freed in `deinit`). Not Sendable: build it on one thread.
/// It belongs to the database that made it (it holds that database's column-family handles).
public final class WriteBatch {
    let raw: OpaquePointer
    let database: RocksDatabase
    private let handles: [OpaquePointer?]
    /// Bytes of keys and values added so far.
    public private(set) var byteCount = 0
    /// Set when an operation named a column family the database no longer has open (it was
    /// closed); writing such a batch throws ``StoreError/Code/closed``.
    private(set) var detached = false

    /// An empty batch for `database`.
    public init(for database: RocksDatabase) {
        raw = rocksdb_writebatch_create()!
        self.database = database
        handles = database.rawHandles
    }

    deinit { rocksdb_writebatch_destroy(raw) }

    /// The number of operations.
    public var count: Int { Int(rocksdb_writebatch_count(raw)) }

    private func handle(_ cf: ColumnFamily) -> OpaquePointer? {
        guard cf.index < handles.count, let h = handles[cf.index] else {
            detached = true
            return nil
        }
        return h
    }

    /// Sets `key` to `value` in `cf`.
    public func put(_ cf: ColumnFamily, _ key: [UInt8], _ value: [UInt8]) {
        guard let h = handle(cf) else { return }
        key.withUnsafeBufferPointer { k in
            value.withUnsafeBufferPointer { v in
                k.withMemoryRebound(to: CChar.self) { kc in
                    v.withMemoryRebound(to: CChar.self) { vc in
                        rocksdb_writebatch_put_cf(raw, h, kc.baseAddress, kc.count, vc.baseAddress, vc.count)
                    }
                }
            }
        }
        byteCount += key.count + value.count
    }

    /// Removes `key` from `cf`.
    public func delete(_ cf: ColumnFamily, _ key: [UInt8]) {
        guard let h = handle(cf) else { return }
        key.withUnsafeBufferPointer { k in
            k.withMemoryRebound(to: CChar.self) { kc in
                rocksdb_writebatch_delete_cf(raw, h, kc.baseAddress, kc.count)
            }
        }
        byteCount += key.count
    }

    /// Removes every key in `[from, to)` of `cf`.
    public func deleteRange(_ cf: ColumnFamily, from: [UInt8], to: [UInt8]) {
        guard let h = handle(cf) else { return }
        from.withUnsafeBufferPointer { f in
            to.withUnsafeBufferPointer { t in
                f.withMemoryRebound(to: CChar.self) { fc in
                    t.withMemoryRebound(to: CChar.self) { tc in
                        rocksdb_writebatch_delete_range_cf(raw, h, fc.baseAddress, fc.count, tc.baseAddress, tc.count)
                    }
                }
            }
        }
    }

    /// Removes every operation.
    public func clear() {
        rocksdb_writebatch_clear(raw)
        byteCount = 0
    }
}
