import Foundation
import Logging
import NIOPosix
import SomaCore
@testable import SomaDiscovery
import SomaStore
import SomaTestSupport
import Testing

@Suite("the peer table")
struct PeerTableTests {
    @Test("newest wins: an older record of a known peer changes nothing, a newer one replaces it and keeps the scores")
    func newestWins() async {
        let me = SigningKey.generate().publicKey
        let table = PeerTable(selfID: me, store: nil)
        let key = SigningKey.generate()
        let introducer = SigningKey.generate().publicKey
        let now = Discovery.nowMs()
        let old = record(key: key, addresses: ["10.0.0.1:1"], offsetMs: -5_000)
        let new = record(key: key, addresses: ["10.0.0.2:1"])
        #expect(await table.admit(new, introducer: introducer, direct: false, nowMs: now) == .added)
        await table.noteLatency(key.publicKey, latencyMs: 40)
        #expect(await table.admit(old, introducer: introducer, direct: false, nowMs: now) == .unchanged)
        #expect(await table.record(key.publicKey)?.info.info.addresses == ["10.0.0.2:1"])
        let newer = record(key: key, addresses: ["10.0.0.3:1"], offsetMs: 1_000)
        #expect(await table.admit(newer, introducer: introducer, direct: false, nowMs: now) == .updated)
        #expect(await table.record(key.publicKey)?.info.info.addresses == ["10.0.0.3:1"])
        #expect(await table.record(key.publicKey)?.latencyMs == 40)
        // Our own record is never entered.
        let selfKey = SigningKey.generate()
        let mine = PeerTable(selfID: selfKey.publicKey, store: nil)
        #expect(await mine.admit(record(key: selfKey), introducer: introducer, direct: false, nowMs: now) == .unchanged)
        #expect(await mine.count == 0)
    }

    @Test("a peer that floods thousands of signed records of fake peers fills its own share and evicts no good record")
    func flood() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let me = SigningKey.generate()
        let table = PeerTable(selfID: me.publicKey, store: nil, maxPeers: 64)
        let discovery = Discovery(key: me, chainID: Hashing.sha256([1]), table: table, group: group, logger: Logger(label: "test"))
        let now = Discovery.nowMs()
        // The good ones: 10 dialled peers, and 40 introduced by 5 honest peers (8 each).
        var good: [PeerID] = []
        for _ in 0..<10 {
            let r = record()
            #expect(await table.admit(r, introducer: r.info.peerID, direct: true, nowMs: now) == .added)
            good.append(r.info.peerID)
        }
        for _ in 0..<5 {
            let honest = SigningKey.generate().publicKey
            for _ in 0..<8 {
                let r = record()
                #expect(await table.admit(r, introducer: honest, direct: false, nowMs: now) == .added)
                good.append(r.info.peerID)
            }
        }
        // The flooder: 3,000 validly signed records of fake peers, in getKnownPeers answers of 200.
        let flooder = SigningKey.generate()
        var report = RoundReport()
        for _ in 0..<15 {
            let answer = KnownPeers(own: record(key: flooder), peers: (0..<200).map { _ in record() })
            await discovery.ingest(answer, from: flooder.publicKey, into: &report)
        }
        #expect(report.refused >= 3_000 - 64)
        #expect(await table.count <= 64)
        #expect(await table.introducedCount(by: flooder.publicKey) <= table.maxPerIntroducer)
        for id in good { #expect(await table.record(id) != nil, "good record \(id.raw.short) evicted") }
        // Honest newcomers still get in while the table is full: they evict the flooder's records, not good ones.
        let another = SigningKey.generate().publicKey
        let newcomer = record()
        #expect(await table.admit(newcomer, introducer: another, direct: false, nowMs: now) == .added)
        for id in good { #expect(await table.record(id) != nil) }
        // Many flooder identities each get at most their share, and never evict direct records.
        for _ in 0..<20 {
            let sybil = SigningKey.generate().publicKey
            for _ in 0..<20 { _ = await table.admit(record(), introducer: sybil, direct: false, nowMs: now) }
        }
        #expect(await table.count <= 64)
        for id in good.prefix(10) { #expect(await table.record(id) != nil) }
    }

    @Test("tampered, replayed-old, future-dated and oversized records, and a record of another peer as a peer's own, are rejected by ingestion")
    func ingestionRejects() async {
        let group = MultiThreadedEventLoopGroup.singleton
        let me = SigningKey.generate()
        let table = PeerTable(selfID: me.publicKey, store: nil)
        let discovery = Discovery(key: me, chainID: Hashing.sha256([1]), table: table, group: group, logger: Logger(label: "test"))
        let peer = SigningKey.generate()
        var tampered = record()
        tampered.info.addresses = ["6.6.6.6:1"]
        let answer = KnownPeers(own: record(key: peer), peers: [
            tampered, record(offsetMs: -90_000_000), record(offsetMs: 60_000),
            record(addresses: (0..<9).map { "10.0.0.\($0):1" }), record(),
        ])
        var report = RoundReport()
        await discovery.ingest(answer, from: peer.publicKey, into: &report)
        #expect(report.rejected == 4)
        #expect(report.admitted == 2)
        #expect(await table.count == 2)
        #expect(await table.record(peer.publicKey)?.direct == true)
        // A peer passing off another's record as its own.
        var r2 = RoundReport()
        await discovery.ingest(KnownPeers(own: record(), peers: []), from: SigningKey.generate().publicKey, into: &r2)
        #expect(r2.rejected == 1 && r2.admitted == 0)
    }

    @Test("private records are kept only from the peer itself and never advertised; stale and banned ones are not advertised either")
    func advertising() async {
        let me = SigningKey.generate().publicKey
        let table = PeerTable(selfID: me, store: nil)
        let now = Discovery.nowMs()
        let third = SigningKey.generate().publicKey
        let priv = record(access: .private)
        #expect(await table.admit(priv, introducer: third, direct: false, nowMs: now) != .added)
        #expect(await table.admit(priv, introducer: priv.info.peerID, direct: false, nowMs: now) == .added)
        let pub = record()
        _ = await table.admit(pub, introducer: pub.info.peerID, direct: true, nowMs: now)
        await table.noteConnected(pub.info.peerID, address: pub.info.addresses[0], latencyMs: 5, nowMs: now)
        let banned = record()
        _ = await table.admit(banned, introducer: third, direct: false, nowMs: now)
        await table.ban(banned.info.peerID, untilMs: now + 10_000_000, reason: "bad block")
        let stale = record(offsetMs: -86_500_000)
        _ = await table.admit(stale, introducer: third, direct: false, nowMs: now)
        let ads = await table.advertisable(limit: 200, asker: nil, nowMs: now + 1_000_000)
        #expect(ads.map(\.info.peerID) == [pub.info.peerID])
        #expect(await table.advertisable(limit: 200, asker: pub.info.peerID, nowMs: now).isEmpty)
        // Nor dialled: a private node dials out itself.
        #expect(await !table.dialCandidates(nowMs: now, excluding: []).contains { $0.peerID == priv.info.peerID })
    }

    @Test("a failed dial backs off exponentially; a success clears it")
    func backoff() async {
        let table = PeerTable(selfID: SigningKey.generate().publicKey, store: nil)
        let now = Discovery.nowMs()
        let r = record()
        _ = await table.admit(r, introducer: r.info.peerID, direct: true, nowMs: now)
        #expect(await table.dialCandidates(nowMs: now, excluding: []).count == 1)
        await table.noteFailure(r.info.peerID, nowMs: now, baseMs: 1_000, maxMs: 60_000)
        #expect(await table.record(r.info.peerID)?.nextDialMs == now + 1_000)
        await table.noteFailure(r.info.peerID, nowMs: now, baseMs: 1_000, maxMs: 60_000)
        await table.noteFailure(r.info.peerID, nowMs: now, baseMs: 1_000, maxMs: 60_000)
        #expect(await table.record(r.info.peerID)?.nextDialMs == now + 4_000)
        #expect(await table.dialCandidates(nowMs: now + 3_000, excluding: []).isEmpty)
        #expect(await table.dialCandidates(nowMs: now + 4_000, excluding: []).count == 1)
        for _ in 0..<30 { await table.noteFailure(r.info.peerID, nowMs: now, baseMs: 1_000, maxMs: 60_000) }
        #expect(await table.record(r.info.peerID)?.nextDialMs == now + 60_000)
        await table.noteConnected(r.info.peerID, latencyMs: 3, nowMs: now)
        #expect(await table.record(r.info.peerID)?.consecutiveFailures == 0)
        #expect(await table.dialCandidates(nowMs: now, excluding: []).count == 1)
    }

    @Test("the table survives a reopen of the store: records, scores and bans")
    func persists() async throws {
        let dir = TempDir("peers")
        defer { dir.cleanup() }
        let me = SigningKey.generate().publicKey
        let now = Discovery.nowMs()
        let a = record(), b = record()
        do {
            let store = try await NodeStore.open(path: dir.file("db"))
            let table = PeerTable(selfID: me, store: store)
            _ = await table.admit(a, introducer: a.info.peerID, direct: true, nowMs: now)
            _ = await table.admit(b, introducer: a.info.peerID, direct: false, nowMs: now)
            await table.noteTransfer(a.info.peerID, throughput: 12_345_678, newFailures: 2)
            await table.ban(b.info.peerID, untilMs: now + 600_000, reason: "forged certificate")
            try await table.flush()
            await store.close()
        }
        let store = try await NodeStore.open(path: dir.file("db"))
        defer { Task { await store.close() } }
        let table = PeerTable(selfID: me, store: store)
        #expect(try await table.load() == 2)
        let ra = try #require(await table.record(a.info.peerID))
        #expect(ra.direct && ra.throughput == 12_345_678 && ra.failures == 2 && ra.info == a)
        let rb = try #require(await table.record(b.info.peerID))
        #expect(!rb.direct && rb.introducer == .peer(a.info.peerID) && rb.banReason == "forged certificate" && rb.isBanned(nowMs: now))
        #expect(await table.introducedCount(by: a.info.peerID) == 1)
        #expect(await table.dialCandidates(nowMs: now, excluding: []).map(\.peerID) == [a.info.peerID])
        // A read-only open beside the writer sees the same records.
        var ro = StoreConfiguration()
        ro.database.readOnly = true
        let reader = try await NodeStore.open(path: dir.file("db"), configuration: ro)
        #expect(try await reader.peerRecords().count == 2)
        await reader.close()
    }
}
