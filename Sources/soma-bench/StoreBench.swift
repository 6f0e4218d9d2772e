import ArgumentParser
import Foundation
import SomaCore
import SomaDevnet
import SomaStore

/// Writes the bench chain into a chain file (run as a child process so that the generator's
/// memory is not counted in the ingest's peak RSS).
struct ExportChain: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "export-chain", abstract: "Write a devnet chain file.")

    @Option(help: "Output file.") var file: String
    @Option(help: "Checkpoints of the bench profile.") var checkpoints = DevnetProfile.bench.checkpoints
    @Option(help: "Seed.") var seed: UInt64 = 1

    mutating func run() async throws {
        var profile = DevnetProfile.bench
        profile.checkpoints = checkpoints
        profile.epochs = min(profile.epochs, max(1, checkpoints / 2))
        let generator = ChainGenerator(profile: profile, seed: seed)
        let writer = try ChainFileWriter(path: file + ".tmp", genesis: generator.genesis)
        let cores = ProcessInfo.processInfo.activeProcessorCount
        while !generator.isFinished {
            let batch = await generator.next(count: 100, parallelism: cores)
            let records = try await withThrowingTaskGroup(of: (Int, ChainRecord).self) { group in
                for (i, cp) in batch.enumerated() {
                    group.addTask {
                        // The blocks are built by the verifier, from contents it checked.
                        let v = try CheckpointVerifier.verify(contents: cp.data, of: cp.certified, previousTotal: cp.previousTotal)
                        return (i, ChainRecord(certified: v.certified, frames: v.frames, proofs: v.proofs))
                    }
                }
                var out = [ChainRecord?](repeating: nil, count: batch.count)
                for try await (i, r) in group { out[i] = r }
                return out.compactMap { $0 }
            }
            for r in records { try writer.write(r) }
        }
        try writer.close()
        guard rename(file + ".tmp", file) == 0 else { throw ValidationError("cannot rename \(file).tmp") }
    }
}

struct Store: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "SomaStore: ingest (commit + execute) of the bench chain against db_bench fillseq, block point reads, pruning.")

    @Option(help: "Checkpoints of the bench profile (default: all of it).")
    var checkpoints = DevnetProfile.bench.checkpoints
    @Option(help: "Where to keep the generated chain file between runs.")
    var cache = ".build-bench"
    @Option(help: "Scratch directory for the stores (default: a temporary directory).")
    var scratch: String?
    @Option(help: "Random block reads to time.")
    var reads = 20_000
    @Option(help: "Epoch snapshots the stores keep during the ingests (0: build none; the snapshot of the last epoch is timed on its own).")
    var snapshots: UInt64 = 0
    @Option(help: "Only time the snapshot build of the last executed epoch end of the store at this path (rebuilt in place), then stop.")
    var snapshotOf: String?
    @Flag(help: "With --snapshot-of: read every object from its block instead of reusing the previous epoch's snapshot.")
    var fromBlocks = false

    mutating func run() async throws {
        if let snapshotOf {
            try await snapshot(path: snapshotOf)
            return
        }
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        let chain = (cache as NSString).appendingPathComponent("bench-\(checkpoints).chain")
        if !FileManager.default.fileExists(atPath: chain) {
            print("generating the bench chain into \(chain) (once; later runs reuse it)")
            let p = Process()
            p.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
            p.arguments = ["export-chain", "--file", chain, "--checkpoints", "\(checkpoints)"]
            try p.run()
            p.waitUntilExit()
            guard p.terminationStatus == 0 else { throw ValidationError("export-chain failed") }
        }
        let root = scratch ?? (NSTemporaryDirectory() + "soma-bench-store-\(ProcessInfo.processInfo.processIdentifier)")
        try? FileManager.default.removeItem(atPath: root)
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        print("soma-bench store: \(ProcessInfo.processInfo.activeProcessorCount) cores, chain \(chain)")

        // 1. Ingest, archive mode, default configuration (snapshots of the last 2 epochs built at each end).
        print("\nIngest (commit + execute, archive mode, snapshots of the last \(snapshots) epochs), from the chain file")
        let archive = try await ingest(chain: chain, path: root + "/archive", mode: .archive, snapshots: snapshots, prune: false)
        archive.print()

        // 2. The baselines: db_bench fillseq writing the same bytes with the same value size.
        let ops = archive.writeOperations
        let mean = max(1, archive.writeBytes / max(1, ops) - 16)
        print("\nBaseline A: db_bench fillseq, the same writes: \(ops) values of \(mean) bytes (+16-byte keys) = the \(fmt(Double(archive.writeBytes) / 1e6)) MB soma-node put into its batches")
        let sameWrites = try dbBench(path: root + "/dbbench-a", count: ops, valueSize: mean)
        line("db_bench fillseq", "\(fmt(sameWrites.mbps)) MB/s", "\(fmt(sameWrites.seconds)) s")
        // What still goes through batches (most of the data now goes to segments and SST files):
        // a figure to watch, not the goal, which is baseline B's.
        line("ratio soma-node ingest / db_bench (wall time)", fmt(sameWrites.seconds / archive.seconds, 2))
        try? FileManager.default.removeItem(atPath: root + "/dbbench-a")
        print("\nBaseline B: db_bench fillseq, one value per checkpoint: \(archive.checkpoints) values of \(archive.rawBytes / archive.checkpoints) bytes (the raw checkpoint data)")
        let perCheckpoint = try dbBench(path: root + "/dbbench-b", count: archive.checkpoints, valueSize: archive.rawBytes / archive.checkpoints)
        line("db_bench fillseq", "\(fmt(perCheckpoint.mbps)) MB/s", "\(fmt(perCheckpoint.seconds)) s")
        line("ratio soma-node ingest / db_bench (raw MB/s)", fmt(archive.rawMBps / perCheckpoint.mbps, 2), "goal >= 1.0")
        try? FileManager.default.removeItem(atPath: root + "/dbbench-b")

        // 3. One epoch snapshot of the final live set, on its own.
        print("\nSnapshot of the last epoch's live set (chunks of 4,096 objects, each checked against its live digest)")
        try await snapshot(path: root + "/archive")

        // 4. Point reads of blocks through the store.
        print("\nPoint reads of blocks (NodeStore.blockFrames, 4 concurrent readers, random checkpoints)")
        try await pointReads(path: root + "/archive", checkpoints: archive.checkpoints)

        try? FileManager.default.removeItem(atPath: root + "/archive")
        try? FileManager.default.removeItem(atPath: root + "/dbbench")

        // 5. Pruned mode with pruning running beside the ingest.
        print("\nIngest, pruned mode (retain 2 epochs), pruning in the background")
        let pruned = try await ingest(chain: chain, path: root + "/pruned", mode: .pruned, snapshots: snapshots, prune: true)
        pruned.print()
        print("  peak RSS of this process: \(fmt(peakRSSMiB(), 0)) MiB (goal <= 1024)")
    }

    struct IngestResult {
        var checkpoints = 0
        var transactions = 0
        var rawBytes = 0
        var storedBytes: UInt64 = 0
        var seconds = 0.0
        var commitSeconds = 0.0
        var pruneNote = ""
        var stall = ""
        var writeOperations = 0
        var writeBytes = 0
        var rawMBps: Double { Double(rawBytes) / seconds / 1e6 }

        func print() {
            line("checkpoints", "\(fmt(Double(checkpoints) / seconds)) /s", "\(checkpoints) in \(fmt(seconds)) s")
            line("transactions", "\(fmt(Double(transactions) / seconds, 0)) /s")
            line("raw checkpoint data", "\(fmt(rawMBps)) MB/s", "\(fmt(Double(rawBytes) / 1e6)) MB")
            line("time inside NodeStore.commit", "\(fmt(commitSeconds)) s", "decoding the file overlaps it")
            line("written to RocksDB", "\(writeOperations) puts/deletes, \(fmt(Double(writeBytes) / 1e6)) MB of keys and values")
            line("store size on disk", "\(fmt(Double(storedBytes) / 1e6)) MB")
            if !stall.isEmpty { line("RocksDB write stalls", stall) }
            if !pruneNote.isEmpty { line("pruning", pruneNote) }
        }
    }

    /// Reads, decodes (2 tasks) and commits the chain file, overlapping decoding with commits.
    func ingest(chain: String, path: String, mode: StoreMode, snapshots: UInt64, prune: Bool) async throws -> IngestResult {
        let reader = try ChainFileReader(path: chain)
        var config = StoreConfiguration()
        config.mode = mode
        config.retainSnapshots = snapshots
        let store = try await NodeStore.open(path: path, configuration: config)
        try await store.initialize(genesis: reader.genesis)
        var result = IngestResult()

        /// The records verified against their summaries (in parallel), as the store takes them.
        @Sendable func decode(_ records: [ChainRecord], after previousTotal: UInt64) async throws -> [VerifiedCheckpoint] {
            var totals: [UInt64] = []
            var total = previousTotal
            for r in records {
                totals.append(total)
                total = r.certified.summary.networkTotalTransactions
            }
            return try await withThrowingTaskGroup(of: (Int, VerifiedCheckpoint).self) { group in
                for (i, r) in records.enumerated() {
                    let before = totals[i]
                    group.addTask {
                        (i, try CheckpointVerifier.verify(blocks: r.frames, proofs: r.proofs, of: r.certified, previousTotal: before, limit: 256 << 20))
                    }
                }
                var out = [VerifiedCheckpoint?](repeating: nil, count: records.count)
                for try await (i, v) in group { out[i] = v }
                return out.compactMap { $0 }
            }
        }
        func readChunk() throws -> [ChainRecord] {
            var out: [ChainRecord] = []
            while out.count < 64, let r = try reader.next() { out.append(r) }
            return out
        }

        let pruning: Task<String, any Error>? = prune ? Task {
            var passes = 0
            var pruned = 0
            while !Task.isCancelled {
                let r = try await store.prune()
                passes += 1
                pruned += r.epochs.count
                try? await Task.sleep(for: .milliseconds(200))
            }
            return "\(pruned) epochs pruned in \(passes) passes"
        } : nil

        let start = ContinuousClock.now
        var current = try await decode(try readChunk(), after: reader.genesis.checkpoint.summary.networkTotalTransactions)
        while !current.isEmpty {
            let next = try readChunk()
            let after = current[current.count - 1].certified.summary.networkTotalTransactions
            async let decoding = decode(next, after: after)
            let commitStart = ContinuousClock.now
            // As `soma-node import` commits (CheckpointImporter): groups of 64 go in bulk.
            try await store.commit(current, bulk: current.count >= 64)
            let d = ContinuousClock.now - commitStart
            result.commitSeconds += Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
            for v in current {
                result.checkpoints += 1
                result.transactions += v.data.entries.count
                result.rawBytes += v.rawBytes
            }
            current = try await decoding
        }
        // The last epoch end's snapshot build runs beside the commits: part of the ingest.
        try await store.finishSnapshotBuild()
        let d = ContinuousClock.now - start
        result.seconds = Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
        if let pruning {
            pruning.cancel()
            let note = try await pruning.value
            let final = try await store.prune()
            let lowest = try await store.watermark(.lowestAvailable)?.seq ?? 0
            let epochs = try await store.epochs()
            let firstKept = epochs.first { $0.firstCheckpoint == lowest }?.epoch
            result.pruneNote = "\(note) during the ingest, \(final.epochs.count) left at its end; lowestAvailable \(lowest) (start of epoch \(firstKept.map(String.init) ?? "?") of \(epochs.last?.epoch ?? 0))"
        }
        (result.writeOperations, result.writeBytes) = store.database.writeTotals
        if let stats = try store.database.property("rocksdb.stats", of: store.database.columnFamilies[0]),
           let stall = stats.split(separator: "\n").first(where: { $0.contains("Cumulative stall") }) {
            result.stall = String(stall).trimmingCharacters(in: .whitespaces)
        }
        result.storedBytes = directorySize(path)
        await store.close()
        return result
    }

    func snapshot(path: String) async throws {
        var config = StoreConfiguration()
        config.retainSnapshots = 2
        let store = try await NodeStore.open(path: path, configuration: config)
        guard let epoch = try await store.epochs().last(where: { $0.stateRoot != nil })?.epoch else {
            await store.close()
            return
        }
        let start = ContinuousClock.now
        let manifest = try await store.buildSnapshot(epoch: epoch, reusePrevious: !fromBlocks)
        let d = ContinuousClock.now - start
        let secs = Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
        var bytes = 0
        for i in manifest.chunkRoots.indices { bytes += try await store.snapshotChunk(epoch: epoch, index: UInt32(i))?.count ?? 0 }
        line("epoch \(epoch): objects", "\(manifest.objectCount) in \(manifest.chunkRoots.count) chunks, \(fmt(Double(bytes) / 1e6)) MB of LZ4")
        line("build time", "\(fmt(secs)) s", "\(fmt(Double(manifest.objectCount) / secs, 0)) objects/s")
        await store.close()
    }

    func pointReads(path: String, checkpoints: Int) async throws {
        let store = try await NodeStore.open(path: path)
        let total = reads
        var bytes = 0
        let start = ContinuousClock.now
        bytes = try await withThrowingTaskGroup(of: Int.self) { group in
            for worker in 0..<4 {
                group.addTask {
                    var rng = DeterministicRandom(seed: UInt64(worker + 1))
                    var b = 0
                    for _ in 0..<(total / 4) {
                        let seq = UInt64(1 + rng.below(checkpoints))
                        let frames = try await store.blockFrames(at: seq)
                        b += frames.reduce(0) { $0 + $1.count }
                    }
                    return b
                }
            }
            var sum = 0
            for try await b in group { sum += b }
            return sum
        }
        let d = ContinuousClock.now - start
        let secs = Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
        line("block reads", "\(fmt(Double(total) / secs, 0)) /s", "\(fmt(Double(bytes) / secs / 1e6)) MB/s of LZ4 blocks")
        await store.close()
    }

    /// Runs db_bench fillseq; returns its MB/s and its wall time.
    func dbBench(path: String, count: Int, valueSize: Int) throws -> (mbps: Double, seconds: Double) {
        guard let tool = ["/usr/bin/db_bench", "/usr/local/bin/db_bench"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw ValidationError("db_bench is not installed (Debian package rocksdb-tools)")
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = ["--benchmarks=fillseq", "--db=\(path)", "--num=\(count)", "--value_size=\(valueSize)",
                       "--compression_type=none", "--key_size=16", "--threads=1", "--write_buffer_size=67108864"]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        let start = ContinuousClock.now
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let d = ContinuousClock.now - start
        let text = String(decoding: data, as: UTF8.self)
        guard let l = text.split(separator: "\n").first(where: { $0.hasPrefix("fillseq") }),
              let mb = l.split(separator: ";").last?.split(separator: " ").first.flatMap({ Double($0) })
        else { throw ValidationError("cannot read db_bench's output:\n\(text)") }
        // db_bench reports MiB/s; its wall time includes opening and closing the database.
        return (mb * 1.048576, Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18)
    }
}

/// Bytes of every file below `path`.
func directorySize(_ path: String) -> UInt64 {
    guard let e = FileManager.default.enumerator(atPath: path) else { return 0 }
    var total: UInt64 = 0
    while let f = e.nextObject() as? String {
        if let a = try? FileManager.default.attributesOfItem(atPath: path + "/" + f), let s = a[.size] as? UInt64 { total += s }
    }
    return total
}
