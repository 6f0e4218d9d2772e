import Foundation
import SomaCore
import SomaDevnet
@testable import SomaStore
import SomaTestSupport
import Testing

/// The store's history in segments beside RocksDB (DESIGN §6.1): crash order, repair on open,
/// the old layout's migration, part proofs, pruning by whole segments.
@Suite("NodeStore: history segments and watermarks agree")
struct StoreLayoutTests {
    @Test("frames a crash appended ahead of highestSynced are cut on open; the next commit appends them again")
    func framesAheadAreCut() async throws {
        let dir = TempDir("layout-ahead")
        defer { dir.cleanup() }
        let (generator, checkpoints) = await makeChain()
        do {
            let store = try await NodeStore.open(path: dir.path)
            try await store.initialize(genesis: generator.genesis)
            try await store.commit(Array(checkpoints[0..<10]))
            // The crash: frames of 11...13 reached the segment, their batch never ran.
            try store.segments.append(checkpoints[10..<13].map { (seq: $0.certified.summary.sequenceNumber, frames: $0.frames) })
            #expect(store.segments.lastSeq == 13)
            #expect(try await store.blockFrames(at: 11).isEmpty, "frames ahead of the watermark are not visible")
            await store.close()
        }
        let store = try await NodeStore.open(path: dir.path)
        #expect(store.segments.lastSeq == 10)
        #expect(try await store.watermark(.highestSynced)?.seq == 10)
        try await store.commit(Array(checkpoints[10...]))
        #expect(try await store.blockFrames(at: 12) == checkpoints[11].frames)
        let report = try await store.verifyAll()
        #expect(report.replayedFromGenesis && report.checkpoints == UInt64(checkpoints.count + 1))
        await store.close()
    }

    @Test("segments that lost their tail lower highestSynced when nothing past it is executed; otherwise the open names the missing checkpoint")
    func lostTail() async throws {
        let dir = TempDir("layout-lost")
        defer { dir.cleanup() }
        let (generator, checkpoints) = await makeChain()
        do {
            let store = try await NodeStore.open(path: dir.path)
            try await store.initialize(genesis: generator.genesis)
            try await store.commit(Array(checkpoints[0..<5]))
            try await store.commit(Array(checkpoints[5..<20]), execute: false)
            await store.close()
        }
        let segments = try HistorySegments.open(directory: dir.path + "/segments")
        try segments.truncate(after: 12)
        segments.close()
        do {
            let store = try await NodeStore.open(path: dir.path)
            #expect(try await store.watermark(.highestSynced)?.seq == 12)
            #expect(try await store.watermark(.highestExecuted)?.seq == 5)
            try await store.commit(Array(checkpoints[12...]))
            #expect(try await store.verifyAll().replayedFromGenesis)
            await store.close()
        }
        // Below highestExecuted the watermark cannot come back.
        let again = try HistorySegments.open(directory: dir.path + "/segments")
        try again.truncate(after: 3)
        again.close()
        do {
            _ = try await NodeStore.open(path: dir.path)
            Issue.record("a store whose executed blocks are gone opened")
        } catch let error as StoreError {
            #expect(error.code == .inconsistent && error.message.contains("checkpoint 4: block missing"), "\(error)")
        }
    }

    @Test("a multi-part checkpoint keeps its part proofs in a skippable frame after its blocks; a store of the old layout (blocks in RocksDB) is moved into segments on open, and a read-only open says what to do")
    func partsAndMigration() async throws {
        let dir = TempDir("layout-old")
        defer { dir.cleanup() }
        let profile = DevnetProfile(name: "wide", validators: 4, epochs: 1, checkpoints: 3, transactionsPerCheckpoint: 2_100, accounts: 50)
        let (generator, checkpoints) = await makeChain(profile, seed: 2)
        #expect(checkpoints[0].frames.count == 3)
        var framesBefore: [[[UInt8]]] = []
        do {
            let store = try await NodeStore.open(path: dir.path)
            try await store.initialize(genesis: generator.genesis)
            try await store.commit(checkpoints)
            // Parts 0, 1, 2 and the proofs frame.
            #expect(store.segments.partCount(1) == 4)
            for part in UInt32(0)..<3 {
                #expect(try await store.partProof(at: 1, part: part) == checkpoints[0].proofs[Int(part)])
                #expect(try await store.block(at: 1, part: part)?.parts == 3)
            }
            #expect(try await store.block(at: 1, part: 3) == nil)
            #expect(try await store.checkpointData(at: 1) == checkpoints[0].data)
            // Back to the old layout: every block and part proof into RocksDB, no layout key.
            let db = store.database
            let blocks = try #require(db.columnFamily("blocks")), proofs = try #require(db.columnFamily("partProofs"))
            let meta = try #require(db.columnFamily("meta"))
            for seq in UInt64(0)...UInt64(checkpoints.count) {
                let frames = try await store.blockFrames(at: seq)
                framesBefore.append(frames)
                for (part, frame) in frames.enumerated() {
                    try db.put(blocks, StoreKeys.block(seq, part: UInt32(part)), frame)
                    if frames.count > 1 {
                        var w = BCSWriter()
                        w.write(try await store.partProof(at: seq, part: UInt32(part)))
                        try db.put(proofs, StoreKeys.block(seq, part: UInt32(part)), w.bytes)
                    }
                }
            }
            let batch = WriteBatch(for: db)
            batch.delete(meta, Array("layout".utf8))
            try db.write(batch)
            await store.close()
            try FileManager.default.removeItem(atPath: dir.path + "/segments")
        }
        var readOnly = StoreConfiguration()
        readOnly.database.readOnly = true
        do {
            _ = try await NodeStore.open(path: dir.path, configuration: readOnly)
            Issue.record("a store of the old layout opened read-only")
        } catch let error as StoreError {
            #expect(error.message.contains("open it once read-write"), "\(error)")
        }
        let store = try await NodeStore.open(path: dir.path)
        for seq in UInt64(0)...UInt64(checkpoints.count) {
            #expect(try await store.blockFrames(at: seq) == framesBefore[Int(seq)])
        }
        #expect(try await store.partProof(at: 2, part: 1) == checkpoints[1].proofs[1] && !checkpoints[1].proofs[1].isEmpty)
        #expect(try store.database.scan(try #require(store.database.columnFamily("blocks"))).isEmpty)
        #expect(try store.database.scan(try #require(store.database.columnFamily("partProofs"))).isEmpty)
        let report = try await store.verifyAll()
        #expect(report.replayedFromGenesis && report.checkpoints == UInt64(checkpoints.count + 1))
        await store.close()
        // A read-only open beside it now reads the segments.
        let reader = try await NodeStore.open(path: dir.path, configuration: readOnly)
        #expect(try await reader.blockFrames(at: UInt64(checkpoints.count)) == framesBefore.last)
        await reader.close()
    }

    @Test("an archive stores each object version once, as a 20-byte locator into its block (a pruned store keeps the encoding); reads, verify and the snapshot give the exact bytes; a tampered locator is named and never read past its block")
    func objectLocators() async throws {
        let dir = TempDir("layout-locators")
        defer { dir.cleanup() }
        // Three parts per checkpoint: locators name parts other than the first.
        let profile = DevnetProfile(name: "wide", validators: 4, epochs: 1, checkpoints: 3, transactionsPerCheckpoint: 2_100, accounts: 50)
        let (generator, checkpoints) = await makeChain(profile, seed: 2)
        let store = try await NodeStore.open(path: dir.path)
        try await store.initialize(genesis: generator.genesis)
        try await store.commit(Array(checkpoints[0..<2]), bulk: true)
        try await store.commit(Array(checkpoints[2...]))
        let objects = try #require(store.database.columnFamily("objects"))
        var parts = Set<UInt32>()
        var sample: (id: ObjectID, version: UInt64, locator: ObjectLocator)? = nil
        for cp in checkpoints {
            let seq = cp.certified.summary.sequenceNumber
            let blocks = try cp.frames.map { try LZ4Frame.decompress($0, limit: 1 << 28) }
            try cp.forEachOutput { object, encoding, location in
                let value = try #require(try store.database.get(objects, StoreKeys.object(object.id, version: object.version)))
                let locator = try #require(StoreKeys.readObjectLocator(value))
                #expect(locator == ObjectLocator(seq: seq, part: location.part, offset: location.offset, length: UInt32(encoding.count)))
                let block = blocks[Int(location.part)]
                #expect(Array(block[Int(location.offset)..<Int(location.offset) + encoding.count]) == Array(encoding))
                parts.insert(location.part)
                if sample == nil || location.part == 2 { sample = (object.id, object.version, locator) }
            }
        }
        #expect(parts == [0, 1, 2])
        let s = try #require(sample)
        let read = try #require(try await store.object(s.id, version: s.version))
        #expect(read.bcsBytes == Array(try LZ4Frame.decompress(checkpoints[Int(s.locator.seq) - 1].frames[Int(s.locator.part)], limit: 1 << 28)[Int(s.locator.offset)..<Int(s.locator.offset + s.locator.length)]))
        // The epoch end's snapshot was built from the blocks (it reproduces the certified root or
        // is not written). The epoch ended inside the bulk commit, so it was built beside the
        // next commit: until it is done, its epoch is simply not served.
        try await store.finishSnapshotBuild()
        #expect(try await store.snapshotEpochs() == [0])
        let manifest = try #require(try await store.snapshotManifest(epoch: 0))
        #expect(manifest.objectCount > 0)
        #expect(try await store.verifyAll().replayedFromGenesis)
        let key = StoreKeys.object(s.id, version: s.version)
        // A locator moved by one byte: verify names the object; the read fails cleanly.
        var moved = s.locator
        moved.offset += 1
        try store.database.put(objects, key, StoreKeys.objectLocator(moved))
        await #expect(throws: StoreError.self) { try await store.verifyAll() }
        await #expect(throws: StoreError.self) { _ = try await store.object(s.id, version: s.version) }
        // Past the end of its block, or into a checkpoint not held: a clear error, no read.
        for bad in [ObjectLocator(seq: s.locator.seq, part: s.locator.part, offset: UInt32.max, length: UInt32.max),
                    ObjectLocator(seq: 1 << 40, part: 0, offset: 0, length: 10),
                    ObjectLocator(seq: s.locator.seq, part: 9, offset: 0, length: 10)] {
            try store.database.put(objects, key, StoreKeys.objectLocator(bad))
            do {
                _ = try await store.object(s.id, version: s.version)
                Issue.record("a bad locator was followed")
            } catch let error as StoreError {
                #expect(error.message.contains("checkpoint"))
            }
        }
        try store.database.put(objects, key, StoreKeys.objectLocator(s.locator))
        #expect(try await store.verifyAll().replayedFromGenesis)
        await store.close()

        // A pruned store drops blocks before their live objects go: it keeps the encodings.
        let prunedDir = TempDir("layout-locators-pruned")
        defer { prunedDir.cleanup() }
        var config = StoreConfiguration()
        config.mode = .pruned
        let pruned = try await NodeStore.open(path: prunedDir.path, configuration: config)
        try await pruned.initialize(genesis: generator.genesis)
        try await pruned.commit(checkpoints, bulk: true)
        try checkpoints[0].forEachOutput { object, encoding, _ in
            let value = try pruned.database.get(try #require(pruned.database.columnFamily("objects")), StoreKeys.object(object.id, version: object.version))
            #expect(value == Array(encoding))
        }
        await pruned.close()
    }

    @Test("a bulk commit ingests the transaction index and object versions as sorted SST files: the store reads and verifies as one committed batch by batch, and a re-applied group changes nothing")
    func bulkCommit() async throws {
        let dir = TempDir("layout-bulk")
        defer { dir.cleanup() }
        let (generator, checkpoints) = await makeChain()
        let store = try await NodeStore.open(path: dir.path)
        try await store.initialize(genesis: generator.genesis)
        // A verified epoch end ahead (as a sync's epoch chain tells it) sizes the held set once.
        store.noteVerifiedLiveObjectCount(5_000)
        try await store.commit(Array(checkpoints[0..<12]), bulk: true)
        #expect(store.liveCache.withLock { $0?.set.objects.capacity ?? 0 } >= 5_000)
        // A crash after the ingestion, before the batch: the same group comes again.
        var runs = IndexRuns()
        for cp in checkpoints[12...] {
            for (i, d) in cp.transactionDigests.enumerated() { runs.transactions.append((d, cp.certified.summary.sequenceNumber, UInt32(i))) }
            // The lean enumeration names the objects, places and lengths the full one does.
            var full: [(ObjectID, UInt64, ObjectLocation, Int)] = []
            cp.forEachOutput { object, encoding, location in full.append((object.id, object.version, location, encoding.count)) }
            var lean: [(ObjectID, UInt64, ObjectLocation, Int)] = []
            cp.forEachOutputPlace { k, id, version, location, length in
                #expect(cp.objectEncoding(k).count == Int(length))
                lean.append((id, version, location, Int(length)))
                runs.objects.append((id, version, store.storedObject(cp, cp.certified.summary.sequenceNumber, k, location, length)))
            }
            #expect(lean.count == full.count && zip(lean, full).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 && $0.2 == $1.2 && $0.3 == $1.3 })
        }
        try store.ingest(runs)
        try await store.commit(Array(checkpoints[12..<20]), bulk: true)
        // Execution ran on the live set held in memory (checkpoints 13-20 of the tiny chain,
        // whose epoch ends at 19): written back at the epoch end only, so the stored set and
        // highestExecuted are checkpoint 19's, and checkpoint 20's changes are held in memory.
        let cached = try #require(store.liveCache.withLock { $0 })
        #expect(cached.executed?.seq == 20 && cached.pending == 1 && !cached.dirty.isEmpty)
        #expect(try await store.watermark(.highestExecuted)?.seq == 19)
        #expect(try await store.watermark(.highestSynced)?.seq == 20)
        let stored = try store.database.scan(try #require(store.database.columnFamily("liveObjects")))
        #expect(stored.count > 0)
        let objectsCF = try #require(store.database.columnFamily("objects"))
        var carried = 0
        for (k, v) in stored {
            let id = try #require(Digest(bytes: k))
            if !cached.dirty.contains(id) { #expect(cached.set.objects[id] == StoreKeys.readVersionDigest(v)) }
            // Written back by this bulk commit (an archive): the entry carries the locator that
            // `objects` stores for its live version.
            if v.count == StoreKeys.liveEntryWithLocatorSize {
                carried += 1
                let vd = try #require(StoreKeys.readVersionDigest(v))
                #expect(try store.database.get(objectsCF, StoreKeys.object(id, version: vd.version)) == Array(v[40...]))
            } else {
                #expect(v.count == 40)
            }
        }
        #expect(carried > 0, "live entries written back by a bulk commit carry locators")
        // A crash now loses what memory held: the next execution starts again from the stored
        // checkpoint 19 and reads checkpoint 20 back from the segments.
        store.liveCache.withLock { $0 = nil }
        #expect(try await store.executePending() == 20)
        try await store.commit(Array(checkpoints[20..<24]), bulk: true)
        #expect(store.liveCache.withLock { $0?.executed?.seq } == 24)
        // Near the tip the held set is written back and kept, then written through: after
        // each commit the stored set and highestExecuted are the held set's, nothing pending.
        let liveCF = try #require(store.database.columnFamily("liveObjects"))
        for range in [24..<26, 26..<checkpoints.count] {
            try await store.commit(Array(checkpoints[range]))
            let held = try #require(store.liveCache.withLock { $0 })
            #expect(held.pending == 0 && held.dirty.isEmpty && held.executed?.seq == UInt64(range.upperBound))
            #expect(try await store.watermark(.highestExecuted)?.seq == UInt64(range.upperBound))
            let stored = try store.database.scan(liveCF)
            #expect(stored.count == held.set.objects.count)
            for (k, v) in stored {
                #expect(held.set.objects[try #require(Digest(bytes: k))] == StoreKeys.readVersionDigest(v))
            }
            // The objects these checkpoints wrote that are still live carry their locators too.
            let byID = Dictionary(stored.map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a })
            var written: [(ObjectID, UInt64, [UInt8])] = []
            for cp in checkpoints[range] {
                try cp.forEachOutput { object, _, _ in
                    guard let v = byID[object.id.bytes], StoreKeys.readVersionDigest(v)?.version == object.version else { return }
                    written.append((object.id, object.version, v))
                }
            }
            #expect(!written.isEmpty)
            for (id, version, v) in written {
                #expect(v.count == StoreKeys.liveEntryWithLocatorSize, "object \(id.short) written near the tip")
                #expect(try store.database.get(objectsCF, StoreKeys.object(id, version: version)) == Array(v[40...]))
            }
        }
        // Storing without execution releases it.
        try await store.commit([], execute: false)
        #expect(store.liveCache.withLock { $0 == nil })
        let report = try await store.verifyAll()
        #expect(report.replayedFromGenesis && report.checkpoints == UInt64(checkpoints.count + 1))
        let entry = checkpoints[20].data.entries[1]
        #expect(try await store.transaction(entry.transaction.digest)?.seq == checkpoints[20].certified.summary.sequenceNumber)
        let object = try #require(entry.outputObjects.first)
        #expect(try await store.object(object.id, version: object.version) == object)
        let files = try store.database.integerProperty("rocksdb.num-files-at-level0", of: try #require(store.database.columnFamily("transactions")))
        #expect(files ?? 0 > 0, "the index arrived as files, not through the memtable")
        await store.close()
    }

    @Test("a store closed during a bulk catch-up writes the live set it holds in memory back: the next open executes nothing again")
    func bulkCloseWritesBack() async throws {
        let dir = TempDir("layout-bulk-close")
        defer { dir.cleanup() }
        let (generator, checkpoints) = await makeChain()
        let store = try await NodeStore.open(path: dir.path)
        try await store.initialize(genesis: generator.genesis)
        try await store.commit(Array(checkpoints[0..<12]), bulk: true)
        #expect(try await store.watermark(.highestExecuted)?.seq == 9)
        await store.close()
        let reopened = try await NodeStore.open(path: dir.path)
        #expect(try await reopened.watermark(.highestExecuted)?.seq == 12)
        #expect(try await reopened.executePending() == 12)
        try await reopened.commit(Array(checkpoints[12...]), bulk: true)
        let report = try await reopened.verifyAll()
        #expect(report.replayedFromGenesis && report.checkpoints == UInt64(checkpoints.count + 1))
        await reopened.close()
    }

    @Test("an epoch end near the tip builds its snapshot beside the commits; once the build has ended the next commit writes its live entries through (highestExecuted advances) instead of holding them")
    func nearTipBuildBeside() async throws {
        let dir = TempDir("layout-beside")
        defer { dir.cleanup() }
        let (generator, checkpoints) = await makeChain()
        let store = try await NodeStore.open(path: dir.path)
        try await store.initialize(genesis: generator.genesis)
        // Bulk (the live set loaded and held), then the epoch end (9) near the tip.
        try await store.commit(Array(checkpoints[0..<8]), bulk: true)
        try await store.commit(Array(checkpoints[8..<9]))
        #expect(try await store.watermark(.highestExecuted)?.seq == 9)
        // The build ends by itself (nobody waits for it here).
        let deadline = ContinuousClock.now + .seconds(30)
        while try await !store.snapshotEpochs().contains(0) && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(try await store.snapshotEpochs().contains(0))
        try await store.commit(Array(checkpoints[9..<10]))
        #expect(try await store.watermark(.highestExecuted)?.seq == 10, "written through once the build had ended")
        await store.close()
    }

    @Test("a snapshot still owed (its build failed: the marker stays) keeps the stored live set at its epoch end: close does not write held changes past it, and the next open builds it first")
    func owedSnapshotKeepsLiveSet() async throws {
        let dir = TempDir("layout-owed")
        defer { dir.cleanup() }
        let (generator, checkpoints) = await makeChain()
        let store = try await NodeStore.open(path: dir.path)
        try await store.initialize(genesis: generator.genesis)
        try await store.commit(Array(checkpoints[0..<9]), bulk: true)
        try await store.finishSnapshotBuild()
        // Held in memory past the epoch end (stored: 9).
        try await store.commit(Array(checkpoints[9..<12]), bulk: true)
        // As a failed build leaves it: the epoch's chunks gone, its marker in place.
        let meta = try #require(store.database.columnFamily("meta"))
        let chunks = try #require(store.database.columnFamily("snapshotChunks"))
        let batch = WriteBatch(for: store.database)
        batch.deleteRange(chunks, from: StoreKeys.seq(0), to: StoreKeys.seq(1))
        batch.put(meta, NodeStore.pendingSnapshotKey, StoreKeys.seq(0))
        try store.database.write(batch)
        #expect(try await store.snapshotEpochs() == [])
        await store.close()
        var readOnly = StoreConfiguration()
        readOnly.database.readOnly = true
        let peek = try await NodeStore.open(path: dir.path, configuration: readOnly)
        #expect(try await peek.watermark(.highestExecuted)?.seq == 9, "the held changes were not written past the owed epoch end")
        await peek.close()
        let reopened = try await NodeStore.open(path: dir.path)
        #expect(try await reopened.executePending() == 12)
        #expect(try await reopened.snapshotEpochs() == [0], "built again before the held changes were executed and written")
        #expect(try reopened.database.get(try #require(reopened.database.columnFamily("meta")), NodeStore.pendingSnapshotKey) == nil)
        let report = try await reopened.verifyAll()
        #expect(report.checkpoints == 13)
        await reopened.close()
    }

    @Test("a bulk write-back of many live entries is ingested as a sorted file after its batch; a crash between the two leaves a marker, and the next open ingests the file")
    func liveEntriesFile() async throws {
        let dir = TempDir("layout-live-file")
        defer { dir.cleanup() }
        let (generator, checkpoints) = await makeChain()
        var config = StoreConfiguration()
        config.liveFileMinimum = 1  // every bulk write-back through a file
        let store = try await NodeStore.open(path: dir.path, configuration: config)
        try await store.initialize(genesis: generator.genesis)
        try await store.commit(Array(checkpoints[0..<12]), bulk: true)
        // Written back at the epoch end (9) through a file: ingested, the marker gone.
        #expect(try await store.watermark(.highestExecuted)?.seq == 9)
        let meta = try #require(store.database.columnFamily("meta"))
        #expect(try store.database.get(meta, NodeStore.pendingLiveKey) == nil)
        #expect(!FileManager.default.fileExists(atPath: store.liveFileDirectory))
        try await store.commit(Array(checkpoints[12...]), bulk: true)
        let report = try await store.verifyAll()
        #expect(report.replayedFromGenesis && report.checkpoints == UInt64(checkpoints.count + 1))

        // A crash after a batch that names a file and before its ingestion: the file and the
        // marker are there, the live set is not yet the file's. Made by hand: every live
        // entry's version raised by one in the file.
        let live = try #require(store.database.columnFamily("liveObjects"))
        let before = try store.database.scan(live)
        var raised: [ObjectID: VersionDigest] = [:]
        for (k, v) in before {
            let vd = try #require(StoreKeys.readVersionDigest(v))
            raised[try #require(Digest(bytes: k))] = VersionDigest(version: vd.version + 1, digest: vd.digest)
        }
        // One more id deleted through the file: the first.
        let gone = try #require(Digest(bytes: before[0].0))
        raised[gone] = nil
        // Written at highestExecuted, as the batch naming a file sets it.
        let executed = try #require(try await store.watermark(.highestExecuted)).seq
        let name = try store.writeLiveEntriesFile(Array(raised.keys) + [gone], of: LiveObjectSet(raised), locatorRuns: [], at: executed)
        try store.database.put(meta, NodeStore.pendingLiveKey, Array(name.utf8))
        #expect(try await store.pendingLiveEntries() == name)
        await store.close()
        // A read-only look (inspect) is told the live set is behind; it finishes nothing.
        var readOnly = config
        readOnly.database.readOnly = true
        let look = try await NodeStore.open(path: dir.path, configuration: readOnly)
        #expect(try await look.pendingLiveEntries() == name)
        await look.close()
        let reopened = try await NodeStore.open(path: dir.path, configuration: config)
        #expect(try await reopened.pendingLiveEntries() == nil)
        #expect(try reopened.database.get(meta, NodeStore.pendingLiveKey) == nil)
        #expect(!FileManager.default.fileExists(atPath: reopened.liveFileDirectory))
        let after = try reopened.database.scan(live)
        #expect(after.count == before.count - 1)
        for (k, v) in after {
            #expect(StoreKeys.readVersionDigest(v) == raised[try #require(Digest(bytes: k))])
        }
        // A batch naming a file whose write failed here may still be in the log (its record
        // written, the sync failing): in this process nothing removes that file, not the next
        // write-back's file nor the next commit's look for a pending one; the next open, which
        // replays the log, ingests it if the marker is there.
        var lowered = raised
        for (id, vd) in raised { lowered[id] = VersionDigest(version: vd.version + 1, digest: vd.digest) }
        let failed = try reopened.writeLiveEntriesFile(Array(lowered.keys), of: LiveObjectSet(lowered), locatorRuns: [], at: executed)
        // A write-back again at the same checkpoint: a file of its own, the first untouched.
        let later = try reopened.writeLiveEntriesFile(Array(raised.keys), of: LiveObjectSet(raised), locatorRuns: [], at: executed)
        #expect(failed != later)
        try reopened.finishPendingLiveEntries()
        #expect(FileManager.default.fileExists(atPath: reopened.liveFileDirectory + "/" + failed))
        #expect(FileManager.default.fileExists(atPath: reopened.liveFileDirectory + "/" + later))
        try reopened.database.put(meta, NodeStore.pendingLiveKey, Array(failed.utf8))  // the replayed batch
        await reopened.close()
        let replayed = try await NodeStore.open(path: dir.path, configuration: config)
        #expect(!FileManager.default.fileExists(atPath: replayed.liveFileDirectory), "the named file ingested, the other removed")
        for (k, v) in try replayed.database.scan(live) {
            #expect(StoreKeys.readVersionDigest(v) == lowered[try #require(Digest(bytes: k))])
        }
        // A marker naming a file written at another checkpoint than highestExecuted (batches after
        // it hold newer entries): dropped, the file not ingested (it would cover them).
        let stale = try replayed.writeLiveEntriesFile(Array(raised.keys), of: LiveObjectSet(raised), locatorRuns: [], at: executed - 1)
        try replayed.database.put(meta, NodeStore.pendingLiveKey, Array(stale.utf8))
        try replayed.finishPendingLiveEntries()
        #expect(try await replayed.pendingLiveEntries() == nil)
        for (k, v) in try replayed.database.scan(live) {
            #expect(StoreKeys.readVersionDigest(v) == lowered[try #require(Digest(bytes: k))])
        }
        // Reopened again with the marker gone and stray files left: they go, nothing changes.
        FileManager.default.createFile(atPath: replayed.liveFileDirectory + "/live-7.sst", contents: Data([1, 2, 3]))
        await replayed.close()
        let again = try await NodeStore.open(path: dir.path, configuration: config)
        #expect(!FileManager.default.fileExists(atPath: again.liveFileDirectory))
        #expect(try again.database.scan(live).count == after.count)
        await again.close()
    }

    @Test("summaries verified ahead of their blocks across epoch ends leave a store that verifies at every point")
    func verifiesWithSummariesAhead() async throws {
        let dir = TempDir("layout-ahead-summaries")
        defer { dir.cleanup() }
        let (generator, checkpoints) = await makeChain()
        let store = try await NodeStore.open(path: dir.path)
        try await store.initialize(genesis: generator.genesis)
        try await store.commitSummaries(checkpoints.map(\.certified))
        #expect(try await store.verifyAll().summaries == UInt64(checkpoints.count + 1))
        try await store.commit(Array(checkpoints[0..<4]))
        #expect(try await store.verifyAll().checkpoints == 5)
        try await store.commit(Array(checkpoints[4...]))
        #expect(try await store.verifyAll().replayedFromGenesis)
        await store.close()
    }

    @Test("a snapshot whose scan is split by the epoch end's count of live ids per id range (chunks straddling the ranges) equals one split by a pass over the keys, with and without the previous snapshot; counts that are not the live set's are refused",
        arguments: [StoreMode.archive, .pruned])
    func snapshotSplitByRangeCounts(mode: StoreMode) async throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        let (_, store) = try await storeWithSnapshots(at: dir.path, mode: mode)
        let liveCF = try #require(store.database.columnFamily("liveObjects"))
        func chunks(_ epoch: UInt64) throws -> [[UInt8]] { try snapshotChunkValues(store, epoch) }
        let record = try #require(try store.epochSync(2))
        let built = try chunks(2)
        let ids = try store.database.scan(liveCF).map(\.key)
        #expect(ids.count == Int(record.liveObjectCount ?? 0))
        let previous = try #require(store.previousSnapshot(before: 2, chunkSize: 16))
        for n in [2, 3, 4] {
            // Range p: ids whose first byte is in [256·p/n, 256·(p+1)/n).
            let counts = (0..<n).map { p in ids.filter { Int($0[0]) >= 256 * p / n && Int($0[0]) < 256 * (p + 1) / n }.count }
            #expect(counts.contains { $0 % 16 != 0 }, "a range starts inside a chunk")
            #expect(try store.buildSnapshotSync(epoch: 2, record: record, previous: nil, counts: counts) == 0)
            #expect(try chunks(2) == built)
            #expect(try store.buildSnapshotSync(epoch: 2, record: record, previous: previous, counts: counts) > 0)
            #expect(try chunks(2) == built)
            // One id counted in the wrong range: the scan finds a range that does not start
            // where the counts say.
            var wrong = counts
            wrong[0] += 1
            wrong[n - 1] -= 1
            #expect(throws: StoreError.self) { try store.buildSnapshotSync(epoch: 2, record: record, previous: nil, counts: wrong) }
            // The build as the commits call it falls back to the pass over the keys.
            try store.buildSnapshotSync(epoch: 2, record: record, counts: wrong)
            #expect(try chunks(2) == built)
        }
        await store.close()
    }

    @Test("a snapshot built after the previous epoch's takes the unchanged objects from its chunks and equals one built from the blocks alone; a previous snapshot that lies is caught and the build falls back to the blocks (archive: objects as locators; pruned: as encodings)",
        arguments: [StoreMode.archive, .pruned])
    func snapshotReusesPrevious(mode: StoreMode) async throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        let (_, store) = try await storeWithSnapshots(at: dir.path, mode: mode)
        #expect(try await store.snapshotEpochs() == [1, 2])
        let chunksCF = try #require(store.database.columnFamily("snapshotChunks"))
        func chunks(_ epoch: UInt64) throws -> [[UInt8]] { try snapshotChunkValues(store, epoch) }
        let record = try #require(try store.epochSync(2))
        let built = try chunks(2)
        // Epoch 2 was built over epoch 1's snapshot; again now, then from the blocks alone.
        let previous = try #require(store.previousSnapshot(before: 2, chunkSize: 16))
        let reused = try store.buildSnapshotSync(epoch: 2, record: record, previous: previous)
        #expect(reused > 0 && reused < Int(record.liveObjectCount ?? 0), "\(reused) objects reused")
        #expect(try chunks(2) == built)
        #expect(try store.buildSnapshotSync(epoch: 2, record: record, previous: nil) == 0)
        #expect(try chunks(2) == built)
        // Epoch 1's chunks altered: the last byte of every object (its previous transaction)
        // flipped, ids and versions intact. Each reused object fails its live digest.
        var liars = 0
        for (key, frame) in try store.database.scan(chunksCF, from: StoreKeys.seq(1), to: StoreKeys.chunk(1, UInt32.max)) {
            var bytes = try LZ4Frame.decompress(frame, limit: 1 << 24)
            let ends = try BCS.read(from: bytes[...]) { (r: inout BCSReader) throws(CoreError) -> [Int] in
                let n = try r.readLength(minElementSize: 75)
                return try (0..<n).map { (_) throws(CoreError) in try r.skipObject().range.upperBound }
            }
            for end in ends { bytes[end - 1] ^= 0xFF }
            try store.database.put(chunksCF, key, LZ4Frame.compress(bytes))
            liars += ends.count
        }
        #expect(liars > 0)
        #expect(throws: StoreError.self) { try store.buildSnapshotSync(epoch: 2, record: record, previous: previous) }
        try store.buildSnapshotSync(epoch: 2, record: record)
        #expect(try chunks(2) == built)
        // A previous chunk that is not even a frame: the same.
        try store.database.put(chunksCF, StoreKeys.chunk(1, 0), [1, 2, 3])
        try store.buildSnapshotSync(epoch: 2, record: record)
        #expect(try chunks(2) == built)
        #expect(try await store.verifyAll().replayedFromGenesis)
        await store.close()
    }
}

/// The stored chunk values (and manifest) of `epoch`'s snapshot, in key order.
func snapshotChunkValues(_ store: NodeStore, _ epoch: UInt64) throws -> [[UInt8]] {
    let chunksCF = try #require(store.database.columnFamily("snapshotChunks"))
    return try store.database.scan(chunksCF, from: StoreKeys.seq(epoch), to: StoreKeys.seq(epoch + 1)).map(\.value)
}
