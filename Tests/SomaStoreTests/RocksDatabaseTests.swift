import Foundation
import SomaCore
import SomaStore
import SomaTestSupport
import Testing

@Suite("RocksDB binding")
struct RocksDatabaseTests {
    static func open(_ dir: TempDir, families: [String] = ["default", "a", "b"]) throws -> RocksDatabase {
        try RocksDatabase(path: dir.path, options: DatabaseOptions(), columnFamilies: families.map { ColumnFamilyOptions(name: $0) })
    }

    @Test("SST files written in key order are ingested into one column family, land at the bottom level and read back; out-of-order keys and empty files are refused")
    func ingestion() throws {
        let dir = TempDir("rocks-ingest")
        defer { dir.cleanup() }
        let db = try Self.open(dir)
        let a = db.columnFamily("a")!, b = db.columnFamily("b")!
        var paths: [String] = []
        for f in 0..<2 {
            let w = try db.sstWriter(a, path: dir.file("in-\(f).sst"))
            for i in 0..<500 { try w.put([UInt8(f), UInt8(i >> 8), UInt8(i & 0xFF)], Array(repeating: UInt8(i & 0xFF), count: 100)) }
            #expect(w.count == 500)
            try w.finish()
            paths.append(w.path)
        }
        try db.ingest(a, files: paths)
        #expect(try db.get(a, [1, 1, 0xF3]) == Array(repeating: 0xF3, count: 100))
        #expect(try db.get(b, [1, 1, 0xF3]) == nil, "only the named column family")
        #expect(try db.scan(a).count == 1_000)
        #expect(try db.property("rocksdb.num-files-at-level6", of: a) == "2", "disjoint files overlap nothing: the bottom level")
        #expect(!FileManager.default.fileExists(atPath: paths[0]), "moved into the database")
        let w = try db.sstWriter(a, path: dir.file("bad.sst"))
        try w.put([5], [1])
        #expect(throws: StoreError.self) { try w.put([4], [1]) }
        let empty = try db.sstWriter(a, path: dir.file("empty.sst"))
        #expect(throws: StoreError.self) { try empty.finish() }
        db.close()
    }

    @Test("put, get, multi-get, delete, and missing keys as nil, per column family")
    func pointOperations() throws {
        let dir = TempDir("rocks")
        defer { dir.cleanup() }
        let db = try Self.open(dir)
        let a = db.columnFamily("a")!, b = db.columnFamily("b")!
        try db.put(a, [1], [10])
        try db.put(b, [1], [20])
        #expect(try db.get(a, [1]) == [10])
        #expect(try db.get(b, [1]) == [20])
        #expect(try db.get(a, [2]) == nil)
        #expect(try db.get(a, []) == nil)
        try db.put(a, [], [])
        #expect(try db.get(a, []) == [])
        let batch = WriteBatch(for: db)
        for i in 0..<100 { batch.put(a, [UInt8(i), 0], Array(repeating: UInt8(i), count: i)) }
        batch.delete(a, [1])
        #expect(batch.count == 101)
        try db.write(batch)
        #expect(try db.get(a, [1]) == nil)
        let values = try db.multiGet(a, (0..<110).map { [UInt8($0), 0] })
        #expect(values.count == 110)
        for i in 0..<110 { #expect(values[i] == (i < 100 ? Array(repeating: UInt8(i), count: i) : nil)) }
        #expect(try db.multiGet(a, []) == [])
        #expect(db.writeTotals.operations >= 101)
        db.close()
        db.close()
        #expect(db.isClosed)
        expectStoreCode(.closed) { _ = try db.get(a, [1]) }
        expectStoreCode(.closed) { try db.put(a, [1], [1]) }
    }

    @Test("iterators and range scans are ordered and bounded; delete-range removes a range")
    func ranges() throws {
        let dir = TempDir("rocks")
        defer { dir.cleanup() }
        let db = try Self.open(dir)
        let a = db.columnFamily("a")!
        let batch = WriteBatch(for: db)
        for i in stride(from: 0, to: 200, by: 2) { batch.put(a, StoreKeys.seq(UInt64(i)), [UInt8(i)]) }
        try db.write(batch)
        let all = try db.scan(a)
        #expect(all.count == 100)
        #expect(all.map(\.key) == all.map(\.key).sorted { $0.lexicographicallyPrecedes($1) })
        let mid = try db.scan(a, from: StoreKeys.seq(51), to: StoreKeys.seq(60))
        #expect(mid.map(\.value) == [[52], [54], [56], [58]])
        #expect(try db.scan(a, from: StoreKeys.seq(100), limit: 3).map(\.value) == [[100], [102], [104]])
        let last = try db.withIterator(a) { it -> [UInt8] in
            it.seekToLast()
            return it.value
        }
        #expect(last == [198])
        let ranged = WriteBatch(for: db)
        ranged.deleteRange(a, from: StoreKeys.seq(0), to: StoreKeys.seq(100))
        try db.write(ranged)
        #expect(try db.scan(a).count == 50)
        try db.flush()
        try db.compact(a)
        #expect(try db.scan(a).count == 50)
        #expect(try db.integerProperty("rocksdb.estimate-num-keys", of: a) != nil)
        #expect(try db.property("rocksdb.no-such-property", of: a) == nil)
        db.close()
    }

    @Test("a snapshot keeps its point-in-time view while writes go on")
    func snapshots() throws {
        let dir = TempDir("rocks")
        defer { dir.cleanup() }
        let db = try Self.open(dir)
        let a = db.columnFamily("a")!
        try db.put(a, [1], [1])
        try db.withSnapshot { snap in
            try db.put(a, [1], [2])
            try db.put(a, [2], [2])
            #expect(try db.get(a, [1], snapshot: snap) == [1])
            #expect(try db.get(a, [2], snapshot: snap) == nil)
            #expect(try db.withIterator(a, snapshot: snap) { it in it.isValid ? it.value : [] } == [1])
        }
        #expect(try db.get(a, [1]) == [2])
        db.close()
    }

    @Test("reopening keeps data and column families not in the configuration; errors carry RocksDB's class")
    func reopenAndErrors() throws {
        let dir = TempDir("rocks")
        defer { dir.cleanup() }
        do {
            let db = try Self.open(dir, families: ["default", "a", "extra"])
            try db.put(db.columnFamily("extra")!, [7], [7])
            db.close()
        }
        let db = try Self.open(dir, families: ["default", "a"])
        #expect(db.columnFamilies.map(\.name).contains("extra"))
        #expect(try db.get(db.columnFamily("extra")!, [7]) == [7])
        db.close()
        // A file where the directory should be: RocksDB refuses, and the error is classified.
        let file = dir.file("not-a-dir")
        #expect(FileManager.default.createFile(atPath: file, contents: Data([1, 2, 3])))
        do {
            _ = try RocksDatabase(path: file, options: DatabaseOptions(), columnFamilies: [ColumnFamilyOptions(name: "default")])
            Issue.record("opened a database on a plain file")
        } catch {
            #expect([.ioError, .invalidArgument, .engine, .corruption].contains(error.code), "\(error)")
        }
    }
}
