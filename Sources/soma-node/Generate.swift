import ArgumentParser
import Foundation
import SomaCore
import SomaDevnet
import SomaStore

struct Generate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate a deterministic devnet chain, verify it as a fresh node would, and store it.",
        discussion: """
            Generates the genesis and every checkpoint of the profile and checks the genesis, the \
            epoch chain, every summary batch (one quorum check per batch) and every block against \
            its certified content digest. With --out DIR it writes DIR/genesis.bcs and commits the \
            chain to the store in DIR/db, executing it and checking every epoch's state root; a \
            store already holding part of the chain is resumed from its watermarks. Without --out \
            the effects are replayed in memory instead.
            """)

    @Option(help: "Profile: demo, bench or tiny.")
    var profile = "demo"
    @Option(help: "Seed of the deterministic generator.")
    var seed: UInt64 = 1
    @Option(help: "Data directory to write the genesis and the store into.")
    var out: String?
    @Option(help: "Store mode: archive or pruned.")
    var mode = "archive"
    @Option(help: "Epochs of history a pruned store keeps.")
    var retainEpochs: UInt64 = 2
    @Option(help: "Epoch snapshots to keep (0: none).")
    var retainSnapshots: UInt64 = 2
    @Option(help: "Override the profile's number of checkpoints.")
    var checkpoints: Int?
    @Option(help: "Override the profile's number of epochs.")
    var epochs: Int?
    @Option(help: "Override the profile's transactions per checkpoint.")
    var transactions: Int?
    @Option(help: "Override the profile's number of validators.")
    var validators: Int?
    @Option(help: "Summaries per verified batch.")
    var batch = 1_000
    @Flag(help: "Also re-check every user signature.")
    var verifyUserSignatures = false
    @Option(help: "Parallel tasks (default: the number of cores).")
    var parallelism = ProcessInfo.processInfo.activeProcessorCount

    func resolvedProfile() throws -> DevnetProfile {
        guard var p = DevnetProfile.named(profile) else {
            throw ValidationError("unknown profile '\(profile)': use demo, bench or tiny")
        }
        if let checkpoints {
            guard checkpoints >= 2 && checkpoints <= 10_000_000 else { throw ValidationError("--checkpoints must be 2...10000000") }
            p.checkpoints = checkpoints
        }
        if let epochs {
            guard epochs >= 1 && epochs < p.checkpoints else { throw ValidationError("--epochs must be 1...checkpoints-1") }
            p.epochs = epochs
        }
        if let transactions {
            guard transactions >= 0 && transactions <= 100_000 else { throw ValidationError("--transactions must be 0...100000") }
            p.transactionsPerCheckpoint = transactions
        }
        if let validators {
            guard validators >= 1 && validators <= Committee.maxMembers else { throw ValidationError("--validators must be 1...1024") }
            p.validators = validators
        }
        guard p.epochs < p.checkpoints else { throw ValidationError("the chain needs more checkpoints than epochs") }
        return p
    }

    func validate() throws {
        _ = try resolvedProfile()
        guard StoreMode(rawValue: mode) != nil else { throw ValidationError("--mode must be archive or pruned") }
        guard batch >= 1 && batch <= 100_000 else { throw ValidationError("--batch must be 1...100000") }
        guard parallelism >= 1 && parallelism <= 256 else { throw ValidationError("--parallelism must be 1...256") }
        guard retainEpochs >= 1 else { throw ValidationError("--retain-epochs must be at least 1") }
    }

    func run() async throws {
        let profile = try resolvedProfile()
        let start = ContinuousClock.now
        let generator = ChainGenerator(profile: profile, seed: seed)
        let genesis = generator.genesis
        try genesis.verify()
        print("chain: \(profile.name), \(profile.validators) validators, \(profile.epochs) epochs, \(profile.checkpoints) checkpoints of \(profile.transactionsPerCheckpoint) transactions, seed \(seed)")

        var store: NodeStore? = nil
        var resumeAfter: UInt64 = 0
        if let out {
            let dir = DataDirectory(root: out)
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let bytes = Data(genesis.bcsBytes)
            if let existing = FileManager.default.contents(atPath: dir.genesis) {
                guard existing == bytes else { throw CLIError("\(dir.genesis) holds another chain's genesis") }
            } else {
                let tmp = dir.genesis + ".tmp"
                guard FileManager.default.createFile(atPath: tmp, contents: bytes) else { throw CLIError("cannot write \(tmp)") }
                guard rename(tmp, dir.genesis) == 0 else { throw CLIError("cannot rename \(tmp) to \(dir.genesis)") }
            }
            var config = StoreConfiguration()
            config.mode = StoreMode(rawValue: mode) ?? .archive
            config.retainEpochs = retainEpochs
            config.retainSnapshots = retainSnapshots
            let s = try await NodeStore.open(path: dir.database, configuration: config)
            store = s
            try await s.initialize(genesis: genesis)
            if let executed = try await s.executePending(), let synced = try await s.watermark(.highestSynced) {
                resumeAfter = synced.seq
                if synced.seq > 0 { print("resuming: checkpoints up to \(synced.seq) are stored, executed up to \(executed)") }
            }
        }
        do {
            try await generateAndVerify(generator, store: store, resumeAfter: resumeAfter, start: start)
        } catch {
            await store?.close()
            throw error
        }
        await store?.close()
    }

    func generateAndVerify(_ generator: ChainGenerator, store: NodeStore?, resumeAfter: UInt64, start: ContinuousClock.Instant) async throws {
        let genesis = generator.genesis
        var tip: VerifiedTip
        if let store, resumeAfter > 0 {
            guard let stored = try await store.summary(at: resumeAfter) else { throw CLIError("stored checkpoint \(resumeAfter) is missing") }
            tip = VerifiedTip(summary: stored.summary)
        } else {
            tip = VerifiedTip(summary: genesis.checkpoint.summary)
        }
        var live = LiveObjectSet()
        if store == nil { try live.apply(genesis.contents) }
        var committees = [genesis.committee]
        var pending: [GeneratedCheckpoint] = []
        var transactions = 0
        var rawBytes = 0
        var storedBytes = 0
        var quorumChecks = 0
        var lastReport = ContinuousClock.now
        let userSignatures = verifyUserSignatures
        let parallelism = self.parallelism

        func flush() async throws {
            guard !pending.isEmpty else { return }
            let known = committees
            tip = try ChainVerifier.verifySummaryBatch(
                SummaryBatch(lastCertifiedOf: pending.map(\.certified)), after: tip,
                committee: { $0 < known.count ? known[Int($0)] : nil })
            quorumChecks += 1
            // Blocks verify on their own against their verified summaries: in parallel, and the
            // blocks are compressed once, there.
            var previousTotal = pending[0].certified.summary.networkTotalTransactions - UInt64(pending[0].data.entries.count)
            var jobs: [(GeneratedCheckpoint, UInt64)] = []
            for cp in pending {
                let count = cp.certified.summary.networkTotalTransactions - previousTotal
                jobs.append((cp, count))
                previousTotal = cp.certified.summary.networkTotalTransactions
            }
            let verified = try await parallelMap(jobs, parallelism: parallelism) { cp, count in
                try BlockVerifier.verify(cp.data, summary: cp.certified.summary, entryCount: count, verifyUserSignatures: userSignatures)
                return VerifiedCheckpoint(certified: cp.certified, data: cp.data)
            }
            for cp in verified {
                transactions += cp.data.entries.count
                rawBytes += BCS.encode(cp.data, capacity: 1 << 16).count
                storedBytes += cp.storedBytes
            }
            if let store {
                try await store.commit(verified)
            } else {
                for cp in verified {
                    try live.apply(cp.data)
                    if let end = cp.certified.summary.endOfEpoch { try live.verify(endOfEpoch: end, at: cp.certified.summary.sequenceNumber) }
                }
            }
            pending.removeAll(keepingCapacity: true)
            if elapsed(since: lastReport) >= 2 {
                lastReport = .now
                let secs = elapsed(since: start)
                print("  checkpoint \(tip.summary.sequenceNumber) of \(generator.profile.checkpoints - 1): \(format(Double(transactions) / secs, 0)) tx/s, \(format(Double(rawBytes) / secs / 1e6)) MB/s")
            }
        }

        while !generator.isFinished {
            let produced = await generator.next(count: 100, parallelism: parallelism)
            for cp in produced {
                let seq = cp.certified.summary.sequenceNumber
                if cp.certified.summary.endOfEpoch != nil {
                    committees = try ChainVerifier.verifyEpochChain(
                        genesis: genesis.committee, endOfEpochSummaries: generator.endOfEpochSummaries)
                    if seq > resumeAfter {
                        print("  epoch \(cp.certified.summary.epoch) ends at checkpoint \(seq): state root \(cp.certified.summary.endOfEpoch!.stateRoot.short)… over \(cp.certified.summary.endOfEpoch!.liveObjectCount) objects")
                    }
                }
                guard seq > resumeAfter else { continue }
                pending.append(cp)
                if pending.count >= batch { try await flush() }
            }
            if !pending.isEmpty && pending.count >= min(batch, 100) { try await flush() }
        }
        try await flush()

        let secs = elapsed(since: start)
        let count = tip.summary.sequenceNumber + 1
        print("verified \(count) checkpoints (\(transactions) transactions, \(format(Double(rawBytes) / 1e6)) MB of checkpoint data, \(format(Double(storedBytes) / 1e6)) MB of LZ4 blocks) in \(format(secs)) s; \(quorumChecks) batch quorum checks")
        print("  chain id      \(genesis.chainID.hex)")
        print("  tip           checkpoint \(tip.summary.sequenceNumber), digest \(tip.digest.hex)")
        if let store {
            let marks = try await store.watermarks()
            let records = try await store.epochs()
            if let last = records.last(where: { $0.stateRoot != nil }), let root = last.stateRoot {
                print("  state root    \(root.hex) (epoch \(last.epoch), \(last.liveObjectCount ?? 0) live objects, executed and checked)")
            }
            print("  watermarks    " + Watermark.allCases.map { "\($0.rawValue) \(marks[$0]?.seq ?? 0)" }.joined(separator: ", "))
            print("  store         \(out ?? "")/db (\(mode))")
        } else {
            print("  state root    \(live.stateRoot().hex) (\(live.count) live objects)")
        }
    }
}
