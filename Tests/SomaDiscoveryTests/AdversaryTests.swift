import Foundation
import Logging
import NIOPosix
import SomaCore
@testable import SomaDiscovery
import SomaStore
import SomaTestSupport
import Testing

/// A discovery over `table` (no network use) with `configure` applied.
func discovery(_ key: SigningKey, _ table: PeerTable, _ configure: (inout DiscoveryConfiguration) -> Void = { _ in }) -> Discovery {
    var config = DiscoveryConfiguration()
    configure(&config)
    return Discovery(key: key, chainID: Hashing.sha256([1]), table: table, configuration: config,
                     group: MultiThreadedEventLoopGroup.singleton, logger: Logger(label: "test"))
}

/// A peer record as the table holds it, for the diversity planner.
func candidate(_ addresses: [String]) -> PeerRecord {
    let r = record(addresses: addresses)
    return PeerRecord(info: r, introducer: .peer(r.info.peerID), direct: true, nowMs: Discovery.nowMs())
}

@Suite("network groups")
struct AddressGroupTests {
    @Test("hosts map to their group: IPv4 /16, IPv6 /32, IPv4-mapped IPv6 as IPv4, names by their last two labels",
          arguments: [
              ("1.2.3.4", AddressGroup.ipv4(0x0102)),
              ("1.2.200.9", .ipv4(0x0102)),
              ("[2001:db8:aa::1]", .ipv6(0x2001_0DB8)),
              ("2001:db8::", .ipv6(0x2001_0DB8)),
              ("fe80::1%eth0", .ipv6(0xFE80_0000)),
              ("::ffff:9.8.7.6", .ipv4(0x0908)),
              ("::1", .ipv6(0)),
              ("a.b.Example.COM", .name("example.com")),
              ("localhost", .name("localhost")),
              ("", .unknown),
          ])
    func hosts(host: String, group: AddressGroup) {
        #expect(AddressGroup(host: host) == group)
    }

    @Test("remote addresses as the transport describes them",
          arguments: [
              ("[IPv4]127.0.0.1/127.0.0.1:54321", AddressGroup.ipv4(0x7F00)),
              ("[IPv6]::1/::1:54321", .ipv6(0)),
              ("[IPv6]2001:db8::5/2001:db8::5:443", .ipv6(0x2001_0DB8)),
              ("6.6.6.6:4000", .ipv4(0x0606)),
              ("[2a00:1450::1]:443", .ipv6(0x2A00_1450)),
              ("10.1.2.3", .ipv4(0x0A01)),
              ("garbage", .unknown),
          ])
    func remotes(remote: String, group: AddressGroup) {
        #expect(AddressGroup(remoteAddress: remote) == group)
    }

    @Test("no remote address, malformed literals and advertised addresses that do not parse")
    func malformed() throws {
        #expect(AddressGroup(remoteAddress: nil) == .unknown)
        #expect(AddressGroup(remoteAddress: String(repeating: "9", count: 10_000)) == .unknown)
        #expect(AddressGroup(address: "no-port") == .unknown)
        #expect(AddressGroup(address: "1.2.3.4:80") == .ipv4(0x0102))
        #expect(AddressGroup.parseIPv6("1::2::3") == nil)
        #expect(AddressGroup.parseIPv6("1:2:3:4:5:6:7:8:9") == nil)
        #expect(AddressGroup.parseIPv6("12345::") == nil)
        #expect(AddressGroup.parseIPv4("1.2.3.256") == nil)
        // Round trip of the persisted form.
        for g in [AddressGroup.ipv4(7), .ipv6(9), .name("example.com"), .unknown] {
            #expect(try AddressGroup(bcsBytes: g.bcsBytes) == g)
        }
    }
}

@Suite("discovery against adversaries")
struct AdversaryTests {
    @Test("a flood of 5,000 self-introduced fresh keys from one address fills one share: good records stay, others still get in")
    func inboundFlood() async throws {
        let me = SigningKey.generate()
        let table = PeerTable(selfID: me.publicKey, store: nil, maxPeers: 200)
        let d = discovery(me, table)
        let now = Discovery.nowMs()
        var good: [PeerID] = []
        for _ in 0..<10 {
            let r = record()
            #expect(await table.admit(r, introducer: .peer(r.info.peerID), direct: true, nowMs: now) == .added)
            good.append(r.info.peerID)
        }
        for _ in 0..<5 {
            let honest = SigningKey.generate().publicKey
            for _ in 0..<8 {
                let r = record()
                #expect(await table.admit(r, introducer: .peer(honest), direct: false, nowMs: now) == .added)
                good.append(r.info.peerID)
            }
        }
        var report = RoundReport()
        for _ in 0..<5_000 {
            let r = record()
            await d.learnInbound(r.bcsBytes, peerID: r.info.peerID, remoteAddress: "[IPv4]6.6.6.6/6.6.6.6:40000", into: &report)
        }
        let share = table.maxPerIntroducer
        #expect(await table.introducedCount(by: .inbound(.ipv4(0x0606))) == share)
        #expect(report.refused == 5_000 - share)
        #expect(await table.count == 50 + share)
        for id in good { #expect(await table.record(id) != nil, "good record \(id.raw.short) evicted") }
        // Another peer dialling in from elsewhere, and an introduced newcomer, still get in.
        let other = record()
        var r2 = RoundReport()
        await d.learnInbound(other.bcsBytes, peerID: other.info.peerID, remoteAddress: "[IPv4]9.9.9.9/9.9.9.9:1", into: &r2)
        #expect(r2.admitted == 1)
        #expect(await table.admit(record(), introducer: .peer(SigningKey.generate().publicKey), direct: false, nowMs: now) == .added)
        // A flood from 5,000 different /16s (a botnet) is bounded by the inbound pool.
        for i in 0..<5_000 {
            let r = record()
            await d.learnInbound(r.bcsBytes, peerID: r.info.peerID, remoteAddress: "\(i / 256 % 200 + 20).\(i % 256).0.1:1", into: &report)
        }
        #expect(await table.inboundRecords <= table.maxInbound)
        #expect(await table.count <= 200)
        for id in good { #expect(await table.record(id) != nil, "good record \(id.raw.short) evicted by the botnet") }
        // A record whose hello names a key other than the one its connection proved is rejected.
        var r3 = RoundReport()
        await d.learnInbound(record().bcsBytes, peerID: SigningKey.generate().publicKey, remoteAddress: nil, into: &r3)
        #expect(r3.rejected == 1)
    }

    @Test("a network group cannot fill the table: records advertising addresses in one /16 hold at most their share")
    func groupBound() async {
        let table = PeerTable(selfID: SigningKey.generate().publicKey, store: nil, maxPeers: 200)
        let now = Discovery.nowMs()
        var added = 0
        // 40 introducers (each within its share) pass on 5 records each, all in 7.7.0.0/16.
        for _ in 0..<40 {
            let introducer = SigningKey.generate().publicKey
            for j in 0..<5 where await table.admit(
                record(addresses: ["7.7.\(j).\(Int.random(in: 0...255)):1"]), introducer: .peer(introducer), direct: false, nowMs: now) == .added {
                added += 1
            }
        }
        #expect(added == table.maxPerGroup)
        #expect(await table.records(in: .ipv4(0x0707)) == table.maxPerGroup)
        // Listing a second address elsewhere does not get around it.
        #expect(await table.admit(record(addresses: ["8.8.1.1:1", "7.7.9.9:1"]), introducer: .peer(SigningKey.generate().publicKey),
                                  direct: false, nowMs: now) != .added)
        // Others still get in; a direct record of the full group takes an introduced one's place.
        #expect(await table.admit(record(), introducer: .peer(SigningKey.generate().publicKey), direct: false, nowMs: now) == .added)
        let reached = record(addresses: ["7.7.200.1:1"])
        #expect(await table.admit(reached, introducer: .peer(reached.info.peerID), direct: true, nowMs: now) == .added)
        #expect(await table.records(in: .ipv4(0x0707)) == table.maxPerGroup)
        // A newer record of a known peer that moves it into the full group is refused; it keeps its old one.
        let key = SigningKey.generate()
        let first = record(key: key, addresses: ["5.5.5.5:1"], offsetMs: -1_000)
        let introducer = SigningKey.generate().publicKey
        #expect(await table.admit(first, introducer: .peer(introducer), direct: false, nowMs: now) == .added)
        let moved = record(key: key, addresses: ["7.7.7.7:1"])
        #expect(await table.admit(moved, introducer: .peer(introducer), direct: false, nowMs: now) != .updated)
        #expect(await table.record(key.publicKey)?.info == first)
        #expect(await table.records(in: .ipv4(0x0707)) == table.maxPerGroup)
    }

    @Test("candidates from one /16 do not take every outbound slot; with no other candidate they may")
    func outboundSpread() {
        let policy = OutboundDiversity(maxPerGroup: 2)
        // The ten best candidates are all in 1.2.0.0/16, then three elsewhere.
        let crowd = (0..<10).map { candidate(["1.2.\($0).1:1"]) }
        let others = [candidate(["3.3.3.3:1"]), candidate(["[2001:db8::1]:1"]), candidate(["4.4.4.4:1"])]
        let picked = policy.pick(crowd + others, open: [:], count: 4)
        #expect(picked.count == 4)
        let groups = picked.map { AddressGroup(address: $0.addresses[0]) }
        #expect(groups.filter { $0 == .ipv4(0x0102) }.count == 2)
        #expect(Set(picked.map(\.record.peerID)) == Set(crowd.prefix(2).map(\.peerID) + others.prefix(2).map(\.peerID)))
        // With 1.2.0.0/16 already holding two connections, none more from it while others remain.
        let next = policy.pick(crowd + others, open: [.ipv4(0x0102): 2], count: 3)
        #expect(next.map(\.record.peerID) == others.map(\.peerID))
        // Only one group known: it fills the slots (no other candidate exists).
        #expect(policy.pick(crowd, open: [.ipv4(0x0102): 2], count: 3).count == 3)
        // A candidate with addresses in two groups is dialled at the one below the bound.
        let dual = candidate(["1.2.99.1:1", "5.6.7.8:1"])
        let d = policy.pick([dual], open: [.ipv4(0x0102): 2], count: 1)
        #expect(d.first?.addresses == ["5.6.7.8:1"])
        // A target of many slots over few groups: at most 2 a group until the groups run out.
        let spread = (0..<30).map { candidate(["\(10 + $0 % 5).1.\($0).1:1"]) }
        let eight = policy.pick(spread, open: [:], count: 8)
        #expect(OutboundDiversity.groups(of: eight.map { $0.addresses[0] }).values.allSatisfy { $0 <= 2 })
    }

    @Test("a record claiming height UInt64.max is not dialled first: measured behaviour orders, a claim is a hint")
    func dialOrder() async {
        let now = Discovery.nowMs()
        let table = PeerTable(selfID: SigningKey.generate().publicKey, store: nil)
        let liarKey = SigningKey.generate()
        let liar = record(key: liarKey, holds: [HeldRange(lowest: 0, highest: .max)])
        let introducedLiar = record(holds: [HeldRange(lowest: .max, highest: .max)])
        var honest: [PeerID] = []
        for i in 0..<4 {
            let r = record(holds: [HeldRange(lowest: 0, highest: 1_000)])
            _ = await table.admit(r, introducer: .peer(r.info.peerID), direct: true, nowMs: now)
            await table.noteConnected(r.info.peerID, address: r.info.addresses[0], latencyMs: UInt32(10 + i), nowMs: now)
            await table.noteTransfer(r.info.peerID, throughput: UInt64(1_000_000 * (i + 1)), newFailures: 0)
            honest.append(r.info.peerID)
        }
        _ = await table.admit(liar, introducer: .peer(liar.info.peerID), direct: true, nowMs: now)
        _ = await table.admit(introducedLiar, introducer: .peer(liar.info.peerID), direct: false, nowMs: now)
        let order = await table.dialCandidates(nowMs: now, excluding: []).map(\.peerID)
        #expect(order.count == 6)
        #expect(order.first != liar.info.peerID && order.first != introducedLiar.info.peerID)
        #expect(Array(order.prefix(4)) == honest.reversed(), "fastest measured first")
        // Among records nothing was measured of, the size of a claim never decides: over many
        // tables (salts), the liar claiming UInt64.max is not always first against one claiming 0...100.
        var liarFirst = 0
        let modest = record(holds: [HeldRange(lowest: 0, highest: 100)])
        let introducer = SigningKey.generate().publicKey
        for _ in 0..<64 {
            let t = PeerTable(selfID: SigningKey.generate().publicKey, store: nil)
            _ = await t.admit(introducedLiar, introducer: .peer(introducer), direct: false, nowMs: now)
            _ = await t.admit(modest, introducer: .peer(introducer), direct: false, nowMs: now)
            if await t.dialCandidates(nowMs: now, excluding: []).first?.peerID == introducedLiar.info.peerID { liarFirst += 1 }
        }
        #expect(liarFirst > 0 && liarFirst < 64, "liar first in \(liarFirst) of 64")
        // A claim of something still beats a claim of nothing when nothing else differs.
        let empty = record(holds: [])
        let t = PeerTable(selfID: SigningKey.generate().publicKey, store: nil)
        _ = await t.admit(empty, introducer: .peer(introducer), direct: false, nowMs: now)
        _ = await t.admit(modest, introducer: .peer(introducer), direct: false, nowMs: now)
        #expect(await t.dialCandidates(nowMs: now, excluding: []).map(\.peerID) == [modest.info.peerID, empty.info.peerID])
    }

    @Test("an introduced-but-never-reached address is not advertised; a reached one is, until its record names other addresses")
    func dialBack() async {
        let now = Discovery.nowMs()
        let me = SigningKey.generate()
        let table = PeerTable(selfID: me.publicKey, store: nil)
        let d = discovery(me, table)
        let introduced = record()
        _ = await table.admit(introduced, introducer: .peer(SigningKey.generate().publicKey), direct: false, nowMs: now)
        let inbound = record()
        var report = RoundReport()
        await d.learnInbound(inbound.bcsBytes, peerID: inbound.info.peerID, remoteAddress: "1.1.1.1:5", into: &report)
        #expect(await table.record(inbound.info.peerID) != nil)
        // Direct from a hello but never reached at an address its record names (e.g. a seed name).
        let key = SigningKey.generate()
        let dialled = record(key: key, addresses: ["20.1.1.1:9"], offsetMs: -2_000)
        _ = await table.admit(dialled, introducer: .peer(key.publicKey), direct: true, nowMs: now)
        await table.noteConnected(key.publicKey, address: "seed.example.com:9", latencyMs: 5, nowMs: now)
        #expect(await table.advertisable(limit: 200, asker: nil, nowMs: now).isEmpty)
        #expect(await d.knownPeers().peers.isEmpty)
        // Reached at its own address: advertised.
        await table.noteConnected(key.publicKey, address: "20.1.1.1:9", latencyMs: 5, nowMs: now)
        #expect(await table.advertisable(limit: 200, asker: nil, nowMs: now).map(\.info.peerID) == [key.publicKey])
        #expect(await table.record(key.publicKey).map { PeerSummary($0, nowMs: now).reached } == true)
        // A newer record naming an address never reached is not advertised until reached again.
        let moved = record(key: key, addresses: ["30.1.1.1:9"])
        #expect(await table.admit(moved, introducer: .peer(SigningKey.generate().publicKey), direct: false, nowMs: now) == .updated)
        #expect(await table.advertisable(limit: 200, asker: nil, nowMs: now).isEmpty)
    }

    @Test("a private node admits only allow-listed records, from hellos, answers and its stored table alike")
    func privateTable() async throws {
        let now = Discovery.nowMs()
        let me = SigningKey.generate()
        let friendKey = SigningKey.generate(), otherFriend = SigningKey.generate()
        let allowed: Set<PeerID> = [friendKey.publicKey, otherFriend.publicKey]
        // The table alone.
        let strict = PeerTable(selfID: me.publicKey, store: nil, admitOnly: allowed)
        let stranger = record()
        #expect(await strict.admit(stranger, introducer: .peer(stranger.info.peerID), direct: true, nowMs: now) != .added)
        #expect(await strict.admit(stranger, introducer: .inbound(.unknown), direct: false, nowMs: now) != .added)
        #expect(await strict.admit(record(key: friendKey), introducer: .peer(friendKey.publicKey), direct: true, nowMs: now) == .added)
        // Discovery of a private node whose table was built without the list (as today's wiring does).
        let table = PeerTable(selfID: me.publicKey, store: nil)
        _ = await table.admit(stranger, introducer: .peer(SigningKey.generate().publicKey), direct: false, nowMs: now)
        let d = discovery(me, table) {
            $0.access = .private
            $0.allowedPeers = allowed
        }
        var report = RoundReport()
        let intruder = record()
        await d.learnInbound(intruder.bcsBytes, peerID: intruder.info.peerID, remoteAddress: "1.2.3.4:5", into: &report)
        await d.ingest(KnownPeers(own: record(key: friendKey), peers: [record(), record(key: otherFriend), record()]),
                       from: friendKey.publicKey, into: &report)
        // An allow-listed peer passing off a stranger's record as its own is rejected, too.
        await d.ingest(KnownPeers(own: record(), peers: []), from: otherFriend.publicKey, into: &report)
        await d.applyAccess()
        let ids = Set(await table.all.map(\.peerID))
        #expect(ids == allowed, "\(ids.count) records")
        #expect(report.refused == 3 && report.rejected == 1)
        // A stored table loaded by a private node keeps only the allow-listed.
        let dir = TempDir("private-table")
        defer { dir.cleanup() }
        let store = try await NodeStore.open(path: dir.file("db"))
        let open = PeerTable(selfID: me.publicKey, store: store)
        _ = await open.admit(stranger, introducer: .peer(stranger.info.peerID), direct: true, nowMs: now)
        _ = await open.admit(record(key: friendKey), introducer: .peer(friendKey.publicKey), direct: true, nowMs: now)
        try await open.flush()
        let reopened = PeerTable(selfID: me.publicKey, store: store, admitOnly: allowed)
        #expect(try await reopened.load() == 1)
        #expect(await reopened.record(friendKey.publicKey) != nil)
        #expect(try await store.peerRecords().count == 1)
        await store.close()
    }
}
