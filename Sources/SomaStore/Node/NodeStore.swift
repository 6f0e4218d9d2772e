public import SomaCore
public import NIOCore
import Foundation
import Synchronization

/// How much history a store keeps.
public enum StoreMode: String, Sendable, CaseIterable {
    /// Keep every checkpoint and every object version since genesis.
    case archive
    /// Keep the last `retainEpochs` epochs of blocks and object versions.
    case pruned
}

/// Configuration of a ``NodeStore``; every field has a default.
public struct StoreConfiguration: Sendable {
    /// Archive or pruned.
    public var mode: StoreMode = .archive
    /// Open an existing store in the mode it was created with, whatever `mode` says (`mode`
    /// then only chooses for a new store). Off: a store of the other mode is refused.
    public var adoptStoredMode = false
    /// Epochs of blocks and object versions a pruned store keeps (at least 1).
    public var retainEpochs: UInt64 = 2
    /// Epoch snapshots kept (0: build none).
    public var retainSnapshots: UInt64 = 2
    /// Objects per snapshot chunk (a power of two).
    public var snapshotChunkSize = 4_096
    /// Chunks of a snapshot taken from a source during a catch-up written and ingested together,
    /// as one SST file (``NodeStore/adoptSnapshotChunk(_:epoch:)``), and the most bytes of
    /// frames such a group holds in memory.
    public var adoptionGroupChunks = 16
    public var adoptionGroupBytes = 32 << 20
    /// Wait for the write-ahead log to reach the disk on every commit.
    public var syncWrites = false
    /// A bulk catch-up writes back at least this many live entries as a sorted file ingested
    /// into `liveObjects` (fewer go through the write batch).
    public var liveFileMinimum = 4_096
    /// RocksDB-wide options.
    public var database = DatabaseOptions()
    /// Threads of the blocking pool that runs RocksDB calls.
    public var blockingThreads = 4
    /// The largest decompressed block the store accepts (bytes).
    public var maxBlockBytes = 256 << 20
    /// The history segments' limits (DESIGN §6.1); `readOnly` follows `database.readOnly`.
    public var segments = HistorySegments.Configuration()
    /// Where the history segments live; `nil`: `segments/` inside the store's directory.
    public var segmentsDirectory: String? = nil

    /// The defaults.
    public init() {}
}

/// The node's store (DESIGN §6): certified summaries, transactions, object versions, the live
/// object set, committees, epochs, snapshots and watermarks in one RocksDB database; the LZ4
/// blocks and part proofs in append-only ``HistorySegments`` beside it (DESIGN §6.1).
///
/// Every public method is `async` and runs its RocksDB calls on the store's ``BlockingPool``.
/// Writes (commit, execute, prune, snapshots) are serialised by a writer lock; each
/// checkpoint is committed in one write batch with the watermarks it advances, so a crash at
/// any instant leaves a store that resumes from its watermarks.
///
/// Watermarks: `highestVerified` (summaries stored) ≥ `highestSynced` (blocks, transactions,
/// object versions stored) ≥ `highestExecuted` (live object set updated, state roots checked);
/// `lowestAvailable` is the first checkpoint whose blocks are still held.
public final class NodeStore: Sendable {
    /// The database (for tools and tests that read column families directly).
    public let database: RocksDatabase
    /// The history segments: every held checkpoint's blocks, and part proofs.
    public let segments: HistorySegments
    /// The checkpoints whose blocks readers see: `lowestAvailable...highestSynced` as last
    /// committed (frames appended ahead of their batch, or left behind by a pruning that deletes
    /// whole segments, stay invisible).
    let held = Mutex(HeldRange())
    /// The whole live object set in memory while a bulk catch-up executes (DESIGN §6.2), ahead
    /// of `liveObjects` by the changes not yet written back; `nil` otherwise. Changed under the
    /// writer lock only.
    let liveCache = Mutex<LiveCache?>(nil)

    struct HeldRange {
        var lowest: UInt64 = 0
        var synced: UInt64? = nil
        func contains(_ seq: UInt64) -> Bool { seq >= lowest && synced.map { seq <= $0 } ?? false }
    }
    let pool: BlockingPool
    let cf: Families
    /// The configuration the store was opened with.
    public let configuration: StoreConfiguration
    let writer = Mutex(())
    /// Calls running on the pool now, and whether ``close()`` was called: a call after (or
    /// racing with) `close()` throws ``StoreError/Code/closed`` instead of touching a freed handle.
    let usage = Mutex(Usage())

    struct Usage {
        var closed = false
        var active = 0
    }

    /// The newest epoch end known to be verified elsewhere (the epoch chain a sync fetched first).
    let knownEpochEnd = Mutex<UInt64?>(nil)
    /// The snapshot build running beside commits, if any (at most one; see
    /// ``startSnapshotBuild(epoch:record:counts:)``).
    let snapshotBuild = Mutex<ThreadJob<Void>?>(nil)
    /// The snapshot taken from a source during a catch-up, if any (``beginSnapshotAdoption(_:)``).
    let adoption = Mutex<SnapshotAdoption?>(nil)
    /// The epoch of the last adoption kept (``lastAdoptedSnapshot``).
    let adopted = Mutex<UInt64?>(nil)

    /// Tells the store that the end of `epoch` is verified (by the epoch chain), so that a
    /// catch-up does not build snapshots of epochs it is catching up past.
    public func noteVerifiedEpochEnd(_ epoch: UInt64) {
        knownEpochEnd.withLock { $0 = max($0 ?? 0, epoch) }
    }

    /// The live object count that the newest verified epoch end certifies (the epoch chain a
    /// sync fetched first): the size a catch-up's live set held in memory grows to.
    let knownLiveObjectCount = Mutex<UInt64?>(nil)

    /// Tells the store how many live objects a verified epoch end ahead certifies, so that a
    /// catch-up sizes its in-memory live set once (``loadLiveCache(executed:)``) instead of
    /// rehashing it at every doubling on the way.
    public func noteVerifiedLiveObjectCount(_ count: UInt64) {
        knownLiveObjectCount.withLock { $0 = count }
    }

    /// The column families of DESIGN §6, plus `partProofs` and `meta`.
    public static let columnFamilyNames = [
        "default", "summaries", "summaryByDigest", "blocks", "partProofs", "transactions", "objects", "liveObjects",
        "committees", "epochs", "snapshotChunks", "watermarks", "peers", "restore", "meta",
    ]

    struct Families: Sendable {
        let summaries, summaryByDigest, blocks, partProofs, transactions, objects, liveObjects: ColumnFamily
        let committees, epochs, snapshotChunks, watermarks, peers, restore, meta: ColumnFamily
    }

    static func columnFamilyOptions() -> [ColumnFamilyOptions] {
        columnFamilyNames.map { name in
            var o = ColumnFamilyOptions(name: name)
            switch name {
            case "blocks", "snapshotChunks":
                // Already LZ4 frames: no second compression; large values live in blob files,
                // so the memtable holds little more than keys and blob references.
                o.compression = .none
                o.bloomBitsPerKey = 0
                o.blobMinBytes = 4_096
                o.writeBufferBytes = 32 << 20
            case "objects":
                o.writeBufferBytes = 64 << 20
                // Bulk catch-ups ingest one file of random ids per group (DESIGN §6.2): merged
                // 24 at a time, not 4 (each merge rewrites all it merges).
                o.universalCompaction = true
                o.compactionTriggerFiles = 24
            case "liveObjects", "transactions", "summaryByDigest":
                // Digests and versions: random bytes that do not compress.
                o.compression = .none
                o.writeBufferBytes = 32 << 20
                o.universalCompaction = name == "transactions"
                o.compactionTriggerFiles = name == "transactions" ? 24 : nil

            default:
                o.writeBufferBytes = 4 << 20
            }
            return o
        }
    }

    private init(database: RocksDatabase, segments: HistorySegments, pool: BlockingPool, configuration: StoreConfiguration) throws(StoreError) {
        self.database = database
        self.segments = segments
        self.pool = pool
        self.configuration = configuration
        func family(_ name: String) throws(StoreError) -> ColumnFamily {
            guard let f = database.columnFamily(name) else { throw StoreError(.inconsistent, "column family \(name) missing") }
            return f
        }
        cf = Families(
            summaries: try family("summaries"), summaryByDigest: try family("summaryByDigest"), blocks: try family("blocks"),
            partProofs: try family("partProofs"), transactions: try family("transactions"), objects: try family("objects"),
            liveObjects: try family("liveObjects"), committees: try family("committees"), epochs: try family("epochs"),
            snapshotChunks: try family("snapshotChunks"), watermarks: try family("watermarks"), peers: try family("peers"),
            restore: try family("restore"), meta: try family("meta"))
    }

    /// Opens (creating if needed) the store in directory `path`.
    public static func open(path: String, configuration: StoreConfiguration = StoreConfiguration()) async throws -> NodeStore {
        precondition(configuration.snapshotChunkSize > 0 && configuration.snapshotChunkSize & (configuration.snapshotChunkSize - 1) == 0,
                     "snapshot chunk size must be a power of two")
        let pool = BlockingPool(threads: configuration.blockingThreads)
        do {
            return try await pool.run {
                let db = try RocksDatabase(path: path, options: configuration.database, columnFamilies: columnFamilyOptions())
                var configuration = configuration
                if configuration.adoptStoredMode, let meta = db.columnFamily("meta"), let bytes = try db.get(meta, Array("mode".utf8)),
                   let mode = StoreMode(rawValue: String(decoding: bytes, as: UTF8.self)) {
                    configuration.mode = mode
                }
                var segmentOptions = configuration.segments
                segmentOptions.readOnly = configuration.database.readOnly
                let segments: HistorySegments
                do {
                    segments = try HistorySegments.open(directory: configuration.segmentsDirectory ?? path + "/segments", configuration: segmentOptions)
                } catch {
                    db.close()
                    throw error
                }
                let store: NodeStore
                do {
                    store = try NodeStore(database: db, segments: segments, pool: pool, configuration: configuration)
                    if let mode = try db.get(store.cf.meta, Array("mode".utf8)) {
                        let stored = String(decoding: mode, as: UTF8.self)
                        if stored != configuration.mode.rawValue && !configuration.database.readOnly {
                            throw StoreError(.invalidArgument, "the store at \(path) is a \(stored) store, opened as \(configuration.mode.rawValue)")
                        }
                    }
                    try store.reconcileHistory()
                    if !configuration.database.readOnly { try store.finishPendingLiveEntries(atOpen: true) }
                } catch {
                    segments.close()
                    db.close()
                    throw error
                }
                return store
            }
        } catch {
            try? await pool.shutdown()
            throw error
        }
    }

    /// Closes the database, then stops the pool (idempotent). Call once every user has
    /// stopped; a call that still comes (or is running) is safe: calls running now finish
    /// first, and every later one throws ``StoreError/Code/closed``.
    public func close() async {
        let first = usage.withLock { u -> Bool in
            defer { u.closed = true }
            return !u.closed
        }
        guard first else { return }
        // Flushing first makes the next open quick: no write-ahead log to replay.
        _ = try? await pool.run { [self] in
            // Calls already running on other pool threads finish before the handles are freed;
            // none can start any more.
            while usage.withLock({ $0.active }) > 0 { Thread.sleep(forTimeInterval: 0.001) }
            // A snapshot build running beside the commits finishes (a failed one resumes at the
            // next open: its marker stays).
            try? waitForSnapshotBuild()
            // Execution a bulk catch-up held in memory is written back (else the next open
            // executes it again from the segments), unless a snapshot is still owed: its build
            // at the next open reads the stored live set as the epoch end left it.
            if !configuration.database.readOnly {
                let owed: Bool
                do { owed = try database.get(cf.meta, Self.pendingSnapshotKey) != nil } catch { owed = true }
                if !owed { try? writer.withLock { _ throws in try writeBackLiveCache() } }
            }
            if !configuration.database.readOnly { try? database.flush() }
            database.close()
            segments.close()
        }
        try? await pool.shutdown()
    }

    /// Whether ``close()`` has been called.
    public var isClosed: Bool { usage.withLock { $0.closed } }

    /// Runs blocking store work on the pool.
    /// - Throws: ``StoreError/Code/closed`` once ``close()`` was called, or what `body` throws.
    func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        let path = database.path
        guard !isClosed else { throw StoreError(.closed, "the store at \(path) is closed") }
        return try await pool.run { [self] in
            let open = usage.withLock { u -> Bool in
                guard !u.closed else { return false }
                u.active += 1
                return true
            }
            guard open else { throw StoreError(.closed, "the store at \(path) is closed") }
            defer { usage.withLock { $0.active -= 1 } }
            return try body()
        }
    }

    // MARK: Meta and genesis

    static let genesisKey = Array("genesis".utf8)
    static let chainIDKey = Array("chainID".utf8)

    /// The chain id, once initialised.
    public func chainID() async throws -> Digest? {
        try await blocking { try self.chainIDSync() }
    }

    func chainIDSync() throws(StoreError) -> Digest? {
        try database.get(cf.meta, Self.chainIDKey).flatMap { Digest(bytes: $0) }
    }

    /// The genesis the store was initialised with.
    public func genesis() async throws -> Genesis? {
        try await blocking { try self.genesisSync() }
    }

    func genesisSync() throws(StoreError) -> Genesis? {
        guard let bytes = try database.get(cf.meta, Self.genesisKey) else { return nil }
        do {
            return try Genesis(bcsBytes: bytes)
        } catch {
            throw StoreError(.badValue, error, context: "stored genesis")
        }
    }

    /// Initialises an empty store with a verified genesis: checkpoint 0 is committed and executed.
    /// On a store already holding this genesis it does nothing; another chain's is refused.
    public func initialize(genesis: Genesis) async throws {
        try await blocking { try self.initializeSync(genesis: genesis) }
    }

    func initializeSync(genesis: Genesis) throws {
        try writer.withLock { _ throws in
            if let existing = try chainIDSync() {
                guard existing == genesis.chainID else {
                    throw StoreError(.invalidArgument, "the store holds chain \(existing.short), not \(genesis.chainID.short)")
                }
                return
            }
            let checkpoint: VerifiedCheckpoint
            do throws(CoreError) {
                try genesis.verify()
                checkpoint = try CheckpointVerifier.verify(contents: genesis.contents, of: genesis.checkpoint, previousTotal: 0)
            } catch {
                throw StoreError(.verificationFailed, error, context: "genesis")
            }
            let batch = WriteBatch(for: database)
            batch.put(cf.meta, Self.genesisKey, genesis.bcsBytes)
            batch.put(cf.meta, Self.chainIDKey, genesis.chainID.bytes)
            batch.put(cf.meta, Array("mode".utf8), Array(configuration.mode.rawValue.utf8))
            batch.put(cf.committees, StoreKeys.seq(0), genesis.committee.bcsBytes)
            batch.put(cf.epochs, StoreKeys.seq(0), EpochRecord(epoch: 0, firstCheckpoint: 0).bcsBytes)
            var state = WriterState(synced: nil, verified: nil, executed: nil)
            try stage(checkpoint, into: batch, state: &state)
            var (view, touched) = try loadView(for: [genesis.contents])
            try stageExecution([checkpoint], view: &view, touched: touched, into: batch, state: &state)
            setWatermark(.lowestAvailable, WatermarkValue(seq: 0, digest: genesis.checkpoint.digest), in: batch)
            batch.put(cf.meta, Self.layoutKey, Self.layout)
            // A crash before the batch leaves no chain id: the next open deletes the segment.
            try segments.removeAll()
            try appendHistory([checkpoint])
            try database.write(batch, sync: true)
            held.withLock { $0 = HeldRange(lowest: 0, synced: 0) }
        }
    }

    // MARK: Watermarks

    /// The value of a watermark, or `nil` before the genesis.
    public func watermark(_ w: Watermark) async throws -> WatermarkValue? {
        try await blocking { try self.watermarkSync(w) }
    }

    /// Every watermark.
    public func watermarks() async throws -> [Watermark: WatermarkValue] {
        try await blocking {
            var out: [Watermark: WatermarkValue] = [:]
            for w in Watermark.allCases { out[w] = try self.watermarkSync(w) }
            return out
        }
    }

    func watermarkSync(_ w: Watermark) throws(StoreError) -> WatermarkValue? {
        guard let bytes = try database.get(cf.watermarks, Array(w.rawValue.utf8)) else { return nil }
        guard bytes.count == 40, let seq = StoreKeys.readU64(bytes), let d = Digest(bytes: bytes[8..<40]) else {
            throw StoreError(.badValue, "watermark \(w.rawValue) is \(bytes.count) bytes")
        }
        return WatermarkValue(seq: seq, digest: d)
    }

    func setWatermark(_ w: Watermark, _ value: WatermarkValue, in batch: WriteBatch) {
        batch.put(cf.watermarks, Array(w.rawValue.utf8), StoreKeys.seqDigest(value.seq, value.digest))
    }

    // MARK: Reads

    /// The certified summary at `seq`.
    public func summary(at seq: UInt64) async throws -> CertifiedCheckpointSummary? {
        try await blocking { try self.summarySync(seq) }
    }

    func summarySync(_ seq: UInt64) throws(StoreError) -> CertifiedCheckpointSummary? {
        guard let bytes = try database.get(cf.summaries, StoreKeys.seq(seq)) else { return nil }
        do {
            return try CertifiedCheckpointSummary(bcsBytes: bytes)
        } catch {
            throw StoreError(.badValue, error, context: "summary \(seq)")
        }
    }

    /// The sequence number of the summary with `digest`.
    public func sequenceNumber(ofSummary digest: Digest) async throws -> UInt64? {
        try await blocking { try self.database.get(self.cf.summaryByDigest, digest.bytes).flatMap { StoreKeys.readU64($0) } }
    }

    /// The stored LZ4 block frames of checkpoint `seq`, one per part, as stored (never recompressed).
    public func blockFrames(at seq: UInt64) async throws -> [[UInt8]] {
        try await blocking { try self.blockFramesSync(seq) }
    }

    /// One stored block part of checkpoint `seq` and the number of parts, or `nil` if the
    /// checkpoint (or that part) is not held.
    public func block(at seq: UInt64, part: UInt32) async throws -> (frame: [UInt8], parts: UInt32)? {
        try await blocking {
            let parts = try self.blockPartCountSync(seq)
            guard part < parts, let frame = try self.segments.frame(seq, part: part) else { return nil }
            return (frame, parts)
        }
    }

    /// The serving path: one stored block part as its BCS `bytes` encoding (ULEB128 length, then
    /// the LZ4 frame as stored) in a new buffer, read once from the segment file into it
    /// (RocksDB is not involved); and the number of parts. `nil` if not held.
    public func encodedBlock(at seq: UInt64, part: UInt32) async throws -> (payload: ByteBuffer, parts: UInt32)? {
        try await blocking {
            let parts = try self.blockPartCountSync(seq)
            guard part < parts else { return nil }
            var buffer = ByteBuffer()
            let found = try self.segments.read(seq, part: part, into: &buffer) { length, buffer in
                var w = BCSWriter(capacity: 10)
                w.writeLength(length)
                buffer.reserveCapacity(w.count + length + 64)
                buffer.writeBytes(w.bytes)
            }
            return found ? (buffer, parts) : nil
        }
    }

    /// The contents of checkpoint `seq` (all parts, decompressed and decoded), or `nil` if not held.
    public func checkpointData(at seq: UInt64) async throws -> CheckpointData? {
        try await blocking { try self.checkpointDataSync(seq) }
    }

    func checkpointDataSync(_ seq: UInt64) throws -> CheckpointData? {
        let frames = try blockFramesSync(seq)
        guard !frames.isEmpty else { return nil }
        var entries: [ExecutionData] = []
        for (part, frame) in frames.enumerated() {
            let data = try decodeBlock(frame, seq: seq, part: part)
            entries += data.entries
        }
        return CheckpointData(sequenceNumber: seq, entries: entries)
    }

    func decodeBlock(_ frame: [UInt8], seq: UInt64, part: Int) throws -> CheckpointData {
        let raw: [UInt8]
        do {
            raw = try LZ4Frame.decompress(frame, limit: configuration.maxBlockBytes)
        } catch {
            throw StoreError(error.code, "checkpoint \(seq) part \(part): \(error.message)")
        }
        do {
            let data = try CheckpointData(bcsBytes: raw)
            guard data.sequenceNumber == seq else {
                throw StoreError(.badValue, "checkpoint \(seq) part \(part): block holds checkpoint \(data.sequenceNumber)")
            }
            return data
        } catch let error as CoreError {
            throw StoreError(.badValue, error, context: "checkpoint \(seq) part \(part)")
        }
    }

    /// Where a transaction is: its checkpoint and index there.
    public func transactionLocation(_ digest: Digest) async throws -> (seq: UInt64, index: UInt32)? {
        try await blocking { try self.transactionLocationSync(digest).map { ($0.0, $0.1) } }
    }

    func transactionLocationSync(_ digest: Digest) throws(StoreError) -> (UInt64, UInt32)? {
        guard let v = try database.get(cf.transactions, digest.bytes) else { return nil }
        guard let seq = StoreKeys.readU64(v), let index = StoreKeys.readU32(v, at: 8), v.count == 12 else {
            throw StoreError(.badValue, "transaction index entry of \(digest.short) is \(v.count) bytes")
        }
        return (seq, index)
    }

    /// A transaction with its effects and output objects, if its checkpoint is held.
    public func transaction(_ digest: Digest) async throws -> (seq: UInt64, entry: ExecutionData)? {
        try await blocking {
            guard let (seq, index) = try self.transactionLocationSync(digest),
                  let data = try self.checkpointDataSync(seq), Int(index) < data.entries.count
            else { return nil }
            return (seq, data.entries[Int(index)])
        }
    }

    /// An object version; `version: nil` means the live version.
    public func object(_ id: ObjectID, version: UInt64? = nil) async throws -> Object? {
        try await blocking { try self.objectSync(id, version: version) }
    }

    func objectSync(_ id: ObjectID, version: UInt64?) throws(StoreError) -> Object? {
        var v = version
        if v == nil {
            guard let live = try liveVersionSync(id) else { return nil }
            v = live.version
        }
        guard let v, let value = try database.get(cf.objects, StoreKeys.object(id, version: v)) else { return nil }
        let bytes = try objectEncoding(value, id, v)
        let object: Object
        do {
            object = try Object(bcsBytes: bytes)
        } catch {
            throw StoreError(.badValue, error, context: "object \(id.short) v\(v)")
        }
        guard object.id == id, object.version == v else {
            throw StoreError(.badValue, "object \(id.short) v\(v): the stored bytes are of object \(object.id.short) v\(object.version)")
        }
        return object
    }

    /// The live version and digest of an object, or `nil` if it does not exist now.
    public func liveVersion(_ id: ObjectID) async throws -> VersionDigest? {
        try await blocking { try self.liveVersionSync(id) }
    }

    func liveVersionSync(_ id: ObjectID) throws(StoreError) -> VersionDigest? {
        guard let bytes = try database.get(cf.liveObjects, id.bytes) else { return nil }
        guard let vd = StoreKeys.readVersionDigest(bytes) else {
            throw StoreError(.badValue, "live entry of \(id.short) is \(bytes.count) bytes")
        }
        return vd
    }

    /// The committee of `epoch`.
    public func committee(epoch: UInt64) async throws -> Committee? {
        try await blocking { try self.committeeSync(epoch) }
    }

    func committeeSync(_ epoch: UInt64) throws(StoreError) -> Committee? {
        guard let bytes = try database.get(cf.committees, StoreKeys.seq(epoch)) else { return nil }
        do {
            return try Committee(bcsBytes: bytes)
        } catch {
            throw StoreError(.badValue, error, context: "committee \(epoch)")
        }
    }

    /// Every epoch record, in order.
    public func epochs() async throws -> [EpochRecord] {
        try await blocking { try self.epochsSync() }
    }

    func epochsSync() throws -> [EpochRecord] {
        try database.scan(cf.epochs).map { kv in
            do throws(CoreError) {
                return try EpochRecord(bcsBytes: kv.value)
            } catch {
                throw StoreError(.badValue, error, context: "epoch record")
            }
        }
    }

    func epochSync(_ epoch: UInt64) throws(StoreError) -> EpochRecord? {
        guard let bytes = try database.get(cf.epochs, StoreKeys.seq(epoch)) else { return nil }
        do {
            return try EpochRecord(bcsBytes: bytes)
        } catch {
            throw StoreError(.badValue, error, context: "epoch \(epoch)")
        }
    }

    /// Approximate sizes for metrics and `inspect`: estimated keys and live SST bytes per column family.
    public func statistics() async throws -> [(family: String, keys: UInt64, bytes: UInt64)] {
        try await blocking {
            try self.database.columnFamilies.map { f in
                (f.name, try self.database.integerProperty("rocksdb.estimate-num-keys", of: f) ?? 0,
                 try self.database.integerProperty("rocksdb.live-sst-files-size", of: f) ?? 0)
            }
        }
    }
}

/// What RocksDB reports of its own work: compactions and write stalls.
public struct EngineStatistics: Sendable, Equatable {
    /// Compactions running now.
    public var runningCompactions: UInt64 = 0
    /// Whether a compaction is owed (some level over its target).
    public var compactionPending = false
    /// Whether writes are stopped (too many level-0 files or pending compaction bytes).
    public var writeStopped = false
    /// The rate writes are slowed to while delayed (bytes/s), 0 when not delayed.
    public var delayedWriteRate: UInt64 = 0
}

extension NodeStore {
    /// RocksDB's compaction and write-stall state, summed over the column families.
    public func engineStatistics() async throws -> EngineStatistics {
        try await blocking {
            var out = EngineStatistics()
            let families = self.database.columnFamilies
            guard let first = families.first else { return out }
            out.runningCompactions = try self.database.integerProperty("rocksdb.num-running-compactions", of: first) ?? 0
            out.writeStopped = (try self.database.integerProperty("rocksdb.is-write-stopped", of: first) ?? 0) != 0
            out.delayedWriteRate = try self.database.integerProperty("rocksdb.actual-delayed-write-rate", of: first) ?? 0
            for f in families where (try self.database.integerProperty("rocksdb.compaction-pending", of: f) ?? 0) != 0 {
                out.compactionPending = true
            }
            return out
        }
    }
}
