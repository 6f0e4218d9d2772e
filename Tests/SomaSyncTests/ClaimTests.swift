import NIOCore
import SomaCore
import SomaNet
import SomaStore
@testable import SomaSync
import SomaTestSupport
import Synchronization
import Testing

/// A peer that serves its store honestly but claims, in `getAvailability`, to hold up to
/// `claimedTip` (beyond what it can back with certified summaries).
final class LyingService: HistoryServing {
    let inner: HistoryService
    let claimedTip: UInt64

    init(store: NodeStore, claimedTip: UInt64) {
        inner = HistoryService(store: store)
        self.claimedTip = claimedTip
    }

    func handle(method: UInt16, payload: [UInt8]) async -> Result<ByteBuffer, RPCError> {
        let answer = await inner.handle(method: method, payload: payload)
        guard method == Method.getAvailability.rawValue, case .success(let buffer) = answer,
              var a = try? BCS.decode(Availability.self, fromContiguous: buffer.readableBytesView)
        else { return answer }
        a.highestSynced = claimedTip
        a.highestVerified = claimedTip
        return .success(ByteBuffer(bytes: a.bcsBytes))
    }

    func blockItem(seq: UInt64, part: UInt32) async -> Result<(ByteBuffer, UInt32)?, RPCError> {
        await inner.blockItem(seq: seq, part: part)
    }
}

@Suite("Claims are hints: lying heights, dropped connections, bans", .serialized)
struct ClaimTests {
    func settings() -> SyncConfiguration {
        var c = SyncConfiguration()
        c.summaryBatch = 100
        // Generous: these tests are about lies, not stalls (the machine may be busy).
        c.requestTimeout = .seconds(5)
        c.minHedgeDelay = .milliseconds(200)
        return c
    }

    @Test("a peer claiming an absurd height (UInt64.max, 2^63, 2^63 + 5) cannot crash the sync: it finishes at the honest tip and the liar is banned for bad data", arguments: [UInt64.max, UInt64(1) << 63, (UInt64(1) << 63) + 5] as [UInt64])
    func lyingHeight(claim: UInt64) async throws {
        let net = await SyncNetwork(checkpoints: 250, epochs: 2)
        let source = try await net.sourceStore("source")
        let liarPort = try await net.serve(LyingService(store: source, claimedTip: claim), key: 0)
        let (honestPort, _) = try await net.serve(source, key: 1)
        let clients = [try await net.connect(liarPort), try await net.connect(honestPort)]
        let fresh = try await NodeStore.open(path: net.dir.file("fresh"))
        let pool = SourcePool(clients: clients, labels: ["liar", "honest"])
        let report = try await PeerSync(store: fresh, genesis: net.genesis, pool: pool, configuration: settings()).catchUp()
        #expect(report.tip == net.tip)
        let byLabel = Dictionary(uniqueKeysWithValues: report.sources.map { ($0.label, $0) })
        #expect(byLabel["liar"]?.banReason?.contains("claims") == true, "\(report.sources)")
        #expect(byLabel["liar"]?.bannedForBadData == true)
        #expect(byLabel["honest"]?.banReason == nil)
        try await net.expectHoldsChain(fresh, like: source)
        for c in clients { await c.close() }
        await fresh.close()
        await net.stop()
    }

    @Test("a lone liar claiming 2^63: the sync ends at what it could prove, never beyond the real chain, and bans it")
    func loneLiar() async throws {
        let net = await SyncNetwork(checkpoints: 150, epochs: 2)
        let source = try await net.sourceStore("source")
        let port = try await net.serve(LyingService(store: source, claimedTip: 1 << 63), key: 0)
        let client = try await net.connect(port)
        let fresh = try await NodeStore.open(path: net.dir.file("fresh"))
        let pool = SourcePool(clients: [client], labels: ["liar"])
        let report = try await PeerSync(store: fresh, genesis: net.genesis, pool: pool, configuration: settings()).catchUp()
        #expect(report.tip <= net.tip)
        #expect(try await fresh.watermark(.highestSynced)?.seq == report.tip)
        #expect(report.sources[0].bannedForBadData, "\(report.sources)")
        await client.close()
        await fresh.close()
        await net.stop()
    }

    @Test("the sync's counts never trap, whatever the heights")
    func counts() {
        #expect(SyncRun.count(from: 1, through: UInt64.max, limit: 16) == 16)
        #expect(SyncRun.count(from: 0, through: UInt64.max, limit: 1_000) == 1_000)
        #expect(SyncRun.count(from: 10, through: 9, limit: 16) == 0)
        #expect(SyncRun.count(from: 10, through: 12, limit: 16) == 3)
        #expect(SyncRun.count(after: 0, through: 1 << 63, limit: 128) == 128)
        #expect(SyncRun.count(after: UInt64.max, through: 0, limit: 128) == 0)
        #expect(SyncRun.count(after: 5, through: 7, limit: 128) == 2)
        #expect(SyncRun.clampTarget(UInt64.max) == UInt64.max - 1)
    }

    @Test("a dropped connection counts as a failure and makes the source unusable, but is no ban; bad data bans, by peer id, recorded as bad data; a stall ban is not")
    func dropIsNoBan() async throws {
        let net = await SyncNetwork(checkpoints: 40, epochs: 1)
        let source = try await net.sourceStore("source")
        let (port, _) = try await net.serve(source, key: 0)
        let (port2, _) = try await net.serve(source, key: 1)
        let a = try await net.connect(port), b = try await net.connect(port2), b2 = try await net.connect(port2)
        let bans = Mutex<[String]>([])
        let pool = SourcePool(clients: [a, b, b2], labels: ["a", "b", "b-again"], onBan: { label, _ in bans.withLock { $0.append(label) } })
        await pool.refresh()
        #expect(await pool.usable == [0, 1, 2])

        // a: its connection drops during a request.
        await pool.take(0)
        await a.close()
        await SyncRun.judge(WireError(.connectionClosed, "closed"), source: 0, pool: pool, what: "blocks 1...16")
        #expect(await pool.isBanned(0) == false)
        #expect(bans.withLock { $0 }.isEmpty)
        let dropped = await pool.stats[0]
        #expect(dropped.failures == 1 && dropped.banReason == nil)
        #expect(await pool.pick(covering: 1...10, excluding: [1, 2]) == nil, "a disconnected source is not picked")
        #expect(await !pool.usable.contains(0))

        // b: a stall ban is a pause, not recorded as bad data.
        await pool.take(1)
        await pool.failed(1, stalled: true, reason: "timeout")
        await pool.take(1)
        await pool.failed(1, stalled: true, reason: "timeout")
        #expect(await pool.isBanned(1))
        #expect(await pool.stats[1].bannedForBadData == false)

        // Then bad data from b: banned for bad data, and so is the other entry of the same peer id.
        await pool.take(1)
        await SyncRun.judge(SyncError("checkpoint 3: contents digest differs"), source: 1, pool: pool, what: "blocks 1...16")
        let stats = await pool.stats
        #expect(stats[1].bannedForBadData && stats[1].banReason?.contains("digest") == true)
        #expect(stats[2].bannedForBadData, "a ban is kept by peer id: \(stats[2])")
        // A later stall ban does not downgrade it.
        await pool.ban(1, reason: "unresponsive", for: .seconds(1))
        #expect(await pool.stats[1].bannedForBadData)
        for c in [a, b, b2] { await c.close() }
        await net.stop()
    }

    @Test("stopping a sync mid-way (cancelled) gives back every request slot and leaves no task running")
    func cancelledSyncReleasesSlots() async throws {
        let net = await SyncNetwork(checkpoints: 300, epochs: 3)
        let source = try await net.sourceStore("source")
        var clients: [PeerClient] = []
        for k in 0..<2 {
            let (port, _) = try await net.serve(source, bytesPerSecond: 300_000, key: k)
            clients.append(try await net.connect(port))
        }
        let fresh = try await NodeStore.open(path: net.dir.file("fresh"))
        let pool = SourcePool(clients: clients, labels: ["a", "b"])
        let sync = PeerSync(store: fresh, genesis: net.genesis, pool: pool, configuration: settings())
        let task = Task { try await sync.catchUp() }
        // Wait until block requests are in flight on both sources (the upload is slow).
        var busy = false
        for _ in 0..<300 where !busy {
            try await Task.sleep(for: .milliseconds(20))
            busy = await pool.entries.allSatisfy { $0.inFlight > 0 }
        }
        #expect(busy, "requests were in flight when the sync was stopped")
        task.cancel()
        await #expect(throws: CancellationError.self) { _ = try await task.value }
        #expect(await pool.entries.map(\.inFlight) == [0, 0])
        // Every slot is back: each source takes perSourceInFlight (4) requests again.
        for i in 0..<2 {
            for _ in 0..<4 { await pool.take(i) }
            #expect(await pool.pick(covering: 1...1, excluding: [1 - i]) == nil, "source \(i) is full at exactly 4")
            for _ in 0..<4 { await pool.released(i) }
            #expect(await pool.pick(covering: 1...1, excluding: [1 - i]) == i, "source \(i) had its slots back")
            await pool.released(i)
        }
        for c in clients { await c.close() }
        await fresh.close()
        await net.stop()
    }
}
