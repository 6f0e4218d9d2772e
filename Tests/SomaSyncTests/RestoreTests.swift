import NIOCore
import SomaCore
import SomaNet
import SomaStore
import SomaSync
import SomaTestSupport
import Synchronization
import Testing

/// How a test peer's snapshot answers misbehave.
enum SnapshotFault: Sendable, Equatable {
    case none
    /// Changes a byte of one object in every chunk (it still decodes).
    case wrongObject
    /// Leaves one object out of every chunk.
    case missingObject
    /// Flips a byte of every chunk's subtree proof.
    case wrongProof
    /// Serves a manifest whose first chunk root is wrong.
    case badManifest
    /// Refuses every chunk at once (`unavailable`).
    case refuseChunks
}

/// Serves a store's history, its snapshot answers altered as told; counts the chunks asked.
final class SnapshotService: HistoryServing {
    let inner: HistoryService
    let fault: SnapshotFault
    let asked = Mutex<[UInt32]>([])

    init(store: NodeStore, fault: SnapshotFault = .none) {
        inner = HistoryService(store: store)
        self.fault = fault
    }

    func handle(method: UInt16, payload: [UInt8]) async -> Result<ByteBuffer, RPCError> {
        let answer = await inner.handle(method: method, payload: payload)
        guard case .success(let buffer) = answer else { return answer }
        let bytes = Array(buffer.readableBytesView)
        if method == Method.getSnapshotManifest.rawValue, fault == .badManifest, var m = try? SnapshotManifest(bcsBytes: bytes) {
            m.chunkRoots[0] = Hashing.sha256(m.chunkRoots[0].bytes)
            return .success(ByteBuffer(bytes: m.bcsBytes))
        }
        guard method == Method.getSnapshotChunk.rawValue, let request = try? SnapshotRequest(bcsBytes: payload) else { return answer }
        asked.withLock { $0.append(request.index) }
        guard var proven = try? ProvenFrame(bcsBytes: bytes) else { return answer }
        switch fault {
        case .none, .badManifest:
            return answer
        case .refuseChunks:
            return .failure(.unavailable("not now"))
        case .wrongProof:
            guard !proven.proof.isEmpty else { return answer }
            proven.proof[0] = Hashing.sha256(proven.proof[0].bytes)
        case .wrongObject:
            guard var raw = try? LZ4Frame.decompress(proven.frame, limit: 1 << 26) else { return answer }
            // The last object's previous-transaction digest: the chunk still decodes.
            raw[raw.count - 5] ^= 0x5A
            proven.frame = LZ4Frame.compress(raw)
        case .missingObject:
            guard let raw = try? LZ4Frame.decompress(proven.frame, limit: 1 << 26),
                  let objects = try? BCS.read(from: raw[...], { (r: inout BCSReader) throws(CoreError) in
                      let n = try r.readLength()
                      var out: [[UInt8]] = []
                      for _ in 0..<n { out.append(try r.readObjectEncoding().bytes) }
                      return out
                  })
            else { return answer }
            var w = BCSWriter(capacity: raw.count)
            w.writeLength(objects.count - 1)
            for (k, o) in objects.enumerated() where k != objects.count / 2 { w.writeRaw(o) }
            proven.frame = LZ4Frame.compress(w.bytes)
        }
        return .success(ByteBuffer(bytes: proven.bcsBytes))
    }

    func blockItem(seq: UInt64, part: UInt32) async -> Result<(ByteBuffer, UInt32)?, RPCError> {
        await inner.blockItem(seq: seq, part: part)
    }
}

@Suite("Snapshot restore from real peers on loopback", .serialized)
struct RestoreTests {
    static let chunkSize = 64

    func restoreSettings() -> RestoreConfiguration {
        var c = RestoreConfiguration()
        c.requestTimeout = .seconds(2)
        c.minHedgeDelay = .milliseconds(200)
        return c
    }

    func prunedStore(_ net: SyncNetwork, _ name: String) async throws -> NodeStore {
        var config = StoreConfiguration()
        config.mode = .pruned
        config.snapshotChunkSize = Self.chunkSize
        return try await NodeStore.open(path: net.dir.file(name), configuration: config)
    }

    /// Every live entry of a store, in id order.
    func liveSet(_ store: NodeStore) throws -> [[UInt8]] {
        try store.database.scan(try #require(store.database.columnFamily("liveObjects"))).map { $0.key + $0.value }
    }

    @Test("a fresh store restores the newest snapshot from 3 peers at once; its live set, root and watermarks are the source's, and it serves the snapshot itself")
    func threePeers() async throws {
        let net = await SyncNetwork()
        let source = try await net.sourceStore("source", snapshotChunkSize: Self.chunkSize)
        #expect(try await source.snapshotEpochs() == [1, 2])
        var clients: [PeerClient] = []
        for k in 0..<3 {
            let port = try await net.serve(SnapshotService(store: source), bytesPerSecond: 3_000_000, key: k)
            clients.append(try await net.connect(port))
        }
        let fresh = try await prunedStore(net, "fresh")
        let restore = SnapshotRestore(store: fresh, genesis: net.genesis, pool: SourcePool(clients: clients, labels: ["a", "b", "c"]), configuration: restoreSettings())
        let progress = Mutex<[Int]>([])
        let report = try #require(try await restore.restore(.latest) { p in progress.withLock { $0.append(p.chunksDone) } })
        let manifest = try #require(try await source.snapshotManifest(epoch: 2))
        #expect(report.epoch == 2 && report.checkpoint == manifest.lastCheckpoint)
        #expect(report.chunks == manifest.chunkRoots.count && report.fetched == report.chunks && report.chunks > 8)
        #expect(report.objects == Int(manifest.objectCount) && report.agreeingSources == 3)
        #expect(report.sources.allSatisfy { $0.checkpoints > 0 && $0.banReason == nil }, "every peer served chunks: \(report.sources)")
        #expect(progress.withLock { $0.last } == report.chunks)
        #expect(try liveSet(fresh) == liveSet(source))
        let marks = try await fresh.watermarks()
        let tip = WatermarkValue(seq: manifest.lastCheckpoint, digest: try #require(try await source.summary(at: manifest.lastCheckpoint)).digest)
        #expect(marks[.highestSynced] == tip && marks[.highestExecuted] == tip && marks[.highestVerified] == tip)
        #expect(marks[.lowestAvailable]?.seq == manifest.lastCheckpoint + 1)
        #expect(try await fresh.restoredEpoch() == 2)
        #expect(try await fresh.restoreState() == nil)
        // It serves the snapshot it restored, with the same manifest and chunk bytes.
        #expect(try await fresh.snapshotEpochs() == [2])
        #expect(try await fresh.snapshotManifest(epoch: 2) == manifest)
        #expect(try await fresh.snapshotChunk(epoch: 2, index: 3) == source.snapshotChunk(epoch: 2, index: 3))
        let verification = try await fresh.verifyAll()
        #expect(verification.stateRoots == [2] && verification.liveObjects == manifest.objectCount)
        // A second restore is a no-op: the store already holds its checkpoints.
        #expect(try await restore.restore(.latest) == nil)
        for c in clients { await c.close() }
        await fresh.close()
        await net.stop()
    }

    @Test("after restoring epoch 1's snapshot, checkpoint sync executes the rest: the live set and every state root equal those of a node that replayed all of history")
    func restoreThenExecute() async throws {
        let net = await SyncNetwork()
        let source = try await net.sourceStore("source", snapshotChunkSize: Self.chunkSize)
        var clients: [PeerClient] = []
        for k in 0..<2 { clients.append(try await net.connect(try await net.serve(SnapshotService(store: source), key: k))) }
        let fresh = try await prunedStore(net, "fresh")
        let pool = SourcePool(clients: clients, labels: ["a", "b"])
        let report = try #require(try await SnapshotRestore(store: fresh, genesis: net.genesis, pool: pool, configuration: restoreSettings()).restore(.epoch(1)))
        #expect(report.epoch == 1)
        var sync = SyncConfiguration()
        sync.summaryBatch = 100
        let caught = try await PeerSync(store: fresh, genesis: net.genesis, pool: pool, configuration: sync).catchUp()
        #expect(caught.tip == net.tip)
        #expect(caught.checkpoints == Int(caught.tip - report.checkpoint), "only the checkpoints after the snapshot were fetched")
        #expect(try liveSet(fresh) == liveSet(source), "the same live set as the full replay")
        let a = try await source.watermarks(), b = try await fresh.watermarks()
        #expect(a[.highestExecuted] == b[.highestExecuted])
        let sourceEpochs = try await source.epochs(), freshEpochs = try await fresh.epochs()
        let ended = try #require(sourceEpochs.first { $0.epoch == 2 })
        #expect(freshEpochs.first { $0.epoch == 2 } == ended && ended.stateRoot != nil, "epoch 2's end: the same certified root, executed on the restored set")
        #expect(sourceEpochs.last == freshEpochs.last)
        // Epoch 2's end was the last commit: its snapshot is built beside, done once waited for.
        try await fresh.finishSnapshotBuild()
        #expect(try await source.snapshotManifest(epoch: 2) == fresh.snapshotManifest(epoch: 2), "it built the next epoch's snapshot itself")
        // Blocks after the snapshot are the source's, byte for byte.
        for seq in (report.checkpoint + 1)...caught.tip {
            #expect(try await source.blockFrames(at: seq) == fresh.blockFrames(at: seq), "blocks of \(seq)")
        }
        let verification = try await fresh.verifyAll()
        #expect(verification.checkpoints == caught.tip - report.checkpoint && verification.stateRoots.contains(2))
        for c in clients { await c.close() }
        await fresh.close()
        await net.stop()
    }

    @Test("sources sending a wrong object, a missing object, a wrong proof or a manifest that disagrees with the certified root are banned; the restore finishes from the honest one and stores nothing bad")
    func badSources() async throws {
        let net = await SyncNetwork()
        let source = try await net.sourceStore("source", snapshotChunkSize: Self.chunkSize)
        let faults: [SnapshotFault] = [.wrongObject, .missingObject, .wrongProof, .badManifest, .none]
        var clients: [PeerClient] = []
        for (k, fault) in faults.enumerated() {
            // The honest peer is slow, so that the faulty ones are asked too.
            let port = try await net.serve(SnapshotService(store: source, fault: fault), bytesPerSecond: fault == .none ? 2_000_000 : nil, key: k)
            clients.append(try await net.connect(port))
        }
        let labels = ["wrongObject", "missingObject", "wrongProof", "badManifest", "honest"]
        let bans = Mutex<[String: String]>([:])
        let pool = SourcePool(clients: clients, labels: labels, onBan: { label, reason in bans.withLock { $0[label] = reason } })
        let fresh = try await prunedStore(net, "fresh")
        let report = try #require(try await SnapshotRestore(store: fresh, genesis: net.genesis, pool: pool, configuration: restoreSettings()).restore())
        #expect(report.agreeingSources == 4, "the bad manifest was refused")
        let banned = bans.withLock { $0 }
        #expect(Set(banned.keys) == ["wrongObject", "missingObject", "wrongProof", "badManifest"], "\(banned)")
        #expect(banned["badManifest"]?.contains("manifest") == true, "\(banned)")
        #expect(banned["missingObject"]?.contains("objects, the chunk holds") == true, "\(banned)")
        #expect(banned["wrongProof"]?.contains("subtree proof") == true, "\(banned)")
        #expect(banned["wrongObject"]?.contains("chunk") == true, "\(banned)")
        let byLabel = Dictionary(uniqueKeysWithValues: report.sources.map { ($0.label, $0) })
        #expect(byLabel["honest"]?.banReason == nil && byLabel["honest"]?.checkpoints == report.chunks, "every chunk came from the honest peer")
        #expect(try liveSet(fresh) == liveSet(source))
        _ = try await fresh.verifyAll()
        for c in clients { await c.close() }
        await fresh.close()
        await net.stop()
    }

    @Test("a source that refuses every chunk at once is set aside after 3 refusals; the others finish the restore")
    func refusingSource() async throws {
        let net = await SyncNetwork()
        let source = try await net.sourceStore("source", snapshotChunkSize: Self.chunkSize)
        let refusing = try await net.connect(try await net.serve(SnapshotService(store: source, fault: .refuseChunks), key: 0))
        let honest = try await net.connect(try await net.serve(SnapshotService(store: source), bytesPerSecond: 2_000_000, key: 1))
        let fresh = try await prunedStore(net, "fresh")
        let pool = SourcePool(clients: [refusing, honest], labels: ["refusing", "honest"])
        let report = try #require(try await SnapshotRestore(store: fresh, genesis: net.genesis, pool: pool, configuration: restoreSettings()).restore())
        let byLabel = Dictionary(uniqueKeysWithValues: report.sources.map { ($0.label, $0) })
        #expect(byLabel["refusing"]?.banReason?.contains("3 requests in a row failed") == true, "\(report.sources)")
        #expect(byLabel["honest"]?.checkpoints == report.chunks)
        #expect(try liveSet(fresh) == liveSet(source))
        for c in [refusing, honest] { await c.close() }
        await fresh.close()
        await net.stop()
    }

    @Test("a restore of another epoch replaces the one in progress; one whose chunks are all written finishes without fetching any")
    func replaceAndFinishOffline() async throws {
        let net = await SyncNetwork()
        let source = try await net.sourceStore("source", snapshotChunkSize: Self.chunkSize)
        let service = SnapshotService(store: source)
        let client = try await net.connect(try await net.serve(service, bytesPerSecond: 1_000_000, key: 0))
        let pool = SourcePool(clients: [client], labels: ["a"])
        // Part of epoch 1's snapshot, then a stop.
        let fresh = try await prunedStore(net, "fresh")
        let restore = SnapshotRestore(store: fresh, genesis: net.genesis, pool: pool, configuration: restoreSettings())
        let task = Mutex<Task<RestoreReport?, any Error>?>(nil)
        let started = Task { try await restore.restore(.epoch(1)) { p in if p.chunksDone >= 2 { task.withLock { $0?.cancel() } } } }
        task.withLock { $0 = started }
        await #expect(throws: CancellationError.self) { _ = try await started.value }
        #expect(try await fresh.restoreState()?.manifest.epoch == 1)
        // Epoch 2 asked for: it replaces epoch 1's restore, whose chunks go with it.
        let report = try #require(try await restore.restore(.epoch(2)))
        #expect(report.epoch == 2 && report.fetched == report.chunks)
        #expect(try liveSet(fresh) == liveSet(source))
        #expect(try await fresh.snapshotEpochs() == [2])
        await fresh.close()

        // Every chunk written, the finish not reached: the next run finishes without the network.
        let other = try await prunedStore(net, "other")
        try await other.initialize(genesis: net.genesis)
        let manifest = try #require(try await source.snapshotManifest(epoch: 2))
        var ends: [CertifiedCheckpointSummary] = []
        for record in try await source.epochs() where record.epoch <= 2 {
            let last = try #require(record.lastCheckpoint)
            ends.append(try #require(try await source.summary(at: last)))
        }
        try await other.beginRestore(manifest: manifest, epochEnds: ends)
        var chunks: [VerifiedChunk] = []
        for i in 0..<UInt32(manifest.chunkRoots.count) {
            let frame = try #require(try await source.snapshotChunk(epoch: 2, index: i))
            chunks.append(try manifest.verifyChunk(index: i, frame: frame, proof: try manifest.proof(chunk: Int(i)), limit: 1 << 26))
        }
        try await other.commitRestored(chunks)
        service.asked.withLock { $0.removeAll() }
        let offline = try #require(try await SnapshotRestore(store: other, genesis: net.genesis, pool: pool, configuration: restoreSettings()).restore())
        #expect(offline.fetched == 0 && service.asked.withLock { $0.isEmpty })
        #expect(try liveSet(other) == liveSet(source))
        _ = try await other.verifyAll()
        await client.close()
        await other.close()
        await net.stop()
    }

    @Test("a restore stopped part-way resumes with the chunks it wrote: none is fetched twice, and the result is the certified state")
    func resume() async throws {
        let net = await SyncNetwork()
        let source = try await net.sourceStore("source", snapshotChunkSize: Self.chunkSize)
        let service = SnapshotService(store: source)
        let client = try await net.connect(try await net.serve(service, bytesPerSecond: 1_000_000, key: 0))
        let fresh = try await prunedStore(net, "fresh")
        var settings = restoreSettings()
        settings.commitGroup = 2
        let restore = SnapshotRestore(store: fresh, genesis: net.genesis, pool: SourcePool(clients: [client], labels: ["a"]), configuration: settings)
        let task = Mutex<Task<RestoreReport?, any Error>?>(nil)
        let started = Task {
            try await restore.restore(.latest) { p in
                if p.chunksDone >= 4 { task.withLock { $0?.cancel() } }
            }
        }
        task.withLock { $0 = started }
        await #expect(throws: CancellationError.self) { _ = try await started.value }
        let state = try #require(try await fresh.restoreState())
        let done = state.done
        #expect(done.count >= 4 && done.count < state.manifest.chunkRoots.count)
        // Nothing can be committed on a partial live set.
        await #expect(throws: StoreError.self) { try await fresh.commitSummaries([]) }
        // The partial store verifies: the chain, the manifest, every written chunk and its objects.
        let partial = try await fresh.verifyAll()
        #expect(partial.restoreInProgress?.written == done.count && partial.restoreInProgress?.chunks == state.manifest.chunkRoots.count)
        // One object of a written chunk altered in place: verify names it, and the original comes back.
        let objects = try #require(try fresh.database.columnFamily("objects"))
        let (key, original) = try #require(try fresh.database.scan(objects, limit: 1).first)
        try fresh.database.put(objects, key, original.map { $0 ^ 0x5A })
        await #expect(throws: StoreError.self) { _ = try await fresh.verifyAll() }
        try fresh.database.put(objects, key, original)
        service.asked.withLock { $0.removeAll() }
        let report = try #require(try await restore.restore(.latest))
        let asked = service.asked.withLock { $0 }
        #expect(report.fetched == state.manifest.chunkRoots.count - done.count)
        #expect(Set(asked).isDisjoint(with: done), "a written chunk was fetched again")
        #expect(try liveSet(fresh) == liveSet(source))
        _ = try await fresh.verifyAll()
        await client.close()
        await fresh.close()
        await net.stop()
    }
}

/// A local snapshot holder whose chunk `damaged` comes back with a byte flipped.
final class DamagedLocal: SyncSource {
    let inner: StoreSnapshotSource
    let damaged: UInt32
    init(_ inner: StoreSnapshotSource, damaged: UInt32) {
        self.inner = inner
        self.damaged = damaged
    }
    var sourceID: SourceID { inner.sourceID }
    var isConnected: Bool { true }
    func availability() async throws -> Availability { try await inner.availability() }
    func epochEndings(from epoch: UInt64, max: UInt32) async throws -> [CertifiedCheckpointSummary] { [] }
    func summaries(from seq: UInt64, count: UInt32, allCertificates: Bool) async throws -> SummariesResponse { throw RPCError.notFound("none") }
    func blocks(from seq: UInt64, count: UInt32, timeout: TimeAmount?) async throws -> [BlockItem] { throw RPCError.notFound("none") }
    func snapshotManifest(epoch: UInt64) async throws -> SnapshotManifest { try await inner.snapshotManifest(epoch: epoch) }
    func snapshotChunk(epoch: UInt64, index: UInt32, timeout: TimeAmount?) async throws -> ProvenFrame {
        var answer = try await inner.snapshotChunk(epoch: epoch, index: index, timeout: timeout)
        if index == damaged { answer.frame[answer.frame.count / 2] ^= 0x20 }
        return answer
    }
    func close() async {}
}

extension RestoreTests {
    @Test("a differential update: a node holding epoch 1's snapshot restores epoch 2 reading the chunks whose roots match from its old store (none on this chain), each verified, and fetches only the others; from a store holding epoch 2 every chunk is read locally but a damaged one, which is fetched")
    func differential() async throws {
        let net = await SyncNetwork()
        let source = try await net.sourceStore("source", snapshotChunkSize: Self.chunkSize)
        let service = SnapshotService(store: source)
        let client = try await net.connect(try await net.serve(service, key: 0))
        func pool() -> SourcePool { SourcePool(clients: [client], labels: ["a"]) }
        // The old node restored epoch 1.
        let old = try await prunedStore(net, "old")
        _ = try #require(try await SnapshotRestore(store: old, genesis: net.genesis, pool: pool(), configuration: restoreSettings()).restore(.epoch(1)))
        let m1 = try #require(try await source.snapshotManifest(epoch: 1))
        let m2 = try #require(try await source.snapshotManifest(epoch: 2))
        let held = Set(m1.chunkRoots)
        let matching = m2.chunkRoots.filter(held.contains).count
        // Chunks are runs of `chunkSize` objects in id order: an object created or deleted in
        // epoch 2 moves every chunk boundary after it, so on this chain (creations spread over
        // the id space) epochs 1 and 2 share no chunk. The reuse must then find none.
        #expect(matching < m2.chunkRoots.count)

        service.asked.withLock { $0 = [] }
        let fresh = try await prunedStore(net, "fresh")
        var restore = SnapshotRestore(store: fresh, genesis: net.genesis, pool: pool(), configuration: restoreSettings())
        restore.reuse = [StoreSnapshotSource(store: old, label: "old")]
        let report = try #require(try await restore.restore(.epoch(2)))
        #expect(report.reused == matching && report.fetched == report.chunks - matching, "\(report.reused) reused, \(report.fetched) fetched")
        #expect((report.reusedBytes > 0) == (matching > 0) && report.objects == Int(m2.objectCount))
        let asked = Set(service.asked.withLock { $0 })
        #expect(asked.count == report.fetched && asked.allSatisfy { !held.contains(m2.chunkRoots[Int($0)]) }, "only chunks not held locally were asked")
        #expect(try liveSet(fresh) == liveSet(source))
        #expect(try await fresh.verifyAll().stateRoots == [2])

        // From a store holding epoch 2 itself: every chunk read locally; one damaged is fetched.
        service.asked.withLock { $0 = [] }
        let again = try await prunedStore(net, "again")
        var second = SnapshotRestore(store: again, genesis: net.genesis, pool: pool(), configuration: restoreSettings())
        second.reuse = [DamagedLocal(StoreSnapshotSource(store: fresh, label: "fresh"), damaged: 3)]
        let secondReport = try #require(try await second.restore(.epoch(2)))
        #expect(secondReport.reused == m2.chunkRoots.count - 1 && secondReport.fetched == 1)
        #expect(service.asked.withLock { $0 } == [3])
        #expect(try liveSet(again) == liveSet(source))

        await client.close()
        for s in [old, fresh, again] { await s.close() }
        await net.stop()
    }
}
