public import SomaCore
import Foundation
import Synchronization
import CMalloc

extension CheckpointVerifier {
    /// ``verify(blocks:proofs:of:previousTotal:verifyUserSignatures:decompress:)`` with LZ4
    /// frames of at most `limit` decompressed bytes each.
    public static func verify(
        blocks frames: [[UInt8]], proofs: [[Digest]], of certified: CertifiedCheckpointSummary, previousTotal: UInt64,
        verifyUserSignatures: Bool = false, limit: Int
    ) throws -> VerifiedCheckpoint {
        try verify(blocks: frames, proofs: proofs, of: certified, previousTotal: previousTotal, verifyUserSignatures: verifyUserSignatures) {
            frame throws(StoreError) in try LZ4Frame.decompress(frame, limit: limit)
        }
    }

    /// ``verify(contents:of:previousTotal:verifyUserSignatures:compress:)`` building LZ4 frames.
    public static func verify(
        contents data: CheckpointData, of certified: CertifiedCheckpointSummary, previousTotal: UInt64, verifyUserSignatures: Bool = false
    ) throws(CoreError) -> VerifiedCheckpoint {
        try verify(contents: data, of: certified, previousTotal: previousTotal, verifyUserSignatures: verifyUserSignatures) {
            LZ4Frame.compress($0)
        }
    }
}

/// The random-key index entries of a bulk group, collected for sorted SST files.
struct IndexRuns {
    var transactions: [(digest: Digest, seq: UInt64, index: UInt32)] = []
    /// Object versions: id, version and what is stored of it (the key `id ‖ version` and the
    /// value are written when the sorted file is built, off the commit thread).
    var objects: [(id: ObjectID, version: UInt64, value: StoredObject)] = []
}

/// What `objects` holds of an object version: its encoding, or (archive stores, DESIGN §6.1)
/// a locator into its block in the history segments, which hold the same bytes.
enum StoredObject {
    case encoding([UInt8])
    case locator(ObjectLocator)
}

/// What execution needs of a checkpoint: its summary and contents.
protocol ExecutableCheckpoint {
    var certified: CertifiedCheckpointSummary { get }
    var data: CheckpointData { get }
}

extension VerifiedCheckpoint: ExecutableCheckpoint {}

/// A checkpoint read back from the store for execution (verified before it was stored).
struct StoredCheckpoint: ExecutableCheckpoint {
    let certified: CertifiedCheckpointSummary
    let data: CheckpointData
}

/// Watermarks and epoch records as a write in progress sees them.
struct WriterState {
    var synced: WatermarkValue?
    var verified: WatermarkValue?
    var executed: WatermarkValue?
    var epochRecords: [UInt64: EpochRecord] = [:]
    /// The object versions a group staged into its batch as locators (not into index runs),
    /// in staging order: for the live entries the group writes back.
    var located: [LocatedVersion] = []
}

/// The live object set held in memory during a bulk catch-up (DESIGN §6.2): the stored
/// `liveObjects` with the changes of the checkpoints executed since the last write-back.
struct LiveCache {
    var set: LiveObjectSet
    /// Ids changed since the last write-back, in the order of the changes (with repeats: an
    /// append per change is cheaper than a hash-set insert; the write-back sorts them anyway).
    var dirty: [ObjectID] = []
    /// `dirty` sorted, unique and looked up in `set`, when an epoch end already did that and
    /// nothing changed since (its write-back then does not do it again).
    var resolvedDirty: ResolvedChanges?
    /// The last checkpoint applied to `set`.
    var executed: WatermarkValue?
    /// Checkpoints applied since the last write-back.
    var pending = 0
    /// The locators of the object versions stored since the last write-back (archive stores),
    /// one run per group sorted by id: a live entry written back carries its live version's.
    var locatorRuns: [[LocatedVersion]] = []
    /// The set's leaf hashes in id order as of the last epoch-end state root computed on it,
    /// and the ids changed since (with repeats): the next epoch end merges those into it
    /// instead of reading `liveObjects` and hashing every leaf (``NodeStore/epochStateRoot``).
    var leafIndex: LeafIndex?
    var changedSinceRoot: [ObjectID] = []
}

/// Changed ids, sorted and unique, each with its state in the live set (`nil`: deleted):
/// what an epoch-end state root and a write-back both need, worked out once.
struct ResolvedChanges {
    var ids: [ObjectID]
    var states: [VersionDigest?]

    /// `changed` (any order, repeats allowed) resolved against `set`.
    init(_ changed: some Collection<ObjectID>, in set: LiveObjectSet) {
        var sorted = Array(changed)
        sorted.sort()
        ids = []
        ids.reserveCapacity(sorted.count)
        for id in sorted where ids.last != id { ids.append(id) }
        states = ids.map { set.objects[$0] }
    }
}

/// A live set's leaf hashes in id order, per range of the id space as
/// ``NodeStore/stateRoot(overlay:touched:)`` splits it (by first byte), each beside its id's
/// first 8 bytes (big-endian): 40 bytes an object, about 50 MB at 1.24 M objects.
struct LeafIndex: Sendable {
    var prefixes: [[UInt64]]
    var leaves: [[Digest]]
}

/// An object version stored as a locator into its block.
struct LocatedVersion: Sendable {
    var id: ObjectID
    var version: UInt64
    var locator: ObjectLocator
}

extension NodeStore {
    /// Most checkpoints in one write batch.
    static let maxGroup = 64

    /// Stores verified summaries ahead of their blocks and advances `highestVerified`.
    /// The first must follow the current `highestVerified` and link to it.
    public func commitSummaries(_ summaries: [CertifiedCheckpointSummary]) async throws {
        try await blocking { try self.commitSummariesSync(summaries) }
    }

    func commitSummariesSync(_ summaries: [CertifiedCheckpointSummary]) throws {
        try writer.withLock { _ throws in
            guard var verified = try watermarkSync(.highestVerified) else {
                throw StoreError(.inconsistent, "the store has no genesis")
            }
            try refuseDuringRestore()
            let batch = WriteBatch(for: database)
            for s in summaries {
                guard s.summary.sequenceNumber == (try StoreKeys.successor(verified.seq, "highestVerified")), s.summary.previousDigest == verified.digest else {
                    throw StoreError(.outOfOrder, "summary \(s.summary.sequenceNumber) does not follow verified checkpoint \(verified.seq)")
                }
                let digest = s.digest
                batch.put(cf.summaries, StoreKeys.seq(s.summary.sequenceNumber), s.bcsBytes)
                batch.put(cf.summaryByDigest, digest.bytes, StoreKeys.seq(s.summary.sequenceNumber))
                if let end = s.summary.endOfEpoch {
                    // The committee this certified end names goes with it: the store never holds a
                    // verified summary whose committee it does not hold (verify after a crash).
                    let next = try StoreKeys.successor(s.summary.epoch, "the epoch of checkpoint \(s.summary.sequenceNumber)")
                    batch.put(cf.committees, StoreKeys.seq(next), end.nextCommittee.bcsBytes)
                }
                verified = WatermarkValue(seq: s.summary.sequenceNumber, digest: digest)
            }
            setWatermark(.highestVerified, verified, in: batch)
            try database.write(batch, sync: configuration.syncWrites)
        }
    }

    /// Commits verified checkpoints in order, in grouped write batches with the watermarks they
    /// advance. With `execute`, and when execution is caught up, their effects are applied in
    /// the same batches and each epoch's state root is checked before its end is committed.
    /// - Throws: ``StoreError`` `outOfOrder` for a checkpoint that does not follow
    ///   `highestSynced`, `executionFailed` naming the checkpoint whose execution failed
    ///   (everything before it is committed, nothing after).
    ///
    /// With `bulk` (a catch-up far behind the tip, DESIGN §6.2) the whole call is one group
    /// (split only at epoch ends when executing), and the random-key indexes (transactions,
    /// object versions) are not inserted through the memtable: each is sorted and written as
    /// one SST file, ingested before the batch. Ingestion is idempotent (the same keys and
    /// values), so a crash before the batch re-applies the group from the segments' source.
    public func commit(_ checkpoints: [VerifiedCheckpoint], execute: Bool = true, bulk: Bool = false) async throws {
        try await blocking { try self.commitSync(checkpoints, execute: execute, bulk: bulk) }
    }

    func commitSync(_ checkpoints: [VerifiedCheckpoint], execute: Bool, bulk: Bool = false) throws {
        try writer.withLock { _ throws in
            try refuseDuringRestore()
            // A live-entries file whose ingestion failed after its batch (see below).
            try finishPendingLiveEntries()
            // A snapshot build started at an epoch end runs beside the next commits that execute
            // on the live set held in memory: they hold their changes there (as bulk commits
            // do) and write them back only at an epoch end or a bound, waiting for the build
            // there. Every other commit writes the live set (or may), so it waits first.
            // A build that has ended is taken now (its failure surfaces here, not an epoch
            // later), so that commits hold their changes only while one still runs.
            if snapshotBuild.withLock({ $0?.isFinished ?? false }) { try waitForSnapshotBuild() }
            let holding = bulk || (execute && snapshotBuild.withLock { $0 != nil } && liveCache.withLock { $0 != nil })
            if !(execute && holding) { try waitForSnapshotBuild() }
            // The pending marker of a build still running is that build's. Any other (a build
            // that failed) is built again before held changes move highestExecuted past it.
            if snapshotBuild.withLock({ $0 == nil }) { try finishInterruptedWork() }
            // Storing without execution: the live set held in memory is written back and
            // released first. Near the tip (not bulk) it is written back and kept, and from then
            // on written through: every batch carries its live entries and highestExecuted, as
            // without a cache, but execution reads the set from memory instead of RocksDB.
            if !execute { try writeBackLiveCache() } else if !holding { try writeBackLiveCache(keep: true) }
            var state = WriterState(
                synced: try watermarkSync(.highestSynced), verified: try watermarkSync(.highestVerified),
                executed: try watermarkSync(.highestExecuted))
            guard state.synced != nil else { throw StoreError(.inconsistent, "the store has no genesis") }
            // Owned here until the end: a failure anywhere drops it (the stored live set and
            // highestExecuted stay as last written back; what it held is executed again).
            var cache: LiveCache? = liveCache.withLock { $0.take() }
            if let cache { state.executed = cache.executed }
            let executing = execute && state.executed == state.synced
            if executing && bulk && cache == nil { cache = try loadLiveCache(executed: state.executed) }
            for group in Self.groups(checkpoints, splitAtEpochEnds: executing, maxGroup: bulk ? Self.maxBulkGroup : Self.maxGroup) {
                let committed = state.synced
                let batch = WriteBatch(for: database)
                var runs: IndexRuns? = bulk ? IndexRuns() : nil
                for cp in group { try stage(cp, into: batch, state: &state, runs: &runs) }
                // Near the tip the versions went into the batch: their locators, sorted, for the
                // live entries this group writes back (a bulk group's come from its runs).
                var located = state.located
                state.located = []
                if !located.isEmpty, executing, cache != nil {
                    located.sort { $0.id < $1.id || ($0.id == $1.id && $0.version < $1.version) }
                    cache!.locatorRuns.append(located)
                }
                // Executing on the live set held in memory reads nothing that the group's
                // frames and indexes write: those go to the segments and the SST files on a
                // thread of their own meanwhile. The batch with the watermark still comes after
                // both (DESIGN §6.1).
                let storing = executing && cache != nil ? ThreadJob(name: "store-group") { [self, runs] () throws -> [LocatedVersion] in
                    try appendHistory(group)
                    return try runs.map { try ingest($0) } ?? []
                } : nil
                var endOfEpoch: (UInt64, EpochRecord)? = nil
                var wroteBack = false
                var liveFile: String? = nil
                do {
                    if executing {
                        if cache != nil {
                            (endOfEpoch, wroteBack) = try stageCachedExecution(
                                group, cache: &cache!, writeThrough: !holding, into: batch, state: &state)
                        } else {
                            var (view, touched) = try loadView(for: group.map(\.data))
                            endOfEpoch = try stageExecution(group, view: &view, touched: touched, into: batch, state: &state)
                        }
                    }
                    // A batch that writes the live set waits for the snapshot build reading it.
                    if executing && (wroteBack || cache == nil || !holding) { try waitForSnapshotBuild() }
                    // Crash order (DESIGN §6.1): the frames reach the disk, then the batch with
                    // the watermark; on open, frames ahead of highestSynced are cut.
                    if let storing {
                        let located = try storing.wait()
                        if !located.isEmpty, cache != nil { cache!.locatorRuns.append(located) }
                        // Staged once the group's locators are known: a bulk write-back of many
                        // entries as a sorted file ingested right after the batch, which
                        // carries a marker naming it (finished on the next open if a crash
                        // comes between), instead of that many memtable inserts.
                        if wroteBack, let executed = state.executed {
                            // Sorted and looked up once (by the epoch end's state root, if any).
                            liveFile = try stageWriteBack(of: cache!, at: executed.seq, allowFile: holding, into: batch)
                        }
                    } else {
                        try appendHistory(group)
                        if let runs { try ingest(runs) }
                    }
                    // A batch naming a live-entries file is synced: its ingestion right after is
                    // durable at once and must never outlive the batch with highestExecuted.
                    try database.write(batch, sync: configuration.syncWrites || liveFile != nil)
                } catch {
                    // Nothing of the group is left half stored: its frames go once the thread
                    // storing them has ended. A live-entries file stays: if its marker reached the
                    // log after all, the next open ingests it; if not, the next open removes it.
                    _ = try? storing?.wait()
                    dropHistory(after: committed)
                    throw error
                }
                // Committed: a failure here leaves the marker, and the next commit or open ingests the file.
                if let liveFile { try finishLiveEntriesFile(liveFile) }
                if let synced = state.synced { held.withLock { $0.synced = synced.seq } }
                if wroteBack && holding {
                    // The next write-back of a bulk catch-up, an epoch later, inserts its sorted
                    // entries into an empty memtable (appended, not threaded between these).
                    try database.flush(cf.liveObjects, wait: false)
                }
                if wroteBack {
                    // Kept: the next groups fill it again to about the same size.
                    cache!.dirty.removeAll(keepingCapacity: true)
                    cache!.resolvedDirty = nil
                    cache!.locatorRuns.removeAll()
                    cache!.pending = 0
                    // A live set grown past the bound is read from RocksDB from now on (what
                    // it holds was just written back).
                    if cache!.set.objects.count > Self.maxCachedLiveObjects { cache = nil }
                }
                if let (epoch, record) = endOfEpoch {
                    // The epoch end's leaves, when kept, say how many ids each range holds. The
                    // build runs beside (bulk or not): the commit returns with the epoch end
                    // durable, and a commit that writes the live set waits for the build first.
                    let counts = cache?.leafIndex?.prefixes.map(\.count)
                    try afterEpochEnd(epoch, record, beside: true, counts: counts)
                }
            }
            if let cache, executing { liveCache.withLock { $0 = cache } }
        }
    }

    /// Splits checkpoints into write groups of at most ``maxGroup``, ending a group after each
    /// epoch end when executing (so the state root is checked against a committed base).
    static func groups(_ checkpoints: [VerifiedCheckpoint], splitAtEpochEnds: Bool, maxGroup: Int = maxGroup) -> [ArraySlice<VerifiedCheckpoint>] {
        var out: [ArraySlice<VerifiedCheckpoint>] = []
        var start = checkpoints.startIndex
        for i in checkpoints.indices {
            let end = splitAtEpochEnds && checkpoints[i].certified.summary.endOfEpoch != nil
            if end || i - start + 1 == maxGroup || i == checkpoints.count - 1 {
                out.append(checkpoints[start...i])
                start = i + 1
            }
        }
        return out
    }

    /// Adds one checkpoint's synced data to `batch`: summary (unless already stored),
    /// transaction index, object versions, committee and epoch records. Its blocks and part
    /// proofs go to the history segments (``appendHistory(_:)``), before the batch.
    func stage(_ cp: VerifiedCheckpoint, into batch: WriteBatch, state: inout WriterState) throws {
        var runs: IndexRuns? = nil
        try stage(cp, into: batch, state: &state, runs: &runs)
    }

    /// As ``stage(_:into:state:)``; with `runs`, the transaction index and object versions are
    /// collected there (for ``ingest(_:)``) instead of put in the batch.
    func stage(_ cp: VerifiedCheckpoint, into batch: WriteBatch, state: inout WriterState, runs: inout IndexRuns?) throws {
        let summary = cp.certified.summary
        let seq = summary.sequenceNumber
        let expected = try state.synced.map { (w) throws(StoreError) in try StoreKeys.successor(w.seq, "highestSynced") } ?? 0
        guard seq == expected, summary.previousDigest == state.synced?.digest else {
            throw StoreError(.outOfOrder, "checkpoint \(seq) does not follow stored checkpoint \(state.synced.map { "\($0.seq)" } ?? "none")")
        }
        guard cp.data.sequenceNumber == seq, cp.frames.count == cp.proofs.count, !cp.frames.isEmpty else {
            throw StoreError(.outOfOrder, "contents offered for checkpoint \(seq) belong to \(cp.data.sequenceNumber)")
        }
        let digest = cp.certified.digest
        if let verified = state.verified, seq <= verified.seq {
            guard let stored = try database.get(cf.summaryByDigest, digest.bytes), StoreKeys.readU64(stored) == seq else {
                throw StoreError(.inconsistent, "checkpoint \(seq) differs from the verified summary stored at that height")
            }
        } else {
            batch.put(cf.summaries, StoreKeys.seq(seq), cp.certified.bcsBytes)
            batch.put(cf.summaryByDigest, digest.bytes, StoreKeys.seq(seq))
            state.verified = WatermarkValue(seq: seq, digest: digest)
        }
        if runs != nil {
            for (index, digest) in cp.transactionDigests.enumerated() {
                runs!.transactions.append((digest, seq, UInt32(index)))
            }
            cp.forEachOutputPlace { k, id, version, location, length in
                runs!.objects.append((id, version, storedObject(cp, seq, k, location, length)))
            }
        } else {
            for (index, digest) in cp.transactionDigests.enumerated() {
                batch.put(cf.transactions, digest.bytes, StoreKeys.position(seq, UInt32(index)))
            }
            var key = [UInt8](repeating: 0, count: 40)
            var value = [UInt8](repeating: 0, count: StoreKeys.objectLocatorSize)
            cp.forEachOutputPlace { k, id, version, location, length in
                StoreKeys.writeObjectKey(id, version, into: &key)
                switch storedObject(cp, seq, k, location, length) {
                case .encoding(let bytes): batch.put(cf.objects, key, bytes)
                case .locator(let locator):
                    StoreKeys.writeObjectLocator(locator, into: &value)
                    batch.put(cf.objects, key, value)
                    state.located.append(LocatedVersion(id: id, version: version, locator: locator))
                }
            }
        }
        if let end = summary.endOfEpoch {
            let nextEpoch = try StoreKeys.successor(summary.epoch, "the epoch of checkpoint \(seq)")
            let nextSeq = try StoreKeys.successor(seq, "checkpoint")
            batch.put(cf.committees, StoreKeys.seq(nextEpoch), end.nextCommittee.bcsBytes)
            var record = try epochRecord(summary.epoch, state: &state) ?? EpochRecord(epoch: summary.epoch, firstCheckpoint: seq)
            record.lastCheckpoint = seq
            state.epochRecords[summary.epoch] = record
            batch.put(cf.epochs, StoreKeys.seq(summary.epoch), record.bcsBytes)
            let next = EpochRecord(epoch: nextEpoch, firstCheckpoint: nextSeq)
            state.epochRecords[nextEpoch] = next
            batch.put(cf.epochs, StoreKeys.seq(nextEpoch), next.bcsBytes)
        }
        state.synced = WatermarkValue(seq: seq, digest: digest)
        setWatermark(.highestSynced, WatermarkValue(seq: seq, digest: digest), in: batch)
        if let verified = state.verified { setWatermark(.highestVerified, verified, in: batch) }
    }

    /// What `objects` stores of an output object: in an archive, which never drops a block, a
    /// locator into the block (each byte stored once, DESIGN §6.1); in a pruned store, whose
    /// blocks go before its live objects do, the encoding.
    /// Output object `k` of `cp`, at `location` and `length` bytes (``VerifiedCheckpoint/forEachOutputPlace(_:)``).
    func storedObject(_ cp: VerifiedCheckpoint, _ seq: UInt64, _ k: Int, _ location: ObjectLocation, _ length: UInt32) -> StoredObject {
        guard configuration.mode == .archive else { return .encoding(Array(cp.objectEncoding(k))) }
        return .locator(ObjectLocator(seq: seq, part: location.part, offset: location.offset, length: length))
    }

    /// Most checkpoints in one bulk group.
    static let maxBulkGroup = 1_024

    /// Writes collected index entries as one sorted SST file per column family (the two built
    /// at once) and ingests them. Keys repeated within the runs keep their last value.
    /// Returns the object versions stored as locators, sorted by id (then version).
    @discardableResult
    func ingest(_ runs: IndexRuns) throws -> [LocatedVersion] {
        let dir = database.path + "/ingest"
        try Self.freshDirectory(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Both runs sorted at once, one on each core: the transactions by digest (on a thread
        // of their own), the object versions as their keys `id ‖ version (BE)` sort.
        let unsorted = runs.transactions
        let sortingTransactions = ThreadJob(name: "sort-tx") { unsorted.sorted { $0.digest < $1.digest } }
        let objects = runs.objects.sorted { $0.id < $1.id || ($0.id == $1.id && $0.version < $1.version) }
        let transactions = try sortingTransactions.wait()
        let paths = [dir + "/transactions.sst", dir + "/objects.sst"]
        let failures = Mutex<[StoreError]>([])
        DispatchQueue.concurrentPerform(iterations: 2) { i in
            do throws(StoreError) {
                if i == 0 {
                    guard !transactions.isEmpty else { return }
                    let w = try database.sstWriter(cf.transactions, path: paths[0])
                    for (k, t) in transactions.enumerated() where k + 1 == transactions.count || transactions[k + 1].digest != t.digest {
                        try w.put(t.digest.bytes, StoreKeys.position(t.seq, t.index))
                    }
                    try w.finish()
                } else {
                    guard !objects.isEmpty else { return }
                    let w = try database.sstWriter(cf.objects, path: paths[1])
                    var key = [UInt8](repeating: 0, count: 40)
                    var value = [UInt8](repeating: 0, count: StoreKeys.objectLocatorSize)
                    for (k, o) in objects.enumerated() where k + 1 == objects.count || objects[k + 1].id != o.id || objects[k + 1].version != o.version {
                        StoreKeys.writeObjectKey(o.id, o.version, into: &key)
                        switch o.value {
                        case .encoding(let bytes): try w.put(key, bytes)
                        case .locator(let locator):
                            StoreKeys.writeObjectLocator(locator, into: &value)
                            try w.put(key, value)
                        }
                    }
                    try w.finish()
                }
            } catch {
                failures.withLock { $0.append(error) }
            }
        }
        if let failure = failures.withLock({ $0.first }) { throw failure }
        if !transactions.isEmpty { try database.ingest(cf.transactions, files: [paths[0]]) }
        if !objects.isEmpty { try database.ingest(cf.objects, files: [paths[1]]) }
        return objects.compactMap { o in
            if case .locator(let l) = o.value { LocatedVersion(id: o.id, version: o.version, locator: l) } else { nil }
        }
    }

    func epochRecord(_ epoch: UInt64, state: inout WriterState) throws(StoreError) -> EpochRecord? {
        if let r = state.epochRecords[epoch] { return r }
        let r = try epochSync(epoch)
        if let r { state.epochRecords[epoch] = r }
        return r
    }

    /// Most live objects held in memory during a bulk catch-up (about 120 bytes each: 1.24 M
    /// take about 150 MB); a larger live set is read from RocksDB instead.
    static let maxCachedLiveObjects = 4_000_000
    /// Most checkpoints a bulk catch-up executes in memory before it writes the live set back
    /// (it also does at every epoch end): what a crash makes it execute again.
    static let maxPendingExecution = 4_096
    /// Most changed ids (with repeats) kept for the next epoch end's merge of leaves: about
    /// 64 MB (an epoch of the bench chain changes about 400,000).
    static let maxChangesSinceRoot = 2_000_000
    /// Most changes (ids with repeats, 32 bytes each: about 64 MB) held before the live set is
    /// written back.
    static let maxDirtyLiveObjects = 2_000_000

    /// The whole live set, loaded for a bulk catch-up by one ordered scan; `nil` if it holds
    /// more than ``maxCachedLiveObjects``. Called with the writer lock held.
    func loadLiveCache(executed: WatermarkValue?) throws -> LiveCache? {
        // Room once for what a verified epoch end ahead certifies (at most the bound): growing
        // by doublings rehashed the whole table each time (a quarter of a second of a catch-up).
        var objects = LiveTable(minimumCapacity: Int(min(knownLiveObjectCount.withLock({ $0 }) ?? 0, UInt64(Self.maxCachedLiveObjects))))
        let fits: Bool = try database.withIterator(cf.liveObjects) { it in
            while it.isValid {
                guard objects.count < Self.maxCachedLiveObjects else { return false }
                let (id, vd) = try liveEntry(it)
                objects[id] = vd
                it.next()
            }
            return true
        }
        return fits ? LiveCache(set: LiveObjectSet(table: consume objects), executed: executed) : nil
    }

    /// Writes the changes a bulk catch-up executed in memory to `liveObjects`, with
    /// `highestExecuted`, in one batch (at least `liveFileMinimum` entries: as a sorted file
    /// that the batch names, ingested right after it), and releases the cached set, or with
    /// `keep` holds on to it (then clean). Called with the writer lock held, no build running.
    func writeBackLiveCache(keep: Bool = false) throws {
        guard var cache = liveCache.withLock({ $0.take() }) else { return }
        if cache.pending > 0, let executed = cache.executed {
            // An earlier file whose ingestion failed goes in first: ingested after these entries,
            // it would override them (and a new file's marker would replace its marker).
            try finishPendingLiveEntries()
            let batch = WriteBatch(for: database)
            // Many entries (a bulk catch-up handing over to the tip, a close): one sorted file
            // ingested after the batch that names it, as a bulk write-back does.
            let liveFile = try stageWriteBack(of: cache, at: executed.seq, into: batch)
            setWatermark(.highestExecuted, executed, in: batch)
            // A batch naming a file is synced: the ingestion after it is durable at once (in
            // RocksDB's manifest), and must never outlive the batch with highestExecuted. On a
            // failure the file stays: a marker that did reach the log finds it at the next open
            // (files no marker names are removed there).
            try database.write(batch, sync: configuration.syncWrites || liveFile != nil)
            if let liveFile { try finishLiveEntriesFile(liveFile) }
            cache.dirty.removeAll()
            cache.resolvedDirty = nil
            cache.locatorRuns.removeAll()
            cache.pending = 0
        }
        if keep { liveCache.withLock { $0 = cache } }
    }

    /// Stages the write-back of `cache`'s changes into `batch` (sorted and looked up once, by
    /// the epoch end's state root if it did): at least `liveFileMinimum` entries, when
    /// `allowFile`, as a sorted live-entries file that the batch names (returned: the batch is
    /// then written synced and the file ingested with ``finishLiveEntriesFile(_:)``), else as
    /// puts and deletes in the batch.
    func stageWriteBack(of cache: LiveCache, at seq: UInt64, allowFile: Bool = true, into batch: WriteBatch) throws -> String? {
        let changes = cache.resolvedDirty ?? ResolvedChanges(cache.dirty, in: cache.set)
        guard allowFile && changes.ids.count >= configuration.liveFileMinimum else {
            stageLiveEntries(changes, locatorRuns: cache.locatorRuns, into: batch)
            return nil
        }
        let name = try writeLiveEntriesFile(changes, locatorRuns: cache.locatorRuns, at: seq)
        batch.put(cf.meta, Self.pendingLiveKey, Array(name.utf8))
        return name
    }

    /// Puts the entries of `ids` as `set` holds them (deleted when absent) into `batch`, each
    /// with the locator of its live version when one of `locatorRuns` (each sorted by id) has it.
    func stageLiveEntries(
        _ ids: some Collection<ObjectID>, of set: LiveObjectSet, locatorRuns: [[LocatedVersion]] = [], into batch: WriteBatch
    ) {
        stageLiveEntries(ResolvedChanges(ids, in: set), locatorRuns: locatorRuns, into: batch)
    }

    /// ``stageLiveEntries(_:of:locatorRuns:into:)`` of changes already resolved.
    func stageLiveEntries(_ changes: ResolvedChanges, locatorRuns: [[LocatedVersion]] = [], into batch: WriteBatch) {
        // In key order: the memtable's skip list then reuses its insertion point from one key to
        // the next instead of searching from the top for each (a third of a bulk commit's time).
        Self.forEachLiveEntry(changes, locatorRuns: locatorRuns) { id, entry in
            if let entry { batch.put(cf.liveObjects, id.bytes, entry) } else { batch.delete(cf.liveObjects, id.bytes) }
        }
    }

    /// Each id of `ids` in key order with its live entry as `set` holds it (`nil`: deleted),
    /// carrying its live version's locator when one of `locatorRuns` (each sorted by id) has it.
    static func forEachLiveEntry<E: Error>(
        _ changes: ResolvedChanges, locatorRuns: [[LocatedVersion]], _ body: (ObjectID, [UInt8]?) throws(E) -> Void
    ) throws(E) {
        let sorted = changes.ids
        let live = changes.states
        // Each run walked beside the sorted ids: the one version that is live matches once.
        var locators = [ObjectLocator?](repeating: nil, count: sorted.count)
        for run in locatorRuns {
            var j = 0
            for (i, id) in sorted.enumerated() {
                while j < run.count && run[j].id < id { j += 1 }
                guard let vd = live[i] else { continue }
                var k = j
                while k < run.count && run[k].id == id {
                    if run[k].version == vd.version { locators[i] = run[k].locator }
                    k += 1
                }
            }
        }
        for (i, id) in sorted.enumerated() {
            try body(id, live[i].map { StoreKeys.liveEntry($0, locator: locators[i]) })
        }
    }

    /// `meta` key naming a live-entries file whose batch is committed and that may not be
    /// ingested yet (``finishLiveEntriesFile(_:)``).
    static let pendingLiveKey = Array("pendingLiveEntries".utf8)
    /// Where live-entries files wait for their ingestion.
    var liveFileDirectory: String { database.path + "/ingest-live" }

    /// Writes the live entries of `ids` (as ``stageLiveEntries(_:of:locatorRuns:into:)`` puts
    /// them) as one sorted SST file, synced, in ``liveFileDirectory``; returns its name.
    func writeLiveEntriesFile(
        _ ids: some Collection<ObjectID>, of set: LiveObjectSet, locatorRuns: [[LocatedVersion]], at seq: UInt64
    ) throws(StoreError) -> String {
        try writeLiveEntriesFile(ResolvedChanges(ids, in: set), locatorRuns: locatorRuns, at: seq)
    }

    /// ``writeLiveEntriesFile(_:of:locatorRuns:at:)`` of changes already resolved.
    ///
    /// The name is `live-<seq>-<nonce>.sst`, new each time: other files in the directory stay
    /// untouched, since one may be named by a batch whose write failed here but whose record
    /// reached the log (the next open replays it and finds that file as it was written).
    func writeLiveEntriesFile(_ changes: ResolvedChanges, locatorRuns: [[LocatedVersion]], at seq: UInt64) throws(StoreError) -> String {
        if !FileManager.default.fileExists(atPath: liveFileDirectory) {
            do {
                try FileManager.default.createDirectory(atPath: liveFileDirectory, withIntermediateDirectories: true)
            } catch {
                throw StoreError(.ioError, "cannot create \(liveFileDirectory): \(error)")
            }
            // Its entry in the database directory outlives a power loss too.
            try DirectIO.syncDirectory(database.path)
        }
        var name: String
        repeat {
            name = "live-\(seq)-\(String(UInt32.random(in: .min ... .max), radix: 16)).sst"
        } while FileManager.default.fileExists(atPath: liveFileDirectory + "/" + name)
        let file = try database.sstWriter(cf.liveObjects, path: liveFileDirectory + "/" + name)
        try Self.forEachLiveEntry(changes, locatorRuns: locatorRuns) { (id, entry) throws(StoreError) in
            if let entry { try file.put(id.bytes, entry) } else { try file.delete(id.bytes) }
        }
        // Finishing syncs the file; its directory entry is synced too, before the batch names it.
        try file.finish()
        try DirectIO.syncDirectory(liveFileDirectory)
        return name
    }

    /// Ingests the live-entries file `name` if it is still there (an ingestion moves it into
    /// the database), then deletes the marker naming it. Only that file goes: another one may
    /// be named by a batch whose write failed but whose record reached the log.
    func finishLiveEntriesFile(_ name: String) throws {
        let path = liveFileDirectory + "/" + name
        if FileManager.default.fileExists(atPath: path) { try database.ingest(cf.liveObjects, files: [path]) }
        let batch = WriteBatch(for: database)
        batch.delete(cf.meta, Self.pendingLiveKey)
        try database.write(batch, sync: configuration.syncWrites)
        try? FileManager.default.removeItem(atPath: path)
        // Gone with its last file (a directory with files left in it stays).
        _ = rmdir(liveFileDirectory)
    }

    /// The live-entries file a committed batch names and that is not ingested yet (a crash came
    /// between the two), if any: until a read-write open ingests it, `liveObjects` is older than
    /// `highestExecuted` says (what a read-only open shows of the live set).
    public func pendingLiveEntries() async throws -> String? {
        try await blocking { try self.database.get(self.cf.meta, Self.pendingLiveKey).map { String(decoding: $0, as: UTF8.self) } }
    }

    /// Finishes a live-entries file a crash (or a failed ingestion) left between its committed
    /// batch and its ingestion. `atOpen`: also removes the files no committed batch names,
    /// which only an open can tell (the log has been replayed: a batch whose write failed in
    /// a process may still be in it, and name its file).
    ///
    /// The file is ingested only while `highestExecuted` is still the checkpoint it was written
    /// at (the batch naming it set both): past it, later batches hold newer entries (after a
    /// batch whose write failed here but whose record reached the log, the live set was executed
    /// again from the write-back before and written through), which the file's must not cover.
    func finishPendingLiveEntries(atOpen: Bool = false) throws {
        if let name = try database.get(cf.meta, Self.pendingLiveKey) {
            let file = String(decoding: name, as: UTF8.self)
            guard file.hasPrefix("live-"), !file.contains("/"), let seq = UInt64(file.dropFirst(5).prefix(while: \.isNumber)) else {
                throw StoreError(.badValue, "the pending live-entries marker names \(file)")
            }
            if try watermarkSync(.highestExecuted)?.seq == seq {
                try finishLiveEntriesFile(file)
            } else {
                let batch = WriteBatch(for: database)
                batch.delete(cf.meta, Self.pendingLiveKey)
                try database.write(batch, sync: configuration.syncWrites)
            }
        }
        if atOpen, FileManager.default.fileExists(atPath: liveFileDirectory) {
            try? FileManager.default.removeItem(atPath: liveFileDirectory)
        }
    }

    /// Loads the live entries of every object the checkpoints touch, with one multi-get.
    func loadView(for data: [CheckpointData]) throws(StoreError) -> (LiveObjectSet, [ObjectID]) {
        var seen = Set<ObjectID>()
        var touched: [ObjectID] = []
        for d in data {
            for e in d.entries {
                for c in e.effects.changes where seen.insert(c.id).inserted { touched.append(c.id) }
            }
        }
        let values = try database.multiGet(cf.liveObjects, touched.map(\.bytes))
        var objects = LiveTable(minimumCapacity: touched.count)
        for (id, v) in zip(touched, values) {
            guard let v else { continue }
            guard let vd = StoreKeys.readVersionDigest(v) else {
                throw StoreError(.badValue, "live entry of \(id.short) is \(v.count) bytes")
            }
            objects[id] = vd
        }
        return (LiveObjectSet(table: objects), touched)
    }

    /// Bulk execution (DESIGN §6.2): applies a group to the cached live set in place. The
    /// changes are written back to `liveObjects` with `highestExecuted` only at an epoch end
    /// (after its state root is checked: the stored set merged with the changed ids) or past
    /// ``maxPendingExecution`` checkpoints or ``maxDirtyLiveObjects`` changed ids; between,
    /// `highestExecuted` stays where the last write-back left it, and a crash executes those
    /// checkpoints again from the segments. With `writeThrough` (near the tip) every batch
    /// writes the set back. Returns the epoch end, if any, and whether the
    /// batch writes the set back.
    func stageCachedExecution(
        _ group: ArraySlice<VerifiedCheckpoint>, cache: inout LiveCache, writeThrough: Bool = false, into batch: WriteBatch,
        state: inout WriterState
    ) throws -> (endOfEpoch: (UInt64, EpochRecord)?, wroteBack: Bool) {
        var endOfEpoch: (UInt64, EpochRecord)? = nil
        cache.resolvedDirty = nil
        // Moved out while execution changes the set (one owner each, no copy).
        var dirty = cache.dirty
        cache.dirty = []
        var changedSinceRoot = cache.changedSinceRoot
        cache.changedSinceRoot = []
        defer {
            cache.dirty = dirty
            cache.changedSinceRoot = changedSinceRoot
        }
        // Changes are kept for the next root only once there is an index to merge them into.
        let tracking = cache.leafIndex != nil
        for cp in group {
            let summary = cp.certified.summary
            try checkExecutionOrder(summary, state: state)
            do {
                // Unstaged: on a failure the caller drops the whole cached set.
                try cache.set.applyInPlace(cp.data) { id in
                    dirty.append(id)
                    if tracking { changedSinceRoot.append(id) }
                }
            } catch {
                throw StoreError(.executionFailed, error, context: "checkpoint \(summary.sequenceNumber)")
            }
            cache.pending += 1
            if let end = summary.endOfEpoch {
                precondition(group.last?.certified.summary.sequenceNumber == summary.sequenceNumber,
                             "an epoch end closes its execution group")
                let (root, count) = try epochStateRoot(&cache, dirty: dirty, changed: &changedSinceRoot, certified: (end.stateRoot, end.liveObjectCount))
                endOfEpoch = try stageEpochEnd(summary, end, root: root, count: count, into: batch, state: &state)
            }
            state.executed = WatermarkValue(seq: summary.sequenceNumber, digest: cp.certified.digest)
        }
        cache.executed = state.executed
        // Near the tip an epoch can last long: past a bound the changes are dropped with the
        // index they were kept for, and the next epoch end is computed the exact way.
        if changedSinceRoot.count > Self.maxChangesSinceRoot {
            cache.leafIndex = nil
            changedSinceRoot = []
        }
        let writeBack = writeThrough || endOfEpoch != nil || cache.pending >= Self.maxPendingExecution
            || dirty.count >= Self.maxDirtyLiveObjects
        if writeBack, let executed = state.executed {
            // The caller stages the live entries (with the group's locators, once stored).
            setWatermark(.highestExecuted, executed, in: batch)
        }
        return (endOfEpoch, writeBack)
    }

    /// Checks that `summary` is the next checkpoint to execute.
    func checkExecutionOrder(_ summary: CheckpointSummary, state: WriterState) throws(StoreError) {
        let expected = try state.executed.map { (w) throws(StoreError) in try StoreKeys.successor(w.seq, "highestExecuted") } ?? 0
        guard summary.sequenceNumber == expected else {
            throw StoreError(.outOfOrder, "checkpoint \(summary.sequenceNumber) executed after \(state.executed.map { "\($0.seq)" } ?? "none")")
        }
    }

    /// Checks an executed epoch end's state root and object count against the certified ones
    /// and adds its completed record (and the pending-snapshot marker) to `batch`.
    func stageEpochEnd(
        _ summary: CheckpointSummary, _ end: EndOfEpochData, root: Digest, count: UInt64, into batch: WriteBatch, state: inout WriterState
    ) throws -> (UInt64, EpochRecord) {
        guard root == end.stateRoot, count == end.liveObjectCount else {
            throw StoreError(.executionFailed,
                "checkpoint \(summary.sequenceNumber): state root \(root.short) over \(count) objects, certified \(end.stateRoot.short) over \(end.liveObjectCount); execution stops here")
        }
        var record = try epochRecord(summary.epoch, state: &state) ?? EpochRecord(epoch: summary.epoch, firstCheckpoint: summary.sequenceNumber)
        record.lastCheckpoint = summary.sequenceNumber
        record.stateRoot = root
        record.liveObjectCount = count
        state.epochRecords[summary.epoch] = record
        batch.put(cf.epochs, StoreKeys.seq(summary.epoch), record.bcsBytes)
        if configuration.retainSnapshots > 0 {
            // The snapshot is built after this batch; the marker makes that survive a crash.
            batch.put(cf.meta, Self.pendingSnapshotKey, StoreKeys.seq(summary.epoch))
        }
        return (summary.epoch, record)
    }

    /// Applies checkpoints to `view` in order (DESIGN §5.4), adds the live-set changes and the
    /// `highestExecuted` watermark to `batch`, and checks the state root if the last one ends
    /// an epoch. Returns that epoch and its completed record.
    @discardableResult
    func stageExecution<C: BidirectionalCollection>(
        _ checkpoints: C, view: inout LiveObjectSet, touched: [ObjectID], into batch: WriteBatch, state: inout WriterState
    ) throws -> (UInt64, EpochRecord)? where C.Element: ExecutableCheckpoint {
        var endOfEpoch: (UInt64, EpochRecord)? = nil
        for cp in checkpoints {
            let summary = cp.certified.summary
            try checkExecutionOrder(summary, state: state)
            do {
                try view.apply(cp.data)
            } catch {
                throw StoreError(.executionFailed, error, context: "checkpoint \(summary.sequenceNumber)")
            }
            if let end = summary.endOfEpoch {
                precondition(checkpoints.last?.certified.summary.sequenceNumber == summary.sequenceNumber,
                             "an epoch end closes its execution group")
                let (root, count) = try stateRoot(overlay: view, touched: touched)
                endOfEpoch = try stageEpochEnd(summary, end, root: root, count: count, into: batch, state: &state)
            }
            state.executed = WatermarkValue(seq: summary.sequenceNumber, digest: cp.certified.digest)
        }
        stageLiveEntries(touched, of: view, into: batch)
        if let executed = state.executed { setWatermark(.highestExecuted, executed, in: batch) }
        return endOfEpoch
    }

    /// The state root of the committed live set with `touched` ids replaced by their state in
    /// `overlay`: ordered passes over `liveObjects` merged with the sorted overlay, one per
    /// range of the id space on each core (ids are SHA-256 outputs: the ranges hold about as
    /// many objects each), their leaf hashes then reduced to chunk roots on each core and the
    /// chunk roots to the root. Chunks of a power of two are nodes of the RFC 9162 tree, so
    /// this is the root of the tree over all leaves.
    func stateRoot(overlay: LiveObjectSet, touched: [ObjectID]) throws -> (Digest, UInt64) {
        try Self.root(ofRanges: try stateRootLeaves(overlay: overlay, touched: touched).leaves)
    }

    /// The ranges' leaf hashes of ``stateRoot(overlay:touched:)``, with each id's first 8 bytes.
    func stateRootLeaves(overlay: LiveObjectSet, touched: [ObjectID]) throws -> LeafIndex {
        let changed = touched.sorted()
        let parts = Self.stateRootParallelism
        // Range p holds the ids whose first byte is in [256·p/parts, 256·(p+1)/parts).
        let bounds: [[UInt8]?] = (0...parts).map { p in
            p == 0 || p == parts ? nil : [UInt8(256 * p / parts)] + [UInt8](repeating: 0, count: 31)
        }
        let ranges = try Self.onEveryCore(Array(0..<parts)) { p in
            try self.liveLeafHashes(from: bounds[p], to: bounds[p + 1], overlay: overlay, changed: changed)
        }
        return LeafIndex(prefixes: ranges.map(\.prefixes), leaves: ranges.map(\.leaves))
    }

    /// The root over the ranges' leaves, in order, and their count: 4,096-leaf chunk roots
    /// gathered across the ranges on every core, then the root over those.
    static func root(ofRanges leaves: [[Digest]]) throws -> (Digest, UInt64) {
        let parts = Self.stateRootParallelism
        let count = leaves.reduce(0) { $0 + $1.count }
        guard count > 0 else { return (Merkle.emptyRoot, 0) }
        // The ranges' leaves as one sequence, read in place (no joined copy): where range p starts.
        let starts = leaves.reduce(into: [0]) { $0.append($0[$0.count - 1] + $1.count) }
        let k = Self.stateRootChunk
        let chunks = (count + k - 1) / k
        let perPart = (chunks + parts - 1) / parts
        let sliceRoots = try Self.onEveryCore(Array(0..<parts)) { p in
            let lo = min(count, p * perPart * k), hi = min(count, (p + 1) * perPart * k)
            var chunk: [Digest] = []
            chunk.reserveCapacity(k)
            return stride(from: lo, to: hi, by: k).map { first in
                // A chunk's leaves, gathered across the ranges it straddles.
                chunk.removeAll(keepingCapacity: true)
                var i = first
                let end = min(first + k, hi)
                while i < end {
                    var r = 0
                    while starts[r + 1] <= i { r += 1 }
                    let upto = min(end, starts[r + 1])
                    chunk += leaves[r][(i - starts[r])..<(upto - starts[r])]
                    i = upto
                }
                return Merkle.root(leafHashes: chunk)
            }
        }
        return (Merkle.root(leafHashes: sliceRoots.joined()), UInt64(count))
    }

    /// The state root at an epoch end executed on the cached live set. With the cache's leaf
    /// index (the previous epoch end's leaves), the ids changed since are merged into it (one
    /// pass; the chunk roots then on every core): only their leaves are hashed and
    /// `liveObjects` is not read. Ids are compared
    /// by their first 8 bytes there, so two live ids sharing them (never on an honest chain:
    /// SHA-256 outputs) can give a wrong root; a root that is not the certified one is
    /// computed again the exact way before anything is concluded. The exact way (no index
    /// yet, or that case) reads `liveObjects` beside the changes since the last write-back and
    /// keeps its leaves as the index when they give the certified root.
    ///
    /// The changes it resolves (sorted, unique, looked up in the set) are left in
    /// `cache.resolvedDirty` when they are the write-back's too: `changed` and `dirty` are both
    /// suffixes of the same stream of changes (appended together, each reset on its own), so
    /// at equal lengths they are the same ids.
    func epochStateRoot(
        _ cache: inout LiveCache, dirty: [ObjectID], changed: inout [ObjectID], certified: (root: Digest, count: UInt64)
    ) throws -> (Digest, UInt64) {
        if let index = cache.leafIndex {
            cache.leafIndex = nil
            let resolved = ResolvedChanges(changed, in: cache.set)
            let same = changed.count == dirty.count
            changed = []
            let merged = Self.mergeLeaves(index, changed: resolved)
            let (root, count) = try Self.root(ofRanges: merged.leaves)
            if root == certified.root && count == certified.count {
                cache.leafIndex = merged
                if same { cache.resolvedDirty = resolved }
                return (root, count)
            }
        }
        changed = []
        let resolved = ResolvedChanges(dirty, in: cache.set)
        let index = try stateRootLeaves(overlay: cache.set, touched: resolved.ids)
        let (root, count) = try Self.root(ofRanges: index.leaves)
        if root == certified.root && count == certified.count { cache.leafIndex = index }
        cache.resolvedDirty = resolved
        return (root, count)
    }

    /// `index` with the ids of `changed` (sorted, repeats allowed) replaced by their state in
    /// `set` (absent: deleted). One pass over the index (a copy of 40 bytes an object) and a
    /// leaf hash per changed id: tens of milliseconds at 1.24 M objects.
    static func mergeLeaves(_ index: LeafIndex, changed: [ObjectID], set: LiveObjectSet) -> LeafIndex {
        mergeLeaves(index, changed: ResolvedChanges(changed, in: set))
    }

    /// ``mergeLeaves(_:changed:set:)`` with the changes already resolved.
    static func mergeLeaves(_ index: LeafIndex, changed: ResolvedChanges) -> LeafIndex {
        let ids = changed.ids
        let parts = min(index.prefixes.count, index.leaves.count)
        var out = LeafIndex(prefixes: [], leaves: [])
        var start = 0
        for p in 0..<parts {
            // Range p's changed ids: below the next range's first byte (the index's ranges).
            var end = start
            if p + 1 < parts {
                let bound = UInt64(256 * (p + 1) / parts) << 56
                while end < ids.count && ids[end].prefix64 < bound { end += 1 }
            } else {
                end = ids.count
            }
            let merged = mergeRange(index.prefixes[p], index.leaves[p], ids[start..<end], changed.states[start..<end])
            out.prefixes.append(merged.prefixes)
            out.leaves.append(merged.leaves)
            start = end
        }
        return out
    }

    /// One range of ``mergeLeaves(_:changed:)``: `ids` sorted and unique, `states` theirs.
    static func mergeRange(
        _ basePrefixes: [UInt64], _ baseLeaves: [Digest], _ ids: ArraySlice<ObjectID>, _ states: ArraySlice<VersionDigest?>
    ) -> (prefixes: [UInt64], leaves: [Digest]) {
        let n = min(basePrefixes.count, baseLeaves.count)
        var prefixes: [UInt64] = []
        var leaves: [Digest] = []
        prefixes.reserveCapacity(n + ids.count)
        leaves.reserveCapacity(n + ids.count)
        var i = 0
        for (id, state) in zip(ids, states) {
            let first = id.prefix64
            while i < n, basePrefixes[i] < first {
                prefixes.append(basePrefixes[i])
                leaves.append(baseLeaves[i])
                i += 1
            }
            // The id's previous leaf, if it was live, gives way to its new one (if still live).
            if i < n, basePrefixes[i] == first { i += 1 }
            if let vd = state {
                prefixes.append(first)
                leaves.append(ObjectRef(id: id, version: vd.version, digest: vd.digest).leafHash)
            }
        }
        if i < n {
            prefixes.append(contentsOf: basePrefixes[i..<n])
            leaves.append(contentsOf: baseLeaves[i..<n])
        }
        return (prefixes, leaves)
    }

    /// Cores a state root uses.
    static let stateRootParallelism = max(1, min(4, ProcessInfo.processInfo.activeProcessorCount))
    /// Leaves per chunk root of ``stateRoot(overlay:touched:)`` (a power of two).
    static let stateRootChunk = 4_096

    /// The leaf hashes of the live set in `[from, to)` in id order: `liveObjects` merged with
    /// the ids of `changed` (sorted) in that range, as `overlay` holds them (absent: deleted).
    func liveLeafHashes(from: [UInt8]?, to: [UInt8]?, overlay: LiveObjectSet, changed: [ObjectID]) throws -> (prefixes: [UInt64], leaves: [Digest]) {
        let lower = from.flatMap { Digest(bytes: $0) }, upper = to.flatMap { Digest(bytes: $0) }
        // The first index of `changed` at or after `id`.
        func firstIndex(atOrAfter id: ObjectID) -> Int {
            var lo = 0, hi = changed.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if changed[mid] < id { lo = mid + 1 } else { hi = mid }
            }
            return lo
        }
        var k = lower.map(firstIndex(atOrAfter:)) ?? 0
        let end = upper.map(firstIndex(atOrAfter:)) ?? changed.count
        var out: [Digest] = []
        var prefixes: [UInt64] = []
        // A set held whole in memory (a bulk catch-up's) sizes the output.
        out.reserveCapacity(overlay.count / Self.stateRootParallelism + 1_024)
        prefixes.reserveCapacity(overlay.count / Self.stateRootParallelism + 1_024)
        func emit(_ id: ObjectID, _ vd: VersionDigest) {
            out.append(ObjectRef(id: id, version: vd.version, digest: vd.digest).leafHash)
            prefixes.append(id.prefix64)
        }
        func emitChanged(_ id: ObjectID) {
            if let vd = overlay.objects[id] { emit(id, vd) }
        }
        try database.withIterator(cf.liveObjects, from: from, to: to) { it in
            while it.isValid {
                let (id, vd) = try liveEntry(it)
                while k < end && changed[k] < id {
                    emitChanged(changed[k])
                    k += 1
                }
                if k < end && changed[k] == id {
                    emitChanged(id)
                    k += 1
                } else {
                    emit(id, vd)
                }
                it.next()
            }
        }
        while k < end {
            emitChanged(changed[k])
            k += 1
        }
        return (prefixes, out)
    }

    static let pendingSnapshotKey = Array("pendingSnapshot".utf8)

    /// While a snapshot restore is in progress the live set is partial: nothing is committed
    /// or executed on top of it.
    func refuseDuringRestore() throws(StoreError) {
        if try restoreInProgressSync() {
            throw StoreError(.outOfOrder, "a snapshot restore is in progress in this store: finish it first (soma-node sync --snapshot)")
        }
    }

    /// The live-object entry under an iterator over `liveObjects`.
    func liveEntry(_ it: borrowing RocksIterator) throws(StoreError) -> (ObjectID, VersionDigest) {
        let entry: (Digest, VersionDigest)? = it.withKey { k in
            it.withValue { v in
                guard let id = Digest(bytes: k), let vd = StoreKeys.readVersionDigest(raw: v) else { return nil }
                return (id, vd)
            }
        }
        guard let entry else { throw StoreError(.badValue, "a live-object entry is malformed") }
        return entry
    }

    /// Work after an epoch end is committed: its snapshot and the pruning of old snapshots;
    /// `beside`: the build runs beside the next commits (``startSnapshotBuild(epoch:record:counts:)``);
    /// `counts`: the live ids per range of the epoch end (``buildSnapshotSync(epoch:record:counts:)``).
    func afterEpochEnd(_ epoch: UInt64, _ record: EpochRecord, beside: Bool = false, counts: [Int]? = nil) throws {
        guard configuration.retainSnapshots > 0 else { return }
        // During a catch-up the verified summaries (or the epoch chain) may already show a
        // later epoch end: the snapshot of an epoch the node is catching up past is skipped.
        // Nobody can be restoring it from this node (it never held it), a restore takes the
        // newest epoch, and the newest is built: the retained window fills again as epochs end.
        if let verified = try watermarkSync(.highestVerified), let tip = try summarySync(verified.seq) {
            var newestEnded: UInt64? = tip.summary.endOfEpoch != nil ? tip.summary.epoch : (tip.summary.epoch > 0 ? tip.summary.epoch - 1 : nil)
            if let hint = knownEpochEnd.withLock({ $0 }) { newestEnded = max(newestEnded ?? 0, hint) }
            if let newestEnded, newestEnded > epoch {
                let batch = WriteBatch(for: database)
                batch.delete(cf.meta, Self.pendingSnapshotKey)
                // Chunks adopted for this epoch, by this run or one that stopped before its end
                // (a catch-up that aimed at it before it saw a later end): it gets no manifest.
                _ = takeAdoptedSnapshot(epoch, record)
                batch.deleteRange(cf.snapshotChunks, from: StoreKeys.chunk(epoch, 0), to: StoreKeys.chunk(epoch, Self.manifestChunk))
                try database.write(batch, sync: configuration.syncWrites)
                return
            }
        }
        // A snapshot taken whole from a source during the catch-up: no build.
        if let manifest = takeAdoptedSnapshot(epoch, record) {
            try storeAdoptedSnapshot(manifest)
            return
        }
        if beside {
            try startSnapshotBuild(epoch: epoch, record: record, counts: counts)
        } else {
            try buildSnapshotSync(epoch: epoch, record: record, counts: counts)
        }
    }

    /// Builds the snapshot of `epoch` on a thread of its own while commits go on: it reads
    /// the live set as the epoch end left it, so every write of `liveObjects` (a write-back, a
    /// write-through batch, a commit that is not a bulk one, `executePending`, `close`) first
    /// waits for it (``waitForSnapshotBuild()``), and so does the next build. Its pending marker
    /// stays until its last batch, so a crash meanwhile builds it again at the next start (the
    /// live set is still that epoch's: nothing wrote it since). Called with the writer lock.
    func startSnapshotBuild(epoch: UInt64, record: EpochRecord, counts: [Int]? = nil) throws {
        try waitForSnapshotBuild()
        let task = ThreadJob<Void>(name: "snapshot-\(epoch)") { [self] in try buildSnapshotSync(epoch: epoch, record: record, counts: counts) }
        snapshotBuild.withLock { $0 = task }
    }

    /// Waits for the snapshot build that an epoch end's commit left running beside the next commits,
    /// if any; rethrows its failure (its marker stays: the build runs again at the next start).
    /// Snapshot reads never wait: until the build ends, its epoch is simply not served.
    public func finishSnapshotBuild() async throws {
        try await blocking { try self.writer.withLock { _ throws in try self.waitForSnapshotBuild() } }
    }

    /// ``finishSnapshotBuild()`` for callers that hold the writer lock.
    func waitForSnapshotBuild() throws {
        try snapshotBuild.withLock({ $0.take() })?.wait()
    }

    /// Finishes work a crash interrupted: a snapshot whose epoch end was committed but whose
    /// chunks were not all written. Runs before any further execution, so the live set is still
    /// that epoch's. Called with the writer lock held.
    func finishInterruptedWork() throws {
        guard let marker = try database.get(cf.meta, Self.pendingSnapshotKey), let epoch = StoreKeys.readU64(marker) else { return }
        if configuration.retainSnapshots > 0, let record = try epochSync(epoch), record.stateRoot != nil,
           let executed = try watermarkSync(.highestExecuted), executed.seq == record.lastCheckpoint {
            try buildSnapshotSync(epoch: epoch, record: record)
        } else {
            let batch = WriteBatch(for: database)
            batch.delete(cf.meta, Self.pendingSnapshotKey)
            try database.write(batch, sync: configuration.syncWrites)
        }
    }

    /// Executes checkpoints that are stored but not yet executed (after a restart, or when
    /// commit ran without execution), up to `maxCheckpoints`. Returns the new `highestExecuted`.
    public func executePending(maxCheckpoints: Int = .max) async throws -> UInt64? {
        try await blocking { try self.executePendingSync(maxCheckpoints: maxCheckpoints) }
    }

    func executePendingSync(maxCheckpoints: Int) throws -> UInt64? {
        try writer.withLock { _ throws in
            try finishPendingLiveEntries()
            try waitForSnapshotBuild()
            // A build owed (its marker left by a failed one) first: it reads the stored live
            // set, which the write-back would move past the epoch end.
            try finishInterruptedWork()
            try writeBackLiveCache()
            var state = WriterState(
                synced: try watermarkSync(.highestSynced), verified: try watermarkSync(.highestVerified),
                executed: try watermarkSync(.highestExecuted))
            guard let synced = state.synced, let executed = state.executed else { return state.executed?.seq }
            // Read back from the store: `next` never passes highestSynced, which must leave room for it.
            guard synced.seq < UInt64.max else { throw StoreError(.badValue, "highestSynced is \(synced.seq)") }
            var next = try StoreKeys.successor(executed.seq, "highestExecuted")
            var done = 0
            while next <= synced.seq && done < maxCheckpoints {
                var group: [StoredCheckpoint] = []
                while next <= synced.seq && group.count < Self.maxGroup && done < maxCheckpoints {
                    guard let summary = try summarySync(next), let data = try checkpointDataSync(next) else {
                        throw StoreError(.inconsistent, "checkpoint \(next) is below highestSynced but not stored")
                    }
                    // Verified before it was stored; read back from the store's own blocks.
                    group.append(StoredCheckpoint(certified: summary, data: data))
                    next += 1
                    done += 1
                    if summary.summary.endOfEpoch != nil { break }
                }
                let batch = WriteBatch(for: database)
                var (view, touched) = try loadView(for: group.map(\.data))
                let end = try stageExecution(group, view: &view, touched: touched, into: batch, state: &state)
                try database.write(batch, sync: configuration.syncWrites)
                if let (epoch, record) = end { try afterEpochEnd(epoch, record) }
            }
            return state.executed?.seq
        }
    }
}

/// Work on a thread of its own (a snapshot build beside the next commits, a group's history
/// and indexes beside its execution), waited for once for its result.
final class ThreadJob<Result>: @unchecked Sendable {
    /// Signalled once the work has ended.
    private let done = DispatchSemaphore(value: 0)
    /// Written by the job's thread before `done` is signalled, read only after waiting on it.
    private var outcome: Swift.Result<Result, any Error>?
    /// Set once a wait has seen the work end (waits come from one thread at a time).
    private var ended = false
    /// Set by the job's thread when the work has ended (a wait then returns at once).
    private let finished = Atomic<Bool>(false)

    /// Whether the work has ended.
    var isFinished: Bool { finished.load(ordering: .acquiring) }

    /// Starts `body` on a new thread named `name` (for `top -H` and profilers: Foundation's
    /// `Thread.name` does not reach the kernel on Linux; at most 15 bytes reach it).
    init(name: String, _ body: @escaping @Sendable () throws -> Result) {
        let thread = Thread { [self] in
            _ = String(name.prefix(15)).withCString { soma_name_thread($0) }
            outcome = Swift.Result { try body() }
            finished.store(true, ordering: .releasing)
            done.signal()
        }
        thread.name = name
        thread.start()
    }

    /// Waits for the work to end; its result, or its failure rethrown (again on later calls).
    func wait() throws -> Result {
        if !ended {
            done.wait()
            ended = true
        }
        return try outcome!.get()
    }
}
