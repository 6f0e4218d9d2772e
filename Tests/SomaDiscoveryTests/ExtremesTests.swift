import Foundation
import SomaCore
@testable import SomaDiscovery
import SomaStore
import SomaTestSupport
import Testing

/// A record of `key` signed with an exact timestamp and ranges (no check of them).
func exactRecord(key: SigningKey = SigningKey.generate(), timestampMs: UInt64, holds: [HeldRange] = []) -> SignedNodeInfo {
    SignedNodeInfo(signing: NodeInfo(peerID: key.publicKey, addresses: [randomAddress()], timestampMs: timestampMs, holds: holds),
                   with: key)
}

@Suite("numbers from outside at their extremes")
struct ExtremesTests {
    @Test("timestamps 0 and UInt64.max, and a local clock at either end, are stale or future, never a trap",
          arguments: [UInt64(0), 1, 86_400_000, UInt64.max - 30_000, UInt64.max - 1, UInt64.max])
    func timestamps(ts: UInt64) {
        let r = exactRecord(timestampMs: ts)
        let now = Discovery.nowMs()
        expectCode(ts > now ? .future : .stale) { try r.verify(nowMs: now) }
        // The clock itself at the ends.
        _ = try? r.verify(nowMs: 0)
        _ = try? r.verify(nowMs: .max)
        #expect(SignedNodeInfo.isFresh(timestampMs: ts, nowMs: ts))
        #expect(SignedNodeInfo.isFresh(timestampMs: .max, nowMs: .max))
        #expect(!SignedNodeInfo.isFresh(timestampMs: .max, nowMs: 0))
        #expect(!SignedNodeInfo.isFresh(timestampMs: 0, nowMs: .max))
    }

    @Test("held ranges with lowest > highest are refused, decoded or built; heights near UInt64.max are only claims")
    func ranges() throws {
        let now = Discovery.nowMs()
        let inverted = exactRecord(timestampMs: now, holds: [HeldRange(lowest: .max, highest: 0)])
        expectCode(.malformed) { try inverted.verify(nowMs: now) }
        expectCode(.malformed) { try SignedNodeInfo.verified(inverted.bcsBytes, nowMs: now) }
        #expect(inverted.info.heldRanges.isEmpty)
        let top = exactRecord(timestampMs: now, holds: [HeldRange(lowest: .max, highest: .max), HeldRange(lowest: 0, highest: .max)])
        try top.verify(nowMs: now)
        #expect(top.info.heldRanges == [UInt64.max...UInt64.max, 0...UInt64.max])
        #expect(top.info.highestHeld == .max)
    }

    @Test("stored or admitted records dated at the extremes pass through expiry, advertising and dialling without a trap")
    func tableExtremes() async {
        let table = PeerTable(selfID: SigningKey.generate().publicKey, store: nil)
        let now = Discovery.nowMs()
        // The table trusts what admit is given (a loaded file could hold anything); none of it may trap.
        for ts in [UInt64(0), .max, .max - 1] {
            let r = exactRecord(timestampMs: ts, holds: [HeldRange(lowest: 5, highest: 1)])
            _ = await table.admit(r, introducer: .peer(r.info.peerID), direct: true, nowMs: .max)
            await table.noteConnected(r.info.peerID, address: r.info.addresses[0], latencyMs: .max, nowMs: .max)
            await table.noteLatency(r.info.peerID, latencyMs: .max)
        }
        #expect(await table.advertisable(limit: 200, asker: nil, nowMs: now).isEmpty)
        #expect(await table.advertisable(limit: -1, asker: nil, nowMs: .max).isEmpty)
        _ = await table.dialCandidates(nowMs: .max, excluding: [])
        _ = await table.expire(nowMs: .max, directExpiryMs: .max)
        #expect(await table.expire(nowMs: 0) == 0)
        for r in await table.all { #expect(r.latencyMs == .max) }
        let introduced = exactRecord(timestampMs: .max)
        _ = await table.admit(introduced, introducer: .peer(SigningKey.generate().publicKey), direct: false, nowMs: now)
        #expect(await table.expire(nowMs: now) == 1, "a record dated in the far future is dropped")
    }

    @Test("backoff saturates: a base, a ceiling and a clock near UInt64.max, and more failures than UInt32 counts")
    func backoff() async throws {
        let table = PeerTable(selfID: SigningKey.generate().publicKey, store: nil)
        let r = record()
        _ = await table.admit(r, introducer: .peer(r.info.peerID), direct: true, nowMs: 0)
        await table.noteFailure(r.info.peerID, nowMs: .max - 5, baseMs: .max, maxMs: .max)
        #expect(await table.record(r.info.peerID)?.nextDialMs == .max)
        await table.noteTransfer(r.info.peerID, throughput: .max, newFailures: .max)
        await table.noteTransfer(r.info.peerID, throughput: nil, newFailures: .max)
        #expect(await table.record(r.info.peerID)?.failures == .max)
        for _ in 0..<3 { await table.noteFailure(r.info.peerID, nowMs: 10, baseMs: 1 << 62, maxMs: .max) }
        #expect(await table.record(r.info.peerID)?.nextDialMs == .max)
        // A stored record whose failure counters are at their maximum (a file is outside data).
        var stored = try #require(await table.record(r.info.peerID))
        stored.consecutiveFailures = .max
        stored.failures = .max
        let back = try PeerRecord(bcsBytes: stored.bcsBytes)
        let t2 = PeerTable(selfID: SigningKey.generate().publicKey, store: nil)
        await t2.insert(back)
        for _ in 0..<3 { await t2.noteFailure(back.peerID, nowMs: 0, baseMs: 1_000, maxMs: 60_000) }
        #expect(await t2.record(back.peerID)?.nextDialMs == 60_000)
    }

    @Test("rates and durations from sync: NaN, infinities, negatives, huge values and extreme failure counts")
    func sourceNotes() async {
        let me = SigningKey.generate()
        let table = PeerTable(selfID: me.publicKey, store: nil)
        let d = discovery(me, table)
        let r = record()
        _ = await table.admit(r, introducer: .peer(r.info.peerID), direct: true, nowMs: Discovery.nowMs())
        let id = r.info.peerID
        for (rate, failures) in [(Double.nan, Int.max), (.infinity, Int.min), (-.infinity, 0), (-1, -5), (1e300, Int.max), (2e6, 3)] {
            await d.noteSource(id, throughput: rate, failures: failures, bannedFor: nil, reason: nil)
        }
        #expect(await table.record(id)?.throughput == 2_000_000)
        await d.noteSource(id, throughput: .infinity, failures: 0, bannedFor: .seconds(Int64.max), reason: "forged")
        let rec = await table.record(id)
        #expect(rec?.throughput == .max && rec?.bannedUntilMs == .max && rec?.banReason == "forged")
        #expect(UInt64(saturating: .nan) == 0 && UInt64(saturating: -0.0) == 0 && UInt64(saturating: 18_446_744_073_709_551_616.0) == .max)
        #expect(UInt64(saturating: 1.5) == 1 && UInt64(saturating: -.infinity) == 0)
        #expect(UInt32(millisecondsOf: .nan) == 0 && UInt32(millisecondsOf: 1e12) == .max && UInt32(millisecondsOf: 0.25) == 250)
        #expect(Duration.seconds(Int64.max).milliseconds == .max && Duration.seconds(-5).milliseconds == 0)
        #expect(Duration.milliseconds(1_500).milliseconds == 1_500)
        #expect(smoothedLatency(old: .max, new: .max) == .max && smoothedLatency(old: 0, new: 7) == 7)
        // The remembered failure counts are bounded.
        for _ in 0..<(Discovery.maxSourceNotes + 10) {
            await d.noteSource(SigningKey.generate().publicKey, throughput: nil, failures: 1, bannedFor: nil, reason: nil)
        }
        #expect(d.state.withLock { $0.sourceFailures.count } <= Discovery.maxSourceNotes)
    }

    @Test("configured bounds of zero or below are clamped, never a trap or an endless loop")
    func configuration() async {
        let t = PeerTable(selfID: SigningKey.generate().publicKey, store: nil, maxPeers: 0, maxPerIntroducer: -3, maxInbound: 0, maxPerGroup: -1)
        #expect(t.maxPeers == 1 && t.maxPerIntroducer == 1 && t.maxInbound == 1 && t.maxPerGroup == 1)
        #expect(OutboundDiversity(maxPerGroup: 0).maxPerGroup == 1)
        #expect(OutboundDiversity(maxPerGroup: 2).pick([candidate(["1.1.1.1:1"])], open: [:], count: -4).isEmpty)
        let me = SigningKey.generate()
        let table = PeerTable(selfID: me.publicKey, store: nil)
        let r = record(addresses: ["127.0.0.1:1"])  // nothing listens on port 1
        _ = await table.admit(r, introducer: .peer(r.info.peerID), direct: true, nowMs: Discovery.nowMs())
        let d = discovery(me, table) {
            $0.dialConcurrency = 0
            $0.targetConnections = 1
            $0.backoffBase = .seconds(Int64.max)
            $0.backoffMax = .seconds(Int64.max)
        }
        var report = RoundReport()
        await d.dialTowardsTarget(into: &report)
        #expect(report.dialFailures == 1)
        #expect(await table.record(r.info.peerID)?.nextDialMs == .max)
    }

    @Test("persisted records: the version 2 form round-trips with its introducer and reached address; version 1 still loads")
    func persistedForms() throws {
        let r = record()
        var p = PeerRecord(info: r, introducer: .inbound(.ipv6(0x2001_0DB8)), direct: false, nowMs: 5)
        p.reachedAddress = "1.2.3.4:5"
        let back = try PeerRecord(bcsBytes: p.bcsBytes)
        #expect(back.introducer == .inbound(.ipv6(0x2001_0DB8)) && back.reachedAddress == "1.2.3.4:5" && back.firstSeenMs == 5)
        // Version 1: the introducer was a peer id; self-introduced meant introducer == peer.
        func v1(introducer: PeerID, direct: Bool) -> [UInt8] {
            var w = BCSWriter()
            w.write(UInt8(1))
            w.write(r)
            w.write(introducer)
            w.write(direct)
            for _ in 0..<4 { w.write(UInt64(7)) }
            w.write(UInt32(1))
            w.write(UInt32(2))
            w.write(UInt32(3))
            w.write(UInt64(0))
            w.write("")
            w.write(UInt64(0))
            return w.bytes
        }
        let selfIntroduced = try PeerRecord(bcsBytes: v1(introducer: r.info.peerID, direct: false))
        #expect(selfIntroduced.introducer == .inbound(.unknown) && selfIntroduced.reachedAddress.isEmpty)
        let other = SigningKey.generate().publicKey
        #expect(try PeerRecord(bcsBytes: v1(introducer: other, direct: false)).introducer == .peer(other))
        let direct = try PeerRecord(bcsBytes: v1(introducer: r.info.peerID, direct: true))
        #expect(direct.direct && direct.introducer == .peer(r.info.peerID) && !direct.isReached)
        var bad = p.bcsBytes
        bad[0] = 3
        #expect(throws: CoreError.self) { try PeerRecord(bcsBytes: bad) }
        // Fuzz finding (nodeinfo): a version 2 direct record naming another introducer decoded
        // (normalised to the peer itself), so two encodings meant one record. It is refused now,
        // and the encoder writes a direct record as its own introducer whatever it holds.
        var mixed = p
        mixed.direct = true
        let canonical = mixed.bcsBytes
        #expect(try PeerRecord(bcsBytes: canonical).bcsBytes == canonical)
        #expect(try PeerRecord(bcsBytes: canonical).introducer == .peer(r.info.peerID))
        var w = BCSWriter()
        w.write(UInt8(2))
        w.write(r)
        w.write(Introducer.peer(other))
        w.write(true)
        let tail = Array(canonical.suffix(canonical.count - (1 + r.bcsBytes.count + Introducer.peer(r.info.peerID).bcsBytes.count + 1)))
        let forged = w.bytes + tail
        #expect(throws: CoreError.self) { try PeerRecord(bcsBytes: forged) }
    }
}
