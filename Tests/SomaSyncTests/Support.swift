import NIOCore
import NIOPosix
import SomaCore
import SomaDevnet
import SomaNet
import SomaStore
import SomaSync
import SomaTestSupport
import Synchronization
import Testing

/// How a test peer misbehaves.
enum Fault: Sendable, Equatable {
    case none
    /// Flips a byte inside every block frame it serves.
    case corruptBlocks
    /// Replaces every certificate of the summaries it serves with signatures by other keys.
    case forgedCertificates
    /// Serves this many block items, then never answers again (mid-stream).
    case stall(afterItems: Int)
}

/// A history service that misbehaves as told, and records which checkpoints' blocks it was
/// asked for.
final class FaultyService: HistoryServing {
    let inner: HistoryService
    let fault: Fault
    let asked = Mutex<[UInt64]>([])
    let items = Atomic<Int>(0)
    let stopped = Atomic<Bool>(false)

    init(store: NodeStore, fault: Fault) {
        inner = HistoryService(store: store)
        self.fault = fault
    }

    func handle(method: UInt16, payload: [UInt8]) async -> Result<ByteBuffer, RPCError> {
        let answer = await inner.handle(method: method, payload: payload)
        guard fault == .forgedCertificates, method == Method.getSummaries.rawValue, case .success(let buffer) = answer else { return answer }
        guard var response = try? BCS.decode(SummariesResponse.self, fromContiguous: buffer.readableBytesView) else { return answer }
        response.certificates = zip(response.summaries, response.certificates).map { summary, certificate in
            guard let c = certificate else { return nil }
            let message = summary.digest.bytes
            let forged = (0..<c.signatures.count).map { DevnetKeys.validator(seed: 999, index: $0).sign(message) }
            return QuorumCertificate(epoch: c.epoch, signers: c.signers, signatures: forged)
        }
        return .success(ByteBuffer(bytes: BCS.encode(response, capacity: buffer.readableBytes)))
    }

    func blockItem(seq: UInt64, part: UInt32) async -> Result<(ByteBuffer, UInt32)?, RPCError> {
        asked.withLock { $0.append(seq) }
        if case .stall(let n) = fault, items.add(1, ordering: .relaxed).oldValue >= n {
            for _ in 0..<200 where !stopped.load(ordering: .relaxed) { try? await Task.sleep(for: .milliseconds(100)) }
            return .failure(.unavailable("stalled"))
        }
        let answer = await inner.blockItem(seq: seq, part: part)
        guard fault == .corruptBlocks, case .success(.some((var buffer, let parts))) = answer else { return answer }
        // seq (8) + part (4) + frame length (ULEB) + LZ4 header: flip a byte of the compressed data.
        let at = buffer.readerIndex + min(buffer.readableBytes - 1, 12 + 3 + 40)
        let byte = buffer.getInteger(at: at, as: UInt8.self)!
        buffer.setInteger(byte ^ 0x5A, at: at)
        return .success((buffer, parts))
    }
}

/// A generated chain committed to a source store, and test peers serving it on loopback.
final class SyncNetwork {
    let dir = TempDir("sync-net")
    let generator: ChainGenerator
    let checkpoints: [GeneratedCheckpoint]
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    var stores: [NodeStore] = []
    var servers: [NetServer] = []
    var services: [FaultyService] = []

    init(checkpoints count: Int = 300, epochs: Int = 3) async {
        let profile = DevnetProfile(
            name: "sync-test", validators: 4, epochs: epochs, checkpoints: count, transactionsPerCheckpoint: 20, accounts: 32)
        generator = ChainGenerator(profile: profile, seed: 21)
        checkpoints = await generator.generateAll(parallelism: 2)
    }

    var genesis: Genesis { generator.genesis }
    var tip: UInt64 { UInt64(checkpoints.count) }

    /// A store holding the chain (pruned to its last `retainEpochs` epochs if given).
    func sourceStore(_ name: String, pruneTo retainEpochs: UInt64? = nil, snapshotChunkSize: Int = 4_096) async throws -> NodeStore {
        var config = StoreConfiguration()
        config.snapshotChunkSize = snapshotChunkSize
        if let retainEpochs {
            config.mode = .pruned
            config.retainEpochs = retainEpochs
        }
        let store = try await NodeStore.open(path: dir.file(name), configuration: config)
        try await store.initialize(genesis: genesis)
        try await store.commit(checkpoints.map(\.verified))
        // The last epoch end's snapshot is built beside the commits: served once it is done.
        try await store.finishSnapshotBuild()
        if retainEpochs != nil { _ = try await store.prune() }
        stores.append(store)
        return store
    }

    /// Serves `store` with `fault`, upload limited to `bytesPerSecond` if given; returns the port.
    func serve(_ store: NodeStore, fault: Fault = .none, bytesPerSecond: Int? = nil, chainID: Digest? = nil, key: Int) async throws -> (Int, FaultyService) {
        let service = FaultyService(store: store, fault: fault)
        return (try await serve(service, bytesPerSecond: bytesPerSecond, chainID: chainID, key: key), service)
    }

    /// Serves `service`, upload limited to `bytesPerSecond` if given; returns the port.
    func serve(_ service: some HistoryServing, bytesPerSecond: Int? = nil, chainID: Digest? = nil, key: Int) async throws -> Int {
        var net = NetConfiguration()
        net.uploadBytesPerSecondPerPeer = bytesPerSecond
        let server = try await NetServer.start(
            host: "127.0.0.1", port: 0,
            identity: HandshakeIdentity(key: DevnetKeys.validator(seed: 500, index: key), chainID: chainID ?? genesis.chainID),
            service: service, configuration: net, group: group)
        servers.append(server)
        if let faulty = service as? FaultyService { services.append(faulty) }
        return server.port
    }

    func connect(_ port: Int) async throws -> PeerClient {
        try await PeerClient.connect(
            host: "127.0.0.1", port: port, identity: HandshakeIdentity(key: SigningKey.generate(), chainID: genesis.chainID), group: group)
    }

    /// Asserts that `store` holds exactly the chain: every summary (with its certificate) and
    /// every block as the source has them, and the same watermarks and epoch records.
    func expectHoldsChain(_ store: NodeStore, like source: NodeStore, from: UInt64 = 0) async throws {
        let a = try await source.watermarks(), b = try await store.watermarks()
        #expect(a[.highestSynced] == b[.highestSynced] && a[.highestExecuted] == b[.highestExecuted])
        #expect(try await source.epochs() == store.epochs())
        for seq in from...tip {
            let s1 = try await source.summary(at: seq), s2 = try await store.summary(at: seq)
            #expect(s1 != nil && s1?.bcsBytes == s2?.bcsBytes, "summary \(seq)")
            let f1 = try await source.blockFrames(at: seq), f2 = try await store.blockFrames(at: seq)
            #expect(f1 == f2, "blocks of \(seq)")
        }
    }

    func stop() async {
        for s in services { s.stopped.store(true, ordering: .relaxed) }
        try? await Task.sleep(for: .milliseconds(300))
        for s in servers { try? await s.close() }
        try? await group.shutdownGracefully()
        for s in stores { await s.close() }
        dir.cleanup()
    }
}
