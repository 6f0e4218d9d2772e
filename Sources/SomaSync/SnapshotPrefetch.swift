import NIOCore
import SomaCore
import SomaStore

/// Takes the snapshot of the epoch end a catch-up runs to from the sources that serve it,
/// beside the catch-up's commits, so that the store need not build it at that end (DESIGN §6:
/// the newest epoch end's snapshot is kept; building it reads back every live object from the
/// blocks and compresses it again, seconds after the last commit): the manifest checked
/// against the certified end, then every chunk verified on its own by its subtree proof and
/// written by ``NodeStore/adoptSnapshotChunk(_:epoch:)``. At the epoch end the store keeps the
/// snapshot if every chunk is in (the chunks were proven against the certified root, which its
/// own live set reproduced), and builds it otherwise: a prefetch that fails or is late costs
/// nothing but the bytes it fetched. A source that sends a chunk that fails verification is
/// judged as for any other data (banned for bad data).
struct SnapshotPrefetch: Sendable {
    let store: NodeStore
    let pool: SourcePool
    /// The certified end of the epoch whose snapshot is taken.
    let end: CertifiedCheckpointSummary
    /// Chunks asked at once (the blocks keep the rest of the sources' capacity).
    var parallel = 2
    var requestTimeout: TimeAmount? = .seconds(10)
    /// The largest decompressed chunk accepted.
    var maxChunkBytes = 64 << 20

    /// Runs to the last chunk, or until a chunk no source serves, the store's refusal (the epoch
    /// end came first) or cancellation; never fails (the build is the fallback).
    func run() async {
        _ = try? await adopt()
    }

    /// The chunks written (0 when nothing was started).
    func adopt() async throws -> Int {
        let epoch = end.summary.epoch
        guard let manifest = await manifest(epoch), try await store.beginSnapshotAdoption(manifest) else { return 0 }
        let count = manifest.chunkRoots.count
        let workers = max(1, parallel)
        return try await withThrowingTaskGroup(of: Int.self) { group in
            // Worker w takes chunks w, w + workers, …: in order, side by side.
            for worker in 0..<workers {
                group.addTask {
                    var written = 0
                    for k in stride(from: worker, to: count, by: workers) {
                        try Task.checkCancellation()
                        let chunk = try await fetch(UInt32(k), manifest, startingAt: worker)
                        // The epoch end came first: the store builds the snapshot instead.
                        guard try await store.adoptSnapshotChunk(chunk, epoch: epoch) else { throw CancellationError() }
                        written += 1
                    }
                    return written
                }
            }
            return try await group.reduce(0, +)
        }
    }

    /// The manifest of `epoch` from the first source that serves one matching the certified end.
    func manifest(_ epoch: UInt64) async -> SnapshotManifest? {
        for i in await candidates(epoch) {
            await pool.take(i)
            do {
                let m = try await pool.client(i).snapshotManifest(epoch: epoch)
                try m.check(against: end.summary)
                await pool.succeeded(i, bytes: 0, duration: .zero, used: 0)
                return m
            } catch {
                await SyncRun.judge(error, source: i, pool: pool, what: "snapshot manifest of epoch \(epoch)")
            }
        }
        return nil
    }

    /// Chunk `index`, verified, from the sources that serve the epoch's snapshot, each tried in
    /// turn from the `start`-th.
    /// - Throws: ``SyncError`` when none serves it; `CancellationError`.
    func fetch(_ index: UInt32, _ manifest: SnapshotManifest, startingAt start: Int) async throws -> VerifiedChunk {
        let sources = await candidates(manifest.epoch)
        for n in sources.indices {
            try Task.checkCancellation()
            let i = sources[(start + n) % sources.count]
            await pool.take(i)
            let started = ContinuousClock.now
            do {
                let answer = try await pool.client(i).snapshotChunk(epoch: manifest.epoch, index: index, timeout: requestTimeout)
                guard answer.count == manifest.chunkRoots.count else {
                    throw SyncError("snapshot chunk \(index) of epoch \(manifest.epoch): the source counts \(answer.count) chunks, the manifest \(manifest.chunkRoots.count)")
                }
                let chunk = try manifest.verifyChunk(index: index, frame: answer.frame, proof: answer.proof, limit: maxChunkBytes)
                await pool.succeeded(i, bytes: answer.frame.count, duration: ContinuousClock.now - started, used: 0)
                return chunk
            } catch {
                await SyncRun.judge(error, source: i, pool: pool, what: "snapshot chunk \(index) of epoch \(manifest.epoch)")
                if error is CancellationError { throw error }
            }
        }
        throw SyncError("no source served snapshot chunk \(index) of epoch \(manifest.epoch)")
    }

    /// The usable sources that say they hold the snapshot of `epoch`.
    func candidates(_ epoch: UInt64) async -> [Int] {
        var out: [Int] = []
        for i in await pool.usable where await pool.availability(i)?.snapshotEpochs.contains(epoch) ?? false { out.append(i) }
        return out
    }
}
