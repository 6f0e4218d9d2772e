public import NIOCore
public import SomaCore
import SomaNet
public import SomaStore

/// Which snapshot a restore takes.
public enum SnapshotChoice: Sendable, Hashable, CustomStringConvertible {
    /// The newest epoch whose end the epoch chain certifies and whose snapshot a source serves.
    case latest
    /// This epoch's.
    case epoch(UInt64)

    /// `latest` or the epoch number.
    public var description: String {
        switch self {
        case .latest: "latest"
        case .epoch(let e): "\(e)"
        }
    }
}

/// The tunables of a snapshot restore.
public struct RestoreConfiguration: Sendable {
    /// Chunk requests in flight over all sources.
    public var window = 16
    /// Verified chunks held for writing at most (with those in flight): bounds the memory.
    public var maxUncommitted = 48
    /// Most chunks in one write batch.
    public var commitGroup = 8
    /// A chunk request that gets no answer for this long fails as a stall.
    public var requestTimeout: TimeAmount = .seconds(10)
    /// The shortest wait before a straggling chunk is also asked of another source (the
    /// adaptive delay is three times the moving average of chunk times, never less).
    public var minHedgeDelay: Duration = .milliseconds(400)
    /// The largest decompressed chunk accepted (bytes).
    public var maxChunkBytes = 64 << 20

    /// Defaults.
    public init() {}
}

/// Where a restore stands, told after every write.
public struct RestoreProgress: Sendable {
    /// The snapshot's epoch.
    public var epoch: UInt64
    /// Chunks written (including those of an earlier, interrupted run).
    public var chunksDone: Int
    /// Chunks in the snapshot.
    public var chunks: Int
    /// Objects written by this run.
    public var objects: Int
    /// Their encoded bytes.
    public var rawBytes: Int
    /// Sources usable now.
    public var sources: Int
    /// Time since the restore started.
    public var elapsed: Duration
}

/// What a restore did.
public struct RestoreReport: Sendable {
    /// The snapshot's epoch and its last checkpoint (the store's watermarks now).
    public var epoch: UInt64
    /// The epoch's last checkpoint.
    public var checkpoint: UInt64
    /// The certified state root the restored live set makes.
    public var stateRoot: Digest
    /// Live objects in the snapshot.
    public var objectCount: UInt64
    /// Chunks in the snapshot.
    public var chunks: Int
    /// Chunks this run fetched from the sources (the rest were reused from a local snapshot, or
    /// written by an interrupted run before it).
    public var fetched: Int
    /// Chunks read from a local snapshot whose chunk root matched (a differential update), and
    /// their LZ4 bytes (what a full restore would have fetched besides ``frameBytes``).
    public var reused = 0
    public var reusedBytes = 0
    /// Objects this run wrote.
    public var objects: Int
    /// Their encoded bytes, and the LZ4 bytes received for them.
    public var rawBytes: Int
    /// LZ4 bytes received.
    public var frameBytes: Int
    /// Chunks asked again of another source because the first straggled.
    public var hedges: Int
    /// Sources whose manifest was checked and agreed.
    public var agreeingSources: Int
    /// Every source's standing at the end (its `checkpoints` count chunks here).
    public var sources: [SourceStats]
}

/// Restores a store from a verified state snapshot (DESIGN §10, snapshot restore): the
/// epoch chain to the chosen epoch, the snapshot manifest from every source that serves it
/// (each checked against the certified state root; a source whose manifest disagrees is
/// banned), then the chunks from all agreeing sources at once (a sliding window, the best
/// source by throughput per request, stragglers hedged on another source), each verified on
/// arrival by its subtree proof against the certified root before it is written with its
/// progress marker. A crash or stop resumes with the chunks already written; none is fetched
/// twice once written. On completion the store's watermarks stand at the epoch's last
/// checkpoint, and a ``PeerSync`` continues from there.
public struct SnapshotRestore: Sendable {
    /// The store to fill (holding only its genesis, or a restore in progress).
    public let store: NodeStore
    /// The chain's genesis.
    public let genesis: Genesis
    /// The sources.
    public let pool: SourcePool
    /// The tunables.
    public var configuration: RestoreConfiguration
    /// Snapshots held locally (an older data directory's store, a local archive): a chunk of
    /// the snapshot being restored whose root one of their chunks has is read from them instead
    /// of fetched, still verified against the manifest being restored (a differential update,
    /// DESIGN §10); the others are fetched.
    public var reuse: [any SyncSource] = []

    /// A restore of `store` from the sources in `pool`.
    public init(store: NodeStore, genesis: Genesis, pool: SourcePool, configuration: RestoreConfiguration = RestoreConfiguration()) {
        self.store = store
        self.genesis = genesis
        self.pool = pool
        self.configuration = configuration
    }

    /// Restores the chosen snapshot, or resumes the restore in progress.
    ///
    /// A restore in progress is resumed while a source still serves its manifest (and it is the
    /// epoch asked for); a restore whose chunks are all written finishes without the network.
    /// Otherwise the candidates are tried in turn, newest epoch first, and for each the
    /// manifest most sources agree on, then the next: a candidate whose sources stop serving it
    /// (banned, gone) gives way to the next one, which replaces the restore in progress.
    /// - Returns: the report, or `nil` when the store already holds checkpoints beyond the
    ///   genesis (it was restored or synced before: checkpoint sync continues from there).
    /// - Throws: ``SyncError`` when no source serves a usable snapshot, the store's errors, or
    ///   `CancellationError`.
    public func restore(_ choice: SnapshotChoice = .latest, progress: (@Sendable (RestoreProgress) -> Void)? = nil) async throws -> RestoreReport? {
        await pool.refresh()
        guard await !pool.usable.isEmpty else {
            throw SyncError("no source answered: " + (await pool.stats).map(\.description).joined(separator: "; "))
        }
        try await store.initialize(genesis: genesis)
        var state = try await store.restoreState()
        if state == nil, let synced = try await store.watermark(.highestSynced), synced.seq > 0 { return nil }
        if let s = state, s.done.count == s.manifest.chunkRoots.count {
            // Every chunk is written (a stop came before the end): finish without the network.
            var report = RestoreRun.report(manifest: s.manifest, fetched: 0)
            return try await finish(&report, agreeing: 0)
        }
        var lastError: (any Error)? = nil
        // 1. The restore in progress, while a source still serves its manifest.
        if let s = state, choice == .latest || choice == .epoch(s.manifest.epoch) {
            if let agreeing = await manifests(epoch: s.manifest.epoch, end: s.end)[s.manifest] {
                do {
                    return try await download(s.manifest, agreeing: agreeing, done: s.done, progress: progress)
                } catch let e as SyncError {
                    lastError = e
                    state = try await store.restoreState()
                }
            }
        }
        // 2. The candidates, newest first: each epoch's manifests by the number of sources that sent them.
        let ends = try await epochEnds()
        for epoch in try await candidateEpochs(choice, verifiedEnds: ends.count).prefix(3) {
            // Candidates are below the verified ends' count (candidateEpochs): checked again here,
            // since the epochs came from sources' availability.
            guard let e = Int(exactly: epoch), e < ends.count else { continue }
            let groups = await manifests(epoch: epoch, end: ends[e]).sorted { a, b in
                a.value.count > b.value.count || (a.value.count == b.value.count && a.key.chunkSize > b.key.chunkSize)
            }
            for (manifest, agreeing) in groups.prefix(2) where manifest != state?.manifest {
                try await store.beginRestore(manifest: manifest, epochEnds: Array(ends[...e]), replacing: state != nil)
                do {
                    return try await download(manifest, agreeing: agreeing, done: [], progress: progress)
                } catch let e as SyncError {
                    lastError = e
                    state = try await store.restoreState()
                }
            }
        }
        if let lastError { throw lastError }
        let stats = await pool.stats
        throw SyncError("no source sent a manifest that matches the certified state root: " + stats.map(\.description).joined(separator: "; "))
    }

    /// Downloads the chunks not yet written from the `agreeing` sources, then finishes.
    func download(_ manifest: SnapshotManifest, agreeing: Set<Int>, done: Set<UInt32>, progress: (@Sendable (RestoreProgress) -> Void)?) async throws -> RestoreReport {
        try await store.prepareRestore()
        let (reused, reusedBytes, objects, rawBytes) = try await reuseLocal(manifest, done: done)
        var report = try await RestoreRun(restore: self, manifest: manifest, allowed: agreeing, done: done.union(reused), progress: progress).run()
        report.reused = reused.count
        report.reusedBytes = reusedBytes
        report.objects += objects
        report.rawBytes += rawBytes
        return try await finish(&report, agreeing: agreeing.count)
    }

    /// Writes the chunks of `manifest` not in `done` whose roots a local snapshot (``reuse``)
    /// has, read from it and each verified against `manifest` by its own subtree proof; a chunk
    /// that fails (a damaged local copy) is left to the download. Returns the chunks written,
    /// their LZ4 bytes, objects and raw bytes.
    func reuseLocal(_ manifest: SnapshotManifest, done: Set<UInt32>) async throws -> (Set<UInt32>, Int, Int, Int) {
        guard !reuse.isEmpty else { return ([], 0, 0, 0) }
        var wanted: [Digest: [UInt32]] = [:]
        for (k, root) in manifest.chunkRoots.enumerated() where !done.contains(UInt32(k)) { wanted[root, default: []].append(UInt32(k)) }
        var written = Set<UInt32>()
        var bytes = 0, objects = 0, raw = 0
        var batch: [VerifiedChunk] = []
        func flush() async throws {
            guard !batch.isEmpty else { return }
            try await store.commitRestored(batch)
            for c in batch {
                written.insert(c.index)
                objects += c.count
                raw += c.rawBytes
            }
            batch = []
        }
        for local in reuse {
            guard let epochs = try? await local.availability().snapshotEpochs else { continue }
            for epoch in epochs.sorted(by: >) where !wanted.isEmpty {
                guard let held = try? await local.snapshotManifest(epoch: epoch), held.chunkSize == manifest.chunkSize else { continue }
                for (j, root) in held.chunkRoots.enumerated() {
                    try Task.checkCancellation()
                    guard let ks = wanted[root] else { continue }
                    guard let frame = try? await local.snapshotChunk(epoch: epoch, index: UInt32(j), timeout: nil).frame else { continue }
                    var left: [UInt32] = []
                    for k in ks {
                        guard let proof = try? manifest.proof(chunk: Int(k)),
                              let chunk = try? manifest.verifyChunk(index: k, frame: frame, proof: proof, limit: configuration.maxChunkBytes)
                        else { left.append(k); continue }
                        batch.append(chunk)
                        bytes += frame.count
                    }
                    wanted[root] = left.isEmpty ? nil : left
                    if batch.count >= configuration.commitGroup { try await flush() }
                }
            }
        }
        try await flush()
        return (written, bytes, objects, raw)
    }

    func finish(_ report: inout RestoreReport, agreeing: Int) async throws -> RestoreReport {
        let tip = try await store.finishRestore()
        report.checkpoint = tip.seq
        report.agreeingSources = agreeing
        report.sources = await pool.stats
        return report
    }

    /// The longest epoch chain the usable sources give (up to 8 asked), verified from the
    /// genesis committee; a source whose ends fail is banned. Asking several means that a source
    /// which shows a shortened chain cannot hold the restore back to an old epoch.
    func epochEnds() async throws -> [CertifiedCheckpointSummary] {
        var best: [CertifiedCheckpointSummary] = []
        var lastError: (any Error)? = nil
        for i in (await pool.usable).prefix(8) {
            let client = await pool.client(i)
            await pool.take(i)
            do {
                let (_, ends) = try await PeerSync.extendWithEnds([genesis.committee], from: client)
                await pool.succeeded(i, bytes: 0, duration: .zero, used: 0)
                if ends.count > best.count { best = ends }
            } catch {
                if error is CancellationError { await pool.released(i); throw error }
                lastError = error
                await SyncRun.judge(error, source: i, pool: pool, what: "epoch endings")
            }
        }
        guard !best.isEmpty else { throw SyncError("no source gave a verifiable epoch chain\(lastError.map { ": \($0)" } ?? "")") }
        return best
    }

    /// The epochs to try, newest first: those whose end the chain certifies and whose snapshot
    /// a usable source advertises (`latest`), or the one named.
    func candidateEpochs(_ choice: SnapshotChoice, verifiedEnds: Int) async throws -> [UInt64] {
        var served = Set<UInt64>()
        for i in await pool.usable {
            if let a = await pool.availability(i) { served.formUnion(a.snapshotEpochs) }
        }
        let candidates = served.filter { $0 < UInt64(verifiedEnds) }.sorted(by: >)
        switch choice {
        case .latest:
            guard !candidates.isEmpty else {
                throw SyncError("no source serves a snapshot of an epoch whose end is certified (served: \(served.sorted().map(String.init).joined(separator: ", ")); \(verifiedEnds) epoch ends verified)")
            }
            return candidates
        case .epoch(let e):
            guard e < UInt64(verifiedEnds) else {
                throw SyncError("epoch \(e) has not ended in the certified epoch chain the peers serve (\(verifiedEnds) epoch ends): ask for an ended epoch with --snapshot, or --snapshot latest")
            }
            guard candidates.contains(e) else {
                throw SyncError("no source serves the snapshot of epoch \(e) (served: \(candidates.sorted().map(String.init).joined(separator: ", ")))")
            }
            return [e]
        }
    }

    /// Asks every usable source that advertises `epoch` for its manifest (concurrently) and
    /// checks each against the certified `end`: a source whose manifest fails is banned. The
    /// valid manifests, each with the sources that sent it.
    func manifests(epoch: UInt64, end: CertifiedCheckpointSummary) async -> [SnapshotManifest: Set<Int>] {
        var targets: [(Int, any SyncSource)] = []
        for i in await pool.usable {
            guard let a = await pool.availability(i), a.snapshotEpochs.contains(epoch) else { continue }
            targets.append((i, await pool.client(i)))
        }
        let answers = await withTaskGroup(of: (Int, Result<SnapshotManifest, any Error>).self) { group in
            for (i, c) in targets {
                group.addTask {
                    do {
                        let m = try await c.snapshotManifest(epoch: epoch)
                        try m.check(against: end.summary)
                        return (i, .success(m))
                    } catch {
                        return (i, .failure(error))
                    }
                }
            }
            var out: [(Int, Result<SnapshotManifest, any Error>)] = []
            for await a in group { out.append(a) }
            return out
        }
        var groups: [SnapshotManifest: Set<Int>] = [:]
        for (i, result) in answers {
            await pool.take(i)
            switch result {
            case .success(let m):
                await pool.succeeded(i, bytes: 0, duration: .zero, used: 0)
                groups[m, default: []].insert(i)
            case .failure(let error):
                await SyncRun.judge(error, source: i, pool: pool, what: "snapshot manifest of epoch \(epoch)")
            }
        }
        return groups
    }
}

/// One restore's chunk downloads: the snapshot job of the state-sync event loop
/// (``StateSyncLoop``). Chunk requests (through its ``FetchScheduler``), verification and writes
/// run as tasks that report back as events.
final class RestoreRun: StateSyncJob {
    enum Event: Sendable {
        case chunk(index: UInt32, source: Int, task: Int, started: ContinuousClock.Instant, Result<(VerifiedChunk, Int), any Error>)
        case written(Result<[VerifiedChunk], any Error>)
        case tick
    }

    let restore: SnapshotRestore
    let config: RestoreConfiguration
    let pool: SourcePool
    let manifest: SnapshotManifest
    let allowed: Set<Int>
    let progress: (@Sendable (RestoreProgress) -> Void)?
    let started = ContinuousClock.now
    let loop = StateSyncLoop<Event>(tick: .tick)
    /// The chunks' requests, keyed by chunk index; only the sources that sent the agreed
    /// manifest and serve its epoch are picked.
    lazy var scheduler = FetchScheduler<UInt32, UInt32>(
        sources: .pool(pool) { [allowed, epoch = manifest.epoch] _, i, a in allowed.contains(i) && a.snapshotEpochs.contains(epoch) },
        window: config.window, minHedgeDelay: config.minHedgeDelay, requestTimeout: .nanoseconds(config.requestTimeout.nanoseconds)
    ) { [unowned self] index, _, source, id in self.chunkTask(index, source: source, id: id) }

    var ready: [VerifiedChunk] = []
    var writeTask: Task<Void, Never>?
    var chunksDone: Int
    let fetchedAtStart: Int
    var objects = 0
    var rawBytes = 0
    var frameBytes = 0
    /// At most this many chunks are decompressed and verified at once (each may take up to
    /// `maxChunkBytes`), whatever the window.
    let verifying = Gate(permits: 2)

    init(restore: SnapshotRestore, manifest: SnapshotManifest, allowed: Set<Int>, done: Set<UInt32>, progress: (@Sendable (RestoreProgress) -> Void)?) {
        self.restore = restore
        self.config = restore.configuration
        self.pool = restore.pool
        self.manifest = manifest
        self.allowed = allowed
        self.progress = progress
        chunksDone = done.count
        fetchedAtStart = done.count
        // A checked manifest lists at most SnapshotManifest.maxChunks chunks.
        for index in 0..<UInt32(clamping: manifest.chunkRoots.count) where !done.contains(index) { scheduler.enqueue(index, index) }
    }

    var total: Int { manifest.chunkRoots.count }

    var isFinished: Bool { chunksDone >= total }

    func run() async throws -> RestoreReport {
        try await loop.run(self)
        var report = Self.report(manifest: manifest, fetched: total - fetchedAtStart)
        report.objects = objects
        report.rawBytes = rawBytes
        report.frameBytes = frameBytes
        report.hedges = scheduler.hedges
        return report
    }

    /// A report of `manifest`'s restore that fetched `fetched` chunks (the rest filled in by the caller).
    static func report(manifest: SnapshotManifest, fetched: Int) -> RestoreReport {
        RestoreReport(
            epoch: manifest.epoch, checkpoint: manifest.lastCheckpoint, stateRoot: manifest.stateRoot, objectCount: manifest.objectCount,
            chunks: manifest.chunkRoots.count, fetched: fetched, objects: 0, rawBytes: 0, frameBytes: 0, hedges: 0,
            agreeingSources: 0, sources: [])
    }

    /// Cancels requests in flight and waits for them and for a write in progress; every
    /// request's slot goes back to the pool.
    func stopAll() async {
        await scheduler.stopAll()
        await writeTask?.value
    }

    func settle(source: Int, started: ContinuousClock.Instant, _ result: Result<(VerifiedChunk, Int), any Error>, index: UInt32, used: Bool) async {
        switch result {
        case .success((_, let bytes)): await pool.succeeded(source, bytes: bytes, duration: .now - started, used: used ? 1 : 0)
        case .failure(let error): await SyncRun.judge(error, source: source, pool: pool, what: "snapshot chunk \(index) of epoch \(manifest.epoch)")
        }
    }

    func schedule() async throws {
        await scheduler.hedge()
        await scheduler.fill(room: { [self] in scheduler.flights.count + ready.count < config.maxUncommitted })
        if writeTask == nil { startWrite() }
        if scheduler.isIdle && writeTask == nil && ready.isEmpty && scheduler.hasQueued {
            // Nothing can move: poll the sources again; give up after a few tries.
            try await scheduler.backOff { [self] in
                SyncError("no usable source serves epoch \(manifest.epoch)'s snapshot any more (\(total - chunksDone) chunks left): "
                    + (await pool.stats).map(\.description).joined(separator: "; "))
            }
            await pool.refresh()
        }
    }

    func chunkTask(_ index: UInt32, source: Int, id: Int) -> Task<Void, Never> {
        let pool = self.pool
        let post = loop.post
        let manifest = self.manifest
        let timeout = config.requestTimeout
        let limit = config.maxChunkBytes
        let gate = verifying
        return Task {
            let started = ContinuousClock.now
            do {
                let client = await pool.client(source)
                let answer = try await client.snapshotChunk(epoch: manifest.epoch, index: index, timeout: timeout)
                guard answer.count == manifest.chunkRoots.count else {
                    throw SyncError("snapshot chunk \(index) of epoch \(manifest.epoch): the source counts \(answer.count) chunks, the manifest \(manifest.chunkRoots.count)")
                }
                await gate.acquire()
                let verified = Result { () throws(StoreError) in try manifest.verifyChunk(index: index, frame: answer.frame, proof: answer.proof, limit: limit) }
                await gate.release()
                let chunk = try verified.get()
                post.yield(.chunk(index: index, source: source, task: id, started: started, .success((chunk, answer.frame.count))))
            } catch {
                post.yield(.chunk(index: index, source: source, task: id, started: started, .failure(error)))
            }
        }
    }

    func startWrite() {
        guard !ready.isEmpty else { return }
        // Small writes cost more per chunk: wait for a fuller batch while more is on its way.
        if ready.count < config.commitGroup && !scheduler.isIdle && ready.count + chunksDone < total { return }
        let batch = Array(ready.prefix(config.commitGroup))
        ready.removeFirst(batch.count)
        let store = restore.store
        let post = loop.post
        writeTask = Task {
            do {
                try await store.commitRestored(batch)
                post.yield(.written(.success(batch)))
            } catch {
                post.yield(.written(.failure(error)))
            }
        }
    }

    func handle(_ event: Event) async throws {
        switch event {
        case .tick:
            break
        case .written(let result):
            writeTask = nil
            let batch = try result.get()
            chunksDone += batch.count
            for c in batch {
                objects += c.count
                rawBytes += c.rawBytes
            }
            scheduler.progressed()
            if let progress {
                progress(RestoreProgress(
                    epoch: manifest.epoch, chunksDone: chunksDone, chunks: total, objects: objects, rawBytes: rawBytes,
                    sources: await pool.usable.count, elapsed: .now - started))
            }
        case .chunk(let index, let source, let task, let started, let result):
            guard scheduler.answered(task: task, key: index, source: source) != nil else {
                // A hedge that lost, or a cancelled request.
                await settle(source: source, started: started, result, index: index, used: false)
                return
            }
            await settle(source: source, started: started, result, index: index, used: result.isSuccess)
            switch result {
            case .success((let chunk, let bytes)):
                frameBytes += bytes
                scheduler.delivered(index, seconds: (ContinuousClock.now - started).inSeconds)
                ready.append(chunk)
            case .failure(let error):
                // A source that fails fast and again (refusals, errors) is set aside for a while.
                if !(error is CancellationError) { await pool.banIfFailing(source, after: 3, reason: "snapshot chunks: \(error)") }
                scheduler.failed(index, source: source)
            }
        }
    }
}

extension Result {
    var isSuccess: Bool {
        if case .success = self { true } else { false }
    }
}

/// A counting semaphore for tasks: at most `permits` holders at once.
actor Gate {
    private var free: Int
    private var waiting: [CheckedContinuation<Void, Never>] = []

    init(permits: Int) { free = permits }

    func acquire() async {
        if free > 0 {
            free -= 1
            return
        }
        await withCheckedContinuation { waiting.append($0) }
    }

    func release() {
        if waiting.isEmpty { free += 1 } else { waiting.removeFirst().resume() }
    }
}
