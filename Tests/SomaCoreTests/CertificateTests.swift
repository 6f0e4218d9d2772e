import SomaCore
import Testing

@Suite("Committees and quorum certificates")
struct CertificateTests {
    /// Seven members with unequal power: 2500, 2000, 1500, 1500, 1000, 1000, 500.
    static func fixture(epoch: UInt64 = 1) -> (Committee, [SigningKey]) {
        let powers: [UInt64] = [2_500, 2_000, 1_500, 1_500, 1_000, 1_000, 500]
        var keyed = powers.indices.map { i in
            (try! SigningKey(seed: [UInt8](repeating: UInt8(i + 1), count: 32)), powers[i])
        }
        keyed.sort { $0.0.publicKey < $1.0.publicKey }
        let committee = Committee(epoch: epoch, members: keyed.map {
            Member(name: $0.0.publicKey, votingPower: $0.1, address: "127.0.0.1:\(9000 + Int($0.1))")
        })
        return (committee, keyed.map(\.0))
    }

    static let message: [UInt8] = Array("a checkpoint summary".utf8)

    /// Keys (in member order) whose power reaches exactly the quorum or more.
    static func quorumKeys(_ committee: Committee, _ keys: [SigningKey]) -> [SigningKey] {
        var power: UInt64 = 0
        var out: [SigningKey] = []
        for (i, k) in keys.enumerated() where power < Committee.quorum {
            power += committee.members[i].votingPower
            out.append(k)
        }
        return out
    }

    @Test("a quorum certificate verifies; the committee validates")
    func valid() throws {
        let (committee, keys) = Self.fixture()
        try committee.validate()
        let cert = QuorumCertificate.sign(Self.message, committee: committee, keys: Self.quorumKeys(committee, keys))
        try cert.verify(Self.message, committee: committee)
        #expect(cert.signers.count == 1)
        #expect(try QuorumCertificate(bcsBytes: cert.bcsBytes) == cert)
        // Every member signing works too.
        try QuorumCertificate.sign(Self.message, committee: committee, keys: keys).verify(Self.message, committee: committee)
    }

    @Test("below quorum is rejected, even one unit short")
    func belowQuorum() {
        let (committee, keys) = Self.fixture()
        // Find signers whose power totals 6,500 (< 6,667).
        let members = committee.members
        var chosen: [SigningKey] = []
        var power: UInt64 = 0
        for (i, m) in members.enumerated() where power + m.votingPower <= 6_500 {
            power += m.votingPower
            chosen.append(keys[i])
        }
        #expect(power < Committee.quorum)
        let cert = QuorumCertificate.sign(Self.message, committee: committee, keys: chosen)
        expectCode(.insufficientVotingPower) { try cert.verify(Self.message, committee: committee) }
        // The boundary: 6,666 of 10,000 is not a quorum, 6,667 is.
        for (power, passes) in [(UInt64(6_666), false), (6_667, true)] {
            let a = try! SigningKey(seed: [UInt8](repeating: 41, count: 32))
            let b = try! SigningKey(seed: [UInt8](repeating: 42, count: 32))
            let members = [Member(name: a.publicKey, votingPower: power, address: "a"),
                           Member(name: b.publicKey, votingPower: 10_000 - power, address: "b")].sorted { $0.name < $1.name }
            let c = Committee(epoch: 3, members: members)
            let single = QuorumCertificate.sign(Self.message, committee: c, keys: [a])
            if passes {
                #expect(throws: Never.self) { try single.verify(Self.message, committee: c) }
            } else {
                expectCode(.insufficientVotingPower) { try single.verify(Self.message, committee: c) }
            }
        }
    }

    @Test("a repeated signer is rejected")
    func repeatedSigner() {
        let (committee, keys) = Self.fixture()
        var cert = QuorumCertificate.sign(Self.message, committee: committee, keys: Self.quorumKeys(committee, keys))
        // Claim one more member whose slot carries a copy of the first signature.
        let indices = cert.signerIndices(memberCount: committee.members.count)
        let extra = (0..<committee.members.count).first { !indices.contains($0) }!
        cert.signers[extra / 8] |= 1 << (extra % 8)
        let position = indices.filter { $0 < extra }.count
        cert.signatures.insert(cert.signatures[0], at: position)
        expectCode(.duplicateSigner) { try cert.verify(Self.message, committee: committee) }
        // A committee listing one key twice is not valid.
        var doubled = committee
        doubled.members[1].name = doubled.members[0].name
        expectCode(.invalidCommittee) { try doubled.validate() }
    }

    @Test("a signer outside the committee is rejected")
    func outsider() throws {
        let (committee, keys) = Self.fixture()
        var cert = QuorumCertificate.sign(Self.message, committee: committee, keys: Self.quorumKeys(committee, keys))
        // Bit 7 names member 7 of a committee of 7.
        cert.signers[0] |= 0x80
        cert.signatures.append(keys[0].sign(Self.message))
        expectCode(.unknownSigner) { try cert.verify(Self.message, committee: committee) }
        // A key that is not a member, signing in a member's slot.
        let outsider = try SigningKey(seed: [UInt8](repeating: 99, count: 32))
        var forged = QuorumCertificate.sign(Self.message, committee: committee, keys: Self.quorumKeys(committee, keys))
        forged.signatures[0] = outsider.sign(Self.message)
        expectCode(.invalidSignature) { try forged.verify(Self.message, committee: committee) }
        // Keys outside the committee are ignored when signing, leaving too little power.
        let none = QuorumCertificate.sign(Self.message, committee: committee, keys: [outsider])
        expectCode(.insufficientVotingPower) { try none.verify(Self.message, committee: committee) }
    }

    @Test("a certificate from another epoch is rejected")
    func otherEpoch() {
        let (committee, keys) = Self.fixture(epoch: 1)
        let (next, _) = Self.fixture(epoch: 2)
        let cert = QuorumCertificate.sign(Self.message, committee: committee, keys: keys)
        expectCode(.wrongEpoch) { try cert.verify(Self.message, committee: next) }
        var relabelled = cert
        relabelled.epoch = 2
        expectCode(.wrongEpoch) { try relabelled.verify(Self.message, committee: committee) }
    }

    @Test("bad bitmaps, counts and signatures are rejected with their own errors")
    func malformed() {
        let (committee, keys) = Self.fixture()
        let good = QuorumCertificate.sign(Self.message, committee: committee, keys: Self.quorumKeys(committee, keys))
        var longBitmap = good
        longBitmap.signers.append(0)
        expectCode(.bitmapOutOfRange) { try longBitmap.verify(Self.message, committee: committee) }
        var shortBitmap = good
        shortBitmap.signers = []
        expectCode(.bitmapOutOfRange) { try shortBitmap.verify(Self.message, committee: committee) }
        var fewer = good
        fewer.signatures.removeLast()
        expectCode(.signatureCountMismatch) { try fewer.verify(Self.message, committee: committee) }
        var flipped = good
        var bytes = flipped.signatures[1].bytes
        bytes[10] ^= 1
        flipped.signatures[1] = Signature(bytes: bytes)!
        expectCode(.invalidSignature) { try flipped.verify(Self.message, committee: committee) }
        expectCode(.invalidSignature) { try good.verify(Self.message + [0], committee: committee) }
    }

    @Test("committee shape is checked")
    func committeeShape() {
        let (committee, _) = Self.fixture()
        var unsorted = committee
        unsorted.members.swapAt(0, 1)
        expectCode(.invalidCommittee) { try unsorted.validate() }
        var short = committee
        short.members[0].votingPower -= 1
        expectCode(.invalidCommittee) { try short.validate() }
        var zero = committee
        zero.members[6].votingPower += zero.members[0].votingPower
        zero.members[0].votingPower = 0
        expectCode(.invalidCommittee) { try zero.validate() }
        expectCode(.invalidCommittee) { try Committee(epoch: 0, members: []).validate() }
        #expect(committee.index(of: committee.members[3].name) == 3)
        #expect(committee.index(of: PublicKey(raw: .zero)) == nil)
    }
}
