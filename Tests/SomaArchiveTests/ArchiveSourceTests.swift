import Foundation
import SomaArchive
import SomaCore
import SomaNet
import SomaStore
import SomaSync
import SomaTestSupport
import Synchronization
import Testing

@Suite("Archives as sources of the sync scheduler", .serialized)
struct ArchiveSourceTests {
    @Test("an archive as a sync source: its manifest's range and snapshots, epoch ends, summaries and blocks across a segment boundary; a fresh store caught up by the scheduler from it alone; a snapshot restored from it")
    func source() async throws {
        try await ArchiveTests.withStore("archive-source") { store, genesis, chain, dir in
            let backend = try FolderBackend(root: dir.file("archive"))
            let manifest = try await ArchiveExport.run(store: store, to: backend, key: SigningKey.generate()).manifest
            let source = ArchiveSource(reader: ArchiveReader(backend: backend), chainID: genesis.chainID)
            let a = try await source.availability()
            #expect(a.lowestAvailable == manifest.ranges[0].first && a.highestSynced == manifest.ranges.last!.last)
            #expect(a.snapshotEpochs == (try await store.snapshotEpochs()) && !a.snapshotEpochs.isEmpty)
            // The epoch chain: the store's epoch ends, verified from the genesis committee.
            let ends = try await source.epochEndings(from: 0)
            #expect(ends.count == manifest.epochEnds.count && ends.count >= 3)
            #expect(try ChainVerifier.verifyEpochChain(genesis: genesis.committee, endOfEpochSummaries: ends).count == ends.count + 1)
            #expect(try await source.epochEndings(from: UInt64(ends.count)).isEmpty)
            // Summaries and blocks of a run across the first segment's end, as the store serves them.
            let boundary = manifest.ranges[0].last
            let summaries = try await source.summaries(from: boundary - 2, count: 5, allCertificates: true)
            #expect(summaries.summaries.map(\.sequenceNumber) == Array((boundary - 2)...(boundary + 2)))
            #expect(summaries.certificates.allSatisfy { $0 != nil })
            let items = try await source.blocks(from: boundary - 1, count: 3, timeout: nil)
            var seqs: [UInt64] = []
            for item in items where item.part == 0 { seqs.append(item.seq) }
            #expect(seqs == [boundary - 1, boundary, boundary + 1])
            for item in items {
                let stored = try #require(try await store.block(at: item.seq, part: item.part))
                #expect(stored.frame == item.block.frame && stored.parts == item.block.count)
            }
            // What it does not hold.
            await #expect(throws: RPCError.self) { _ = try await source.blocks(from: a.highestSynced + 1, count: 1, timeout: nil) }
            await #expect(throws: RPCError.self) { _ = try await source.snapshotManifest(epoch: 999) }

            // A fresh store from the archive alone, through the scheduler the peers use.
            let fresh = try await NodeStore.open(path: dir.file("fresh"))
            do {
                let pool = SourcePool(clients: [source], labels: ["archive"])
                let report = try await PeerSync(store: fresh, genesis: genesis, pool: pool).catchUp()
                #expect(report.tip == a.highestSynced && report.sources[0].checkpoints == report.checkpoints)
                #expect(report.sources[0].peerID == nil && report.sources[0].source == .archive(dir.file("archive")))
                let last = chain.last { $0.verified.certified.summary.sequenceNumber == report.tip }
                #expect(try await fresh.summary(at: report.tip) == last?.verified.certified)
                // The tip ends an epoch whose snapshot the archive holds: taken from it during
                // the catch-up (every chunk verified), not built after it; the store's own.
                let epoch = try #require(a.snapshotEpochs.last)
                #expect(ends.last?.summary.sequenceNumber == report.tip && ends.last?.summary.epoch == epoch)
                #expect(report.adoptedSnapshot == epoch)
                let kept = try #require(try await fresh.snapshotManifest(epoch: epoch))
                #expect(kept == (try await store.snapshotManifest(epoch: epoch)))
                for k in kept.chunkRoots.indices {
                    #expect(try await fresh.snapshotChunk(epoch: epoch, index: UInt32(k)) == (try await store.snapshotChunk(epoch: epoch, index: UInt32(k))))
                }
                #expect(try await fresh.snapshotEpochs() == [epoch])
            } catch {
                await fresh.close()
                throw error
            }
            await fresh.close()

            // From an archive without snapshots: the snapshot is built at the end, the same.
            let bare = try FolderBackend(root: dir.file("bare"))
            _ = try await ArchiveExport.run(store: store, to: bare, key: SigningKey.generate(), snapshots: false)
            let built = try await NodeStore.open(path: dir.file("built"))
            do {
                let pool = SourcePool(clients: [ArchiveSource(reader: ArchiveReader(backend: bare), chainID: genesis.chainID)], labels: ["bare"])
                let report = try await PeerSync(store: built, genesis: genesis, pool: pool).catchUp()
                #expect(report.tip == a.highestSynced && report.adoptedSnapshot == nil)
                try await built.finishSnapshotBuild()
                let epoch = try #require(a.snapshotEpochs.last)
                #expect(try await built.snapshotManifest(epoch: epoch) == (try await store.snapshotManifest(epoch: epoch)))
            } catch {
                await built.close()
                throw error
            }
            await built.close()

            // A snapshot restored from it (a pruned store), checked against the certified root.
            var pruned = StoreConfiguration()
            pruned.mode = .pruned
            let restored = try await NodeStore.open(path: dir.file("restored"), configuration: pruned)
            do {
                let restore = SnapshotRestore(store: restored, genesis: genesis, pool: SourcePool(clients: [source], labels: ["archive"]))
                let report = try #require(try await restore.restore(.latest))
                #expect(report.epoch == a.snapshotEpochs.last && report.chunks > 0)
                #expect(report.stateRoot == ends[Int(report.epoch)].summary.endOfEpoch?.stateRoot)
            } catch {
                await restored.close()
                throw error
            }
            await restored.close()

            // archive verify's snapshot pass: every chunk against the certified roots; a flipped
            // byte in a chunks file is named.
            let reader = ArchiveReader(backend: backend)
            let verified = try await reader.verifySnapshots(manifest, genesis: genesis)
            #expect(verified.map(\.epoch) == manifest.snapshots.map(\.epoch))
            let chunks = try #require(manifest.snapshots.last).data.name
            var bytes = try #require(FileManager.default.contents(atPath: dir.file("archive/\(chunks)")))
            bytes[bytes.count / 2] ^= 0x01
            try bytes.write(to: URL(fileURLWithPath: dir.file("archive/\(chunks)")))
            await #expect { _ = try await reader.verifySnapshots(manifest, genesis: genesis) } throws: { "\($0)".contains(chunks) }
        }
    }

    @Test("snapshot adoption in the store: refused for an epoch passed, another chunk size or a store keeping none; chunks short of the whole at the epoch end: built instead; chunks of an epoch caught up past: deleted")
    func adoption() async throws {
        var small = StoreConfiguration()
        small.snapshotChunkSize = 256
        // Groups of two chunks (the epochs here have 3 and 4): written a group at a time.
        small.adoptionGroupChunks = 2
        try await ArchiveTests.withStore("archive-adoption", configuration: small) { store, genesis, chain, dir in
            // The last epoch end's build, beside the commits, done (it drops the oldest snapshot).
            try await store.finishSnapshotBuild()
            let epochs = try await store.snapshotEpochs()
            let epoch = try #require(epochs.last)
            let manifest = try #require(try await store.snapshotManifest(epoch: epoch))
            let earlier = try #require(try await store.snapshotManifest(epoch: epochs[epochs.count - 2]))
            func verified(_ m: SnapshotManifest, _ k: Int) async throws -> VerifiedChunk {
                let frame = try #require(try await store.snapshotChunk(epoch: m.epoch, index: UInt32(k)), "epochs \(epochs), chunk \(k) of \(m.epoch) (\(m.chunkRoots.count))")
                return try m.verifyChunk(index: UInt32(k), frame: frame, proof: try m.proof(chunk: k), limit: 64 << 20)
            }
            #expect(try await store.beginSnapshotAdoption(manifest) == false)  // held already
            #expect(manifest.chunkRoots.count >= 4 && earlier.chunkRoots.count >= 2)
            var other = small
            other.snapshotChunkSize = 2 * Int(manifest.chunkSize)
            var none = small
            none.retainSnapshots = 0
            for (name, configuration) in [("size", other), ("none", none)] {
                let refusing = try await NodeStore.open(path: dir.file("refusing-\(name)"), configuration: configuration)
                try await refusing.initialize(genesis: genesis)
                let began = try await refusing.beginSnapshotAdoption(manifest)
                await refusing.close()
                #expect(began == false, "\(name)")
            }

            // Half of the last epoch's chunks adopted, and chunks of the epoch before it (which a
            // catch-up to the tip passes): the tip's snapshot is built, the earlier one's chunks go.
            let fresh = try await NodeStore.open(path: dir.file("fresh"), configuration: small)
            do {
                try await fresh.initialize(genesis: genesis)
                #expect(try await fresh.beginSnapshotAdoption(earlier))
                // A chunk is held until its group is complete, then the group is written.
                #expect(try await fresh.adoptSnapshotChunk(try await verified(earlier, 0), epoch: earlier.epoch))
                #expect(try await fresh.snapshotChunk(epoch: earlier.epoch, index: 0) == nil)
                #expect(try await fresh.adoptSnapshotChunk(try await verified(earlier, 1), epoch: earlier.epoch))
                #expect(try await fresh.adoptSnapshotChunk(try await verified(earlier, 1), epoch: earlier.epoch))  // again: nothing new
                for k in 0..<2 {
                    #expect(try await fresh.snapshotChunk(epoch: earlier.epoch, index: UInt32(k)) == (try await store.snapshotChunk(epoch: earlier.epoch, index: UInt32(k))))
                }
                #expect(try await fresh.beginSnapshotAdoption(manifest))
                // An adoption replaced: a chunk of the earlier one is refused.
                #expect(try await fresh.adoptSnapshotChunk(try await verified(earlier, 2), epoch: earlier.epoch) == false)
                #expect(try await fresh.snapshotChunk(epoch: earlier.epoch, index: 2) == nil)
                // Half of the last epoch's chunks (one group written, and one chunk held when odd).
                let half = manifest.chunkRoots.count / 2 + 1
                for k in 0..<half {
                    #expect(try await fresh.adoptSnapshotChunk(try await verified(manifest, k), epoch: epoch))
                }
                #expect(try await fresh.snapshotChunk(epoch: epoch, index: 0) == (try await store.snapshotChunk(epoch: epoch, index: 0)))
                #expect(half < manifest.chunkRoots.count)
                // As a catch-up does: the epoch chain says which end is the newest.
                fresh.noteVerifiedEpochEnd(epoch)
                try await fresh.commit(chain.map(\.verified))
                try await fresh.finishSnapshotBuild()
                #expect(fresh.lastAdoptedSnapshot == nil)
                #expect(try await fresh.snapshotManifest(epoch: epoch) == manifest)
                #expect(try await fresh.snapshotChunk(epoch: earlier.epoch, index: 0) == nil)
                #expect(try await fresh.snapshotEpochs() == [epoch])
                // The epoch end is past: nothing more is adopted for it.
                #expect(try await fresh.beginSnapshotAdoption(manifest) == false)
            } catch {
                await fresh.close()
                throw error
            }
            await fresh.close()
        }
    }

    @Test("an archive whose snapshot chunks are damaged (its segments intact), raced against an intact copy: the catch-up takes the last epoch end's snapshot from the intact copy, the damaged one is set aside for bad data naming the chunk")
    func damagedSnapshot() async throws {
        try await ArchiveTests.withStore("archive-damaged-snapshot") { store, genesis, _, dir in
            let (good, bad, manifest) = try await Self.twoCopies(of: store, in: dir)
            let last = try #require(manifest.snapshots.last)
            let path = dir.file("bad/\(last.data.name)")
            var chunks = try #require(FileManager.default.contents(atPath: path))
            for k in stride(from: 64, to: chunks.count, by: 512) { chunks[k] ^= 0x10 }
            try chunks.write(to: URL(fileURLWithPath: path))
            try await Self.race(bad, good, genesis: genesis, into: dir.file("fresh")) { report, fresh in
                #expect(report.tip == manifest.ranges.last!.last)
                #expect(report.adoptedSnapshot == last.epoch)
                #expect(report.sources[0].bannedForBadData && report.sources[0].banReason?.contains("snapshot chunk") == true, "\(report.sources)")
                let kept = try await fresh.snapshotManifest(epoch: last.epoch)
                let original = try await store.snapshotManifest(epoch: last.epoch)
                #expect(kept != nil && kept == original)
            }
        }
    }

    /// Two exports of `store` by one producer, `good/` and `bad/` in `dir` (the caller damages
    /// the bad one), and the manifest.
    static func twoCopies(of store: NodeStore, in dir: TempDir) async throws -> (good: FolderBackend, bad: FolderBackend, ArchiveManifest) {
        let key = SigningKey.generate()
        let good = try FolderBackend(root: dir.file("good"))
        let bad = try FolderBackend(root: dir.file("bad"))
        let manifest = try await ArchiveExport.run(store: store, to: good, key: key).manifest
        _ = try await ArchiveExport.run(store: store, to: bad, key: key)
        return (good, bad, manifest)
    }

    /// A fresh store at `path` caught up from `bad` and `good` raced (in that order); `check`
    /// with the report and the store, which is closed after it whatever happens.
    static func race(
        _ bad: FolderBackend, _ good: FolderBackend, genesis: Genesis, into path: String, _ check: (CatchUpReport, NodeStore) async throws -> Void
    ) async throws {
        let fresh = try await NodeStore.open(path: path)
        do {
            let pool = SourcePool(
                clients: [bad, good].map { ArchiveSource(reader: ArchiveReader(backend: $0), chainID: genesis.chainID) }, labels: ["bad", "good"])
            try await check(try await PeerSync(store: fresh, genesis: genesis, pool: pool).catchUp(), fresh)
        } catch {
            await fresh.close()
            throw error
        }
        await fresh.close()
    }

    @Test("a corrupt archive (a byte flipped in every segment) raced against an intact copy: set aside with the reason after its first bad answer; the sync finishes from the other; a missing summaries file likewise")
    func corruptSetAside() async throws {
        try await ArchiveTests.withStore("archive-corrupt-source") { store, genesis, _, dir in
            let (goodBackend, badBackend, manifest) = try await Self.twoCopies(of: store, in: dir)
            // Every segment and snapshot file of the bad copy damaged.
            for name in manifest.ranges.map(\.data.name) + manifest.snapshots.map(\.data.name) {
                let path = dir.file("bad/\(name)")
                var seg = try #require(FileManager.default.contents(atPath: path))
                for k in stride(from: 64, to: seg.count, by: 4_096) { seg[k] ^= 0x10 }
                try seg.write(to: URL(fileURLWithPath: path))
            }
            for (name, damage) in [("corrupt", { () async throws in }), ("missing", { try await badBackend.remove(manifest.ranges[0].summaries.name) })] {
                try await damage()
                try await Self.race(badBackend, goodBackend, genesis: genesis, into: dir.file("fresh-\(name)")) { report, _ in
                    #expect(report.tip == manifest.ranges.last!.last)
                    #expect(report.sources[0].banReason != nil && report.sources[0].bannedForBadData, "\(report.sources)")
                    #expect(report.sources[1].banReason == nil && report.sources[1].checkpoints > 0)
                    // The last epoch end's snapshot, from the intact copy.
                    #expect(report.adoptedSnapshot == manifest.snapshots.last?.epoch)
                }
            }
        }
    }
    @Test("an object store's reads in pages: every span of blocks and every snapshot chunk cut from the aligned pages that hold it (spans across two pages joined), each page read once while it is kept; a catch-up through pages equals the store; a page of another length is an error naming the file")
    func pagedReads() async throws {
        try await ArchiveTests.withStore("archive-pages") { store, genesis, _, dir in
            let folder = try FolderBackend(root: dir.file("archive"))
            let manifest = try await ArchiveExport.run(store: store, to: folder, key: SigningKey.generate()).manifest
            let range = manifest.ranges[0]
            let index = try SegmentIndex(Array(try #require(FileManager.default.contents(atPath: dir.file("archive/\(range.index.name)")))), dataSize: range.data.size)
            // Pages of a quarter of the first segment: several pages, several checkpoints each.
            let page = Int(range.data.size / 4)
            let starts = (0..<index.count).map { index.byteRange(of: $0..<($0 + 1)) }
            let across = starts.filter { $0.lowerBound / UInt64(page) != ($0.upperBound - 1) / UInt64(page) }
            #expect(!across.isEmpty && across.count < index.count / 4, "\(across.count) of \(index.count) checkpoints across pages")
            #expect(starts.allSatisfy { $0.count <= page })

            // Checkpoint by checkpoint, in order: each equals the store's, each page read once.
            let paged = PagedBackend(inner: folder, pageBytes: page)
            let source = ArchiveSource(reader: ArchiveReader(backend: paged), chainID: genesis.chainID)
            for k in 0..<index.count {
                let seq = range.first + UInt64(k)
                for item in try await source.blocks(from: seq, count: 1, timeout: nil) {
                    let stored = try #require(try await store.block(at: item.seq, part: item.part))
                    #expect(stored.frame == item.block.frame && stored.parts == item.block.count, "checkpoint \(seq) part \(item.part)")
                }
            }
            let reads = paged.reads.withLock { $0 }.filter { $0.name == range.data.name }
            #expect(reads.map(\.range.lowerBound) == Array(stride(from: 0, to: Int(range.data.size), by: page)))
            #expect(reads.allSatisfy { $0.range.count == min(page, Int(range.data.size) - $0.range.lowerBound) })

            // A span over a page is read as asked.
            let whole = try await source.blocks(from: range.first, count: UInt32(index.count), timeout: nil)
            #expect(whole.count >= index.count)
            #expect(paged.reads.withLock { $0 }.last.map { $0.name == range.data.name && $0.range == 0..<Int(index.dataEnd) } == true)

            // A catch-up through pages (blocks and the adopted snapshot's chunks) equals the store.
            let fresh = try await NodeStore.open(path: dir.file("fresh"))
            do {
                let chunked = PagedBackend(inner: folder, pageBytes: 4_096)
                let pool = SourcePool(clients: [ArchiveSource(reader: ArchiveReader(backend: chunked), chainID: genesis.chainID)], labels: ["paged"])
                let report = try await PeerSync(store: fresh, genesis: genesis, pool: pool).catchUp()
                #expect(report.tip == manifest.ranges.last!.last)
                let epoch = try #require(manifest.snapshots.last?.epoch)
                #expect(report.adoptedSnapshot == epoch)
                #expect(try await fresh.snapshotManifest(epoch: epoch) == (try await store.snapshotManifest(epoch: epoch)))
                #expect(try await fresh.summary(at: report.tip) == (try await store.summary(at: report.tip)))
                let dataFiles = Set(manifest.ranges.map(\.data.name) + manifest.snapshots.map(\.data.name))
                let pageReads = chunked.reads.withLock { $0 }.filter { dataFiles.contains($0.name) && $0.range.count <= 4_096 }
                #expect(!pageReads.isEmpty && pageReads.allSatisfy { $0.range.lowerBound % 4_096 == 0 })
            } catch {
                await fresh.close()
                throw error
            }
            await fresh.close()

            // A store that sends a page of another length (the file is not the one listed).
            let short = PagedBackend(inner: folder, pageBytes: page, dropLastByte: true)
            let failing = ArchiveSource(reader: ArchiveReader(backend: short), chainID: genesis.chainID)
            await #expect { _ = try await failing.blocks(from: range.first, count: 1, timeout: nil) } throws: {
                $0 is ArchiveError && "\($0)".contains(range.data.name)
            }
        }
    }
}

/// A folder read as an object store is: in pages of `pageBytes` (``ArchiveBackend/readPageBytes``),
/// every ranged read recorded; with `dropLastByte`, ranged reads of segment and snapshot data
/// come back a byte short.
final class PagedBackend: ArchiveBackend {
    let inner: FolderBackend
    let pageBytes: Int
    let dropLastByte: Bool
    let reads = Mutex<[(name: String, range: Range<Int>)]>([])

    init(inner: FolderBackend, pageBytes: Int, dropLastByte: Bool = false) {
        self.inner = inner
        self.pageBytes = pageBytes
        self.dropLastByte = dropLastByte
    }

    var description: String { "\(inner) in pages of \(pageBytes) bytes" }
    var readPageBytes: Int? { pageBytes }

    func write(_ name: String, bytes: [UInt8]) async throws { try await inner.write(name, bytes: bytes) }
    func write(_ name: String, size: Int, pieces: @escaping ArchivePieces.Read) async throws { try await inner.write(name, size: size, pieces: pieces) }
    func read(_ name: String, range: Range<Int>?, limit: Int) async throws -> [UInt8] {
        if let range { reads.withLock { $0.append((name, range)) } }
        let bytes = try await inner.read(name, range: range, limit: limit)
        return dropLastByte && range != nil && (name.hasSuffix(".seg") || name.hasSuffix(".chunks")) ? Array(bytes.dropLast()) : bytes
    }
    func size(_ name: String) async throws -> Int? { try await inner.size(name) }
    func list(prefix: String) async throws -> [ObjectInfo] { try await inner.list(prefix: prefix) }
    func remove(_ name: String) async throws { try await inner.remove(name) }
}
