import Foundation
import SomaTestSupport
import Testing

@Suite("soma-node archive commands", .serialized)
struct ArchiveCommandTests {
    @Test("archive export, ls and verify on a folder and on a SeaweedFS bucket (aws s3 sees the files); a fresh node synced from each archive alone verifies; a snapshot restored from the bucket, and again as a differential update from the restored node's store; a flipped byte, a missing file and another chain's genesis fail verify with the file named; an export again writes nothing")
    func exportListVerify() async throws {
        let base = TempDir("archive-cli")
        defer { base.cleanup() }
        let binary = try somaNode()
        func document(_ arguments: [String], status expected: Int32 = 0, environment: [String: String] = [:]) throws -> [String: Any] {
            let (status, out, err) = try run(binary, arguments, environment: environment)
            #expect(status == expected, "\(arguments): \(err)")
            let object = try JSONSerialization.jsonObject(with: out) as? [String: Any]
            return try #require(object, "\(arguments): stdout is not one JSON object: \(String(decoding: out, as: UTF8.self)) \(err)")
        }
        let data = base.file("node")
        #expect(try run(binary, ["devnet", "generate", "--profile", "tiny", "--out", data]).0 == 0)
        let genesis = data + "/genesis.bcs"

        // A folder.
        let folder = base.file("archive")
        let exported = try document(["archive", "export", "--data", data, "--to", folder, "--json"])
        let written = try #require(exported["written"] as? Int)
        #expect(written >= 3 && exported["kept"] as? Int == 0 && exported["first"] as? Int == 0)
        let listed = try document(["archive", "ls", folder, "--json"])
        #expect((listed["ranges"] as? [[String: Any]])?.count == written)
        let verified = try document(["archive", "verify", folder, "--genesis", genesis, "--json"])
        #expect(verified["ok"] as? Bool == true && verified["last"] as? Int == exported["last"] as? Int)
        // A fresh node from the archive alone, then its own verify.
        let fresh = base.file("fresh")
        let synced = try document(["sync", "--data", fresh, "--genesis", genesis, "--archive", folder, "--json"])
        let fromArchive = try #require(synced["sync"] as? [String: Any])
        let sources = try #require(fromArchive["sources"] as? [[String: Any]])
        #expect(fromArchive["tip"] as? Int == exported["last"] as? Int && synced["connected"] as? Int == 0, "\(synced)")
        #expect(sources.count == 1 && sources[0]["kind"] as? String == "archive" && sources[0]["checkpoints"] as? Int == exported["last"] as? Int, "\(sources)")
        #expect(try document(["verify", "--data", fresh, "--json"])["ok"] as? Bool == true)
        // Again: it holds everything; nothing is read.
        let resumed = try #require(try document(["sync", "--data", fresh, "--archive", folder, "--json"])["sync"] as? [String: Any])
        #expect(resumed["checkpoints"] as? Int == 0 && resumed["tip"] as? Int == exported["last"] as? Int, "\(resumed)")
        let again = try document(["archive", "export", "--data", data, "--to", folder, "--json"])
        #expect(again["written"] as? Int == 0 && again["kept"] as? Int == written)
        // Another chain's genesis.
        let other = base.file("other")
        #expect(try run(binary, ["devnet", "generate", "--profile", "tiny", "--seed", "5", "--out", other]).0 == 0)
        let foreign = try document(["archive", "verify", folder, "--genesis", other + "/genesis.bcs", "--json"], status: 1)
        #expect((foreign["error"] as? String)?.contains("not of the given genesis") == true)
        // A flipped byte in the second segment, then that file gone.
        let ranges = try #require(listed["ranges"] as? [[String: Any]])
        let files = try #require(ranges[1]["files"] as? [[String: Any]])
        let seg = try #require(files[0]["name"] as? String)
        var bytes = try #require(FileManager.default.contents(atPath: folder + "/" + seg))
        bytes[bytes.count / 3] ^= 1
        try bytes.write(to: URL(fileURLWithPath: folder + "/" + seg))
        let corrupt = try document(["archive", "verify", folder, "--json"], status: 1)
        #expect((corrupt["error"] as? String)?.contains(seg) == true, "\(corrupt)")
        try FileManager.default.removeItem(atPath: folder + "/" + seg)
        let missing = try document(["archive", "verify", folder, "--json"], status: 1)
        #expect((missing["error"] as? String)?.contains("missing") == true, "\(missing)")
        // Not an archive; an S3 location without an endpoint.
        #expect(try run(binary, ["archive", "ls", base.file("nothing")]).0 != 0)
        let (noEndpoint, _, why) = try run(binary, ["archive", "ls", "s3://soma-archive/x"], environment: ["AWS_ENDPOINT_URL": "", "AWS_ENDPOINT_URL_S3": ""])
        #expect(noEndpoint != 0 && why.contains("AWS_ENDPOINT_URL"), "\(why)")

        // A bucket.
        let s3 = try await SeaweedFS.start()
        defer { s3.stop() }
        let aws = try #require(SeaweedFS.awsCLI, "awscli is not installed: tools/test installs it in .venv")
        #expect(try run(aws, ["--endpoint-url", s3.endpoint, "s3", "mb", "s3://soma-archive"], environment: s3.awsEnvironment).0 == 0)
        var environment = s3.awsEnvironment
        environment["AWS_ENDPOINT_URL"] = s3.endpoint
        let url = "s3://soma-archive/devnet/tiny"
        let up = try document(["archive", "export", "--data", data, "--to", url, "--json"], environment: environment)
        #expect(up["written"] as? Int == written)
        let ok = try document(["archive", "verify", url, "--genesis", genesis, "--json"], environment: environment)
        #expect(ok["ok"] as? Bool == true && ok["last"] as? Int == exported["last"] as? Int)
        let viaS3 = try document(["sync", "--data", base.file("from-s3"), "--genesis", genesis, "--archive", url, "--json"], environment: environment)
        #expect((viaS3["sync"] as? [String: Any])?["tip"] as? Int == exported["last"] as? Int, "\(viaS3)")
        // A new validator restores the newest snapshot from the bucket alone: the state root
        // certified at that epoch's end, recomputed over what it stored.
        let restoredDir = base.file("restored-s3")
        let restored = try document(["sync", "--data", restoredDir, "--genesis", genesis, "--archive", url, "--snapshot", "latest", "--json"], environment: environment)
        let restore = try #require(restored["restore"] as? [String: Any], "\(restored)")
        let sourceRoot = try #require((synced["stateRoot"] as? [String: Any])?["root"] as? String)
        #expect(restore["stateRoot"] as? String == sourceRoot && restore["epoch"] as? Int == (synced["stateRoot"] as? [String: Any])?["epoch"] as? Int, "\(restored)")
        #expect((restored["sync"] as? [String: Any])?["tip"] as? Int == exported["last"] as? Int, "\(restored)")
        #expect(try document(["verify", "--data", restoredDir, "--json"])["ok"] as? Bool == true)
        // A differential update: a node holding that snapshot (the one just restored) restores it
        // again from the bucket reading every chunk from its old store, each verified.
        let updated = try document([
            "sync", "--data", base.file("updated-s3"), "--genesis", genesis, "--archive", url, "--snapshot", "latest", "--reuse", restoredDir, "--json",
        ], environment: environment)
        let update = try #require(updated["restore"] as? [String: Any], "\(updated)")
        #expect(update["chunksFetched"] as? Int == 0 && update["chunksReused"] as? Int == restore["chunks"] as? Int && update["stateRoot"] as? String == sourceRoot, "\(update)")
        let (status, out, _) = try run(aws, ["--endpoint-url", s3.endpoint, "s3", "ls", "--recursive", url + "/"], environment: s3.awsEnvironment)
        let lines = String(decoding: out, as: UTF8.self).split(separator: "\n")
        #expect(status == 0 && lines.contains { $0.hasSuffix("devnet/tiny/manifest.bcs") } && lines.filter { $0.hasSuffix(".seg") }.count == written)
    }

    @Test("continuous archiving: a running node whose chain grows copies each segment an epoch end closes to its archive.target; the archive verifies to the last epoch end")
    func continuous() async throws {
        let base = TempDir("archive-continuous")
        defer { base.cleanup() }
        let binary = try somaNode()
        let data = base.file("node")
        #expect(try run(binary, ["devnet", "generate", "--profile", "tiny", "--until", "5", "--out", data]).0 == 0)
        #expect(try run(binary, ["init", "--data", data]).0 == 0)
        let folder = base.file("archive")
        try "archive:\n  target: \(folder)\n  intervalSeconds: 1\n".write(toFile: data + "/soma-node.yaml", atomically: true, encoding: .utf8)
        let producer = try RunningNode(data: data, arguments: ["--profile", "tiny", "--interval-ms", "50"], command: ["devnet", "run"])
        defer { producer.stop() }
        var last = -1
        for _ in 0..<120 where last != 29 {
            try await Task.sleep(for: .milliseconds(500))
            let (status, out, _) = try run(binary, ["archive", "ls", folder, "--json"])
            guard status == 0, let doc = try? JSONSerialization.jsonObject(with: out) as? [String: Any], let ranges = doc["ranges"] as? [[String: Any]] else { continue }
            last = ranges.last?["last"] as? Int ?? -1
        }
        producer.stop()
        #expect(last == 29, "the archive reached checkpoint \(last)")
        let (status, out, err) = try run(binary, ["archive", "verify", folder, "--genesis", data + "/genesis.bcs", "--json"])
        #expect(status == 0, "\(err)")
        #expect((try JSONSerialization.jsonObject(with: out) as? [String: Any])?["last"] as? Int == 29)
    }

    @Test("kill -9 at random moments during an export and during a sync from the archive: after each kill the archive verifies as far as its manifest goes and the store as far as its watermarks go; run again, each completes, and the synced node's tip and state root are the source's")
    func killed() async throws {
        let base = TempDir("archive-kill")
        defer { base.cleanup() }
        let binary = try somaNode()
        let data = base.file("node")
        #expect(try run(binary, ["devnet", "generate", "--profile", "demo", "--out", data]).0 == 0)
        let folder = base.file("archive")
        var rng = SystemRandomNumberGenerator()
        /// Starts the command, kills it (SIGKILL) after `ms` milliseconds; whether it was still running.
        func killed(_ arguments: [String], after ms: Int) throws -> Bool {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: binary)
            p.arguments = arguments
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            usleep(UInt32(ms) * 1_000)
            let running = p.isRunning
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            return running
        }
        var interrupted = 0
        for _ in 0..<6 {
            if try killed(["archive", "export", "--data", data, "--to", folder], after: Int.random(in: 20...400, using: &rng)) { interrupted += 1 }
            // What the manifest lists is there and verifies (nothing half-written is listed).
            if FileManager.default.fileExists(atPath: folder + "/manifest.bcs") {
                let (status, _, err) = try run(binary, ["archive", "verify", folder])
                #expect(status == 0, "after a kill: \(err)")
            }
        }
        let (done, outData, _) = try run(binary, ["archive", "export", "--data", data, "--to", folder])
        let out = String(decoding: outData, as: UTF8.self)
        #expect(done == 0 && out.contains("holds checkpoints 0...1999"), "\(out)")
        #expect(try run(binary, ["archive", "verify", folder]).0 == 0)

        let fresh = base.file("fresh")
        let genesis = data + "/genesis.bcs"
        for _ in 0..<4 {
            if try killed(["sync", "--data", fresh, "--genesis", genesis, "--archive", folder], after: Int.random(in: 300...1_500, using: &rng)) { interrupted += 1 }
            if FileManager.default.fileExists(atPath: fresh + "/db") {
                let (status, _, err) = try run(binary, ["verify", "--data", fresh])
                #expect(status == 0, "after a kill: \(err)")
            }
        }
        let (synced, syncData, syncErr) = try run(binary, ["sync", "--data", fresh, "--genesis", genesis, "--archive", folder])
        let syncOut = String(decoding: syncData, as: UTF8.self)
        #expect(synced == 0 && (syncOut + syncErr).contains("tip 1999"), "\(syncOut) \(syncErr)")
        func root(_ dir: String) throws -> String {
            let (_, o, _) = try run(binary, ["inspect", "--data", dir, "--checkpoint", "1999", "--json"])
            return String(decoding: o, as: UTF8.self).replacingOccurrences(of: " ", with: "").components(separatedBy: "\"stateRoot\":\"").dropFirst().first.map { String($0.prefix(64)) } ?? ""
        }
        #expect(try !root(data).isEmpty && root(fresh) == root(data))
        #expect(try run(binary, ["verify", "--data", fresh]).0 == 0)
        // Most kills land while the command runs (a kill after it finished proves less, but the
        // checks above hold either way).
        #expect(interrupted >= 3, "\(interrupted) of 10 kills interrupted a run")
    }

    @Test("a fresh node whose only peer has pruned early history catches up from the archive and the peer raced by one scheduler: what the peer pruned comes from the archive; it verifies")
    func archiveThenPrunedPeer() async throws {
        let base = TempDir("archive-pruned-peer")
        defer { base.cleanup() }
        let binary = try somaNode()
        let full = base.file("full")
        #expect(try run(binary, ["devnet", "generate", "--profile", "tiny", "--out", full]).0 == 0)
        // The archive ends at the second epoch's end (checkpoint 19).
        let folder = base.file("archive")
        let (s1, o1, e1) = try run(binary, ["archive", "export", "--data", full, "--to", folder, "--until", "19", "--no-snapshots", "--json"])
        #expect(s1 == 0, "\(e1)")
        let exported = try JSONSerialization.jsonObject(with: o1) as? [String: Any]
        #expect(exported?["last"] as? Int == 19)
        #expect((exported?["snapshots"] as? [Int])?.isEmpty == true && !FileManager.default.fileExists(atPath: folder + "/snapshots"), "\(exported ?? [:])")
        // The peer keeps only the last epoch (checkpoints 20...29).
        let pruned = base.file("pruned")
        #expect(try run(binary, ["devnet", "generate", "--profile", "tiny", "--mode", "pruned", "--retain-epochs", "1", "--out", pruned]).0 == 0)
        #expect(try run(binary, ["init", "--data", pruned]).0 == 0)
        let peer = try RunningNode(data: pruned)
        defer { peer.stop() }
        let fresh = base.file("fresh")
        let (status, out, err) = try run(binary, [
            "sync", "--data", fresh, "--genesis", full + "/genesis.bcs", "--archive", folder, "--peer", peer.address, "--json",
        ])
        #expect(status == 0, "\(err)")
        let document = try #require(try JSONSerialization.jsonObject(with: out) as? [String: Any], "\(err)")
        let sync = try #require(document["sync"] as? [String: Any])
        #expect(sync["tip"] as? Int == 29, "\(document)")
        // What the peer pruned (1...19) came from the archive, the rest from the peer.
        let sources = try #require(sync["sources"] as? [[String: Any]])
        let byKind = Dictionary(sources.map { ($0["kind"] as? String ?? "?", $0["checkpoints"] as? Int ?? -1) }, uniquingKeysWith: +)
        #expect(byKind["archive"] ?? 0 >= 19 && byKind["peer"] ?? 0 >= 1 && (byKind["archive"] ?? 0) + (byKind["peer"] ?? 0) == 29, "\(sources)")
        peer.stop()
        let (vs, vo, _) = try run(binary, ["verify", "--data", fresh, "--json"])
        let verified = try JSONSerialization.jsonObject(with: vo) as? [String: Any]
        #expect(vs == 0 && verified?["checkpoints"] as? Int == 30, "\(String(decoding: vo, as: UTF8.self))")
    }
}
