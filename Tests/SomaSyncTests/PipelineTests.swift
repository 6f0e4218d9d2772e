import NIOCore
import SomaCore
import SomaNet
import SomaStore
import SomaSync
import SomaTestSupport
import Synchronization
import Testing

@Suite("Sync pipeline against real peers on loopback", .serialized)
struct PipelineTests {
    func settings() -> SyncConfiguration {
        var c = SyncConfiguration()
        c.summaryBatch = 100
        c.requestTimeout = .seconds(1)
        c.minHedgeDelay = .milliseconds(200)
        return c
    }

    @Test("catch-up from 3 honest peers uses all of them; the store then equals the source, block for block")
    func threePeers() async throws {
        let net = await SyncNetwork()
        let source = try await net.sourceStore("source")
        var clients: [PeerClient] = []
        for k in 0..<3 {
            let (port, _) = try await net.serve(source, bytesPerSecond: 4_000_000, key: k)
            clients.append(try await net.connect(port))
        }
        let fresh = try await NodeStore.open(path: net.dir.file("fresh"))
        let pool = SourcePool(clients: clients, labels: ["a", "b", "c"])
        let report = try await PeerSync(store: fresh, genesis: net.genesis, pool: pool, configuration: settings()).catchUp()
        #expect(report.tip == net.tip && report.checkpoints == Int(net.tip))
        #expect(report.quorumChecks == 3, "one quorum check per batch of 100")
        #expect(report.sources.allSatisfy { $0.checkpoints > 0 && $0.banReason == nil }, "\(report.sources)")
        try await net.expectHoldsChain(fresh, like: source)
        for c in clients { await c.close() }
        await fresh.close()
        await net.stop()
    }

    @Test("peers serving corrupted blocks, forged certificates or stalling mid-stream are banned; a peer of another chain is refused; the sync finishes from the honest peer and stores nothing bad")
    func faultyPeers() async throws {
        let net = await SyncNetwork()
        let source = try await net.sourceStore("source")
        // The forged one first: it is asked for the first summary batch.
        let (forgedPort, _) = try await net.serve(source, fault: .forgedCertificates, key: 0)
        let (corruptPort, _) = try await net.serve(source, fault: .corruptBlocks, key: 1)
        let (stallPort, stalled) = try await net.serve(source, fault: .stall(afterItems: 3), key: 2)
        let (honestPort, _) = try await net.serve(source, bytesPerSecond: 3_000_000, key: 3)
        let other = Digest(bytes: [UInt8](repeating: 7, count: 32))!
        let (otherPort, _) = try await net.serve(source, chainID: other, key: 4)
        await #expect(throws: WireError.self) { _ = try await net.connect(otherPort) }

        var clients: [PeerClient] = []
        for port in [forgedPort, corruptPort, stallPort, honestPort] { clients.append(try await net.connect(port)) }
        let fresh = try await NodeStore.open(path: net.dir.file("fresh"))
        let bans = Mutex<[String]>([])
        let pool = SourcePool(
            clients: clients, labels: ["forged", "corrupt", "stall", "honest"], onBan: { label, _ in bans.withLock { $0.append(label) } })
        // No snapshot prefetch: its requests at the start would take the first peers' slots, and
        // the faulty peers must be the ones asked first (chunk faults: ArchiveSourceTests).
        var configuration = settings()
        configuration.prefetchSnapshot = false
        let report = try await PeerSync(store: fresh, genesis: net.genesis, pool: pool, configuration: configuration).catchUp()
        #expect(report.tip == net.tip)
        let byLabel = Dictionary(uniqueKeysWithValues: report.sources.map { ($0.label, $0) })
        #expect(byLabel["forged"]?.banReason?.contains("signature") == true, "\(byLabel["forged"]!)")
        #expect(byLabel["corrupt"]?.banReason != nil, "\(byLabel["corrupt"]!)")
        #expect(byLabel["stall"]?.banReason?.contains("unresponsive") == true, "\(byLabel["stall"]!)")
        #expect(byLabel["honest"]?.banReason == nil && (byLabel["honest"]?.checkpoints ?? 0) > 0)
        #expect(byLabel["corrupt"]?.checkpoints == 0, "nothing from the corrupting peer was used")
        #expect(report.hedges > 0, "the stalled spans were asked of another peer")
        #expect(stalled.items.load(ordering: .relaxed) > 3)
        #expect(Set(bans.withLock { $0 }) == ["forged", "corrupt", "stall"])
        try await net.expectHoldsChain(fresh, like: source)
        for c in clients { await c.close() }
        await fresh.close()
        await net.stop()
    }

    @Test("a peer that pruned early history is never asked for it, and serves what it holds")
    func prunedPeer() async throws {
        let net = await SyncNetwork(checkpoints: 400, epochs: 4)
        let archive = try await net.sourceStore("archive")
        let pruned = try await net.sourceStore("pruned", pruneTo: 1)
        let lowest = try #require(try await pruned.watermark(.lowestAvailable)).seq
        #expect(lowest > 100, "the pruned peer keeps only its last epoch (from \(lowest))")
        let (archivePort, _) = try await net.serve(archive, bytesPerSecond: 3_000_000, key: 0)
        let (prunedPort, prunedService) = try await net.serve(pruned, key: 1)
        let clients = [try await net.connect(archivePort), try await net.connect(prunedPort)]
        let fresh = try await NodeStore.open(path: net.dir.file("fresh"))
        let report = try await PeerSync(
            store: fresh, genesis: net.genesis, pool: SourcePool(clients: clients, labels: ["archive", "pruned"]),
            configuration: settings()
        ).catchUp()
        #expect(report.tip == net.tip)
        let asked = prunedService.asked.withLock { $0 }
        #expect(!asked.isEmpty, "the pruned peer served its range")
        #expect(asked.allSatisfy { $0 >= lowest }, "asked below \(lowest): \(asked.filter { $0 < lowest }.prefix(5))")
        #expect(report.sources.allSatisfy { $0.banReason == nil })
        try await net.expectHoldsChain(fresh, like: archive)
        for c in clients { await c.close() }
        await fresh.close()
        await net.stop()
    }

    @Test("a sync stopped part-way resumes after highestSynced and fetches nothing committed again")
    func resume() async throws {
        let net = await SyncNetwork()
        let source = try await net.sourceStore("source")
        let (port, service) = try await net.serve(source, key: 0)
        let client = try await net.connect(port)
        let fresh = try await NodeStore.open(path: net.dir.file("fresh"))
        let sync = PeerSync(store: fresh, genesis: net.genesis, pool: SourcePool(clients: [client], labels: ["a"]), configuration: settings())
        let first = try await sync.catchUp(until: 123)
        #expect(first.tip == 123)
        service.asked.withLock { $0.removeAll() }
        let second = try await sync.catchUp()
        #expect(second.tip == net.tip && second.checkpoints == Int(net.tip) - 123)
        #expect(service.asked.withLock { $0.min() } == 124)
        try await net.expectHoldsChain(fresh, like: source)
        await client.close()
        await fresh.close()
        await net.stop()
    }
}
