import Foundation
import SomaCore
@testable import SomaDiscovery
import Testing

/// An address in a random IPv4 /16 (so that records made by tests rarely share a network group).
func randomAddress(port: Int = 9100) -> String {
    "\(UInt8.random(in: 1...223)).\(UInt8.random(in: 0...255)).\(UInt8.random(in: 0...255)).1:\(port)"
}

/// A signed record of a fresh key, dated `offsetMs` from now (by default at one random address).
func record(
    key: SigningKey = SigningKey.generate(), addresses: [String]? = nil, offsetMs: Int64 = 0,
    access: Access = .public, holds: [HeldRange] = [HeldRange(lowest: 0, highest: 10)]
) -> SignedNodeInfo {
    let now = Int64(Discovery.nowMs())
    let info = NodeInfo(
        peerID: key.publicKey, addresses: addresses ?? [randomAddress()], timestampMs: UInt64(now + offsetMs), access: access, role: .archive,
        holds: holds, snapshotEpochs: [3, 4])
    return SignedNodeInfo(signing: info, with: key)
}

func expectCode<T>(_ code: DiscoveryError.Code, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> T) {
    do {
        _ = try body()
        Issue.record("expected \(code), nothing was thrown", sourceLocation: sourceLocation)
    } catch {
        #expect((error as? DiscoveryError)?.code == code, "got \(error)", sourceLocation: sourceLocation)
    }
}

@Suite("signed node records")
struct NodeInfoTests {
    @Test("the encoding is BCS field by field, and the signature is over the domain digest")
    func layout() throws {
        let key = try SigningKey(seed: [UInt8](repeating: 7, count: 32))
        let info = NodeInfo(
            peerID: key.publicKey, addresses: ["a:1"], timestampMs: 0x0102, access: .private, role: .validator,
            holds: [HeldRange(lowest: 1, highest: 2)], snapshotEpochs: [5])
        var expected = key.publicKey.raw.bytes
        expected += [1, 3] + Array("a:1".utf8)                  // one address of 3 bytes
        expected += [0x02, 0x01, 0, 0, 0, 0, 0, 0]              // u64 little-endian
        expected += [1, 2]                                      // access private, role validator (ULEB128 tags)
        expected += [1] + [1, 0, 0, 0, 0, 0, 0, 0] + [2, 0, 0, 0, 0, 0, 0, 0]
        expected += [1] + [5, 0, 0, 0, 0, 0, 0, 0]
        #expect(info.bcsBytes == expected)
        #expect(info.digest == Hashing.sha256(Array("NodeInfo::".utf8) + expected))
        let signed = SignedNodeInfo(signing: info, with: key)
        #expect(signed.bcsBytes == expected + signed.signature.bytes)
        #expect(key.publicKey.isValidSignature(signed.signature, for: info.digest.bytes))
        #expect(try SignedNodeInfo(bcsBytes: signed.bcsBytes) == signed)
    }

    @Test("a fresh, well-formed record verifies")
    func verifies() throws {
        let r = record()
        let back = try SignedNodeInfo.verified(r.bcsBytes, nowMs: Discovery.nowMs())
        #expect(back == r)
        // Up to 30 s ahead is clock skew, accepted.
        _ = try SignedNodeInfo.verified(record(offsetMs: 25_000).bcsBytes, nowMs: Discovery.nowMs())
    }

    @Test("a tampered record is rejected: an address, a range, the role or the key changed after signing")
    func tampered() {
        let r = record()
        var a = r
        a.info.addresses = ["10.0.0.66:9100"]
        var b = r
        b.info.holds = [HeldRange(lowest: 0, highest: 1_000_000)]
        var c = r
        c.info.role = .validator
        var d = r
        d.info.peerID = SigningKey.generate().publicKey
        var e = r
        e.info.timestampMs += 1
        for t in [a, b, c, d, e] {
            expectCode(.badSignature) { try SignedNodeInfo.verified(t.bcsBytes, nowMs: Discovery.nowMs()) }
        }
    }

    @Test("a record older than a day is stale; one dated more than 30 s ahead is from the future")
    func age() {
        let now = Discovery.nowMs()
        expectCode(.stale) { try SignedNodeInfo.verified(record(offsetMs: -86_400_000 - 1_000).bcsBytes, nowMs: now) }
        expectCode(.future) { try SignedNodeInfo.verified(record(offsetMs: 31_000 + 2_000).bcsBytes, nowMs: now) }
        // A replayed old record of a known peer: valid signature, but stale.
        expectCode(.stale) { try record(offsetMs: -2 * 86_400_000).verify(nowMs: now) }
    }

    @Test("oversized records are rejected before use: too many or too long addresses, too many ranges, over 4 KiB, garbage")
    func oversized() {
        let now = Discovery.nowMs()
        let key = SigningKey.generate()
        expectCode(.malformed) {
            try SignedNodeInfo.verified(record(key: key, addresses: (0..<9).map { "10.0.0.\($0):1" }).bcsBytes, nowMs: now)
        }
        expectCode(.malformed) {
            try SignedNodeInfo.verified(record(key: key, addresses: [String(repeating: "h", count: 130) + ":1"]).bcsBytes, nowMs: now)
        }
        expectCode(.malformed) {
            try SignedNodeInfo.verified(record(key: key, holds: (0..<9).map { HeldRange(lowest: UInt64($0), highest: UInt64($0)) }).bcsBytes, nowMs: now)
        }
        expectCode(.malformed) { try SignedNodeInfo.verified(record(addresses: ["no-port"]).bcsBytes, nowMs: now) }
        expectCode(.malformed) { try SignedNodeInfo.verified(record(addresses: ["h:0"]).bcsBytes, nowMs: now) }
        expectCode(.malformed) { try SignedNodeInfo.verified([UInt8](repeating: 0xAB, count: 5_000), nowMs: now) }
        expectCode(.malformed) { try SignedNodeInfo.verified([1, 2, 3], nowMs: now) }
        // A declared count of a billion addresses is refused from the count, before any allocation.
        var huge = key.publicKey.raw.bytes
        huge += [0x80, 0x94, 0xEB, 0xDC, 0x03]
        expectCode(.malformed) { try SignedNodeInfo.verified(huge, nowMs: now) }
        // A getKnownPeers answer with more than 200 records does not decode.
        let own = record()
        var w = BCSWriter()
        w.write(own)
        w.writeLength(201)
        for _ in 0..<201 { w.write(own) }
        #expect(throws: CoreError.self) { try KnownPeers(bcsBytes: w.bytes) }
    }
}
