/// A member of a committee: an authority's key, its voting power and its network address.
public struct Member: Hashable, Sendable, BCSCodable {
    /// The authority's Ed25519 key (its name).
    public var name: AuthorityName
    /// Its voting power; a committee's powers sum to ``Committee/totalVotingPower``.
    public var votingPower: UInt64
    /// Its network address, e.g. `127.0.0.1:9000`.
    public var address: String

    /// Creates a member.
    public init(name: PublicKey, votingPower: UInt64, address: String) {
        self.name = name
        self.votingPower = votingPower
        self.address = address
    }

    /// Writes name, power, address.
    public func encode(to writer: inout BCSWriter) {
        writer.write(name)
        writer.write(votingPower)
        writer.write(address)
    }

    /// Reads name, power, address.
    public init(from reader: inout BCSReader) throws(CoreError) {
        name = try reader.read(PublicKey.self)
        votingPower = try reader.readU64()
        address = try reader.readString()
    }
}

/// The authorities of one epoch; a quorum of them certifies checkpoints.
public struct Committee: Hashable, Sendable, BCSCodable, DomainDigestible {
    /// The sum of every committee's voting power.
    public static let totalVotingPower: UInt64 = 10_000
    /// The voting power a certificate needs.
    public static let quorum: UInt64 = 6_667
    /// The most members a committee may have.
    public static let maxMembers = 1_024

    /// The epoch this committee serves.
    public var epoch: UInt64
    /// Members sorted by name.
    public var members: [Member]

    /// Creates a committee (unchecked; see ``validate()``).
    public init(epoch: UInt64, members: [Member]) {
        self.epoch = epoch
        self.members = members
    }

    /// `"Committee::"`.
    public static var domain: DomainPrefix { .committee }

    /// Checks the committee's shape: 1...1024 members, sorted by name and distinct,
    /// every voting power positive, powers summing to 10,000.
    /// - Throws: ``CoreError/Code/invalidCommittee``.
    public func validate() throws(CoreError) {
        guard !members.isEmpty, members.count <= Committee.maxMembers else {
            throw CoreError(.invalidCommittee, "epoch \(epoch): committee has \(members.count) members")
        }
        var total: UInt64 = 0
        for (i, m) in members.enumerated() {
            if i > 0 && !(members[i - 1].name < m.name) {
                throw CoreError(.invalidCommittee, "epoch \(epoch): members not sorted and distinct at \(i)")
            }
            guard m.votingPower > 0, m.votingPower <= Committee.totalVotingPower else {
                throw CoreError(.invalidCommittee, "epoch \(epoch): member \(i) has voting power \(m.votingPower)")
            }
            total += m.votingPower
        }
        guard total == Committee.totalVotingPower else {
            throw CoreError(.invalidCommittee, "epoch \(epoch): voting power sums to \(total), not 10000")
        }
    }

    /// The index of the member with `name`, if any.
    public func index(of name: PublicKey) -> Int? {
        var lo = 0
        var hi = members.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if members[mid].name < name { lo = mid + 1 } else { hi = mid }
        }
        return lo < members.count && members[lo].name == name ? lo : nil
    }

    /// Writes epoch, members.
    public func encode(to writer: inout BCSWriter) {
        writer.write(epoch)
        writer.write(members)
    }

    /// Reads epoch, members (at most ``maxMembers``).
    public init(from reader: inout BCSReader) throws(CoreError) {
        epoch = try reader.readU64()
        members = try reader.readVector(Member.self, minElementSize: 41)
        guard members.count <= Committee.maxMembers else {
            throw CoreError(.lengthTooLarge, "committee of \(members.count) members exceeds \(Committee.maxMembers)")
        }
    }
}

/// A quorum of a committee's signatures over one message.
public struct QuorumCertificate: Hashable, Sendable, BCSCodable {
    /// The epoch of the signing committee.
    public var epoch: UInt64
    /// Signer bitmap: bit `i mod 8` of byte `i / 8` is member `i`; `ceil(n/8)` bytes.
    public var signers: [UInt8]
    /// One signature per set bit, in member order.
    public var signatures: [Signature]

    /// Creates a certificate (unchecked).
    public init(epoch: UInt64, signers: [UInt8], signatures: [Signature]) {
        self.epoch = epoch
        self.signers = signers
        self.signatures = signatures
    }

    /// Signs `message` with every key in `keys` that belongs to `committee` and assembles
    /// the certificate (keys outside the committee are ignored).
    public static func sign(_ message: [UInt8], committee: Committee, keys: [SigningKey]) -> QuorumCertificate {
        var bitmap = [UInt8](repeating: 0, count: (committee.members.count + 7) / 8)
        var byIndex: [(Int, SigningKey)] = []
        for key in keys {
            if let i = committee.index(of: key.publicKey), bitmap[i / 8] & (1 << (i % 8)) == 0 {
                bitmap[i / 8] |= 1 << (i % 8)
                byIndex.append((i, key))
            }
        }
        byIndex.sort { $0.0 < $1.0 }
        return QuorumCertificate(epoch: committee.epoch, signers: bitmap, signatures: byIndex.map { $0.1.sign(message) })
    }

    /// The member indices the bitmap names, in order.
    public func signerIndices(memberCount: Int) -> [Int] {
        var out: [Int] = []
        for (byteIndex, byte) in signers.enumerated() where byte != 0 {
            for bit in 0..<8 where byte & (1 << bit) != 0 {
                out.append(byteIndex * 8 + bit)
            }
        }
        return out
    }

    /// Verifies the certificate over `message` against `committee`.
    ///
    /// Checks, in order: the epoch, the bitmap length, no signer outside the committee,
    /// one signature per signer, no repeated signature, the signers' voting power against the
    /// quorum, and every signature.
    /// - Throws: ``CoreError`` with `wrongEpoch`, `bitmapOutOfRange`, `unknownSigner`,
    ///   `signatureCountMismatch`, `duplicateSigner`, `insufficientVotingPower` or `invalidSignature`.
    public func verify(_ message: [UInt8], committee: Committee) throws(CoreError) {
        let indices = try verifyShape(committee: committee)
        for (k, i) in indices.enumerated() where !committee.members[i].name.isValidSignature(signatures[k], for: message) {
            throw CoreError(.invalidSignature, "signature of member \(i) (\(committee.members[i].name.raw.short)) is invalid")
        }
    }

    /// Every check of ``verify(_:committee:)`` but the signatures themselves (no cryptography):
    /// epoch, bitmap, signers inside the committee, one distinct signature each, quorum of voting
    /// power. Returns the signer indices.
    @discardableResult
    public func verifyShape(committee: Committee) throws(CoreError) -> [Int] {
        guard epoch == committee.epoch else {
            throw CoreError(.wrongEpoch, "certificate of epoch \(epoch) checked against committee of epoch \(committee.epoch)")
        }
        let n = committee.members.count
        guard signers.count == (n + 7) / 8 else {
            throw CoreError(.bitmapOutOfRange, "signer bitmap has \(signers.count) bytes, committee of \(n) needs \((n + 7) / 8)")
        }
        let indices = signerIndices(memberCount: n)
        if let last = indices.last, last >= n {
            throw CoreError(.unknownSigner, "signer \(last) is outside the committee of \(n)")
        }
        guard indices.count == signatures.count else {
            throw CoreError(.signatureCountMismatch, "\(indices.count) signers but \(signatures.count) signatures")
        }
        var seen = Set<Signature>(minimumCapacity: signatures.count)
        for s in signatures where !seen.insert(s).inserted {
            throw CoreError(.duplicateSigner, "a signature appears twice in the certificate")
        }
        var power: UInt64 = 0
        for i in indices { power += committee.members[i].votingPower }
        guard power >= Committee.quorum else {
            throw CoreError(.insufficientVotingPower, "signers hold \(power) of \(Committee.totalVotingPower), quorum is \(Committee.quorum)")
        }
        return indices
    }

    /// Writes epoch, bitmap, signatures.
    public func encode(to writer: inout BCSWriter) {
        writer.write(epoch)
        writer.writeBytes(signers)
        writer.write(signatures)
    }

    /// Reads epoch, bitmap, signatures.
    public init(from reader: inout BCSReader) throws(CoreError) {
        epoch = try reader.readU64()
        signers = try reader.readBytes()
        signatures = try reader.readVector(Signature.self, minElementSize: 64)
    }
}
