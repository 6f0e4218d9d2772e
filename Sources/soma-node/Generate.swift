import ArgumentParser
import Foundation
import SomaCore
import SomaDevnet
import SomaNode
import SomaStore
import SomaSync

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

    @OptionGroup var chain: ProfileOptions
    @Option(help: "Data directory to write the genesis and the store into.")
    var out: String?
    @OptionGroup var storeOptions: StoreOptions
    @Option(help: "Stop after this checkpoint (a later run, or `devnet run`, goes on from there).")
    var until: UInt64?
    @Flag(help: "Print the outcome as one JSON document (progress goes to standard error).")
    var json = false
    var parallelism: Int { chain.parallelism }

    func run() async throws {
        let profile = try chain.resolvedProfile()
        let start = ContinuousClock.now
        let generator = ChainGenerator(profile: profile, seed: chain.seed)
        let genesis = generator.genesis
        try genesis.verify()
        let console = Console(json: json)
        console.say(chain.describe(profile))

        var store: NodeStore? = nil
        if let out {
            let dir = DataDirectory(root: out)
            try writeGenesis(genesis, to: dir)
            store = try await NodeStore.open(path: dir.database, configuration: storeOptions.configuration)
        }
        do {
            let importer = try await CheckpointImporter(
                genesis: genesis, store: store, batchSize: storeOptions.batch, parallelism: parallelism,
                userSignatures: storeOptions.verifyUserSignatures)
            if importer.resumeAfter > 0 { console.say("resuming after checkpoint \(importer.resumeAfter), already stored") }
            let resumedAfter = importer.resumeAfter
            let pruned = try await withBackgroundPruning(store, console: console) {
                var lastReport = ContinuousClock.now
                let last = until ?? UInt64(profile.checkpoints - 1)
                while !generator.isFinished && generator.nextSequence <= last {
                    // --until is any UInt64: no `+ 1` on the difference (nextSequence <= last here).
                    let count = Int(min(99, last - generator.nextSequence)) + 1
                    for cp in await generator.next(count: count, parallelism: parallelism) {
                        try await importer.add(SourceCheckpoint(certified: cp.certified, data: cp.data))
                    }
                    if elapsed(since: lastReport) >= 2 {
                        lastReport = .now
                        reportProgress(importer, total: UInt64(profile.checkpoints - 1), start: start, console: console)
                    }
                }
                try await importer.flush()
            }
            var document = try await printSummary(
                importer, store: store, start: start, location: out.map { "\($0)/db" }, resumedAfter: resumedAfter, prunedEpochs: pruned,
                console: console)
            document["profile"] = [
                "name": profile.name, "seed": chain.seed, "validators": profile.validators, "epochs": profile.epochs,
                "checkpoints": profile.checkpoints, "transactionsPerCheckpoint": profile.transactionsPerCheckpoint,
            ] as [String: Any]
            if json { try console.emit(document) }
        } catch {
            await store?.close()
            throw error
        }
        await store?.close()
    }

}

/// How verified checkpoints are stored.
struct StoreOptions: ParsableArguments {
    @Option(help: "Store mode for a new store: archive or pruned.")
    var mode = "archive"
    @Option(help: "Epochs of history a pruned store keeps.")
    var retainEpochs: UInt64 = 2
    @Option(help: "Epoch snapshots to keep (0: none).")
    var retainSnapshots: UInt64 = 2
    @Option(help: "Summaries per verified batch (one quorum check each).")
    var batch = 1_000
    @Flag(help: "Also re-check every user signature.")
    var verifyUserSignatures = false
    @Option(help: "Objects per snapshot chunk (a power of two, 64...65536).")
    var snapshotChunkObjects = 4_096

    func validate() throws {
        guard StoreMode(rawValue: mode) != nil else { throw ValidationError("--mode must be archive or pruned") }
        guard (64...65_536).contains(snapshotChunkObjects), snapshotChunkObjects & (snapshotChunkObjects - 1) == 0 else {
            throw ValidationError("--snapshot-chunk-objects must be a power of two, 64...65536")
        }
        guard batch >= 1 && batch <= 100_000 else { throw ValidationError("--batch must be 1...100000") }
        guard retainEpochs >= 1 else { throw ValidationError("--retain-epochs must be at least 1") }
    }

    var configuration: StoreConfiguration {
        var config = StoreConfiguration()
        config.mode = StoreMode(rawValue: mode) ?? .archive
        config.retainEpochs = retainEpochs
        config.retainSnapshots = retainSnapshots
        config.snapshotChunkSize = snapshotChunkObjects
        return config
    }
}

/// Runs `body` with the store's background pruner beside it (pruned stores), then prunes once
/// more so that the store ends within its retention.
/// - Returns: the epochs the last prune removed.
func withBackgroundPruning(_ store: NodeStore?, console: Console, _ body: () async throws -> Void) async throws -> [UInt64] {
    guard let store, store.configuration.mode == .pruned else {
        try await body()
        return []
    }
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await store.runPruning(every: .milliseconds(500)) }
        do {
            try await body()
        } catch {
            group.cancelAll()
            throw error
        }
        group.cancelAll()
        try await group.waitForAll()
    }
    let report = try await store.prune()
    if !report.epochs.isEmpty { console.say("  pruned epochs \(report.epochs.map(String.init).joined(separator: ", "))") }
    return report.epochs
}

/// Writes `genesis.bcs` into a data directory (atomically), or checks the one there.
func writeGenesis(_ genesis: Genesis, to dir: DataDirectory) throws {
    try FileManager.default.createDirectory(atPath: dir.root, withIntermediateDirectories: true)
    let bytes = Data(genesis.bcsBytes)
    if let existing = FileManager.default.contents(atPath: dir.genesis) {
        guard existing == bytes else {
            let held = (try? Genesis(bcsBytes: Array(existing)))?.chainID.hex ?? "unreadable"
            throw CLIError("\(dir.genesis) holds another chain's genesis (chain \(held.prefix(16)), not \(genesis.chainID.hex.prefix(16))): a data directory keeps one chain; give another --data directory, or the genesis of the chain it holds")
        }
        return
    }
    let tmp = dir.genesis + ".tmp"
    guard FileManager.default.createFile(atPath: tmp, contents: bytes) else { throw CLIError("cannot write \(tmp): \(fileProblem(tmp, writing: true))") }
    guard rename(tmp, dir.genesis) == 0 else { throw CLIError("cannot rename \(tmp) to \(dir.genesis): \(String(cString: strerror(errno)))") }
}

func reportProgress(_ importer: CheckpointImporter, total: UInt64, start: ContinuousClock.Instant, console: Console) {
    let secs = elapsed(since: start)
    console.say("  checkpoint \(importer.tip.summary.sequenceNumber) of \(total): \(format(Double(importer.checkpoints) / secs, 0)) checkpoints/s, \(format(Double(importer.transactions) / secs, 0)) tx/s, \(format(Double(importer.rawBytes) / secs / 1e6)) MB/s")
}

/// Says what an import did, and returns it as the command's JSON document.
func printSummary(
    _ importer: CheckpointImporter, store: NodeStore?, start: ContinuousClock.Instant, location: String?, resumedAfter: UInt64,
    prunedEpochs: [UInt64], console: Console
) async throws -> [String: Any] {
    let secs = elapsed(since: start)
    let tip = importer.tip.summary.sequenceNumber
    let first = tip + 1 - UInt64(importer.checkpoints)
    if importer.checkpoints == 0 {
        console.say("nothing new: the store already holds every checkpoint up to \(tip)")
    } else {
        console.say("verified and \(store == nil ? "replayed" : "stored") checkpoints \(first)...\(tip): \(importer.transactions) transactions, \(format(Double(importer.rawBytes) / 1e6)) MB of checkpoint data (\(format(Double(importer.storedBytes) / 1e6)) MB as LZ4 blocks) in \(format(secs)) s, \(format(Double(importer.checkpoints) / secs, 0)) checkpoints/s; \(importer.quorumChecks) batch quorum checks")
    }
    console.say("  chain id      \(importer.genesis.chainID.hex)")
    console.say("  tip           checkpoint \(tip), digest \(importer.tip.digest.hex)")
    console.say("  epochs        \(importer.committees.count - 1) ended, each state root recomputed and matched")
    var document: [String: Any] = [
        "chainId": importer.genesis.chainID.hex, "resumedAfter": resumedAfter,
        "checkpoints": importer.checkpoints, "first": importer.checkpoints == 0 ? NSNull() : first as Any,
        "tip": tip, "tipDigest": importer.tip.digest.hex,
        "transactions": importer.transactions, "rawBytes": importer.rawBytes, "storedBytes": importer.storedBytes,
        "quorumChecks": importer.quorumChecks, "epochsEnded": importer.committees.count - 1, "seconds": jsonSeconds(secs),
        "prunedEpochs": prunedEpochs, "stored": store != nil,
    ]
    if let store {
        let marks = try await store.watermarks()
        let records = try await store.epochs()
        document["stateRoot"] = NSNull()
        if let last = records.last(where: { $0.stateRoot != nil }), let root = last.stateRoot {
            console.say("  state root    \(root.hex) (epoch \(last.epoch), \(last.liveObjectCount ?? 0) live objects)")
            document["stateRoot"] = ["epoch": last.epoch, "root": root.hex, "liveObjects": last.liveObjectCount ?? NSNull()] as [String: Any]
        }
        console.say("  watermarks    " + Watermark.allCases.map { "\($0.rawValue) \(marks[$0]?.seq ?? 0)" }.joined(separator: ", "))
        document["watermarks"] = Dictionary(uniqueKeysWithValues: Watermark.allCases.map { ($0.rawValue, marks[$0]?.seq ?? 0) })
        if let location { console.say("  store         \(location) (\(store.configuration.mode.rawValue))") }
        document["store"] = ["path": location ?? NSNull(), "mode": store.configuration.mode.rawValue] as [String: Any]
    } else {
        let root = importer.live.stateRoot().hex
        console.say("  state root    \(root) (\(importer.live.count) live objects)")
        document["stateRoot"] = ["epoch": importer.committees.count - 1, "root": root, "liveObjects": importer.live.count] as [String: Any]
    }
    return document
}

/// Which devnet chain to generate.
struct ProfileOptions: ParsableArguments {
    @Option(help: "Profile: demo, bench or tiny.")
    var profile = "demo"
    @Option(help: "Seed of the deterministic generator.")
    var seed: UInt64 = 1
    @Option(help: "Override the profile's number of checkpoints.")
    var checkpoints: Int?
    @Option(help: "Override the profile's number of epochs.")
    var epochs: Int?
    @Option(help: "Override the profile's transactions per checkpoint.")
    var transactions: Int?
    @Option(help: "Override the profile's number of validators.")
    var validators: Int?
    @Option(help: "Parallel tasks (default: the number of cores).")
    var parallelism = ProcessInfo.processInfo.activeProcessorCount

    func validate() throws {
        _ = try resolvedProfile()
        guard parallelism >= 1 && parallelism <= 256 else { throw ValidationError("--parallelism must be 1...256") }
    }

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


    func describe(_ p: DevnetProfile) -> String {
        "chain: \(p.name), \(p.validators) validators, \(p.epochs) epochs, \(p.checkpoints) checkpoints of \(p.transactionsPerCheckpoint) transactions, seed \(seed)"
    }
}

struct Export: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate a devnet chain into a chain file (genesis, certified summaries, LZ4 blocks) for `soma-node import`.")

    @OptionGroup var chain: ProfileOptions
    @Option(help: "The chain file to write.")
    var file: String
    @Flag(help: "Print the outcome as one JSON document.")
    var json = false

    func run() async throws {
        let profile = try chain.resolvedProfile()
        let start = ContinuousClock.now
        let generator = ChainGenerator(profile: profile, seed: chain.seed)
        let console = Console(json: json)
        console.say(chain.describe(profile))
        let writer = try ChainFileWriter(path: file, genesis: generator.genesis)
        var count = 0
        var bytes = 0
        while !generator.isFinished {
            let batch = await generator.next(count: 100, parallelism: chain.parallelism)
            let records = try await parallelMap(batch, parallelism: chain.parallelism) { cp in
                let v = try CheckpointVerifier.verify(contents: cp.data, of: cp.certified, previousTotal: cp.previousTotal)
                return ChainRecord(certified: v.certified, frames: v.frames, proofs: v.proofs)
            }
            for r in records {
                try writer.write(r)
                bytes += r.frames.reduce(0) { $0 + $1.count }
            }
            count += records.count
        }
        try writer.close()
        let secs = elapsed(since: start)
        console.say("wrote \(file): genesis and \(count) checkpoints, \(format(Double(bytes) / 1e6)) MB of LZ4 blocks, in \(format(secs)) s")
        if json {
            try console.emit([
                "file": file, "chainId": generator.genesis.chainID.hex, "checkpoints": count, "blockBytes": bytes, "seconds": jsonSeconds(secs),
            ])
        }
    }
}

struct Import: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Verify the checkpoints of a chain file and commit them to a store, resuming from its watermarks.")

    @Option(help: "The chain file to read.")
    var file: String
    @Option(help: "The node's data directory (genesis.bcs and db/ are created if missing).")
    var data: String
    @OptionGroup var storeOptions: StoreOptions
    @Option(help: "Parallel verification tasks (default: the number of cores).")
    var parallelism = ProcessInfo.processInfo.activeProcessorCount
    @Flag(help: "Print the outcome as one JSON document (progress goes to standard error).")
    var json = false

    func validate() throws {
        guard parallelism >= 1 && parallelism <= 256 else { throw ValidationError("--parallelism must be 1...256") }
    }

    func run() async throws {
        let start = ContinuousClock.now
        let console = Console(json: json)
        let reader = try ChainFileReader(path: file)
        let dir = DataDirectory(root: data)
        try writeGenesis(reader.genesis, to: dir)
        let store = try await NodeStore.open(path: dir.database, configuration: storeOptions.configuration)
        do {
            let importer = try await CheckpointImporter(
                genesis: reader.genesis, store: store, batchSize: storeOptions.batch, parallelism: parallelism,
                userSignatures: storeOptions.verifyUserSignatures)
            if importer.resumeAfter > 0 { console.say("resuming after checkpoint \(importer.resumeAfter), already stored") }
            let resumedAfter = importer.resumeAfter
            let pruned = try await withBackgroundPruning(store, console: console) {
                var lastReport = ContinuousClock.now
                while let record = try reader.next() {
                    try await importer.add(SourceCheckpoint(certified: record.certified, frames: record.frames, proofs: record.proofs))
                    if elapsed(since: lastReport) >= 2 {
                        lastReport = .now
                        reportProgress(importer, total: 0, start: start, console: console)
                    }
                }
                try await importer.flush()
            }
            var document = try await printSummary(
                importer, store: store, start: start, location: dir.database, resumedAfter: resumedAfter, prunedEpochs: pruned, console: console)
            document["file"] = file
            if json { try console.emit(document) }
        } catch {
            await store.close()
            throw error
        }
        await store.close()
    }
}
