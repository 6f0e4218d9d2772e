import ArgumentParser
import Foundation
import SomaCore
import SomaDevnet

/// `soma-node`: the storage-centric sync and archive node of the Soma chain.
@main
struct SomaNodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "soma-node",
        abstract: "Sync, keep and serve the Soma chain's verified history.",
        subcommands: [Devnet.self])
}

struct Devnet: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Local development chains.", subcommands: [Generate.self])
}

/// Errors of the command line, printed as one line.
struct CLIError: Error, CustomStringConvertible {
    let description: String
}

struct Generate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate a deterministic devnet chain and verify it as a fresh node would.",
        discussion: """
            Generates the genesis and every checkpoint of the profile, then checks the genesis, \
            the epoch chain, every summary batch (one quorum check per batch), every block against \
            its certified content digest, and replays every checkpoint's effects to recompute the \
            state root at each epoch end. With --out, writes the genesis (BCS) to DIR/genesis.bcs.
            """)

    @Option(help: "Profile: demo, bench or tiny.")
    var profile = "demo"

    @Option(help: "Seed of the deterministic generator.")
    var seed: UInt64 = 1

    @Option(help: "Directory to write genesis.bcs into.")
    var out: String?

    @Option(help: "Summaries per verified batch.")
    var batch = 1_000

    @Flag(help: "Also re-check every user signature.")
    var verifyUserSignatures = false

    @Option(help: "Parallel signing tasks (default: the number of cores).")
    var parallelism = ProcessInfo.processInfo.activeProcessorCount

    func validate() throws {
        guard DevnetProfile.named(profile) != nil else {
            throw ValidationError("unknown profile '\(profile)': use demo, bench or tiny")
        }
        guard batch >= 1 && batch <= 100_000 else { throw ValidationError("--batch must be 1...100000") }
        guard parallelism >= 1 && parallelism <= 256 else { throw ValidationError("--parallelism must be 1...256") }
    }

    func run() async throws {
        guard let profile = DevnetProfile.named(profile) else { return }
        let start = ContinuousClock.now
        let generator = ChainGenerator(profile: profile, seed: seed)
        let genesis = generator.genesis
        try genesis.verify()
        if let out {
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let path = (out as NSString).appendingPathComponent("genesis.bcs")
            guard FileManager.default.createFile(atPath: path, contents: Data(genesis.bcsBytes)) else {
                throw CLIError(description: "cannot write \(path)")
            }
            print("wrote \(path) (\(genesis.bcsBytes.count) bytes)")
        }
        print("generating and verifying the \(profile.name) chain: \(profile.validators) validators, \(profile.epochs) epochs, \(profile.checkpoints) checkpoints of \(profile.transactionsPerCheckpoint) transactions (seed \(seed))")

        var live = LiveObjectSet()
        try live.apply(genesis.contents)
        var tip = VerifiedTip(summary: genesis.checkpoint.summary)
        var committees = [genesis.committee]
        var pending: [GeneratedCheckpoint] = []
        var transactions = 1
        var bytes = genesis.contents.bcsBytes.count
        var quorumChecks = 1  // the genesis

        func verifyPending() throws {
            guard !pending.isEmpty else { return }
            let known = committees
            tip = try ChainVerifier.verifySummaryBatch(
                SummaryBatch(lastCertifiedOf: pending.map(\.certified)), after: tip,
                committee: { $0 < known.count ? known[Int($0)] : nil })
            quorumChecks += 1
            for cp in pending {
                let summary = cp.certified.summary
                let count = summary.networkTotalTransactions - UInt64(transactions)
                try BlockVerifier.verify(cp.data, summary: summary, entryCount: count, verifyUserSignatures: verifyUserSignatures)
                try live.apply(cp.data)
                if let end = summary.endOfEpoch {
                    try live.verify(endOfEpoch: end, at: summary.sequenceNumber)
                    print("  epoch \(summary.epoch) ends at checkpoint \(summary.sequenceNumber): state root \(end.stateRoot.short)… over \(end.liveObjectCount) objects verified")
                }
                transactions += cp.data.entries.count
                bytes += cp.data.bcsBytes.count
            }
            pending.removeAll(keepingCapacity: true)
        }

        while !generator.isFinished {
            let produced = await generator.next(count: 100, parallelism: parallelism)
            for cp in produced {
                pending.append(cp)
                if cp.certified.summary.endOfEpoch != nil {
                    // The epoch chain must cover this epoch end before the batch that holds it.
                    committees = try ChainVerifier.verifyEpochChain(
                        genesis: genesis.committee, endOfEpochSummaries: generator.endOfEpochSummaries)
                }
                if pending.count >= batch { try verifyPending() }
            }
        }
        try verifyPending()

        let elapsed = ContinuousClock.now - start
        let secs = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        print("""
            verified \(tip.summary.sequenceNumber + 1) checkpoints, \(transactions) transactions, \
            \(String(format: "%.1f", Double(bytes) / 1e6)) MB of checkpoint data in \(String(format: "%.1f", secs)) s \
            (\(String(format: "%.0f", Double(tip.summary.sequenceNumber + 1) / secs)) checkpoints/s)
              chain id        \(genesis.chainID.hex)
              epochs          \(committees.count - 1) ended; \(quorumChecks) batch quorum checks for \(tip.summary.sequenceNumber + 1) summaries
              live objects    \(live.count)
              state root      \(live.stateRoot().hex)
              tip             checkpoint \(tip.summary.sequenceNumber), digest \(tip.digest.hex)
            """)
    }
}
