public import SomaCore
public import SomaNet
public import SomaStore

/// What a catch-up did.
public struct CatchUpReport: Sendable {
    /// The checkpoint it caught up to.
    public var tip: UInt64
    /// Checkpoints committed.
    public var checkpoints: Int
    /// Their transactions.
    public var transactions: Int
    /// Their raw contents' bytes.
    public var rawBytes: Int
    /// Block streams fetched from each peer (by position in the peer list).
    public var streamsPerPeer: [Int]
}

/// Catches a store up from peers (first slice of DESIGN §10): the target is the highest
/// checkpoint the peers hold (or `until`); summaries are fetched a batch at a time (with every
/// certificate, so the store can serve them) and blocks as `getBlocks` streams of 32 spread over
/// all peers with up to `window` streams in flight; everything goes through a
/// ``CheckpointImporter`` (epoch chain, one quorum check per batch, every block verified, group
/// commit with execution). A request that fails is retried on the next peer. Restarting resumes
/// after the store's `highestSynced`.
///
/// Not yet: scoring and banning peers, hedged requests, following the tip.
public struct PeerSync {
    /// The store to fill.
    public let store: NodeStore
    /// The chain's genesis.
    public let genesis: Genesis
    /// Connected peers (after the handshake).
    public let peers: [PeerClient]
    /// Summaries per batch (a batch of blocks is held in memory while it is verified).
    public var batchSize = 250
    /// Block streams in flight.
    public var window = 8
    /// Parallel verification tasks.
    public var parallelism = 2

    /// A sync of `store` from `peers`.
    public init(store: NodeStore, genesis: Genesis, peers: [PeerClient]) {
        precondition(!peers.isEmpty, "sync needs a peer")
        self.store = store
        self.genesis = genesis
        self.peers = peers
    }

    /// Runs until the target; `progress` is told each committed batch's last checkpoint.
    public func catchUp(until: UInt64? = nil, progress: (@Sendable (UInt64) -> Void)? = nil) async throws -> CatchUpReport {
        var highest: UInt64 = 0
        for peer in peers {
            if let a = try? await peer.availability() { highest = max(highest, a.highestSynced) }
        }
        let target = min(until ?? highest, highest)
        // The epoch chain first: the store then skips snapshots of epochs already too old.
        var turn0 = 0
        var ends: [CertifiedCheckpointSummary] = []
        while true {
            let nextEpoch = UInt64(ends.count)
            let more = try await withFailover(&turn0) { try await $0.epochEndings(from: nextEpoch) }
            ends += more
            if more.count < Int(EpochEndingsRequest.maxCount) { break }
        }
        let committees = try ChainVerifier.verifyEpochChain(genesis: genesis.committee, endOfEpochSummaries: ends)
        if let last = ends.last, committees.count > 1 { store.noteVerifiedEpochEnd(last.summary.epoch) }
        let importer = try await CheckpointImporter(
            genesis: genesis, store: store, batchSize: batchSize, parallelism: parallelism, userSignatures: false)
        var streams = [Int](repeating: 0, count: peers.count)
        var next = importer.resumeAfter + 1
        var turn = 0
        while next <= target {
            let last = min(target, next + UInt64(batchSize) - 1)
            let summaries = try await withFailover(&turn) { peer in
                try await peer.summaries(from: next, count: UInt32(last - next + 1), allCertificates: true)
            }
            guard summaries.summaries.count == Int(last - next + 1), summaries.summaries.first?.sequenceNumber == next else {
                throw SyncError("a peer answered summaries \(next)...\(last) with \(summaries.summaries.count) others")
            }
            let blocks = try await fetchBlocks(next...last, streams: &streams)
            for (summary, certificate) in zip(summaries.summaries, summaries.certificates) {
                guard let certificate else { throw SyncError("summary \(summary.sequenceNumber) came without its certificate") }
                guard let items = blocks[summary.sequenceNumber], !items.isEmpty else {
                    throw SyncError("no peer served block \(summary.sequenceNumber)")
                }
                try await importer.add(SourceCheckpoint(
                    certified: CertifiedCheckpointSummary(summary: summary, certificate: certificate),
                    frames: items.map(\.block.frame), proofs: items.map(\.block.proof)))
            }
            try await importer.flush()
            progress?(last)
            next = last + 1
        }
        try await importer.flush()
        return CatchUpReport(
            tip: importer.tip.summary.sequenceNumber, checkpoints: importer.checkpoints, transactions: importer.transactions,
            rawBytes: importer.rawBytes, streamsPerPeer: streams)
    }

    /// Calls `body` on peers in turn, from `turn`, until one answers.
    func withFailover<T: Sendable>(_ turn: inout Int, _ body: (PeerClient) async throws -> T) async throws -> T {
        var lastError: (any Error)? = nil
        for attempt in 0..<peers.count {
            let peer = peers[(turn + attempt) % peers.count]
            do {
                let result = try await body(peer)
                turn = (turn + attempt + 1) % peers.count
                return result
            } catch {
                lastError = error
            }
        }
        throw lastError ?? SyncError("no peer answered")
    }

    /// The blocks of `range` as streams of 32 over all peers, `window` at a time; a stream that
    /// fails is asked again of the next peer.
    func fetchBlocks(_ range: ClosedRange<UInt64>, streams: inout [Int]) async throws -> [UInt64: [BlockItem]] {
        let spans = stride(from: range.lowerBound, through: range.upperBound, by: Int(BlocksRequest.maxCount)).map {
            ($0, UInt32(min(UInt64(BlocksRequest.maxCount), range.upperBound - $0 + 1)))
        }
        let peers = self.peers
        var blocks: [UInt64: [BlockItem]] = [:]
        try await withThrowingTaskGroup(of: (Int, [BlockItem]).self) { group in
            var nextSpan = 0
            func start(_ i: Int) {
                let (from, count) = spans[i]
                group.addTask {
                    var lastError: (any Error)? = nil
                    for attempt in 0..<peers.count {
                        let p = (i + attempt) % peers.count
                        do {
                            var items = try await peers[p].blocks(from: from, count: count)
                            // A short stream: ask the rest of the span of another peer.
                            var have = Set(items.map(\.seq))
                            for q in 1..<peers.count where have.count < Int(count) {
                                let missing = (from..<(from + UInt64(count))).first { !have.contains($0) }!
                                let more = (try? await peers[(p + q) % peers.count].blocks(from: missing, count: UInt32(from + UInt64(count) - missing))) ?? []
                                items += more
                                have.formUnion(more.map(\.seq))
                            }
                            return (p, items)
                        } catch {
                            lastError = error
                        }
                    }
                    throw lastError ?? SyncError("no peer served blocks \(from)...")
                }
            }
            while nextSpan < min(window, spans.count) {
                start(nextSpan)
                nextSpan += 1
            }
            for try await (peer, items) in group {
                streams[peer] += 1
                for item in items { blocks[item.seq, default: []].append(item) }
                if nextSpan < spans.count {
                    start(nextSpan)
                    nextSpan += 1
                }
            }
        }
        for (seq, items) in blocks {
            var byPart: [UInt32: BlockItem] = [:]
            for item in items { byPart[item.part] = item }
            blocks[seq] = byPart.keys.sorted().compactMap { byPart[$0] }
        }
        return blocks
    }
}
