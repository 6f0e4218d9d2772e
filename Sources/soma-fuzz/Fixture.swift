import Foundation
import SomaCore
import SomaDevnet
import SomaNet
import SomaStore

/// A devnet `tiny` chain (30 checkpoints, 3 epochs, snapshots of epochs 1 and 2 in chunks of
/// 16 objects) generated once per process into a store in a temporary directory: what the
/// dispatcher serves and what the proof targets verify against.
///
/// The directory is `$SOMA_FUZZ_WORKDIR/store-<pid>` (tools/fuzz removes the work dir) or a
/// fresh one under the system's temporary directory.
final class Fixture: Sendable {
    let genesis: Genesis
    let checkpoints: [GeneratedCheckpoint]
    let store: NodeStore
    let service: HistoryService
    /// The snapshot of epoch 1, its chunk frames and its certified epoch end.
    let manifest: SnapshotManifest
    let chunkFrames: [[UInt8]]
    let epochEnd: CheckpointSummary

    private init(genesis: Genesis, checkpoints: [GeneratedCheckpoint], store: NodeStore, manifest: SnapshotManifest,
                 chunkFrames: [[UInt8]], epochEnd: CheckpointSummary) {
        self.genesis = genesis
        self.checkpoints = checkpoints
        self.store = store
        self.service = HistoryService(store: store)
        self.manifest = manifest
        self.chunkFrames = chunkFrames
        self.epochEnd = epochEnd
    }

    /// The process's fixture, made on first use.
    static let shared: Fixture = blockOn { await make() }

    private static func make() async -> Fixture {
        let base = ProcessInfo.processInfo.environment["SOMA_FUZZ_WORKDIR"] ?? NSTemporaryDirectory()
        let path = (base as NSString).appendingPathComponent("soma-fuzz-store-\(getpid())-\(UUID().uuidString)")
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            let generator = ChainGenerator(profile: .tiny, seed: 4)
            let checkpoints = await generator.generateAll(parallelism: 2)
            var config = StoreConfiguration()
            config.snapshotChunkSize = 16
            let store = try await NodeStore.open(path: path, configuration: config)
            try await store.initialize(genesis: generator.genesis)
            try await store.commit(checkpoints.map { try CheckpointVerifier.verify(contents: $0.data, of: $0.certified, previousTotal: $0.previousTotal) })
            // The last epoch end's snapshot is built beside the commits: done before any input runs.
            try await store.finishSnapshotBuild()
            guard let manifest = try await store.snapshotManifest(epoch: 1),
                  let end = try await store.summary(at: manifest.lastCheckpoint)
            else { fail("the fixture store has no snapshot of epoch 1") }
            var frames: [[UInt8]] = []
            for i in manifest.chunkRoots.indices {
                guard let f = try await store.snapshotChunk(epoch: 1, index: UInt32(i)) else { fail("fixture chunk \(i) missing") }
                frames.append(f)
            }
            return Fixture(genesis: generator.genesis, checkpoints: checkpoints, store: store, manifest: manifest,
                           chunkFrames: frames, epochEnd: end.summary)
        } catch {
            fail("building the fixture store in \(path): \(error)")
        }
    }
}
