import Foundation
import SomaCore
@testable import SomaGossip
import SomaNet
import Synchronization
import Testing

@Suite("Consensus relay: votes into certificates", .serialized)
struct ConsensusRelayTests {
    /// A committee of `keys` with equal voting power.
    static func committee(_ keys: [SigningKey], epoch: UInt64 = 1) -> Committee { .equalPower(keys.map(\.publicKey), epoch: epoch) }

    /// `n` validator nodes on a random graph (degree min(n-1, 4)), each with a relay.
    static func validators(_ n: Int, seed: UInt64) -> (SimNet, [SigningKey], [ConsensusRelay], [[Int]]) {
        let net = SimNet()
        let keys = (0..<n).map { SimNet.key(2_000 + $0) }
        let committee = Self.committee(keys)
        let relays = keys.map { key in
            ConsensusRelay(router: net.start(key.publicKey, topics: [:])) { $0 == committee.epoch ? committee : nil }
        }
        let graph = SimNet.randomGraph(n: n, degree: min(n - 1, 4), seed: seed)
        for (a, peers) in graph.enumerated() { for b in peers where a < b { net.connect(keys[a].publicKey, keys[b].publicKey) } }
        for r in relays { r.setCommitteePeers(Set(keys.map(\.publicKey))) }
        return (net, keys, relays, graph)
    }

    @Test("certificates form at every node with 4, 7 and 10 validators, also with a third of the voting power silent; the certificate verifies", arguments: [4, 7, 10])
    func certificates(validators n: Int) async throws {
        let (net, keys, relays, _) = Self.validators(n, seed: UInt64(n))
        defer { net.stopAll() }
        let statement = VoteStatement(kind: .vote, epoch: 1, round: 7, digest: Hashing.sha256([UInt8(n)]))
        let certificates0 = relays[0].subscribeCertificates()
        // A third of the members stay silent: the rest still hold a quorum (above 2/3 of 10,000).
        let silent = (n - 1) / 3
        for i in silent..<n { relays[i].submitVote(statement, key: keys[i]) }
        #expect(await eventually(10) { relays.allSatisfy { $0.isCertified(statement) } })
        // The certificate a silent node holds verifies against the committee.
        let received = await certificates0.first { $0.statement == statement }
        let committee = Self.committee(keys)
        #expect(throws: Never.self) { try received?.verify(committee: committee) }
        #expect((received?.certificate.signatures.count ?? 0) <= n - silent)
        #expect(relays.allSatisfy { $0.rejectedVotes == 0 })
    }

    @Test("invalid votes are never counted: a bad signature, a non-member, an unknown epoch, a timeout with a digest, and a second vote of the same signer for another digest")
    func invalidVotes() async throws {
        let (net, keys, relays, _) = Self.validators(4, seed: 4)
        defer { net.stopAll() }
        let good = VoteStatement(kind: .vote, epoch: 1, round: 3, digest: Hashing.sha256([1]))
        let relay = relays[0]
        var forged = Vote(statement: good, key: keys[1])
        forged.signature = keys[2].sign(good.signingMessage)
        let outsider = Vote(statement: good, key: SimNet.key(9_999))
        let unknownEpoch = Vote(statement: VoteStatement(kind: .vote, epoch: 2, round: 3, digest: good.digest), key: keys[1])
        let timeoutWithDigest = Vote(statement: VoteStatement(kind: .timeout, epoch: 1, round: 3, digest: good.digest), key: keys[1])
        for v in [forged, outsider, unknownEpoch, timeoutWithDigest] {
            guard case .reject = relay.checkVote(v.bcsBytes) else { Issue.record("accepted \(v)"); continue }
        }
        #expect(relay.power(of: good) == 0)
        #expect(relay.checkVote(Vote(statement: good, key: keys[1]).bcsBytes) == .accept)
        let other = VoteStatement(kind: .vote, epoch: 1, round: 3, digest: Hashing.sha256([2]))
        guard case .reject = relay.checkVote(Vote(statement: other, key: keys[1]).bcsBytes) else {
            Issue.record("an equivocation was accepted")
            return
        }
        #expect(relay.power(of: good) == 2_500 && relay.power(of: other) == 0)
        #expect(relay.checkVote([1, 2, 3]) != .accept)
        // The same vote twice counts once.
        #expect(relay.checkVote(Vote(statement: good, key: keys[1]).bcsBytes) == .ignore)
        #expect(relay.power(of: good) == 2_500 && relay.rejectedVotes == 6)
    }

    @Test("a partition of 4 of 10 validators holds no quorum on either side; once it heals, the timeouts sent during it form a timeout certificate everywhere")
    func partitionHeals() async throws {
        let net = SimNet()
        defer { net.stopAll() }
        let keys = (0..<10).map { SimNet.key(3_000 + $0) }
        let committee = Self.committee(keys)
        var configuration = GossipConfiguration()
        configuration.deliveryDeadline = .seconds(20)
        let relays = keys.map { key in
            ConsensusRelay(router: net.start(key.publicKey, configuration: configuration, topics: [:])) { $0 == 1 ? committee : nil }
        }
        // Two sides, each connected inside (a ring with chords), and links across.
        let a = Array(0..<4), b = Array(4..<10)
        var edges: [(Int, Int)] = []
        for side in [a, b] { for (i, x) in side.enumerated() { edges.append((x, side[(i + 1) % side.count])); edges.append((x, side[(i + 2) % side.count])) } }
        let across = [(0, 4), (1, 6), (2, 8), (3, 9)]
        for (x, y) in Set((edges + across).map { [$0.0, $0.1].sorted() }).map({ ($0[0], $0[1]) }) where x != y {
            net.connect(keys[x].publicKey, keys[y].publicKey)
        }
        // The partition: the links across go down.
        for (x, y) in across {
            net.router(keys[x].publicKey)!.removePeer(keys[y].publicKey)
            net.router(keys[y].publicKey)!.removePeer(keys[x].publicKey)
        }
        let timeout = VoteStatement(kind: .timeout, epoch: 1, round: 12, digest: .zero)
        for i in 0..<10 { relays[i].submitVote(timeout, key: keys[i]) }
        try await Task.sleep(for: .milliseconds(500))
        #expect(relays.allSatisfy { !$0.isCertified(timeout) })
        #expect(a.allSatisfy { relays[$0].power(of: timeout) == 4_000 } && b.allSatisfy { relays[$0].power(of: timeout) == 6_000 })
        // Healed: the retried timeouts cross and every node forms (or receives) the certificate.
        for (x, y) in across { net.connect(keys[x].publicKey, keys[y].publicKey) }
        #expect(await eventually(15) { relays.allSatisfy { $0.isCertified(timeout) } })
    }
}
