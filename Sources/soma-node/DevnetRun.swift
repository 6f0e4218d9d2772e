import ArgumentParser
import SomaCore
import SomaDevnet
import SomaNode
import SomaStore
import SomaSync

struct DevnetRun: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a node whose chain grows: it produces the devnet profile's next checkpoints at a steady pace while it serves.",
        discussion: """
            A local devnet's producing node: everything `soma-node run` does (serve, discover, \
            follow), and every --interval-ms it commits the profile's next checkpoint (verified as \
            any other: summary batch, blocks, execution and the state root at epoch ends) and pushes \
            it to every connected peer. The data directory must hold this profile and seed's chain \
            (`soma-node devnet generate --until SEQ` starts one); it stops producing at the \
            profile's last checkpoint and goes on serving.
            """)

    @OptionGroup var node: NodeRunOptions
    @OptionGroup var chain: ProfileOptions
    @Option(help: "Milliseconds between two produced checkpoints.")
    var intervalMs = 100

    func validate() throws {
        guard intervalMs >= 1 && intervalMs <= 3_600_000 else { throw ValidationError("--interval-ms must be 1...3600000") }
    }

    func run() async throws {
        let profile = try chain.resolvedProfile()
        try await node.serve(producer: DevnetProducer(
            profile: profile, seed: chain.seed, interval: .milliseconds(intervalMs), parallelism: chain.parallelism))
    }
}

/// Produces a devnet profile's checkpoints into a store that holds its beginning: the
/// generator replays what the store holds (its state follows every checkpoint), then each
/// next checkpoint is verified and committed like any other, and published.
struct DevnetProducer: CheckpointProducer {
    let profile: DevnetProfile
    let seed: UInt64
    let interval: Duration
    let parallelism: Int

    func run(store: NodeStore, publish: @escaping @Sendable (CertifiedCheckpointSummary) -> Void) async throws {
        let generator = ChainGenerator(profile: profile, seed: seed)
        guard try await store.chainID() == generator.genesis.chainID else {
            throw CLIError("the store holds another chain than the \(profile.name) profile's with seed \(seed)")
        }
        var importer = try await CheckpointImporter(genesis: generator.genesis, store: store, batchSize: 1, parallelism: parallelism, userSignatures: false)
        while !generator.isFinished {
            try Task.checkCancellation()
            let held = importer.resumeAfter
            let next = generator.nextSequence
            // Replay what the store already holds in big steps; produce one at a time after it.
            let batch = await generator.next(count: next <= held ? Int(min(held - next, 99)) + 1 : 1, parallelism: parallelism)
            for cp in batch where cp.certified.summary.sequenceNumber > held {
                do {
                    try await importer.add(SourceCheckpoint(certified: cp.certified, data: cp.data))
                    try await importer.flush()
                } catch let error as StoreError where error.code == .outOfOrder {
                    // Another writer (the follower) committed it first: carry on from the store.
                    importer = try await CheckpointImporter(genesis: generator.genesis, store: store, batchSize: 1, parallelism: parallelism, userSignatures: false)
                    continue
                }
                publish(cp.certified)
                try await Task.sleep(for: interval)
            }
        }
    }
}
