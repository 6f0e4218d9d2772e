public import SomaCore

/// The deterministic keys of a devnet: validators and user accounts, from the chain's seed.
public enum DevnetKeys {
    /// The key of validator `index` of the chain generated from `seed`.
    public static func validator(seed: UInt64, index: Int) -> SigningKey {
        key(seed: seed, role: "Validator", index: index)
    }

    /// The key of user account `index` of the chain generated from `seed`.
    public static func account(seed: UInt64, index: Int) -> SigningKey {
        key(seed: seed, role: "Account", index: index)
    }

    static func key(seed: UInt64, role: String, index: Int) -> SigningKey {
        var bytes = Array("DevnetKey::\(role)".utf8)
        withUnsafeBytes(of: seed.littleEndian) { bytes += $0 }
        withUnsafeBytes(of: UInt64(index).littleEndian) { bytes += $0 }
        // A digest is always a valid 32-byte seed.
        return try! SigningKey(seed: Hashing.sha256(bytes).bytes)
    }
}

/// One generated checkpoint: its certified summary and its contents.
public struct GeneratedCheckpoint: Hashable, Sendable {
    /// The certified summary.
    public var certified: CertifiedCheckpointSummary
    /// The contents (what a block holds).
    public var data: CheckpointData

    /// Creates a generated checkpoint.
    public init(certified: CertifiedCheckpointSummary, data: CheckpointData) {
        self.certified = certified
        self.data = data
    }

    /// The previous checkpoint's transaction total (what the verifier counts entries from).
    public var previousTotal: UInt64 {
        let (total, underflow) = certified.summary.networkTotalTransactions.subtractingReportingOverflow(UInt64(data.entries.count))
        return underflow ? 0 : total
    }
}

/// Generates a deterministic chain from a seed: the genesis (committee with keys, genesis
/// objects, checkpoint 0), then checkpoints whose transactions create, mutate and delete
/// objects, with effects, output objects, user signatures, committee certificates, committee
/// changes at every epoch end and state roots computed from its own live object set.
///
/// The same profile and seed give the same bytes. Checkpoints are produced in order, a batch
/// at a time, so memory stays bounded by the live object set, not by the chain's length.
/// Not thread-safe: one owner drives it.
public final class ChainGenerator {
    /// The profile being generated.
    public let profile: DevnetProfile
    /// The seed.
    public let seed: UInt64
    /// The genesis of the chain.
    public var genesis: Genesis {
        guard let built = builtGenesis else { preconditionFailure("the genesis is built in init") }
        return built
    }
    private var builtGenesis: Genesis?
    /// Every committee so far, by epoch.
    public private(set) var committees: [Committee] = []
    /// The certified end-of-epoch summaries so far.
    public private(set) var endOfEpochSummaries: [CertifiedCheckpointSummary] = []
    /// The next sequence number to generate.
    public private(set) var nextSequence: UInt64 = 1
    /// The summary of the last generated checkpoint.
    public private(set) var lastSummary: CheckpointSummary

    private var rng: DeterministicRandom
    private var validatorKeys: [SigningKey] = []
    private var currentMembers: [Int] = []
    private var epochKeys: [PublicKey: SigningKey] = [:]
    private let accountKeys: [SigningKey]
    private let accountAddresses: [Address]
    private var live: [ObjectID: LiveObject] = [:]
    private var owned: [[ObjectID]]
    private var gasCoins: [ObjectID]
    private var shared: [ObjectID] = []
    private var totalTransactions: UInt64 = 0

    /// Milliseconds since 1970 of checkpoint 0 (2026-01-01).
    public static let genesisTimestampMs: UInt64 = 1_767_225_600_000
    /// Milliseconds between checkpoints.
    public static let checkpointIntervalMs: UInt64 = 250

    static let typeTags = [
        "0x2::coin::Coin<0x2::soma::SOMA>", "0x5e::nft::Item", "0x5e::market::Listing",
        "0x5e::profile::Profile", "0x5e::pool::Pool",
    ]
    static let gasType: UInt8 = 0
    static let sharedType: UInt8 = 4
    static let objectIDDomain = DomainPrefix("ObjectID")

    struct LiveObject {
        var version: UInt64
        var digest: Digest
        var previousTransaction: Digest
        var owner: Owner
        var typeIndex: UInt8
    }

    /// Sets up the generator and builds the genesis.
    public init(profile: DevnetProfile, seed: UInt64 = 1) {
        self.profile = profile
        self.seed = seed
        rng = DeterministicRandom(seed: seed)
        accountKeys = (0..<profile.accounts).map { ChainGenerator.key(seed: seed, role: "Account", index: $0) }
        accountAddresses = accountKeys.map(\.publicKey.address)
        owned = Array(repeating: [], count: profile.accounts)
        gasCoins = Array(repeating: .zero, count: profile.accounts)
        lastSummary = CheckpointSummary(
            epoch: 0, sequenceNumber: 0, networkTotalTransactions: 0, contentDigest: .zero, previousDigest: nil,
            timestampMs: 0, endOfEpoch: nil, protocolVersion: SomaCore.protocolVersion)
        currentMembers = Array(0..<profile.validators)
        let committee0 = makeCommittee(epoch: 0)
        committees = [committee0]
        builtGenesis = makeGenesis(committee: committee0)
    }

    /// Whether every checkpoint of the profile has been generated.
    public var isFinished: Bool { nextSequence >= UInt64(profile.checkpoints) }

    /// The number of live objects now.
    public var liveObjectCount: Int { live.count }

    /// The signing keys of the validators of the current epoch (for tests that forge or re-sign).
    public var currentValidatorKeys: [SigningKey] { currentMembers.map { validatorKeys[$0] } }

    /// The signing key of a user account (for tests).
    public func accountKey(_ index: Int) -> SigningKey { accountKeys[index] }

    /// The Merkle root of the live object set now (leaves: `bcs(ObjectRef)` sorted by id).
    public func stateRoot() -> Digest {
        var stream = StreamingMerkleRoot()
        for id in live.keys.sorted() {
            let o = live[id]!
            stream.append(leafHash: ObjectRef(id: id, version: o.version, digest: o.digest).leafHash)
        }
        return stream.finalize()
    }

    /// The next checkpoint, or `nil` when the chain is complete (signing on this thread).
    public func next() -> GeneratedCheckpoint? {
        guard !isFinished else { return nil }
        let pending = buildPending(count: 1)
        let transactions = pending.map { p in p.entries.map { Transaction.signed($0.data, by: accountKeys[$0.account]) } }
        let sealed = seal(pending, transactions: transactions)
        return finish(sealed, certificates: sealed.map { certify($0.summary, signers: $0.signers).certificate }).first
    }

    /// Up to `count` next checkpoints, signing on `parallelism` concurrent tasks.
    public func next(count: Int, parallelism: Int) async -> [GeneratedCheckpoint] {
        guard !isFinished, count > 0 else { return [] }
        let pending = buildPending(count: count)
        let keys = accountKeys
        let jobs = pending.map { p in p.entries.map { ($0.data, keys[$0.account]) } }
        let transactions = await ChainGenerator.parallelMap(jobs, parallelism: parallelism) { list in
            list.map { Transaction.signed($0.0, by: $0.1) }
        }
        let sealed = seal(pending, transactions: transactions)
        let certJobs = sealed.map { ($0.summary, $0.signers.map { self.validatorKeys[$0] }, committees[Int($0.summary.epoch)]) }
        let certificates = await ChainGenerator.parallelMap(certJobs, parallelism: parallelism) { job in
            QuorumCertificate.sign(job.0.signingMessage, committee: job.2, keys: job.1)
        }
        return finish(sealed, certificates: certificates)
    }

    /// Pairs summaries with their certificates and records the epoch ends.
    private func finish(_ sealed: [Sealed], certificates: [QuorumCertificate]) -> [GeneratedCheckpoint] {
        zip(sealed, certificates).map { s, c in
            let certified = CertifiedCheckpointSummary(summary: s.summary, certificate: c)
            if s.summary.endOfEpoch != nil { endOfEpochSummaries.append(certified) }
            return GeneratedCheckpoint(certified: certified, data: s.data)
        }
    }

    /// Generates the whole rest of the chain into an array (for small profiles).
    public func generateAll(parallelism: Int = 2) async -> [GeneratedCheckpoint] {
        var all: [GeneratedCheckpoint] = []
        while !isFinished {
            all += await next(count: 64, parallelism: parallelism)
        }
        return all
    }

    // MARK: Keys and committees

    static func key(seed: UInt64, role: String, index: Int) -> SigningKey {
        DevnetKeys.key(seed: seed, role: role, index: index)
    }

    private func validatorKey(_ index: Int) -> SigningKey {
        while validatorKeys.count <= index {
            validatorKeys.append(ChainGenerator.key(seed: seed, role: "Validator", index: validatorKeys.count))
        }
        return validatorKeys[index]
    }

    /// The committee of `epoch` from `currentMembers`, with fresh voting powers.
    private func makeCommittee(epoch: UInt64) -> Committee {
        let n = currentMembers.count
        let weights = (0..<n).map { _ in UInt64(1 + rng.below(10)) }
        let total = weights.reduce(0, +)
        let spare = Committee.totalVotingPower - UInt64(n)
        var powers = weights.map { 1 + $0 * spare / total }
        var remainder = Committee.totalVotingPower - powers.reduce(0, +)
        var i = 0
        while remainder > 0 {
            powers[i % n] += 1
            remainder -= 1
            i += 1
        }
        var members = currentMembers.enumerated().map { (k, v) in
            Member(name: validatorKey(v).publicKey, votingPower: powers[k], address: "validator-\(v).devnet:8080")
        }
        members.sort { $0.name < $1.name }
        return Committee(epoch: epoch, members: members)
    }

    /// Chooses signers for a certificate: members in random order until the quorum is reached.
    private func chooseSigners(_ committee: Committee) -> [Int] {
        var order = Array(committee.members.indices)
        for i in stride(from: order.count - 1, to: 0, by: -1) {
            order.swapAt(i, rng.below(i + 1))
        }
        var power: UInt64 = 0
        var chosen: [Int] = []
        for i in order where power < Committee.quorum {
            power += committee.members[i].votingPower
            chosen.append(i)
        }
        // Map member positions back to validator indices.
        return chosen.map { pos in
            let name = committee.members[pos].name
            return validatorKeys.firstIndex { $0.publicKey == name }!
        }
    }

    private func certify(_ summary: CheckpointSummary, signers: [Int]) -> CertifiedCheckpointSummary {
        let committee = committees[Int(summary.epoch)]
        let cert = QuorumCertificate.sign(summary.signingMessage, committee: committee, keys: signers.map { validatorKeys[$0] })
        return CertifiedCheckpointSummary(summary: summary, certificate: cert)
    }

    // MARK: Genesis

    private func makeGenesis(committee: Committee) -> Genesis {
        var payload = Array("soma devnet genesis \(profile.name)".utf8)
        withUnsafeBytes(of: seed.littleEndian) { payload += $0 }
        let data = TransactionData(sender: .zero, kind: TransactionData.genesisKind, inputs: [], payload: payload, gasBudget: 0)
        let txDigest = data.digest
        var created: [(Object, Int?)] = []
        var counter: UInt32 = 0
        func newID() -> ObjectID {
            defer { counter += 1 }
            return objectID(txDigest, counter)
        }
        for a in 0..<profile.accounts {
            let gas = Object(
                id: newID(), version: 1, owner: .address(accountAddresses[a]), typeTag: Self.typeTags[0],
                contents: gasContents(), previousTransaction: txDigest)
            gasCoins[a] = gas.id
            created.append((gas, nil))
            for _ in 0..<2 {
                let t = UInt8(1 + rng.below(3))
                let o = Object(
                    id: newID(), version: 1, owner: .address(accountAddresses[a]), typeTag: Self.typeTags[Int(t)],
                    contents: contents(), previousTransaction: txDigest)
                created.append((o, a))
            }
        }
        for _ in 0..<profile.sharedObjects {
            let o = Object(
                id: newID(), version: 1, owner: .shared(initialVersion: 1), typeTag: Self.typeTags[Int(Self.sharedType)],
                contents: contents(), previousTransaction: txDigest)
            shared.append(o.id)
            created.append((o, nil))
        }
        created.sort { $0.0.id < $1.0.id }
        var changes: [ObjectChange] = []
        for (o, account) in created {
            let d = o.digest
            changes.append(ObjectChange(id: o.id, input: nil, output: .written(VersionDigest(version: 1, digest: d))))
            live[o.id] = LiveObject(
                version: 1, digest: d, previousTransaction: txDigest, owner: o.owner, typeIndex: typeIndex(o.typeTag))
            if let account { owned[account].append(o.id) }
        }
        let effects = TransactionEffects(
            transactionDigest: txDigest, status: .success, executedEpoch: 0, gasUsed: 0, changes: changes, dependencies: [])
        let entry = ExecutionData(
            transaction: Transaction(data: data, signatures: []), effects: effects, outputObjects: created.map(\.0))
        let contents = CheckpointData(sequenceNumber: 0, entries: [entry])
        totalTransactions = 1
        let summary = CheckpointSummary(
            epoch: 0, sequenceNumber: 0, networkTotalTransactions: 1,
            contentDigest: BlockVerifier.contentDigest(of: contents.entries), previousDigest: nil,
            timestampMs: Self.genesisTimestampMs, endOfEpoch: nil, protocolVersion: SomaCore.protocolVersion)
        lastSummary = summary
        let certified = certify(summary, signers: chooseSigners(committee))
        return Genesis(committee: committee, checkpoint: certified, contents: contents)
    }

    private func typeIndex(_ tag: String) -> UInt8 {
        UInt8(Self.typeTags.firstIndex(of: tag) ?? 1)
    }

    private func objectID(_ tx: Digest, _ index: UInt32) -> ObjectID {
        var bytes = tx.bytes
        withUnsafeBytes(of: index.littleEndian) { bytes += $0 }
        return Hashing.sha256(domain: Self.objectIDDomain, bytes)
    }

    /// Object contents of 64 B to 4 KiB, skewed towards small, half random and half structured
    /// (so that LZ4 finds something to compress, as in real object data).
    private func contents() -> [UInt8] {
        let roll = rng.below(100)
        let size: Int
        if roll < 70 {
            size = 64 + rng.below(193)
        } else if roll < 95 {
            size = 256 + rng.below(769)
        } else {
            size = 1024 + rng.below(3073)
        }
        var out = rng.bytes(size / 2)
        out.reserveCapacity(size)
        let fill = UInt8(truncatingIfNeeded: rng.next())
        var i = out.count
        while i < size {
            out.append(i % 16 == 0 ? UInt8(truncatingIfNeeded: i) : fill)
            i += 1
        }
        return out
    }

    private func gasContents() -> [UInt8] {
        var out = rng.bytes(8)
        out += repeatElement(0, count: 56)
        return out
    }

    // MARK: Checkpoints

    struct PendingEntry {
        var data: TransactionData
        var account: Int
        var effects: TransactionEffects
        var outputObjects: [Object]
    }

    struct PendingCheckpoint {
        var sequence: UInt64
        var epoch: UInt64
        var entries: [PendingEntry]
        var endOfEpoch: EndOfEpochData?
        var signers: [Int]
    }

    struct Sealed {
        var summary: CheckpointSummary
        var data: CheckpointData
        var signers: [Int]
    }

    private func epoch(of sequence: UInt64) -> UInt64 {
        var e = 0
        while profile.lastCheckpoint(ofEpoch: e) < sequence { e += 1 }
        return UInt64(e)
    }

    /// Evolves the state through `count` checkpoints: transactions, effects, objects, epoch ends.
    private func buildPending(count: Int) -> [PendingCheckpoint] {
        var out: [PendingCheckpoint] = []
        while out.count < count && nextSequence + UInt64(out.count) < UInt64(profile.checkpoints) {
            let seq = nextSequence + UInt64(out.count)
            let epoch = epoch(of: seq)
            var entries: [PendingEntry] = []
            entries.reserveCapacity(profile.transactionsPerCheckpoint)
            for _ in 0..<profile.transactionsPerCheckpoint {
                entries.append(makeTransaction(epoch: epoch))
            }
            var end: EndOfEpochData? = nil
            if seq == profile.lastCheckpoint(ofEpoch: Int(epoch)) {
                if currentMembers.count > 1 {
                    currentMembers.remove(at: rng.below(currentMembers.count))
                }
                currentMembers.append(validatorKeys.count)
                let next = makeCommittee(epoch: epoch + 1)
                committees.append(next)
                end = EndOfEpochData(nextCommittee: next, stateRoot: stateRoot(), liveObjectCount: UInt64(live.count))
            }
            let signers = chooseSigners(committees[Int(epoch)])
            out.append(PendingCheckpoint(sequence: seq, epoch: epoch, entries: entries, endOfEpoch: end, signers: signers))
        }
        return out
    }

    /// Assembles summaries (the hash chain) once the transactions are signed, and picks signers.
    private func seal(_ pending: [PendingCheckpoint], transactions: [[Transaction]]) -> [Sealed] {
        var out: [Sealed] = []
        for (p, txs) in zip(pending, transactions) {
            let entries = zip(p.entries, txs).map {
                ExecutionData(transaction: $1, effects: $0.effects, outputObjects: $0.outputObjects)
            }
            totalTransactions += UInt64(entries.count)
            let summary = CheckpointSummary(
                epoch: p.epoch, sequenceNumber: p.sequence, networkTotalTransactions: totalTransactions,
                contentDigest: BlockVerifier.contentDigest(of: entries), previousDigest: lastSummary.digest,
                timestampMs: Self.genesisTimestampMs + p.sequence * Self.checkpointIntervalMs, endOfEpoch: p.endOfEpoch,
                protocolVersion: SomaCore.protocolVersion)
            lastSummary = summary
            out.append(Sealed(summary: summary, data: CheckpointData(sequenceNumber: p.sequence, entries: entries), signers: p.signers))
            nextSequence = p.sequence + 1
        }
        return out
    }

    /// One user transaction: pays gas, maybe mutates and deletes owned objects, maybe touches a
    /// shared object, creates one or two objects. About 1% fail and only pay gas.
    private func makeTransaction(epoch: UInt64) -> PendingEntry {
        let a = rng.below(profile.accounts)
        var inputIDs: [ObjectID] = [gasCoins[a]]
        var mutated: [ObjectID] = []
        var deleted: ObjectID? = nil
        let mine = owned[a]
        var mutateIndex = -1
        if !mine.isEmpty && rng.chance(50) {
            mutateIndex = rng.below(mine.count)
            mutated.append(mine[mutateIndex])
        }
        if mine.count > 1 && rng.chance(15) {
            var d = rng.below(mine.count)
            if d == mutateIndex { d = (d + 1) % mine.count }
            deleted = mine[d]
        }
        if !shared.isEmpty && rng.chance(10) {
            mutated.append(shared[rng.below(shared.count)])
        }
        inputIDs += mutated
        if let deleted { inputIDs.append(deleted) }
        let inputs = inputIDs.map { id in
            let o = live[id]!
            return ObjectRef(id: id, version: o.version, digest: o.digest)
        }
        let data = TransactionData(
            sender: accountAddresses[a], kind: TransactionData.userKind, inputs: inputs,
            payload: rng.bytes(32 + rng.below(97)), gasBudget: 50_000_000)
        let txDigest = data.digest
        let newVersion = inputs.map(\.version).max()! + 1
        let failed = rng.chance(1)

        var changes: [ObjectChange] = []
        var outputs: [ObjectID: Object] = [:]
        func write(_ id: ObjectID, owner: Owner, typeIndex: UInt8, contents: [UInt8], input: VersionDigest?) {
            let o = Object(
                id: id, version: newVersion, owner: owner, typeTag: Self.typeTags[Int(typeIndex)], contents: contents,
                previousTransaction: txDigest)
            let d = o.digest
            changes.append(ObjectChange(id: id, input: input, output: .written(VersionDigest(version: newVersion, digest: d))))
            outputs[id] = o
            live[id] = LiveObject(version: newVersion, digest: d, previousTransaction: txDigest, owner: owner, typeIndex: typeIndex)
        }
        func inputOf(_ id: ObjectID) -> VersionDigest {
            let o = live[id]!
            return VersionDigest(version: o.version, digest: o.digest)
        }
        let dependencies = Set(inputIDs.map { live[$0]!.previousTransaction }).sorted()
        let gas = live[gasCoins[a]]!
        write(gasCoins[a], owner: gas.owner, typeIndex: gas.typeIndex, contents: gasContents(), input: inputOf(gasCoins[a]))
        if !failed {
            for id in mutated {
                let o = live[id]!
                write(id, owner: o.owner, typeIndex: o.typeIndex, contents: contents(), input: inputOf(id))
            }
            if let deleted {
                changes.append(ObjectChange(id: deleted, input: inputOf(deleted), output: .deleted))
                live[deleted] = nil
                if let k = owned[a].firstIndex(of: deleted) { owned[a].swapAt(k, owned[a].count - 1); owned[a].removeLast() }
            }
            let creations = rng.chance(40) ? 2 : 1
            for c in 0..<creations {
                let id = objectID(txDigest, UInt32(c))
                write(id, owner: .address(accountAddresses[a]), typeIndex: UInt8(1 + rng.below(3)), contents: contents(), input: nil)
                owned[a].append(id)
            }
        }
        changes.sort { $0.id < $1.id }
        let outputObjects = changes.compactMap { outputs[$0.id] }
        let effects = TransactionEffects(
            transactionDigest: txDigest, status: failed ? .failure(code: UInt32(1 + rng.below(100))) : .success,
            executedEpoch: epoch, gasUsed: UInt64(1_000 + rng.below(1_000_000)), changes: changes,
            dependencies: dependencies)
        return PendingEntry(data: data, account: a, effects: effects, outputObjects: outputObjects)
    }

    // MARK: Parallelism

    static func parallelMap<T: Sendable, R: Sendable>(
        _ items: [T], parallelism: Int, _ transform: @escaping @Sendable (T) -> R
    ) async -> [R] {
        if parallelism <= 1 || items.count <= 1 { return items.map(transform) }
        return await withTaskGroup(of: (Int, R).self) { group in
            var results = [R?](repeating: nil, count: items.count)
            var next = 0
            while next < min(parallelism, items.count) {
                let i = next
                group.addTask { (i, transform(items[i])) }
                next += 1
            }
            for await (i, r) in group {
                results[i] = r
                if next < items.count {
                    let j = next
                    group.addTask { (j, transform(items[j])) }
                    next += 1
                }
            }
            return results.map { $0! }
        }
    }
}
