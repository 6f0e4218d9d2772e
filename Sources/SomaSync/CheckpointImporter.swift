public import SomaCore
public import SomaStore

/// A checkpoint from an ordered local source: decoded contents (the devnet generator) or
/// stored blocks as they are (a chain file).
public struct SourceCheckpoint: Sendable {
    /// The certified summary (its certificate is checked only when it ends a batch).
    public var certified: CertifiedCheckpointSummary
    /// Decoded contents, when the source has them.
    public var data: CheckpointData?
    /// Stored blocks as received, when the source has them.
    public var frames: [[UInt8]]?
    /// One proof per frame.
    public var proofs: [[Digest]]?

    /// A checkpoint from a source.
    public init(certified: CertifiedCheckpointSummary, data: CheckpointData? = nil, frames: [[UInt8]]? = nil, proofs: [[Digest]]? = nil) {
        self.certified = certified
        self.data = data
        self.frames = frames
        self.proofs = proofs
    }
}

/// A source that breaks the order or sends what does not verify.
public struct SyncError: Error, CustomStringConvertible, Sendable {
    /// What went wrong and where.
    public let description: String
    /// Creates an error.
    public init(_ description: String) { self.description = description }
}

/// Verifies checkpoints from an ordered source as a fresh node would and commits them: the
/// epoch chain as epoch ends arrive, summaries in batches (one quorum check per batch), every
/// block on its own against its verified summary (in parallel), then an in-order group commit
/// with execution and the state-root check at every epoch end. Without a store the effects are
/// replayed into an in-memory live set instead.
public final class CheckpointImporter {
    /// The genesis.
    public let genesis: Genesis
    let store: NodeStore?
    let batchSize: Int
    let parallelism: Int
    let userSignatures: Bool
    let maxBlockBytes: Int
    /// The last verified (and committed) checkpoint.
    public private(set) var tip: VerifiedTip
    /// Every verified committee so far.
    public private(set) var committees: [Committee]
    /// The replayed live set (without a store).
    public private(set) var live = LiveObjectSet()
    private var pending: [SourceCheckpoint] = []
    /// Checkpoints committed by this importer.
    public private(set) var checkpoints = 0
    /// Their transactions.
    public private(set) var transactions = 0
    /// Their raw contents' bytes.
    public private(set) var rawBytes = 0
    /// Their LZ4 blocks' bytes.
    public private(set) var storedBytes = 0
    /// Batch quorum checks made.
    public private(set) var quorumChecks = 0

    /// Sets up on `store` (resuming after its `highestSynced`, with the epoch chain re-verified
    /// from the genesis) or in memory.
    public init(genesis: Genesis, store: NodeStore?, batchSize: Int, parallelism: Int, userSignatures: Bool) async throws {
        self.genesis = genesis
        self.store = store
        self.batchSize = batchSize
        self.parallelism = parallelism
        self.userSignatures = userSignatures
        maxBlockBytes = store?.configuration.maxBlockBytes ?? (256 << 20)
        try genesis.verify()
        tip = VerifiedTip(summary: genesis.checkpoint.summary)
        committees = [genesis.committee]
        if let store {
            try await store.initialize(genesis: genesis)
            _ = try await store.executePending()
            if let synced = try await store.watermark(.highestSynced), synced.seq > 0 {
                var ends: [CertifiedCheckpointSummary] = []
                for record in try await store.epochs() {
                    if let last = record.lastCheckpoint, let s = try await store.summary(at: last) { ends.append(s) }
                }
                committees = try ChainVerifier.verifyEpochChain(genesis: genesis.committee, endOfEpochSummaries: ends)
                guard let s = try await store.summary(at: synced.seq) else { throw SyncError("stored checkpoint \(synced.seq) is missing") }
                tip = VerifiedTip(summary: s.summary)
            }
        } else {
            try live.apply(genesis.contents)
        }
    }

    /// The sequence number after which checkpoints are needed.
    public var resumeAfter: UInt64 { tip.summary.sequenceNumber + UInt64(pending.count) }

    /// Takes the next checkpoint in order; checkpoints already held are skipped.
    public func add(_ item: SourceCheckpoint) async throws {
        let seq = item.certified.summary.sequenceNumber
        // The source's sequence number is compared, never added to; ours is checked.
        let (expected, overflow) = resumeAfter.addingReportingOverflow(1)
        guard !overflow else { throw SyncError("no checkpoint follows \(resumeAfter)") }
        if seq < expected { return }
        guard seq == expected else { throw SyncError("the source skips from checkpoint \(resumeAfter) to \(seq)") }
        if item.certified.summary.endOfEpoch != nil {
            // The epoch chain first: this end is certified by the committee we already trust.
            let current = committees[committees.count - 1]
            let extended = try ChainVerifier.verifyEpochChain(genesis: current, endOfEpochSummaries: [item.certified])
            committees.append(extended[1])
        }
        pending.append(item)
        if pending.count >= batchSize { try await flush() }
    }

    /// Verifies and commits whatever is pending.
    public func flush() async throws {
        guard !pending.isEmpty else { return }
        let known = committees
        let newTip = try ChainVerifier.verifySummaryBatch(
            SummaryBatch(lastCertifiedOf: pending.map(\.certified)), after: tip,
            committee: { Int(exactly: $0).flatMap { $0 < known.count ? known[$0] : nil } })
        quorumChecks += 1
        var previousTotal = tip.summary.networkTotalTransactions
        var jobs: [(SourceCheckpoint, UInt64)] = []
        for item in pending {
            jobs.append((item, previousTotal))
            previousTotal = item.certified.summary.networkTotalTransactions
        }
        let userSignatures = self.userSignatures
        let limit = maxBlockBytes
        let verified = try await parallelMap(jobs, parallelism: parallelism) { item, previousTotal in
            try CheckpointImporter.verifyBlocks(item, previousTotal: previousTotal, userSignatures: userSignatures, limit: limit)
        }
        if let store {
            // An import is a catch-up by definition: indexes as sorted runs (DESIGN §6.2).
            try await store.commit(verified, bulk: verified.count >= 64)
        } else {
            for cp in verified {
                try live.apply(cp.data)
                if let end = cp.certified.summary.endOfEpoch { try live.verify(endOfEpoch: end, at: cp.certified.summary.sequenceNumber) }
            }
        }
        for cp in verified {
            checkpoints += 1
            transactions += cp.data.entries.count
            rawBytes += cp.rawBytes
            storedBytes += cp.storedBytes
        }
        tip = newTip
        pending.removeAll(keepingCapacity: true)
    }

    /// Verifies one checkpoint's blocks (or contents) against its verified summary, through
    /// the transaction verifier.
    static func verifyBlocks(_ item: SourceCheckpoint, previousTotal: UInt64, userSignatures: Bool, limit: Int) throws -> VerifiedCheckpoint {
        let seq = item.certified.summary.sequenceNumber
        do {
            if let frames = item.frames {
                let proofs = item.proofs ?? Array(repeating: [], count: frames.count)
                return try CheckpointVerifier.verify(
                    blocks: frames, proofs: proofs, of: item.certified, previousTotal: previousTotal, verifyUserSignatures: userSignatures,
                    limit: limit)
            }
            guard let data = item.data else { throw SyncError("checkpoint \(seq) has no contents") }
            return try CheckpointVerifier.verify(contents: data, of: item.certified, previousTotal: previousTotal, verifyUserSignatures: userSignatures)
        } catch let e as CoreError {
            throw SyncError("checkpoint \(seq): \(e.message)")
        }
    }
}

/// Maps `transform` over `items` on up to `parallelism` concurrent tasks, keeping order.
public func parallelMap<T: Sendable, R: Sendable>(
    _ items: [T], parallelism: Int, _ transform: @escaping @Sendable (T) throws -> R
) async throws -> [R] {
    if parallelism <= 1 || items.count <= 1 { return try items.map(transform) }
    return try await withThrowingTaskGroup(of: (Int, R).self) { group in
        var results = [R?](repeating: nil, count: items.count)
        var next = 0
        func add(_ i: Int) { group.addTask { (i, try transform(items[i])) } }
        while next < min(parallelism, items.count) {
            add(next)
            next += 1
        }
        for try await (i, r) in group {
            results[i] = r
            if next < items.count {
                add(next)
                next += 1
            }
        }
        return results.compactMap { $0 }
    }
}
