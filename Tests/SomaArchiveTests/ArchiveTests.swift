import Foundation
import SomaArchive
import SomaCore
import SomaDevnet
import SomaStore
import SomaSync
import SomaTestSupport
import Testing

@Suite("Archives: export, read back, verify from the genesis committee", .serialized)
struct ArchiveTests {
    /// A store holding a generated chain of 4 epochs (so 3 or more closed segments).
    static func store(_ dir: TempDir, configuration: StoreConfiguration = StoreConfiguration()) async throws -> (NodeStore, Genesis, [GeneratedCheckpoint]) {
        let profile = DevnetProfile(name: "archive", validators: 4, epochs: 4, checkpoints: 160, transactionsPerCheckpoint: 4, accounts: 16)
        let generator = ChainGenerator(profile: profile, seed: 21)
        let chain = await generator.generateAll(parallelism: 2)
        let store = try await NodeStore.open(path: dir.file("db"), configuration: configuration)
        try await store.initialize(genesis: generator.genesis)
        try await store.commit(chain.map(\.verified))
        return (store, generator.genesis, chain)
    }

    /// Runs `body` on a fresh store of the generated chain; the store is closed before its
    /// directory is removed, whatever `body` does.
    static func withStore(
        _ name: String, configuration: StoreConfiguration = StoreConfiguration(), _ body: (NodeStore, Genesis, [GeneratedCheckpoint], TempDir) async throws -> Void
    ) async throws {
        let dir = TempDir(name)
        let (store, genesis, chain) = try await Self.store(dir, configuration: configuration)
        do {
            try await body(store, genesis, chain, dir)
        } catch {
            await store.close()
            dir.cleanup()
            throw error
        }
        await store.close()
        dir.cleanup()
    }

    /// Every checkpoint of the archive through a fresh importer (no store: execution replayed in
    /// memory, state roots checked at each epoch end); the last checkpoint verified.
    static func verify(_ reader: ArchiveReader, genesis expected: Genesis) async throws -> UInt64 {
        let manifest = try #require(try await reader.manifest())
        let genesis = try await reader.genesis(manifest)
        #expect(genesis.chainID == expected.chainID)
        let importer = try await CheckpointImporter(genesis: genesis, store: nil, batchSize: 64, parallelism: 2, userSignatures: false)
        for range in manifest.ranges {
            for r in try await reader.records(range) {
                try await importer.add(SourceCheckpoint(certified: r.certified, frames: r.frames, proofs: r.proofs))
            }
        }
        try await importer.flush()
        return importer.tip.summary.sequenceNumber
    }

    @Test("a folder archive: every closed segment exported and verified from the genesis; a second export writes nothing; corrupt, missing and lying files are caught")
    func folder() async throws {
        try await Self.withStore("archive-export") { store, genesis, _, dir in
        let closed = store.segments.closedSegments()
        #expect(closed.count >= 3)
        let backend = try FolderBackend(root: dir.file("archive"))
        let producer = SigningKey.generate()
        let report = try await ArchiveExport.run(store: store, to: backend, key: producer)
        #expect(report.written.count == closed.count && report.kept == 0)
        #expect(report.manifest.ranges.map(\.first) == closed.map(\.first) && report.manifest.ranges.last?.last == closed.last?.last)
        let reader = ArchiveReader(backend: backend)
        #expect(try await Self.verify(reader, genesis: genesis) == closed.last!.last)
        // The segment files are the store's, byte for byte.
        #expect(FileManager.default.contents(atPath: closed[0].data) == FileManager.default.contents(atPath: dir.file("archive/\(report.manifest.ranges[0].data.name)")))
        // Again: nothing to write.
        let again = try await ArchiveExport.run(store: store, to: backend, key: producer)
        #expect(again.written.isEmpty && again.kept == closed.count && again.bytes == 0)

        let range = report.manifest.ranges[1]
        // A byte flipped in a segment: named, with its hash.
        let segPath = dir.file("archive/\(range.data.name)")
        var seg = try #require(FileManager.default.contents(atPath: segPath))
        seg[seg.count / 2] ^= 0x40
        try seg.write(to: URL(fileURLWithPath: segPath))
        await #expect { _ = try await reader.records(range) } throws: { "\($0)".contains(range.data.name) && "\($0)".contains("SHA-256") }
        try await backend.remove(range.data.name)
        await #expect { _ = try await reader.records(range) } throws: { "\($0)".contains(range.data.name) && "\($0)".contains("missing") }

        // A manifest changed without its producer's key: the signature fails.
        var tampered = report.manifest
        tampered.createdMs += 1
        try await backend.write(ArchiveManifest.fileName, bytes: tampered.bcsBytes)
        await #expect { _ = try await reader.manifest() } throws: { "\($0)".contains("not signed") }

        // A lying archive, consistent in itself: summaries forged (a checkpoint's timestamp
        // changed), hashes and manifest made to match and signed by the liar. Every file
        // checks out; the certificates do not, from the genesis committee.
        let fresh = try FolderBackend(root: dir.file("liar"))
        let honest = try await ArchiveExport.run(store: store, to: fresh, key: producer).manifest
        let liarReader = ArchiveReader(backend: fresh)
        var summaries = try await liarReader.records(honest.ranges[0]).map(\.certified)
        summaries[3].summary.timestampMs += 1
        var w = BCSWriter(capacity: 1 << 16)
        w.writeLength(summaries.count)
        for s in summaries { w.write(s) }
        try await fresh.write(honest.ranges[0].summaries.name, bytes: w.bytes)
        var ranges = honest.ranges
        ranges[0].summaries = ArchiveFile(name: ranges[0].summaries.name, bytes: w.bytes)
        let liar = ArchiveManifest(chainID: honest.chainID, genesis: honest.genesis, ranges: ranges, key: SigningKey.generate(), createdMs: 1)
        try await fresh.write(ArchiveManifest.fileName, bytes: liar.bcsBytes)
        #expect(try await liarReader.manifest()?.producer == liar.producer)
        await #expect(throws: (any Error).self) { _ = try await Self.verify(liarReader, genesis: genesis) }

        // A signed manifest whose numbers overflow: a range of 0...UInt64.max over real files,
        // sizes summing past UInt64.max. Refused with an error, never a trap.
        var huge = honest.ranges[0]
        huge.last = .max
        huge.end.summary.sequenceNumber = .max
        let overflowing = ArchiveManifest(chainID: honest.chainID, genesis: honest.genesis, ranges: [huge], key: SigningKey.generate(), createdMs: 2)
        try await fresh.write(ArchiveManifest.fileName, bytes: overflowing.bcsBytes)
        #expect(try await liarReader.manifest()?.ranges.first?.count == .max)
        await #expect(throws: ArchiveError.self) { _ = try await liarReader.records(huge) }
        var wide = honest.ranges[0]
        wide.data.size = .max
        wide.index.size = .max
        #expect(wide.bytes == .max)
        await #expect(throws: ArchiveError.self) { _ = try await liarReader.records(wide) }
        }
    }

    @Test("an export through a backend that asks for small pieces, shuffled and all at once, writes the files a whole write does (segments and snapshots), and they verify")
    func piecewise() async throws {
        try await Self.withStore("archive-pieces") { store, genesis, _, dir in
        let producer = SigningKey.generate()
        let whole = try await ArchiveExport.run(store: store, to: try FolderBackend(root: dir.file("whole")), key: producer)
        let backend = PiecewiseBackend(inner: try FolderBackend(root: dir.file("pieces")), pieceBytes: 1_001)
        let pieces = try await ArchiveExport.run(store: store, to: backend, key: producer)
        #expect(!whole.snapshots.isEmpty)
        #expect(whole.manifest.ranges == pieces.manifest.ranges && whole.manifest.snapshots == pieces.manifest.snapshots)
        let files = whole.manifest.ranges.flatMap { [$0.data, $0.index, $0.summaries] } + whole.manifest.snapshots.flatMap { [$0.data, $0.index, $0.manifest] }
        for file in files {
            let a = FileManager.default.contents(atPath: dir.file("whole/\(file.name)"))
            #expect(a != nil && a == FileManager.default.contents(atPath: dir.file("pieces/\(file.name)")), "\(file.name)")
        }
        // The large files went in many pieces (chunks of a snapshot spanning pieces, and the reverse).
        let largest = whole.manifest.snapshots.map(\.data.size).max() ?? 0
        #expect(largest > 4 * 1_001)
        let reader = ArchiveReader(backend: backend.inner)
        #expect(try await Self.verify(reader, genesis: genesis) == whole.manifest.ranges.last?.last)
        let verified = try await reader.verifySnapshots(try await reader.requiredManifest(), genesis: genesis)
        #expect(verified.map(\.epoch) == pieces.manifest.snapshots.map(\.epoch))
        }
    }

    @Test("a segment's files from an archive are checked record by record: partial records, disorder, frames past the data or not back to back, data left over, two-frame checkpoints")
    func segmentFiles() async throws {
        try await Self.withStore("archive-segment") { store, _, chain, _ in
        let closed = try #require(store.segments.closedSegments().first)
        let data = Array(try #require(FileManager.default.contents(atPath: closed.data)))
        let index = Array(try #require(FileManager.default.contents(atPath: closed.index)))
        let checkpoints = try SegmentFile.checkpoints(data: data, index: index)
        #expect(checkpoints.first?.seq == closed.first && checkpoints.last?.seq == closed.last)
        // The stored blocks of each checkpoint, as generated (the chain starts after the genesis's checkpoint 0).
        for cp in checkpoints where cp.seq > 0 {
            #expect(cp.frames == chain[Int(cp.seq) - 1].verified.frames, "checkpoint \(cp.seq)")
        }
        func record(_ i: Int) -> [UInt8] { Array(index[(i * 24)..<((i + 1) * 24)]) }
        func refused(_ d: [UInt8], _ x: [UInt8], _ why: String) {
            #expect(throws: StoreError.self, "\(why)") { try SegmentFile.checkpoints(data: d, index: x) }
        }
        refused(data, Array(index.dropLast(5)), "a partial record")
        refused(data, record(1) + record(0) + Array(index.dropFirst(48)), "records swapped")
        refused(Array(data.prefix(data.count - 1)), index, "the last frame past the data")
        refused(data + [0], index, "data left over")
        refused(data, Array(index.dropFirst(24)), "a first frame not at offset 0")
        var bigger = index
        bigger[12] &+= 1  // the first frame one byte longer: the next is not right after it
        refused(data, bigger, "frames not back to back")
        var skipped = index
        skipped[24] &+= 1  // the second checkpoint's number skips one (a single-part first checkpoint)
        if checkpoints[0].frames.count == 1 { refused(data, skipped, "a checkpoint skipped") }
        #expect(try SegmentFile.checkpoints(data: [], index: []).isEmpty)
        // A checkpoint of two frames: neither one block nor blocks with their proofs frame.
        func rec(_ seq: UInt64, _ part: UInt32, _ length: UInt32, _ offset: UInt64) -> [UInt8] {
            withUnsafeBytes(of: seq.littleEndian, Array.init) + withUnsafeBytes(of: part.littleEndian, Array.init)
                + withUnsafeBytes(of: length.littleEndian, Array.init) + withUnsafeBytes(of: offset.littleEndian, Array.init)
        }
        refused([UInt8](repeating: 1, count: 16), rec(5, 0, 8, 0) + rec(5, 1, 8, 8), "two frames")
        #expect(try SegmentFile.checkpoints(data: [UInt8](repeating: 1, count: 16), index: rec(5, 0, 8, 0) + rec(6, 0, 8, 8)).map(\.seq) == [5, 6])
        }
    }

    @Test("an archive in a SeaweedFS bucket: exported, listed and verified from the genesis committee")
    func bucket() async throws {
        try await Self.withStore("archive-s3") { store, genesis, _, _ in
        let s3 = try await SeaweedFS.start()
        defer { s3.stop() }
        let client = try S3Client(
            endpoint: s3.endpoint, bucket: "soma-archive", region: "us-east-1",
            credentials: S3Credentials(accessKeyID: s3.accessKey, secretAccessKey: s3.secretKey))
        try await client.createBucket()
        let backend = try S3Backend(client: client, prefix: "devnet/archive")
        let report = try await ArchiveExport.run(store: store, to: backend, key: SigningKey.generate())
        let closed = store.segments.closedSegments()
        #expect(report.written.count == closed.count)
        #expect(try await Self.verify(ArchiveReader(backend: backend), genesis: genesis) == closed.last!.last)
        let listed = try await backend.list(prefix: "segments/")
        #expect(listed.count == 2 * closed.count)
        }
    }
}

/// A backend that asks for a file written piece by piece in pieces of `pieceBytes`, shuffled
/// and all at once, then stores it whole in `inner`.
struct PiecewiseBackend: ArchiveBackend {
    let inner: FolderBackend
    let pieceBytes: Int

    var description: String { "pieces of \(pieceBytes) bytes into \(inner)" }

    func write(_ name: String, bytes: [UInt8]) async throws { try await inner.write(name, bytes: bytes) }

    func write(_ name: String, size: Int, pieces: @escaping ArchivePieces.Read) async throws {
        let starts = Array(stride(from: 0, to: size, by: pieceBytes))
        let step = pieceBytes
        let got = try await withThrowingTaskGroup(of: (Int, [UInt8]).self) { group in
            for start in starts.shuffled() {
                group.addTask { (start, try await pieces(start, min(step, size - start))) }
            }
            var out: [Int: [UInt8]] = [:]
            for try await (start, bytes) in group { out[start] = bytes }
            return out
        }
        var bytes: [UInt8] = []
        for start in starts {
            let piece = try #require(got[start])
            #expect(piece.count == min(step, size - start))
            bytes += piece
        }
        try await inner.write(name, bytes: bytes)
    }

    func read(_ name: String, range: Range<Int>?, limit: Int) async throws -> [UInt8] { try await inner.read(name, range: range, limit: limit) }
    func size(_ name: String) async throws -> Int? { try await inner.size(name) }
    func list(prefix: String) async throws -> [ObjectInfo] { try await inner.list(prefix: prefix) }
    func remove(_ name: String) async throws { try await inner.remove(name) }
}
