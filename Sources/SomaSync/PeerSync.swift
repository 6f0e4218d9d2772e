public import NIOCore
public import SomaCore
import SomaNet
public import SomaStore

extension Duration {
    /// The duration in seconds.
    public var inSeconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}

/// The tunables of a sync (DESIGN §10); the defaults suit a few peers on a LAN or the internet.
public struct SyncConfiguration: Sendable {
    /// Block requests (`getBlocks` spans) in flight over all sources.
    public var window = 12
    /// Most requests in flight to one source.
    public var perSourceInFlight = 4
    /// Checkpoints per `getBlocks` request (at most 32).
    public var spanLength: UInt32 = 16
    /// Summaries per `getSummaries` batch (one quorum check each; at most 1,000).
    public var summaryBatch: UInt32 = 1_000
    /// Most checkpoints downloaded (in flight, verified or committing) beyond the committed
    /// watermark: this bounds the memory of the whole pipeline.
    public var maxUncommitted = 384
    /// Most checkpoints in one commit (the store splits them into write batches of 64).
    public var commitGroup = 128
    /// Check every certificate's signatures, not only one per batch.
    public var verifyAllCertificates = false
    /// Re-check every user signature.
    public var verifyUserSignatures = false
    /// A request (or a stream, between two items) that gets no answer for this long fails as a
    /// stall.
    public var requestTimeout: TimeAmount = .seconds(10)
    /// The shortest wait before a straggling span is also asked of another source; the
    /// adaptive delay is three times the moving average of span times, never less than this.
    public var minHedgeDelay: Duration = .milliseconds(400)
    /// How long a source that sent data failing verification is banned.
    public var banDuration: Duration = .seconds(600)
    /// How long a source that stalled twice in a row is banned.
    public var stallBanDuration: Duration = .seconds(60)
    /// Take the snapshot of the last epoch end the catch-up reaches from the sources that serve
    /// it, beside the commits, instead of building it after the last commit (``SnapshotPrefetch``;
    /// the build stays the fallback). Costs that snapshot's bytes from the sources.
    public var prefetchSnapshot = true

    /// Defaults.
    public init() {}
}

/// Where a sync stands, told after every commit.
public struct SyncProgress: Sendable {
    /// The first checkpoint this sync fetched.
    public var first: UInt64
    /// The last committed checkpoint.
    public var synced: UInt64
    /// The checkpoint it syncs to.
    public var target: UInt64
    /// Checkpoints committed by this sync.
    public var checkpoints: Int
    /// Their transactions.
    public var transactions: Int
    /// Their raw contents' bytes.
    public var rawBytes: Int
    /// Sources usable now (answering, not banned).
    public var sources: Int
    /// Sources banned now.
    public var banned: Int
    /// Time since the sync started.
    public var elapsed: Duration
}

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
    /// Their LZ4 blocks' bytes.
    public var storedBytes: Int
    /// Summary batches verified (one quorum check each, unless every certificate is checked).
    public var quorumChecks: Int
    /// Spans asked again of another source because the first straggled.
    public var hedges: Int
    /// Every source's standing at the end.
    public var sources: [SourceStats]
    /// The epoch whose snapshot was taken from the sources during the catch-up instead of built
    /// after it (``SyncConfiguration/prefetchSnapshot``); nil when none was.
    public var adoptedSnapshot: UInt64? = nil
}

/// Catches a store up from peers, DESIGN §10 stages 1–6 as one bounded pipeline:
///
/// 1. availability of every source (``SourcePool/refresh()``);
/// 2. the epoch chain, then summary batches, each verified with one quorum check against the
///    verified committees and stored ahead of the blocks (`highestVerified`), a batch at a time
///    ahead of the block window;
/// 3. blocks as `getBlocks` spans, up to `window` in flight, each sent to the best source that
///    holds it; a span that straggles past the adaptive delay is also asked of another source
///    and the first verified answer wins;
/// 4. every span verified on arrival (decompression bounded, contents against the certified
///    digests) on the cooperative pool, in parallel, off the network threads;
/// 5. in-order group commits, which advance the watermarks;
/// 6. execution in the same write batches, with the state-root check at every epoch end.
///
/// A source that sends anything that fails verification is banned and its work goes to the
/// others; stalls and timeouts lower its share and, twice in a row, ban it for a while. Memory
/// is bounded by `maxUncommitted` checkpoints, whatever the chain's length. A restart resumes
/// after `highestSynced`, with the summaries already verified read back from the store.
public struct PeerSync: Sendable {
    /// The store to fill.
    public let store: NodeStore
    /// The chain's genesis.
    public let genesis: Genesis
    /// The sources.
    public let pool: SourcePool
    /// The tunables.
    public var configuration: SyncConfiguration
    /// Called after every commit with the last committed checkpoint's certified summary.
    public var onCommit: (@Sendable (CertifiedCheckpointSummary) -> Void)?

    /// A sync of `store` from the sources in `pool`.
    public init(store: NodeStore, genesis: Genesis, pool: SourcePool, configuration: SyncConfiguration = SyncConfiguration()) {
        self.store = store
        self.genesis = genesis
        self.pool = pool
        self.configuration = configuration
    }

    /// Runs until `until` (or the highest checkpoint a source holds), then returns.
    ///
    /// What sources claim to hold is a hint: the sync aims at the highest claim, but a source
    /// that cannot back its claim with certified summaries (it answers `notFound` or short for
    /// a range inside what it claims) is banned as misbehaving and the target falls back to
    /// what the others claim. The sync ends at what honest sources can prove.
    /// - Throws: ``SyncError`` when no usable source holds what is needed, the store's errors,
    ///   or `CancellationError`.
    public func catchUp(until: UInt64? = nil, progress: (@Sendable (SyncProgress) -> Void)? = nil) async throws -> CatchUpReport {
        await pool.refresh()
        let held = await pool.highestHeld
        guard await !pool.usable.isEmpty else {
            throw SyncError("no source answered: " + (await pool.stats).map(\.description).joined(separator: "; "))
        }
        try await store.initialize(genesis: genesis)
        _ = try await store.executePending()
        var committees = try await storedCommittees()
        var ends: [CertifiedCheckpointSummary]
        (committees, ends) = try await extendEpochChain(committees)
        if committees.count > 1 { store.noteVerifiedEpochEnd(UInt64(committees.count - 2)) }
        let target = min(until ?? held, held)
        let run = try await SyncRun(sync: self, committees: committees, target: target, until: until, progress: progress)
        // The snapshot of the last epoch end this catch-up reaches, taken from the sources that
        // serve it while the run commits, instead of built after its last commit.
        ends.removeAll { $0.summary.sequenceNumber > target }
        let prefetch = configuration.prefetchSnapshot ? ends.last.map { end in
            Task { await SnapshotPrefetch(store: store, pool: pool, end: end, requestTimeout: configuration.requestTimeout).run() }
        } : nil
        do {
            var report = try await run.run()
            prefetch?.cancel()
            await prefetch?.value
            if let epoch = ends.last?.summary.epoch, store.lastAdoptedSnapshot == epoch { report.adoptedSnapshot = epoch }
            return report
        } catch {
            prefetch?.cancel()
            await prefetch?.value
            throw error
        }
    }

    /// The committees the store's own epoch ends certify (re-verified from the genesis).
    func storedCommittees() async throws -> [Committee] {
        var ends: [CertifiedCheckpointSummary] = []
        for record in try await store.epochs() {
            if let last = record.lastCheckpoint, let s = try await store.summary(at: last) { ends.append(s) }
        }
        return try ChainVerifier.verifyEpochChain(genesis: genesis.committee, endOfEpochSummaries: ends)
    }

    /// Extends `committees` with the epoch ends the sources hold (best first); a source whose
    /// ends do not verify is banned.
    func extendEpochChain(_ committees: [Committee]) async throws -> (committees: [Committee], ends: [CertifiedCheckpointSummary]) {
        var known = committees
        var order = await pool.usable
        var highest: [Int: UInt64] = [:]
        for s in await pool.stats.enumerated() { highest[s.offset] = s.element.holds?.upperBound ?? 0 }
        order.sort { highest[$0, default: 0] > highest[$1, default: 0] }
        for i in order {
            let client = await pool.client(i)
            await pool.take(i)
            do {
                let (extended, ends) = try await Self.extendWithEnds(known, from: client)
                known = extended
                // The newest verified end says how large the live set grows (a sizing hint).
                if let count = ends.last?.summary.endOfEpoch?.liveObjectCount { store.noteVerifiedLiveObjectCount(count) }
                await pool.succeeded(i, bytes: 0, duration: .zero, used: 0)
                return (known, ends)
            } catch {
                await SyncRun.judge(error, source: i, pool: pool, what: "epoch endings")
            }
        }
        return (known, [])
    }

    /// `committees` extended with every epoch end `client` holds past them, each verified by the
    /// committee before it.
    static func extend(_ committees: [Committee], from client: any SyncSource) async throws -> [Committee] {
        try await extendWithEnds(committees, from: client).committees
    }

    /// ``extend(_:from:)``, also returning the verified end-of-epoch summaries it fetched.
    static func extendWithEnds(_ committees: [Committee], from client: any SyncSource) async throws -> (committees: [Committee], ends: [CertifiedCheckpointSummary]) {
        var known = committees
        var ends: [CertifiedCheckpointSummary] = []
        while true {
            let more = try await client.epochEndings(from: UInt64(known.count - 1))
            // Each answer is verified below (one epoch end a committee), so a source cannot make
            // this loop run past the real chain; the count compared is ours, not the source's.
            if more.isEmpty { break }
            known += try ChainVerifier.verifyEpochChain(genesis: known[known.count - 1], endOfEpochSummaries: more).dropFirst()
            ends += more
            if more.count < Int(EpochEndingsRequest.maxCount) { break }
        }
        return (known, ends)
    }
}

/// One catch-up's state: the block job of the state-sync event loop (``StateSyncLoop``).
/// Summary batches, span requests (through its ``FetchScheduler``), verification and commits
/// run as tasks that report back as ``SyncRun/Event``s.
final class SyncRun: StateSyncJob {
    struct Span: Sendable {
        var first: UInt64
        /// Never empty (a span is made of at least one verified summary).
        var summaries: [CertifiedCheckpointSummary]
        var previousTotal: UInt64
        /// The last checkpoint: the last verified summary's sequence number (no arithmetic on it).
        var last: UInt64 { summaries.last?.summary.sequenceNumber ?? first }
    }

    struct SummaryBatchDone: Sendable {
        var certified: [CertifiedCheckpointSummary]
        var tip: VerifiedTip
        var committees: [Committee]
    }

    struct CommitDone: Sendable {
        var last: CertifiedCheckpointSummary
        var checkpoints: Int
        var transactions: Int
        var rawBytes: Int
        var storedBytes: Int
    }

    enum Event: Sendable {
        case summaries(Result<SummaryBatchDone, any Error>)
        case span(first: UInt64, source: Int, task: Int, started: ContinuousClock.Instant, Result<([VerifiedCheckpoint], Int), any Error>)
        case committed(Result<CommitDone, any Error>)
        case tick
    }

    let sync: PeerSync
    let config: SyncConfiguration
    let pool: SourcePool
    let store: NodeStore
    /// The checkpoint this run syncs to: the highest claim of a source that is not banned
    /// (capped by `until`), lowered when a claim turns out false (``retarget()``), never below
    /// what is committed.
    var target: UInt64
    let until: UInt64?
    let progress: (@Sendable (SyncProgress) -> Void)?
    let started = ContinuousClock.now
    let loop = StateSyncLoop<Event>(tick: .tick)
    /// The block spans' requests, keyed by their first checkpoint.
    lazy var scheduler = FetchScheduler<UInt64, Span>(
        sources: .pool(pool) { span, _, a in a.lowestAvailable <= span.first && a.highestSynced >= span.last },
        window: config.window, minHedgeDelay: config.minHedgeDelay, requestTimeout: .nanoseconds(config.requestTimeout.nanoseconds)
    ) { [unowned self] _, span, source, id in self.makeSpanTask(span, source: source, id: id) }

    var committees: [Committee]
    /// Committed (`highestSynced`).
    var synced: CertifiedCheckpointSummary
    let first: UInt64
    /// The last verified summary (stored as `highestVerified`).
    var summaryTip: VerifiedTip
    /// Verified summaries stored but not read back yet (a resumed sync), up to this height.
    var storedAhead: UInt64
    /// Verified summaries not yet given to a span.
    var known: [CertifiedCheckpointSummary] = []
    var knownStart = 0
    var lastScheduledTotal: UInt64
    var nextToSchedule: UInt64
    var ready: [UInt64: VerifiedCheckpoint] = [:]
    /// Where the sources' claims begin or end (``SourcePool/claimBoundaries``): a span never
    /// straddles one, so that a span is whole within some source whenever the sources together
    /// hold it (an archive that ends where a pruned peer begins).
    var boundaries: [UInt64] = []
    var summaryTask: Task<Void, Never>?
    var commitTask: Task<Void, Never>?
    /// At most this many spans are decompressed and verified at once (each block may take up to
    /// `maxBlockBytes`), whatever the window: one per core, at least two.
    let verifying = Gate(permits: max(2, System.coreCount))
    var quorumChecks = 0
    var checkpoints = 0
    var transactions = 0
    var rawBytes = 0
    var storedBytes = 0

    init(sync: PeerSync, committees: [Committee], target: UInt64, until: UInt64? = nil, progress: (@Sendable (SyncProgress) -> Void)?) async throws {
        self.sync = sync
        self.config = sync.configuration
        self.pool = sync.pool
        self.store = sync.store
        self.committees = committees
        self.progress = progress
        guard let s = try await store.watermark(.highestSynced), let synced = try await store.summary(at: s.seq),
              let v = try await store.watermark(.highestVerified), let verified = try await store.summary(at: v.seq)
        else { throw SyncError("the store has no genesis") }
        // Read back from the store: checked, never trusted to leave room for one more.
        guard s.seq < UInt64.max, v.seq >= s.seq else {
            throw SyncError("the store's watermarks (highestSynced \(s.seq), highestVerified \(v.seq)) leave nothing to sync")
        }
        self.synced = synced
        self.first = s.seq + 1
        self.until = until
        self.target = Self.clampTarget(max(target, s.seq))
        summaryTip = VerifiedTip(summary: verified.summary)
        storedAhead = v.seq
        lastScheduledTotal = synced.summary.networkTotalTransactions
        nextToSchedule = s.seq + 1
        boundaries = await pool.claimBoundaries
    }

    var syncedSeq: UInt64 { synced.summary.sequenceNumber }

    var isFinished: Bool { syncedSeq >= target && commitTask == nil }

    func run() async throws -> CatchUpReport {
        try await loop.run(self)
        return CatchUpReport(
            tip: syncedSeq, checkpoints: checkpoints, transactions: transactions, rawBytes: rawBytes,
            storedBytes: storedBytes, quorumChecks: quorumChecks, hedges: scheduler.hedges, sources: await pool.stats)
    }

    /// Cancels requests in flight, waits for every task this run started (requests, the summary
    /// batch, a commit in progress: none is left running) and gives every request's slot back to
    /// the pool before it returns.
    func stopAll() async {
        summaryTask?.cancel()
        await scheduler.stopAll()
        await summaryTask?.value
        await commitTask?.value
    }

    /// Lowers (or raises) the target to what sources not banned for bad data claim now
    /// (``SourcePool/highestCredible``: a source paused for a stall still counts), capped by
    /// `until`, never below what is committed: called after a poll and after a source was found
    /// to claim more than it can back.
    func retarget() async {
        let held = await pool.highestCredible
        target = Self.clampTarget(max(syncedSeq, min(until ?? held, held)))
    }

    /// The highest target a run takes: one below `UInt64.max`, so that every "next checkpoint"
    /// of the run (`seq + 1`) exists.
    static func clampTarget(_ target: UInt64) -> UInt64 { min(target, UInt64.max - 1) }

    /// `through - from + 1` checkpoints, at most `limit`; 0 when `through < from`. Never traps,
    /// whatever the heights (a claimed target can be anything).
    static func count(from: UInt64, through: UInt64, limit: Int) -> Int {
        guard through >= from, limit > 0 else { return 0 }
        let distance = through - from  // no overflow: through >= from
        return distance >= UInt64(limit - 1) ? limit : Int(distance) + 1
    }

    /// The checkpoints after `after` up to `through` (`through - after`), at most `limit`; 0
    /// when `through <= after`. Never traps.
    static func count(after: UInt64, through: UInt64, limit: Int) -> Int {
        guard through > after, limit > 0 else { return 0 }
        let distance = through - after  // no overflow: through > after
        return distance >= UInt64(limit) ? limit : Int(distance)
    }

    // MARK: scheduling

    func schedule() async throws {
        // Stragglers first: a hedge for the oldest span takes a free slot before a new span.
        await scheduler.hedge()
        try await readStoredSummaries()
        if summaryTask == nil, summaryTip.summary.sequenceNumber < target,
           known.count - knownStart < Int(config.summaryBatch) / 2 + Int(config.spanLength) * config.window {
            startSummaries()
        }
        // A span no free source holds waits; later spans may still go to other sources.
        await scheduler.fill(next: { nextSpan().map { ($0.first, $0) } })
        if commitTask == nil { startCommit() }
        if scheduler.isIdle && summaryTask == nil && commitTask == nil && syncedSeq < target {
            // Nothing can move: poll the sources again; give up after a few tries.
            try await scheduler.backOff { [self] in
                SyncError("no usable source holds checkpoint \(syncedSeq + 1): " + (await pool.stats).map(\.description).joined(separator: "; "))
            }
            await pool.refresh()
            boundaries = await pool.claimBoundaries
            await retarget()
        }
    }

    /// A resumed sync reads summaries it verified earlier back from the store.
    func readStoredSummaries() async throws {
        let wanted = Int(config.spanLength) * config.window * 2
        var last = lastKnown
        while known.count - knownStart < wanted && last < storedAhead && last < target {
            guard let s = try await store.summary(at: last + 1) else { throw SyncError("stored summary \(last + 1) is missing") }
            known.append(s)
            last += 1
        }
    }

    /// The last summary in `known` (or scheduled).
    var lastKnown: UInt64 { known.last?.summary.sequenceNumber ?? (nextToSchedule - 1) }

    /// The next new span from the verified summaries, within the memory bound (requeued spans
    /// come from the scheduler's queue first).
    func nextSpan() -> Span? {
        let available = known.count - knownStart
        guard available > 0, nextToSchedule <= target else { return nil }
        // Beyond the committed watermark: at most maxUncommitted + spanLength (bounded by this loop).
        let uncommitted = Self.count(after: syncedSeq, through: nextToSchedule - 1, limit: config.maxUncommitted + 1)
        let room = config.maxUncommitted - uncommitted
        var n = min(Int(config.spanLength), available, Self.count(from: nextToSchedule, through: target, limit: Int(config.spanLength)), room)
        if let cut = boundaries.first(where: { $0 > nextToSchedule }) {
            n = min(n, Self.count(after: nextToSchedule - 1, through: cut - 1, limit: n))
        }
        guard n > 0 else { return nil }
        // A short span only at the end: wait while more summaries are coming.
        if n < Int(config.spanLength) && n == available && n < room && (summaryTask != nil || lastKnown < storedAhead) { return nil }
        let summaries = Array(known[knownStart..<(knownStart + n)])
        knownStart += n
        if knownStart > 4_096 {
            known.removeFirst(knownStart)
            knownStart = 0
        }
        let span = Span(first: nextToSchedule, summaries: summaries, previousTotal: lastScheduledTotal)
        lastScheduledTotal = summaries[summaries.count - 1].summary.networkTotalTransactions
        nextToSchedule += UInt64(n)
        return span
    }

    func makeSpanTask(_ span: Span, source: Int, id: Int) -> Task<Void, Never> {
        let pool = self.pool
        let post = loop.post
        let timeout = config.requestTimeout
        let userSignatures = config.verifyUserSignatures
        let limit = store.configuration.maxBlockBytes
        let gate = verifying
        return Task {
            let started = ContinuousClock.now
            do {
                let client = await pool.client(source)
                let items = try await client.blocks(from: span.first, count: UInt32(span.summaries.count), timeout: timeout)
                let bytes = items.reduce(0) { $0 + $1.block.frame.count }
                await gate.acquire()
                // A span cancelled while it waited (the run is stopping) is not verified.
                let checked: Result<[VerifiedCheckpoint], any Error> = Task.isCancelled
                    ? .failure(CancellationError())
                    : Result { try SyncRun.verify(span, items: items, userSignatures: userSignatures, limit: limit) }
                await gate.release()
                let verified = try checked.get()
                post.yield(.span(first: span.first, source: source, task: id, started: started, .success((verified, bytes))))
            } catch {
                post.yield(.span(first: span.first, source: source, task: id, started: started, .failure(error)))
            }
        }
    }

    func startSummaries() {
        let from = summaryTip.summary.sequenceNumber + 1
        // from <= target (the caller checks summaryTip < target).
        let count = UInt32(Self.count(from: from, through: target, limit: Int(config.summaryBatch)))
        let tip = summaryTip
        let committees = self.committees
        let sync = self.sync
        let post = loop.post
        let all = config.verifyAllCertificates
        summaryTask = Task {
            do {
                let done = try await SyncRun.fetchSummaries(from: from, count: count, after: tip, committees: committees, sync: sync, verifyAll: all)
                post.yield(.summaries(.success(done)))
            } catch {
                post.yield(.summaries(.failure(error)))
            }
        }
    }

    func startCommit() {
        var batch: [VerifiedCheckpoint] = []
        var seq = syncedSeq + 1
        while batch.count < config.commitGroup, let item = ready.removeValue(forKey: seq) {
            batch.append(item)
            seq += 1
        }
        guard !batch.isEmpty else { return }
        // Small commits cost more per checkpoint (a write batch, watermarks, a live-set read
        // each): wait for a fuller one while more is on its way.
        let remaining = Self.count(after: syncedSeq, through: target, limit: config.commitGroup)
        if batch.count < min(config.commitGroup / 2, remaining) && !scheduler.isIdle {
            for item in batch { ready[item.certified.summary.sequenceNumber] = item }
            return
        }
        let store = self.store
        let post = loop.post
        // Far behind the tip (more than one commit group left), the store takes the group in
        // bulk: indexes as sorted SST files instead of memtable inserts (DESIGN §6.2). The
        // last group goes the per-checkpoint way, with the write-ahead log, as at the tip.
        let bulk = Self.count(after: syncedSeq, through: target, limit: config.commitGroup + 1) > config.commitGroup
        commitTask = Task {
            do {
                try await store.commit(batch, bulk: bulk)
                let done = CommitDone(
                    last: batch[batch.count - 1].certified, checkpoints: batch.count,
                    transactions: batch.reduce(0) { $0 + $1.data.entries.count }, rawBytes: batch.reduce(0) { $0 + $1.rawBytes },
                    storedBytes: batch.reduce(0) { $0 + $1.storedBytes })
                post.yield(.committed(.success(done)))
            } catch {
                post.yield(.committed(.failure(error)))
            }
        }
    }

    // MARK: events

    func handle(_ event: Event) async throws {
        switch event {
        case .tick:
            break  // schedule() hedges stragglers
        case .summaries(let result):
            summaryTask = nil
            switch result {
            case .success(let done):
                quorumChecks += 1
                if lastKnown == summaryTip.summary.sequenceNumber {
                    known += done.certified
                }  // else: read back from the store after the stored ones before them
                summaryTip = done.tip
                committees = done.committees
                storedAhead = done.tip.summary.sequenceNumber
                scheduler.progressed()
            case .failure(let error):
                if error is CancellationError { throw error }
                if error is StoreError { throw error }
                // Every source failed this batch (or the only ones that claimed it could not back
                // the claim and are banned now): poll again, aim at what the others claim, give up
                // after a few tries.
                try await scheduler.backOff { error }
                await pool.refresh()
                boundaries = await pool.claimBoundaries
                await retarget()
            }
        case .span(let first, let source, let task, let started, let result):
            try await spanDone(first: first, source: source, task: task, started: started, result)
        case .committed(let result):
            commitTask = nil
            let done = try result.get()
            synced = done.last
            checkpoints += done.checkpoints
            transactions += done.transactions
            rawBytes += done.rawBytes
            storedBytes += done.storedBytes
            scheduler.progressed()
            sync.onCommit?(done.last)
            if let progress {
                let usable = await pool.usable.count
                let stats = await pool.stats
                progress(SyncProgress(
                    first: first, synced: syncedSeq, target: target, checkpoints: checkpoints, transactions: transactions,
                    rawBytes: rawBytes, sources: usable, banned: stats.filter { $0.banReason != nil }.count,
                    elapsed: ContinuousClock.now - started))
            }
        }
    }

    func spanDone(
        first: UInt64, source: Int, task: Int, started: ContinuousClock.Instant, _ result: Result<([VerifiedCheckpoint], Int), any Error>
    ) async throws {
        guard let flight = scheduler.answered(task: task, key: first, source: source) else {
            // A hedge that lost (the span was already delivered) or a cancelled request.
            switch result {
            case .success((_, let bytes)): await pool.succeeded(source, bytes: bytes, duration: .now - started, used: 0)
            case .failure(let error): await SyncRun.judge(error, source: source, pool: pool, what: "blocks \(first)...")
            }
            return
        }
        switch result {
        case .success((let verified, let bytes)):
            let took = ContinuousClock.now - started
            await pool.succeeded(source, bytes: bytes, duration: took, used: verified.count)
            for item in verified { ready[item.certified.summary.sequenceNumber] = item }
            // Other sources still on this span lose: cancelled, each accounted when it reports.
            scheduler.delivered(first, seconds: verified.count == flight.work.summaries.count ? took.inSeconds : nil)
            if verified.count < flight.work.summaries.count {
                // A short stream: the source stopped holding the rest; ask for it again.
                var rest = flight.work
                let taken = verified.count
                rest.first += UInt64(taken)
                if taken > 0 { rest.previousTotal = verified[taken - 1].certified.summary.networkTotalTransactions }
                rest.summaries.removeFirst(taken)
                if taken == 0 { await pool.noteLacks(source) }
                scheduler.enqueue(rest.first, rest)
            }
        case .failure(let error):
            await SyncRun.judge(error, source: source, pool: pool, what: "blocks \(first)...\(flight.work.last)")
            scheduler.failed(first, source: source)
        }
    }

    // MARK: verification

    /// Verifies a span's stream against its verified summaries: the verified prefix (a source
    /// may stop early), each with its raw size.
    static func verify(_ span: Span, items: [BlockItem], userSignatures: Bool, limit: Int) throws -> [VerifiedCheckpoint] {
        var out: [VerifiedCheckpoint] = []
        out.reserveCapacity(span.summaries.count)
        var k = 0
        var previousTotal = span.previousTotal
        for certified in span.summaries {
            let seq = certified.summary.sequenceNumber
            guard k < items.count else { break }
            guard items[k].seq == seq, items[k].part == 0 else {
                throw SyncError("the stream for checkpoints \(span.first)...\(span.last) sent checkpoint \(items[k].seq) part \(items[k].part) where checkpoint \(seq) part 0 belongs")
            }
            // The part count is the source's (a UInt32: it converts exactly), checked against the
            // certified entry count before it sizes anything.
            let parts = Int(items[k].block.count)
            let expected: UInt64
            do {
                expected = try CheckpointVerifier.partCount(of: certified.summary, previousTotal: previousTotal)
            } catch {
                throw SyncError("checkpoint \(seq): \(error.message)")
            }
            guard UInt64(parts) == expected else {
                throw SyncError("checkpoint \(seq): \(parts) parts announced for \(expected) parts certified")
            }
            guard k + parts <= items.count else { break }
            var frames: [[UInt8]] = []
            var proofs: [[Digest]] = []
            frames.reserveCapacity(min(parts, items.count - k))
            proofs.reserveCapacity(min(parts, items.count - k))
            for p in 0..<parts {
                let item = items[k + p]
                guard item.seq == seq, item.part == UInt32(p) else {
                    throw SyncError("checkpoint \(seq): part \(p) missing from the stream")
                }
                frames.append(item.block.frame)
                proofs.append(item.block.proof)
            }
            k += parts
            do {
                out.append(try CheckpointVerifier.verify(
                    blocks: frames, proofs: proofs, of: certified, previousTotal: previousTotal, verifyUserSignatures: userSignatures,
                    limit: limit))
            } catch let e as CoreError {
                throw SyncError("checkpoint \(seq): \(e.message)")
            }
            previousTotal = certified.summary.networkTotalTransactions
        }
        guard k == items.count || out.count < span.summaries.count else {
            throw SyncError("the stream for checkpoints \(span.first)...\(span.last) sent \(items.count - k) items too many")
        }
        return out
    }

    /// Fetches, verifies (one quorum check, the epoch chain extended when the batch crosses into
    /// an epoch not yet known) and stores one summary batch, from the best source that holds it.
    static func fetchSummaries(
        from: UInt64, count: UInt32, after tip: VerifiedTip, committees: [Committee], sync: PeerSync, verifyAll: Bool
    ) async throws -> SummaryBatchDone {
        let pool = sync.pool
        var tried: Set<Int> = []
        var lastError: (any Error)? = nil
        guard let range = RequestRange.of(from: from, count: count) else {
            throw SyncError("no summary batch of \(count) from \(from)")
        }
        while true {
            // A source that holds the whole batch; else one that holds its start, for as far as
            // it claims (an archive ending inside it, a peer that pruned what comes before).
            var count = count
            var picked = await pool.pick(covering: range, excluding: tried)
            if picked == nil, let i = await pool.pick(excluding: tried, where: { _, a in a.lowestAvailable <= from && a.highestSynced >= from }) {
                picked = i
                if let a = await pool.availability(i) { count = UInt32(SyncRun.count(from: from, through: a.highestSynced, limit: Int(count))) }
            }
            guard let i = picked else { break }
            // count >= 1 and from...range.upperBound exists: no overflow.
            let last = from + UInt64(count) - 1
            tried.insert(i)
            let client = await pool.client(i)
            do {
                let answer = try await client.summaries(from: from, count: count, allCertificates: true)
                guard answer.summaries.count == Int(count), answer.certificates.count == Int(count),
                      answer.summaries.first?.sequenceNumber == from
                else {
                    // It was picked because it claims this range: a short answer is a claim it cannot back.
                    throw SyncError("claims checkpoints \(from)...\(last) but sent \(answer.summaries.count) summaries from \(answer.summaries.first.map { "\($0.sequenceNumber)" } ?? "none")")
                }
                var certified: [CertifiedCheckpointSummary] = []
                certified.reserveCapacity(Int(count))
                for (s, c) in zip(answer.summaries, answer.certificates) {
                    guard let c else { throw SyncError("summary \(s.sequenceNumber) came without its certificate") }
                    certified.append(CertifiedCheckpointSummary(summary: s, certificate: c))
                }
                var known = committees
                // Epochs are the source's until verified: compared as UInt64, never converted.
                let newestKnown = UInt64(known.count - 1)
                if let lastEpoch = answer.summaries.last?.epoch, lastEpoch >= newestKnown,
                   answer.summaries.contains(where: { $0.endOfEpoch != nil && $0.epoch >= newestKnown }) {
                    // The batch crosses an epoch end we have not verified: extend the chain first.
                    known = try await PeerSync.extend(known, from: client)
                }
                let frozen = known
                let newTip = try ChainVerifier.verifySummaryBatch(
                    SummaryBatch(certified: certified), after: tip, verifyAllCertificates: verifyAll,
                    committee: { Int(exactly: $0).flatMap { $0 < frozen.count ? frozen[$0] : nil } })
                // Archive stores every certificate: each is checked for shape (committee, bitmap,
                // quorum of power); the batch's last also for its signatures.
                for c in certified {
                    guard let epoch = Int(exactly: c.certificate.epoch), epoch < frozen.count else {
                        throw SyncError("summary \(c.summary.sequenceNumber): certificate of an unknown epoch \(c.certificate.epoch)")
                    }
                    guard c.certificate.epoch == c.summary.epoch else {
                        throw SyncError("summary \(c.summary.sequenceNumber) of epoch \(c.summary.epoch) carries a certificate of epoch \(c.certificate.epoch)")
                    }
                    try c.certificate.verifyShape(committee: frozen[epoch])
                }
                try await sync.store.commitSummaries(certified)
                await pool.succeeded(i, bytes: 0, duration: .zero, used: 0)
                return SummaryBatchDone(certified: certified, tip: newTip, committees: known)
            } catch {
                if error is CancellationError {
                    await pool.released(i)
                    throw error
                }
                if error is StoreError { await pool.released(i); throw error }
                lastError = error
                if case .notFound(let message)? = error as? RPCError {
                    // It was picked because it claims to hold this range, and an honest node
                    // serves every summary up to its highest verified checkpoint, which is at
                    // least its highest synced one: a claim it cannot back is misbehaviour.
                    await pool.misbehaved(i, reason: "claims checkpoints \(from)...\(last) but has no certified summaries for them: \(message)")
                    continue
                }
                await judge(error, source: i, pool: pool, what: "summaries \(from)...\(last)")
            }
        }
        throw lastError ?? SyncError("no usable source holds summaries \(from)...\(range.upperBound)")
    }

    /// Accounts a failed request to source `i`: bad data bans it, a stall or a closed connection
    /// counts against it (a closed connection makes it unusable until it reconnects, without a
    /// ban: a dropped connection is not misbehaviour), a refusal for data it does not hold makes
    /// it re-poll.
    static func judge(_ error: any Error, source i: Int, pool: SourcePool, what: String) async {
        switch error {
        case is CancellationError:
            await pool.released(i)
        case let e as SourceFailure:
            await pool.failed(i, stalled: e.stalled, reason: "\(what): \(e)")
        case let e as WireError where e.code == .timedOut:
            await pool.failed(i, stalled: true, reason: "\(what): \(e)")
        case let e as WireError where e.code == .connectionClosed:
            await pool.failed(i, stalled: false, reason: "\(what): \(e)")
        case let e as WireError:
            await pool.misbehaved(i, reason: "\(what): \(e)")
        case let e as RPCError:
            switch e {
            case .notFound: await pool.lacks(i)
            default: await pool.failed(i, stalled: false, reason: "\(what): \(e)")
            }
        default:
            // Anything that fails verification or decoding.
            await pool.misbehaved(i, reason: "\(what): \(error)")
        }
    }
}
