import ArgumentParser
import Foundation
import SomaArchive
import SomaCore
import SomaNode
import SomaStore
import SomaSync

struct Archive: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Archives of the chain's history in an S3-compatible bucket (s3://BUCKET/PREFIX) or a folder.",
        discussion: """
            An S3 location takes its endpoint, region and keys from --endpoint and --region or the \
            usual variables: AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3), AWS_REGION (or \
            AWS_DEFAULT_REGION; us-east-1 by default), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, \
            AWS_SESSION_TOKEN.
            """,
        subcommands: [ArchiveExportCommand.self, ArchiveVerify.self, ArchiveList.self])
}

struct ArchiveOptions: ParsableArguments {
    @Option(help: "The S3 endpoint, http(s)://HOST[:PORT] (default: AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL).")
    var endpoint: String?
    @Option(help: "The S3 region (default: AWS_REGION, then AWS_DEFAULT_REGION, then us-east-1).")
    var region: String?

    func backend(_ location: String) throws -> any ArchiveBackend {
        do {
            return try ArchiveLocation(location).backend(endpoint: endpoint, region: region)
        } catch let e as ArchiveError {
            throw CLIError(e.description)
        }
    }
}

struct ArchiveExportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Copy the store's closed history (its sealed segments and their certified summaries), epoch ends and snapshots to an archive.",
        discussion: """
            Each closed segment (one per ended epoch) goes as it is, with its checkpoints' certified \
            summaries; the manifest, signed with the node's key (node.key in the data directory, \
            made if missing), is replaced after each. Then the store's epoch snapshots the archive \
            lacks (unless --no-snapshots), and the certified epoch ends in the manifest. What the \
            archive already lists is not written again: an interrupted export resumes. Stop the \
            node first.
            """)

    @OptionGroup var dataOptions: DataOptions
    @Option(help: "Where: s3://BUCKET/PREFIX or a folder.")
    var to: String
    @Option(help: "Export segments from this checkpoint on.")
    var from: UInt64 = 0
    @Option(help: "Export segments up to this checkpoint.")
    var until: UInt64 = .max
    @Flag(help: "Leave out the store's epoch snapshots (by default those the archive lacks are copied).")
    var noSnapshots = false
    @OptionGroup var archiveOptions: ArchiveOptions
    @Flag(help: "Print the result as one JSON document (progress goes to standard error).")
    var json = false

    func validate() throws {
        guard from <= until else { throw ValidationError("--from must be at most --until") }
    }

    func run() async throws {
        let start = ContinuousClock.now
        let console = Console(json: json)
        let backend = try archiveOptions.backend(to)
        let keyPath = (dataOptions.data as NSString).appendingPathComponent("node.key")
        let key = FileManager.default.fileExists(atPath: keyPath) ? try NodeKey.load(from: keyPath) : try NodeKey.create(at: keyPath)
        let store = try await dataOptions.openStore()
        let report: ArchiveExport.Report
        do {
            report = try await ArchiveExport.run(store: store, to: backend, key: key, from: from, until: until, snapshots: !noSnapshots) { range in
                console.say("  checkpoints \(range.first)...\(range.last): \(range.bytes) bytes")
            }
        } catch {
            await store.close()
            throw CLIError("archive export to \(backend): \(error)")
        }
        await store.close()
        let secs = elapsed(since: start)
        let last = report.manifest.ranges.last?.last
        console.say("archive export: \(report.written.count) segments and \(report.snapshots.count) snapshots written, \(report.kept) segments already there, \(format(Double(report.bytes) / 1e6)) MB in \(format(secs)) s (\(format(Double(report.bytes) / 1e6 / max(secs, 0.001))) MB/s) to \(backend); it holds checkpoints \(report.manifest.ranges.first.map { "\($0.first)" } ?? "none")...\(last.map { "\($0)" } ?? "none")")
        if json {
            try console.emit([
                "archive": "\(backend)", "written": report.written.count, "kept": report.kept, "snapshots": report.snapshots.map(\.epoch),
                "epochEnds": report.manifest.epochEnds.count, "bytes": report.bytes, "seconds": jsonSeconds(secs),
                "first": report.manifest.ranges.first.map { $0.first as Any } ?? NSNull(), "last": last.map { $0 as Any } ?? NSNull(),
                "producer": "\(report.manifest.producer)",
            ])
        }
    }
}

struct ArchiveVerify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Verify an archive end to end from the genesis committee; report the first fault.",
        discussion: """
            Checks the manifest's signature, every file's size and SHA-256, every segment's index, \
            then every checkpoint as a fresh node would: the epoch chain from the genesis \
            committee, the summaries' certificates, every block against its summary, execution and \
            each epoch's state root (in memory; nothing is written); then each snapshot: its \
            manifest against its epoch's certified end, every chunk against the certified state \
            root. With --genesis, the archive must be of that chain. Exits 0 when everything verifies, 1 at the first fault.
            """)

    @Argument(help: "The archive: s3://BUCKET/PREFIX or a folder.")
    var location: String
    @Option(help: "The chain's genesis.bcs: the archive must be of this chain.")
    var genesis: String?
    @OptionGroup var archiveOptions: ArchiveOptions
    @Flag(help: "Print the verdict as one JSON document (progress goes to standard error).")
    var json = false

    func run() async throws {
        let start = ContinuousClock.now
        let console = Console(json: json)
        let backend = try archiveOptions.backend(location)
        let expected: Genesis? = try genesis.map { path in
            guard let data = FileManager.default.contents(atPath: path) else { throw CLIError("cannot read \(path): \(fileProblem(path))") }
            do { return try BCS.decode(Genesis.self, from: Array(data)) } catch { throw CLIError("\(path): not a genesis: \(error)") }
        }
        let reader = ArchiveReader(backend: backend)
        var checkpoints = 0
        var bytes: UInt64 = 0
        do {
            let manifest = try await reader.requiredManifest()
            let genesis = try await reader.genesis(manifest)
            if let expected, expected.chainID != genesis.chainID {
                throw ArchiveError("\(backend) is an archive of chain \(genesis.chainID.hex.prefix(16))…, not of the given genesis (\(expected.chainID.hex.prefix(16))…)")
            }
            let importer = try await CheckpointImporter(genesis: genesis, store: nil, batchSize: 256, parallelism: ProcessInfo.processInfo.activeProcessorCount, userSignatures: false)
            for range in manifest.ranges {
                for r in try await reader.records(range) {
                    try await importer.add(SourceCheckpoint(certified: r.certified, frames: r.frames, proofs: r.proofs))
                    checkpoints += 1
                }
                try await importer.flush()
                bytes += range.bytes
                console.say("  checkpoints \(range.first)...\(range.last) verified")
            }
            let snapshots = try await reader.verifySnapshots(manifest, genesis: genesis)
            for s in snapshots {
                console.say("  snapshot of epoch \(s.epoch) verified: \(s.objects) live objects in \(s.chunks) chunks, state root \(s.stateRoot.hex.prefix(16))…")
            }
            let secs = elapsed(since: start)
            let tip = importer.tip.summary
            checkpoints = importer.checkpoints
            console.say("archive verify: OK in \(format(secs)) s: \(checkpoints) checkpoints after the genesis up to \(tip.sequenceNumber) (epoch \(tip.epoch)), \(importer.transactions) transactions, \(format(Double(bytes) / 1e6)) MB, verified from the genesis committee of chain \(genesis.chainID.hex.prefix(16))…, \(snapshots.count) snapshots; made by \(manifest.producer)")
            if json {
                try console.emit([
                    "ok": true, "checkpoints": checkpoints, "last": tip.sequenceNumber, "epoch": tip.epoch, "transactions": importer.transactions,
                    "bytes": bytes, "seconds": jsonSeconds(secs), "chainId": genesis.chainID.hex, "producer": "\(manifest.producer)",
                    "snapshots": snapshots.map(\.epoch),
                ])
            }
        } catch {
            console.say("archive verify: FAILED: \(error)")
            if json { try console.emit(["ok": false, "error": "\(error)", "checkpointsRead": checkpoints, "seconds": jsonSeconds(elapsed(since: start))]) }
            throw ExitCode(1)
        }
    }
}

struct ArchiveList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls", abstract: "What an archive holds: its chain, producer and ranges of checkpoints, from its signed manifest.")

    @Argument(help: "The archive: s3://BUCKET/PREFIX or a folder.")
    var location: String
    @OptionGroup var archiveOptions: ArchiveOptions
    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        let console = Console(json: json)
        let backend = try archiveOptions.backend(location)
        let manifest: ArchiveManifest
        do {
            manifest = try await ArchiveReader(backend: backend).requiredManifest()
        } catch {
            throw CLIError("archive ls: \(error)")
        }
        // Sizes come from the manifest: summed without overflow.
        let total = manifest.ranges.reduce(UInt64(0)) { total, r in
            let (sum, overflow) = total.addingReportingOverflow(r.bytes)
            return overflow ? .max : sum
        }
        let created = Date(timeIntervalSince1970: Double(manifest.createdMs) / 1_000)
        console.say("archive \(backend): chain \(manifest.chainID.hex), made by \(manifest.producer) at \(ISO8601DateFormatter().string(from: created))")
        for r in manifest.ranges {
            console.say("  checkpoints \(r.first)...\(r.last) (epoch \(r.end.summary.epoch)\(r.end.summary.endOfEpoch != nil ? ", its end" : "")): \(r.data.name) \(r.data.size) bytes, \(r.summaries.name) \(r.summaries.size) bytes")
        }
        for snapshot in manifest.snapshots {
            console.say("  snapshot of epoch \(snapshot.epoch): \(snapshot.data.name) \(snapshot.data.size) bytes")
        }
        console.say("\(manifest.ranges.count) ranges, \(manifest.epochEnds.count) epoch ends, \(manifest.snapshots.count) snapshots, \(format(Double(total) / 1e6)) MB of ranges")
        if json {
            try console.emit([
                "archive": "\(backend)", "chainId": manifest.chainID.hex, "producer": "\(manifest.producer)", "createdMs": manifest.createdMs, "bytes": total,
                "ranges": manifest.ranges.map { r -> [String: Any] in
                    ["first": r.first, "last": r.last, "epoch": r.end.summary.epoch, "files": [r.data, r.index, r.summaries].map { ["name": $0.name, "size": $0.size, "sha256": $0.sha256.hex] }]
                },
                "epochEnds": manifest.epochEnds.map(\.summary.sequenceNumber),
                "snapshots": manifest.snapshots.map { s -> [String: Any] in
                    ["epoch": s.epoch, "files": [s.manifest, s.data, s.index].map { ["name": $0.name, "size": $0.size, "sha256": $0.sha256.hex] }]
                },
            ])
        }
    }
}
