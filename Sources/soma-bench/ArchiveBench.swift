import ArgumentParser
import Foundation

struct ArchiveBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "archive",
        abstract: "SomaArchive: export of the bench chain's store to SeaweedFS (MB/s); a fresh node's catch-up from the bucket alone (`sync --archive`: verify, execute, store) against `aws s3 cp --recursive` of the same files + lz4 -d | sha256sum.",
        discussion: """
            Needs an S3 endpoint with a bucket it may create: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, \
            AWS_SECRET_ACCESS_KEY (tools/bench archive starts SeaweedFS on loopback and sets them), \
            and awscli as AWS_CLI (default: .venv/bin/aws).
            """)

    @Option(help: "Checkpoints of the bench profile (default: all of it).")
    var checkpoints = 10_000
    @Option(help: "Where the served store (the chain) is kept between runs.")
    var cache = ".build-bench"
    @Option(help: "The bucket to write to (created if missing).")
    var bucket = "soma-bench"

    mutating func run() async throws {
        let fm = FileManager.default
        let env = ProcessInfo.processInfo.environment
        guard let endpoint = env["AWS_ENDPOINT_URL"], env["AWS_ACCESS_KEY_ID"] != nil else {
            throw ValidationError("set AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (tools/bench archive does)")
        }
        let aws = env["AWS_CLI"] ?? ".venv/bin/aws"
        guard fm.isExecutableFile(atPath: aws) else { throw ValidationError("awscli not found at \(aws): set AWS_CLI") }
        let (node, served) = try servedStore(cache: cache, checkpoints: checkpoints)
        let prefix = "s3://\(bucket)/bench-\(checkpoints)"
        _ = try? output(aws, ["--endpoint-url", endpoint, "s3", "mb", "s3://\(bucket)"])
        _ = try? output(aws, ["--endpoint-url", endpoint, "s3", "rm", "--recursive", prefix + "/"])
        print("== \(checkpoints - 1) checkpoints of the bench chain, SeaweedFS at \(endpoint)")

        // Export: the store's closed segments and summaries, the manifest after each.
        var start = ContinuousClock.now
        let exported = try json(node, ["archive", "export", "--data", served, "--to", prefix, "--json"])
        let exportSecs = seconds(from: start)
        let bytes = (exported["bytes"] as? Double) ?? Double((exported["bytes"] as? Int) ?? 0)
        line("archive export (as stored)", "\(fmt(bytes / 1e6 / exportSecs)) MB/s", "\(fmt(bytes / 1e6)) MB in \(fmt(exportSecs)) s, \(exported["written"] ?? 0) segments")

        // Twice: the archive of segments alone (`--no-snapshots`: the synced node builds the
        // last epoch end's snapshot), then the same archive with that snapshot added, as an
        // export of a store that keeps snapshots writes it (the node takes the snapshot from the
        // archive beside its commits, every chunk verified, instead of building it). Each against
        // its baseline: the archive's files by aws s3 cp --recursive, then every LZ4 file
        // (segments, snapshot chunks) through lz4 -d | sha256sum, in order (it verifies,
        // executes and stores nothing).
        let fresh = URL(fileURLWithPath: cache + "/archive-fresh").standardizedFileURL.path
        for withSnapshot in [false, true] {
            if withSnapshot {
                // The snapshot of epoch 9 that the first synced node built, added to the archive.
                _ = try json(node, ["archive", "export", "--data", fresh, "--to", prefix, "--from", "\(UInt64.max)", "--json"])
            }
            let kind = withSnapshot ? "with epoch 9's snapshot" : "segments only"
            print("-- the archive, \(kind)")
            let scratch = URL(fileURLWithPath: cache + "/archive-baseline").standardizedFileURL.path
            try? fm.removeItem(atPath: scratch)
            start = ContinuousClock.now
            _ = try output(aws, ["--endpoint-url", endpoint, "s3", "cp", "--recursive", "--quiet", prefix + "/", scratch])
            let download = seconds(from: start)
            let downloaded = try fm.subpathsOfDirectory(atPath: scratch).reduce(0.0) { total, file in
                total + ((try? fm.attributesOfItem(atPath: scratch + "/" + file)[.size] as? NSNumber)?.doubleValue ?? 0)
            }
            let lz4Files = try fm.contentsOfDirectory(atPath: scratch + "/segments").filter { $0.hasSuffix(".seg") }.sorted().map { "segments/" + $0 }
                + ((try? fm.contentsOfDirectory(atPath: scratch + "/snapshots")) ?? []).filter { $0.hasSuffix(".chunks") }.sorted().map { "snapshots/" + $0 }
            let decompress = ContinuousClock.now
            let script = "cat " + lz4Files.map { "'\(scratch)/\($0)'" }.joined(separator: " ") + " | lz4 -d | sha256sum"
            _ = try output("/bin/sh", ["-c", script])
            let hash = seconds(from: decompress)
            let baseline = download + hash
            line("baseline: aws s3 cp --recursive", "\(fmt(downloaded / 1e6 / download)) MB/s", "\(fmt(downloaded / 1e6)) MB in \(fmt(download)) s")
            line("baseline: + lz4 -d | sha256sum", "\(fmt(hash)) s", "total \(fmt(baseline)) s")
            try? fm.removeItem(atPath: scratch)

            // Catch-up of a fresh node from the bucket alone.
            let dir = withSnapshot ? fresh + "-adopting" : fresh
            try? fm.removeItem(atPath: dir)
            start = ContinuousClock.now
            let (out, timing) = try timedRun(node, ["sync", "--data", dir, "--genesis", served + "/genesis.bcs", "--archive", prefix, "--json"])
            let syncSecs = seconds(from: start)
            let synced = (try? JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any]) ?? [:]
            let syncDoc = synced["sync"] as? [String: Any]
            let tip = syncDoc?["tip"] ?? "?"
            let commits = (syncDoc?["seconds"] as? Double).map { "commits done at \(fmt($0)) s, " } ?? ""
            let snapshot = synced["snapshotAdopted"] is NSNull || synced["snapshotAdopted"] == nil ? "snapshot built" : "snapshot taken from the archive"
            line("sync --archive (verify, execute, store)", "\(fmt(bytes / 1e6 / syncSecs)) MB/s", "\(fmt(syncSecs)) s to checkpoint \(tip): \(commits)\(snapshot)")
            timing.report(over: syncSecs)
            line("ratio catch-up time / baseline time", fmt(syncSecs / baseline, 2), withSnapshot ? "goal <= 1.0" : "(segments only)")
            if withSnapshot { try? fm.removeItem(atPath: dir) }
        }

        // Snapshots in the archive: the synced node built epoch 9's (its catch-up's last epoch
        // end); a second node synced to epoch 8's end builds epoch 8's. Both go to a second
        // prefix (with the epoch ends, no segment: --from past the tip).
        let snapshots = prefix + "-snapshots"
        _ = try? output(aws, ["--endpoint-url", endpoint, "s3", "rm", "--recursive", snapshots + "/"])
        let at8 = fresh + "-epoch8"
        try? fm.removeItem(atPath: at8)
        _ = try json(node, ["sync", "--data", at8, "--genesis", served + "/genesis.bcs", "--archive", prefix, "--until", "8999", "--json"])
        _ = try json(node, ["archive", "export", "--data", fresh, "--to", snapshots, "--from", "\(UInt64.max)", "--json"])
        _ = try json(node, ["archive", "export", "--data", at8, "--to", snapshots, "--from", "\(UInt64.max)", "--json"])
        try? fm.removeItem(atPath: fresh)

        // A new validator's full restore of epoch 9 from the bucket, then a node holding epoch
        // 8's snapshot updating to epoch 9 (--reuse: chunks whose roots it holds are read locally).
        var restores: [(String, Double, [String: Any])] = []
        for (label, extra) in [("full restore of epoch 9", [String]()), ("differential update 8 -> 9", ["--reuse", at8])] {
            let dir = fresh + "-restored"
            try? fm.removeItem(atPath: dir)
            start = ContinuousClock.now
            let restored = try json(node, ["sync", "--data", dir, "--genesis", served + "/genesis.bcs", "--archive", snapshots, "--snapshot", "9", "--json"] + extra)
            restores.append((label, seconds(from: start), (restored["restore"] as? [String: Any]) ?? [:]))
            try? fm.removeItem(atPath: dir)
        }
        for (label, secs, r) in restores {
            let frames = Double((r["frameBytes"] as? Int) ?? 0)
            line(label, "\(fmt(frames / 1e6)) MB fetched", "\(r["chunksFetched"] ?? "?") of \(r["chunks"] ?? "?") chunks fetched, \(r["chunksReused"] ?? 0) reused, in \(fmt(secs)) s")
        }
        if restores.count == 2, let full = restores[0].2["frameBytes"] as? Int, full > 0, let diff = restores[1].2["frameBytes"] as? Int {
            line("ratio differential / full (bytes fetched)", fmt(Double(diff) / Double(full), 2), "time \(fmt(restores[1].1 / restores[0].1, 2))")
        }
        try? fm.removeItem(atPath: at8)
    }

    func json(_ node: String, _ arguments: [String]) throws -> [String: Any] {
        let text = try output(node, arguments)
        guard let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
            throw ValidationError("soma-node \(arguments.joined(separator: " ")): not one JSON document")
        }
        return object
    }

    /// Runs a process; its standard output (standard error passes through).
    func output(_ path: String, _ arguments: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = arguments
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw ValidationError("\(path) \(arguments.joined(separator: " ")) failed") }
        return String(decoding: data, as: UTF8.self)
    }
}
