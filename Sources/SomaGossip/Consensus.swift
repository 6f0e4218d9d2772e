public import SomaCore
import Synchronization

/// What a consensus vote is for.
public enum VoteKind: UInt8, Sendable, Hashable, CaseIterable {
    /// A vote for a proposal (its digest).
    case vote = 0
    /// A timeout of a round (view change); its digest is the zero digest.
    case timeout = 1
}

/// The statement a vote signs: kind, epoch, round and the digest voted for. Every member that
/// votes for the same statement signs the same bytes, so the votes aggregate into one
/// ``QuorumCertificate``.
public struct VoteStatement: Hashable, Sendable, BCSCodable {
    /// Vote or timeout.
    public var kind: VoteKind
    /// The committee's epoch.
    public var epoch: UInt64
    /// The consensus round.
    public var round: UInt64
    /// The proposal's digest (zero for a timeout).
    public var digest: Digest

    /// A statement.
    public init(kind: VoteKind, epoch: UInt64, round: UInt64, digest: Digest) {
        self.kind = kind
        self.epoch = epoch
        self.round = round
        self.digest = digest
    }

    /// The signed bytes: the intent `"SomaConsensusVote::"` then `bcs(statement)`.
    public var signingMessage: [UInt8] { Array("SomaConsensusVote::".utf8) + bcsBytes }

    /// The length of `bcs(VoteStatement)`: kind, epoch, round, digest.
    public static let encodedBytes = 1 + 8 + 8 + 32

    /// Writes kind (u8), epoch, round, digest.
    public func encode(to w: inout BCSWriter) {
        w.write(kind.rawValue)
        w.write(epoch)
        w.write(round)
        w.write(digest)
    }

    /// Reads kind (0 or 1), epoch, round, digest.
    public init(from r: inout BCSReader) throws(CoreError) {
        let raw = try r.readU8()
        guard let k = VoteKind(rawValue: raw) else { throw CoreError(.unknownTag, "vote kind \(raw)") }
        kind = k
        epoch = try r.readU64()
        round = try r.readU64()
        digest = try r.readDigest()
    }
}

/// One member's signed vote (the payload of the votes topic).
public struct Vote: Hashable, Sendable, BCSCodable {
    /// What it votes for.
    public var statement: VoteStatement
    /// The member's authority key.
    public var signer: PublicKey
    /// Its Ed25519 signature of ``VoteStatement/signingMessage``.
    public var signature: Signature

    /// A vote (unchecked).
    public init(statement: VoteStatement, signer: PublicKey, signature: Signature) {
        self.statement = statement
        self.signer = signer
        self.signature = signature
    }

    /// Signs `statement` with `key`.
    public init(statement: VoteStatement, key: SigningKey) {
        self.init(statement: statement, signer: key.publicKey, signature: key.sign(statement.signingMessage))
    }

    /// The length of `bcs(Vote)`: statement, 32-byte key, 64-byte signature.
    public static let encodedBytes = VoteStatement.encodedBytes + 32 + 64

    /// Writes statement, signer, signature.
    public func encode(to w: inout BCSWriter) {
        w.write(statement)
        w.write(signer)
        w.write(signature)
    }

    /// Reads statement, signer, signature.
    public init(from r: inout BCSReader) throws(CoreError) {
        statement = try r.read(VoteStatement.self)
        signer = try r.read(PublicKey.self)
        signature = try r.read(Signature.self)
    }
}

/// A quorum of a committee's votes for one statement (the payload of the certificates topic):
/// a quorum certificate for a vote, a timeout certificate for a timeout.
public struct VoteCertificate: Hashable, Sendable, BCSCodable {
    /// What the quorum voted for.
    public var statement: VoteStatement
    /// Their signatures (the bitmap names the members).
    public var certificate: QuorumCertificate

    /// A certificate (unchecked: ``verify(committee:)``).
    public init(statement: VoteStatement, certificate: QuorumCertificate) {
        self.statement = statement
        self.certificate = certificate
    }

    /// Checks the certificate against the committee of its epoch (quorum of voting power, every
    /// signature over the statement).
    public func verify(committee: Committee) throws(CoreError) {
        guard statement.epoch == committee.epoch else {
            throw CoreError(.wrongEpoch, "certificate of epoch \(statement.epoch) checked against committee of epoch \(committee.epoch)")
        }
        try certificate.verify(statement.signingMessage, committee: committee)
    }

    /// Writes statement, certificate.
    public func encode(to w: inout BCSWriter) {
        w.write(statement)
        w.write(certificate)
    }

    /// Reads statement, certificate.
    public init(from r: inout BCSReader) throws(CoreError) {
        statement = try r.read(VoteStatement.self)
        certificate = try r.read(QuorumCertificate.self)
    }
}

/// The consensus relay (DESIGN §12): consensus payloads travel as opaque messages, except votes
/// and timeouts. A vote of the current committee (a member's Ed25519 signature over the
/// statement) is checked before it is counted or forwarded: its epoch's committee known, the
/// signer a member, the signature valid, and no other vote of the same signer for the same
/// kind, epoch and round (an equivocation: rejected, the sender penalised, and never counted).
/// Votes are aggregated at every node; once their voting power reaches 6,667 of 10,000, the node
/// forms the ``VoteCertificate`` and publishes it, and from then on it forwards no more votes
/// of that statement: the certificate replaces them in propagation. A certificate received is
/// verified against the committee before it is accepted.
///
/// Committees come from the verified epoch chain (`committee(epoch)`); consensus topics travel
/// in the consensus class and go to the committee's nodes first (``setCommitteePeers(_:)``).
public final class ConsensusRelay: Sendable {
    /// The topic of votes and timeouts.
    public static let votesTopic = "consensus.votes"
    /// The topic of certificates.
    public static let certificatesTopic = "consensus.certificates"
    /// The topic of opaque consensus messages (proposals, anything else).
    public static let messagesTopic = "consensus.messages"

    /// The router it relays through.
    public let router: GossipRouter
    let committee: @Sendable (UInt64) -> Committee?
    let state = Mutex<AggregationState>(AggregationState())
    let subscribers = Mutex<[Int: AsyncStream<VoteCertificate>.Continuation]?>([:])
    let nextSubscriber = Atomic<Int>(0)

    struct Tally {
        var power: UInt64 = 0
        var signatures: [Int: Signature] = [:]
    }

    struct AggregationState {
        var tallies: [VoteStatement: Tally] = [:]
        var certified: Set<VoteStatement> = []
        /// Each signer's vote by (kind, epoch, round): a second one for another digest is an equivocation.
        var cast: [SignerRound: Digest] = [:]
        var rejected = 0
        var newest: (epoch: UInt64, round: UInt64) = (0, 0)

        /// Rounds kept: tallies, certified statements and cast votes of rounds more than
        /// `retainedRounds` behind the newest seen (or of earlier epochs) are forgotten, so the
        /// state stays bounded.
        static let retainedRounds: UInt64 = 1_000

        mutating func forgetOldRounds(newest s: VoteStatement) {
            if (s.epoch, s.round) > newest { newest = (s.epoch, s.round) }
            guard cast.count > 100_000 || tallies.count > 10_000 else { return }
            let floor = newest.round > Self.retainedRounds ? newest.round - Self.retainedRounds : 0
            func old(_ e: UInt64, _ r: UInt64) -> Bool { e < newest.epoch || (e == newest.epoch && r < floor) }
            cast = cast.filter { !old($0.key.epoch, $0.key.round) }
            tallies = tallies.filter { !old($0.key.epoch, $0.key.round) }
            certified = certified.filter { !old($0.epoch, $0.round) }
        }
    }

    struct SignerRound: Hashable {
        var kind: VoteKind
        var epoch: UInt64
        var round: UInt64
        var signer: PublicKey
    }

    /// A relay on `router`; `committee` gives the verified committee of an epoch (nil: unknown).
    public init(router: GossipRouter, committee: @escaping @Sendable (UInt64) -> Committee?) {
        self.router = router
        self.committee = committee
        registerTopics(preferred: [])
    }

    /// Certificates as this node forms or receives them from now on (each statement once); the
    /// stream ends when ``finishSubscribers()`` is called.
    public func subscribeCertificates() -> AsyncStream<VoteCertificate> {
        let (stream, continuation) = AsyncStream<VoteCertificate>.makeStream(bufferingPolicy: .bufferingNewest(4_096))
        let key = nextSubscriber.add(1, ordering: .relaxed).newValue
        let open = subscribers.withLock { s -> Bool in
            guard s != nil else { return false }
            s![key] = continuation
            return true
        }
        guard open else {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [weak self] _ in self?.subscribers.withLock { _ = $0?.removeValue(forKey: key) } }
        return stream
    }

    /// Ends every certificate stream (a stopping node).
    public func finishSubscribers() {
        for c in subscribers.withLock({ s in defer { s = nil }; return Array(s?.values ?? [:].values) }) { c.finish() }
    }

    func announce(_ certificate: VoteCertificate) {
        for c in subscribers.withLock({ Array($0?.values ?? [:].values) }) { c.yield(certificate) }
    }

    /// Sends consensus topics to these peers (the committee's nodes) first and keeps them in the tree.
    public func setCommitteePeers(_ peers: Set<PeerID>) {
        registerTopics(preferred: peers)
    }

    /// The votes topic's options without its validation: class consensus, 1 KiB, packed (signers
    /// named by their index in `committee(epoch)` where it is known).
    public static func votesOptions(
        preferred: Set<PeerID>, committee: @escaping @Sendable (UInt64) -> Committee? = { _ in nil }
    ) -> TopicOptions {
        var votes = TopicOptions()
        votes.priority = .consensus
        votes.maxMessageBytes = 1_024
        votes.preferred = preferred
        votes.pack = { VotePack(votes: $0, committee: committee)?.bcsBytes }
        votes.unpack = { try VotePack(bcsBytes: $0).payloads(committee: committee) }
        // A vote's origin is its signer (bytes 49..<81 of the 145 of `bcs(Vote)`): each
        // member's votes travel a tree of their own.
        votes.origin = { $0.count == Vote.encodedBytes ? Array($0[VoteStatement.encodedBytes..<VoteStatement.encodedBytes + 32]) : nil }
        return votes
    }

    private func registerTopics(preferred: Set<PeerID>) {
        var votes = Self.votesOptions(preferred: preferred, committee: committee)
        votes.validate = { [weak self] m in self?.checkVote(m.payload) ?? .ignore }
        router.register(topic: Self.votesTopic, options: votes)
        var certs = TopicOptions()
        certs.priority = .consensus
        certs.maxMessageBytes = 128 << 10
        certs.preferred = preferred
        certs.validate = { [weak self] m in self?.checkCertificate(m.payload) ?? .ignore }
        router.register(topic: Self.certificatesTopic, options: certs)
        var messages = TopicOptions()
        messages.priority = .consensus
        messages.maxMessageBytes = 4 << 20
        messages.preferred = preferred
        router.register(topic: Self.messagesTopic, options: messages)
    }

    /// Signs `statement` with `key` (a member's), counts the vote here and publishes it (a timeout
    /// as a critical message).
    @discardableResult
    public func submitVote(_ statement: VoteStatement, key: SigningKey) -> Vote {
        let vote = Vote(statement: statement, key: key)
        if case .accept = checkVote(vote.bcsBytes) {
            // A timeout is critical: acknowledged hop by hop and retried, also to peers that are
            // unreachable for a while (a partition), so that a view change completes once it heals.
            router.publish(topic: Self.votesTopic, payload: vote.bcsBytes, critical: statement.kind == .timeout)
        }
        return vote
    }

    /// Counts and publishes a vote a member signed elsewhere (a consensus component in another
    /// process), after the checks a peer's vote passes.
    /// - Returns: the verdict (`ignore`: already counted, or the statement is certified).
    public func submit(_ vote: Vote) -> Verdict {
        let verdict = checkVote(vote.bcsBytes)
        if case .accept = verdict {
            router.publish(topic: Self.votesTopic, payload: vote.bcsBytes, critical: vote.statement.kind == .timeout)
        }
        return verdict
    }

    /// Whether a certificate of `statement` is known here.
    public func isCertified(_ statement: VoteStatement) -> Bool { state.withLock { $0.certified.contains(statement) } }

    /// The voting power counted so far for `statement` (the quorum's once certified).
    public func power(of statement: VoteStatement) -> UInt64 { state.withLock { $0.tallies[statement]?.power ?? 0 } }

    /// Votes refused so far (bad signature, not a member, unknown epoch, equivocation).
    public var rejectedVotes: Int { state.withLock { $0.rejected } }

    /// The votes topic's validation: checks and counts a vote; forms and publishes the certificate
    /// at quorum; a vote for a certified statement is ignored (not forwarded).
    func checkVote(_ payload: [UInt8]) -> Verdict {
        guard let vote = try? Vote(bcsBytes: payload) else { return reject("a vote that does not decode") }
        let s = vote.statement
        guard let committee = committee(s.epoch) else { return reject("a vote of epoch \(s.epoch), whose committee is not known") }
        guard let index = committee.index(of: vote.signer) else { return reject("a vote of \(vote.signer.raw.short), not a member of epoch \(s.epoch)") }
        guard s.kind == .vote || s.digest == Digest.zero else { return reject("a timeout with a digest") }
        // A vote for a certified statement is not needed: not checked, counted or forwarded.
        if state.withLock({ $0.certified.contains(s) }) { return .ignore }
        guard vote.signer.isValidSignature(vote.signature, for: s.signingMessage) else {
            return reject("a vote whose signature does not verify")
        }
        let outcome = state.withLock { st -> (Verdict, VoteCertificate?) in
            let key = SignerRound(kind: s.kind, epoch: s.epoch, round: s.round, signer: vote.signer)
            if let earlier = st.cast[key], earlier != s.digest {
                st.rejected += 1
                return (.reject("equivocation: \(vote.signer.raw.short) voted for two digests in round \(s.round)"), nil)
            }
            st.cast[key] = s.digest
            st.forgetOldRounds(newest: s)
            if st.certified.contains(s) { return (.ignore, nil) }
            var tally = st.tallies[s] ?? Tally()
            guard tally.signatures[index] == nil else { return (.ignore, nil) }
            tally.signatures[index] = vote.signature
            tally.power += committee.members[index].votingPower
            st.tallies[s] = tally
            guard tally.power >= Committee.quorum else { return (.accept, nil) }
            st.certified.insert(s)
            var bitmap = [UInt8](repeating: 0, count: (committee.members.count + 7) / 8)
            for i in tally.signatures.keys { bitmap[i / 8] |= 1 << (i % 8) }
            let signatures = tally.signatures.keys.sorted().map { tally.signatures[$0]! }
            let certificate = VoteCertificate(statement: s, certificate: QuorumCertificate(epoch: s.epoch, signers: bitmap, signatures: signatures))
            return (.accept, certificate)
        }
        if let certificate = outcome.1 {
            announce(certificate)
            router.publish(topic: Self.certificatesTopic, payload: certificate.bcsBytes)
        }
        return outcome.0
    }

    /// The certificates topic's validation: a certificate is accepted once it verifies against
    /// its epoch's committee; the statement counts as certified from then on.
    func checkCertificate(_ payload: [UInt8]) -> Verdict {
        guard let cert = try? VoteCertificate(bcsBytes: payload) else { return reject("a certificate that does not decode") }
        // Another node's certificate of a statement certified here (every node aggregates, so
        // several form one): not verified again, not forwarded.
        if state.withLock({ $0.certified.contains(cert.statement) }) { return .ignore }
        guard let committee = committee(cert.statement.epoch) else { return reject("a certificate of an unknown epoch") }
        do {
            try cert.verify(committee: committee)
        } catch {
            return reject("a certificate that does not verify: \(error)")
        }
        let fresh = state.withLock { $0.certified.insert(cert.statement).inserted }
        if fresh { announce(cert) }
        return fresh ? .accept : .ignore
    }

    private func reject(_ why: String) -> Verdict {
        state.withLock { $0.rejected += 1 }
        return .reject(why)
    }
}

/// Votes that share a frame, packed: each statement once (epoch and round as ULEB128), then
/// each vote's signer and signature. Where the statement's committee is known, a signer travels as its index in the
/// committee (2 bytes: 66 bytes a vote instead of 145), otherwise as its key (96 bytes a vote).
/// Unpacking gives back the exact `bcs(Vote)` of each, so their message ids are unchanged.
struct VotePack: BCSCodable, Equatable {
    /// How a packed vote names its signer.
    enum Signer: Equatable {
        case key(PublicKey)
        /// The index of the member in the committee of the statement's epoch.
        case index(UInt16)
    }

    struct Group: Equatable {
        var statement: VoteStatement
        var votes: [(signer: Signer, signature: Signature)]

        static func == (a: Group, b: Group) -> Bool {
            a.statement == b.statement && a.votes.elementsEqual(b.votes) { $0.signer == $1.signer && $0.signature == $1.signature }
        }
    }

    var groups: [Group]

    /// Packs `payloads` (each a `bcs(Vote)`), in order of first appearance of their statements,
    /// naming signers by index where `committee` knows the statement's epoch and every signer of
    /// the group is a member; nil if a payload does not decode.
    init?(votes payloads: [[UInt8]], committee: (UInt64) -> Committee? = { _ in nil }) {
        var votes: [(statement: VoteStatement, votes: [Vote])] = []
        var index: [VoteStatement: Int] = [:]
        for p in payloads {
            guard let v = try? Vote(bcsBytes: p) else { return nil }
            if let i = index[v.statement] {
                votes[i].votes.append(v)
            } else {
                index[v.statement] = votes.count
                votes.append((v.statement, [v]))
            }
        }
        groups = votes.map { g in
            if let c = committee(g.statement.epoch), c.epoch == g.statement.epoch {
                let indexes = g.votes.map { c.index(of: $0.signer) }
                if indexes.allSatisfy({ $0 != nil }) {
                    return Group(statement: g.statement, votes: zip(indexes, g.votes).map { (.index(UInt16($0.0!)), $0.1.signature) })
                }
            }
            return Group(statement: g.statement, votes: g.votes.map { (.key($0.signer), $0.signature) })
        }
    }

    /// The votes' payloads; votes named by index need their epoch's committee (a group whose
    /// committee is not known here is left out: its votes could not be checked here either).
    /// - Throws: an index past the committee's members.
    func payloads(committee: (UInt64) -> Committee? = { _ in nil }) throws(CoreError) -> [[UInt8]] {
        var out: [[UInt8]] = []
        for g in groups {
            let members = committee(g.statement.epoch).flatMap { $0.epoch == g.statement.epoch ? $0.members : nil }
            for (signer, signature) in g.votes {
                switch signer {
                case .key(let key):
                    out.append(Vote(statement: g.statement, signer: key, signature: signature).bcsBytes)
                case .index(let i):
                    guard let members else { break }
                    guard Int(i) < members.count else {
                        throw CoreError(.invalidValue, "a packed vote of member \(i) of a committee of \(members.count)")
                    }
                    out.append(Vote(statement: g.statement, signer: members[Int(i)].name, signature: signature).bcsBytes)
                }
            }
        }
        return out
    }

    /// Writes the groups: per group the statement (kind, then epoch and round as ULEB128, then
    /// the digest), the form (0: signers by key, 1: by u16 index), the count, then signer and
    /// signature of each vote.
    func encode(to w: inout BCSWriter) {
        w.writeLength(groups.count)
        for g in groups {
            w.write(g.statement.kind.rawValue)
            w.writeULEB128(g.statement.epoch)
            w.writeULEB128(g.statement.round)
            w.write(g.statement.digest)
            let indexed = g.votes.first.map { if case .index = $0.signer { true } else { false } } ?? false
            w.write(UInt8(indexed ? 1 : 0))
            w.writeLength(g.votes.count)
            for (signer, signature) in g.votes {
                switch signer {
                case .key(let key): w.write(key)
                case .index(let i): w.write(i)
                }
                w.write(signature)
            }
        }
    }

    /// Reads the groups (1...``GossipLimits/maxItems`` votes in all, each group at least one).
    init(from r: inout BCSReader) throws(CoreError) {
        let count = try r.readLength(minElementSize: 37)
        var groups: [Group] = []
        var total = 0
        for _ in 0..<count {
            let raw = try r.readU8()
            guard let kind = VoteKind(rawValue: raw) else { throw CoreError(.unknownTag, "vote kind \(raw)") }
            let statement = VoteStatement(kind: kind, epoch: try r.readULEB128(), round: try r.readULEB128(), digest: try r.readDigest())
            let form = try r.readU8()
            guard form <= 1 else { throw CoreError(.unknownTag, "vote pack form \(form)") }
            let n = try r.readLength(minElementSize: form == 1 ? 66 : 96)
            total += n
            guard n >= 1, total <= GossipLimits.maxItems else {
                throw CoreError(.lengthTooLarge, "a vote pack of \(total) votes (groups of 1...\(GossipLimits.maxItems))")
            }
            var votes: [(signer: Signer, signature: Signature)] = []
            votes.reserveCapacity(n)
            for _ in 0..<n {
                let signer: Signer = form == 1 ? .index(try r.readU16()) : .key(try r.read(PublicKey.self))
                votes.append((signer, try r.read(Signature.self)))
            }
            groups.append(Group(statement: statement, votes: votes))
        }
        self.groups = groups
    }
}
