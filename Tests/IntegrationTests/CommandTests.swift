import Foundation
import SomaCore
import SomaStore
import SomaTestSupport
import Testing

/// Opens a store directory the CLI wrote, runs `body`, closes it.
func withStore(_ dir: String, mode: StoreMode = .archive, _ body: (NodeStore) async throws -> Void) async throws {
    var config = StoreConfiguration()
    config.mode = mode
    let store = try await NodeStore.open(path: dir + "/db", configuration: config)
    do {
        try await body(store)
    } catch {
        await store.close()
        throw error
    }
    await store.close()
}

/// Where frame `part` of checkpoint `seq` lives in a store's history segments, read from the
/// index files as docs/ARCHITECTURE.md lays them out: (data file, offset, length).
func segmentRecord(_ dir: String, seq: UInt64, part: UInt32) throws -> (String, UInt64, UInt64)? {
    let segments = dir + "/db/segments"
    for name in try FileManager.default.contentsOfDirectory(atPath: segments).sorted() where name.hasSuffix(".idx") {
        let index = [UInt8](try Data(contentsOf: URL(fileURLWithPath: segments + "/" + name)))
        func le(_ at: Int, _ n: Int) -> UInt64 { (0..<n).reduce(UInt64(0)) { $0 | UInt64(index[at + $1]) << (8 * $1) } }
        for r in stride(from: 0, to: index.count - 23, by: 24) where le(r, 8) == seq && le(r + 8, 4) == UInt64(part) {
            return (segments + "/" + name.dropLast(4) + ".seg", le(r + 16, 8), le(r + 12, 4))
        }
    }
    return nil
}

@Suite("soma-node commands on real stores", .serialized)
struct CommandTests {
    @Test("jemalloc serves the node's allocations: the statistics MALLOC_CONF asks it for come out at exit and count what the process allocated")
    func jemallocServesTheNode() throws {
        let (status, out, err) = try run(try somaNode(), ["--help"], environment: ["MALLOC_CONF": "stats_print:true"])
        let text = String(decoding: out, as: UTF8.self) + err
        #expect(status == 0)
        #expect(text.contains("Begin jemalloc statistics"), "\(text.prefix(300))")
        // Linked but not serving malloc, it would have handed out next to nothing.
        let allocated = text.components(separatedBy: "Allocated: ").dropFirst().first?.prefix { $0.isNumber }
        #expect((allocated.flatMap { Int($0) } ?? 0) >= 100_000, "allocated: \(allocated ?? "none")")
    }

    @Test("`verify` passes on a generated store and names a corrupted block, a missing checkpoint and a tampered object")
    func verifyFindsFaults() async throws {
        let base = TempDir("verify")
        defer { base.cleanup() }
        for name in ["good", "corrupt", "missing", "tampered"] {
            let (status, output) = try somaNode(["devnet", "generate", "--profile", "tiny", "--out", base.file(name)])
            #expect(status == 0, "\(output)")
        }
        let (ok, okOut) = try somaNode(["verify", "--data", base.file("good")])
        #expect(ok == 0)
        #expect(okOut.contains("verify: OK"), "\(okOut)")

        // A corrupted block: one byte flipped inside checkpoint 5's LZ4 frame, in its segment
        // file (found through the documented index: 24-byte records, checkpoint u64, part u32,
        // length u32, offset u64, little-endian).
        let (segment, offset, length) = try #require(try segmentRecord(base.file("corrupt"), seq: 5, part: 0))
        let file = try #require(FileHandle(forUpdatingAtPath: segment))
        try file.seek(toOffset: offset + length / 2)
        var byte = try #require(try file.read(upToCount: 1))
        byte[0] ^= 0x20
        try file.seek(toOffset: offset + length / 2)
        try file.write(contentsOf: byte)
        try file.close()
        let (s1, o1) = try somaNode(["verify", "--data", base.file("corrupt")])
        #expect(s1 == 1)
        #expect(o1.contains("FAILED") && o1.contains("checkpoint 5") && o1.contains("corrupt block"), "\(o1)")

        // A missing checkpoint: the history segments lost everything after checkpoint 6 (the
        // store has executed past it, so the watermark cannot come back: the open says so).
        let segments = try HistorySegments.open(directory: base.file("missing") + "/db/segments")
        try segments.truncate(after: 6)
        segments.close()
        let (s2, o2) = try somaNode(["verify", "--data", base.file("missing")])
        #expect(s2 == 1)
        #expect(o2.contains("checkpoint 7: block missing"), "\(o2)")

        // A tampered object: one content byte of an output of checkpoint 4 changed.
        var tamperedID = ""
        try await withStore(base.file("tampered")) { store in
            let data = try #require(try await store.checkpointData(at: 4))
            var object = data.entries[0].outputObjects.last!
            object.contents[0] ^= 1
            tamperedID = object.id.hex
            try store.database.put(store.database.columnFamily("objects")!, StoreKeys.object(object.id, version: object.version), object.bcsBytes)
        }
        let (s3, o3) = try somaNode(["verify", "--data", base.file("tampered")])
        #expect(s3 == 1)
        #expect(o3.contains("object \(tamperedID)") && o3.contains("tampered"), "\(o3)")
    }

    @Test("--json: generate, export, import, verify (passed and failed) and sync print exactly one JSON document on standard output, the same figures as their text, progress on standard error")
    func jsonOutput() async throws {
        let base = TempDir("json")
        defer { base.cleanup() }
        let binary = try somaNode()
        /// Runs the command; its standard output must be one JSON object.
        func document(_ arguments: [String], status expected: Int32 = 0) throws -> [String: Any] {
            let (status, out, err) = try run(binary, arguments)
            #expect(status == expected, "\(arguments): \(err)")
            let object = try JSONSerialization.jsonObject(with: out) as? [String: Any]
            return try #require(object, "\(arguments): stdout is not one JSON object: \(String(decoding: out, as: UTF8.self))")
        }
        let source = base.file("source")
        let generated = try document(["devnet", "generate", "--profile", "tiny", "--out", source, "--json"])
        #expect(generated["tip"] as? Int == 29 && generated["checkpoints"] as? Int == 29 && generated["epochsEnded"] as? Int == 3)
        #expect((generated["watermarks"] as? [String: Any])?["highestExecuted"] as? Int == 29)
        #expect((generated["profile"] as? [String: Any])?["name"] as? String == "tiny")
        let root = try #require((generated["stateRoot"] as? [String: Any])?["root"] as? String)
        #expect(root.count == 64)

        let chain = base.file("chain.bin")
        let exported = try document(["devnet", "export", "--profile", "tiny", "--file", chain, "--json"])
        #expect(exported["checkpoints"] as? Int == 29 && exported["chainId"] as? String == generated["chainId"] as? String)
        let imported = try document(["import", "--file", chain, "--data", base.file("imported"), "--json"])
        #expect(imported["tip"] as? Int == 29 && imported["tipDigest"] as? String == generated["tipDigest"] as? String)
        #expect((imported["stateRoot"] as? [String: Any])?["root"] as? String == root)
        let again = try document(["import", "--file", chain, "--data", base.file("imported"), "--json"])
        #expect(again["checkpoints"] as? Int == 0 && again["resumedAfter"] as? Int == 29 && again["first"] is NSNull)

        let verified = try document(["verify", "--data", source, "--json"])
        #expect(verified["ok"] as? Bool == true && verified["checkpoints"] as? Int == 30 && verified["replayedFromGenesis"] as? Bool == true)
        #expect(verified["stateRootEpochs"] as? [Int] == [0, 1, 2])

        #expect(try somaNode(["init", "--data", source]).0 == 0)
        let node = try RunningNode(data: source)
        defer { node.stop() }
        let synced = try document(["sync", "--data", base.file("fresh"), "--genesis", source + "/genesis.bcs", "--peer", node.address, "--json"])
        let sync = try #require(synced["sync"] as? [String: Any])
        #expect(sync["tip"] as? Int == 29 && sync["checkpoints"] as? Int == 29 && synced["connected"] as? Int == 1)
        let sources = try #require(sync["sources"] as? [[String: Any]])
        #expect(sources.count == 1 && sources[0]["checkpoints"] as? Int == 29 && sources[0]["banReason"] is NSNull)
        #expect((synced["stateRoot"] as? [String: Any])?["root"] as? String == root)
        node.stop()

        // A fault: the verdict is a JSON document too, and the exit status says it.
        let segments = try HistorySegments.open(directory: base.file("fresh") + "/db/segments")
        try segments.truncate(after: 6)
        segments.close()
        let failed = try document(["verify", "--data", base.file("fresh"), "--json"], status: 1)
        #expect(failed["ok"] as? Bool == false && (failed["error"] as? String ?? "").contains("checkpoint 7: block missing"), "\(failed)")
    }

    @Test("errors name what failed, where, and what to do: a store in use, no store, another chain's genesis, a missing or foreign chain file, a peer of another chain, an epoch not ended")
    func operatorErrors() async throws {
        let base = TempDir("errors")
        defer { base.cleanup() }
        let a = base.file("a")
        #expect(try somaNode(["devnet", "generate", "--profile", "tiny", "--out", a]).0 == 0)
        #expect(try somaNode(["init", "--data", a]).0 == 0)
        let other = base.file("other")
        #expect(try somaNode(["devnet", "generate", "--profile", "tiny", "--seed", "9", "--out", other]).0 == 0)
        let node = try RunningNode(data: a)
        defer { node.stop() }
        // A store in use: named, with what to do; verify does not call it a failed verification.
        let (s1, o1) = try somaNode(["verify", "--data", a])
        #expect(s1 != 0 && o1.contains("\(a)/db is in use by another process") && o1.contains("stop it first") && !o1.contains("FAILED"), "\(o1)")
        let (s2, o2) = try somaNode(["run", "--data", a, "--listen", "127.0.0.1:0", "--http", "off"])
        #expect(s2 != 0 && o2.contains("in use by another process"), "\(o2)")
        // No store: where, and what to give instead.
        let (s3, o3) = try somaNode(["inspect", "--data", base.file("nothing")])
        #expect(s3 != 0 && o3.contains("no store at \(base.file("nothing"))/db") && o3.contains("give --data"), "\(o3)")
        // Another chain's genesis for a data directory: both chains named, and what to do.
        let (s4, o4) = try somaNode(["sync", "--data", a + "-copy", "--genesis", a + "/genesis.bcs", "--peer", node.address, "--until", "0"])
        #expect(s4 == 0, "\(o4)")
        let (s5, o5) = try somaNode(["sync", "--data", a + "-copy", "--genesis", other + "/genesis.bcs", "--peer", node.address])
        #expect(s5 != 0 && o5.contains("holds another chain's genesis") && o5.contains("give another --data directory"), "\(o5)")
        // A peer of another chain: the handshake's reason and what to do.
        let (s6, o6) = try somaNode(["sync", "--data", base.file("fresh"), "--genesis", other + "/genesis.bcs", "--peer", node.address])
        #expect(s6 != 0 && o6.contains("wrongChain") && o6.contains("a peer serves another chain"), "\(o6)")
        // Chain files: a missing one with the system's reason, a foreign one with what makes one.
        let (s7, o7) = try somaNode(["import", "--file", base.file("none.bin"), "--data", base.file("imported")])
        #expect(s7 != 0 && o7.contains("cannot open \(base.file("none.bin")): No such file or directory") && !o7.contains("ioError"), "\(o7)")
        FileManager.default.createFile(atPath: base.file("junk.bin"), contents: Data(repeating: 7, count: 100))
        let (s8, o8) = try somaNode(["import", "--file", base.file("junk.bin"), "--data", base.file("imported")])
        #expect(s8 != 0 && o8.contains("is not a chain file") && o8.contains("devnet export"), "\(o8)")
        // An epoch that has not ended: the ends there are, and what to ask for.
        let (s9, o9) = try somaNode(["sync", "--data", base.file("snap"), "--genesis", a + "/genesis.bcs", "--peer", node.address, "--snapshot", "99"])
        #expect(s9 != 0 && o9.contains("epoch 99 has not ended") && o9.contains("--snapshot latest"), "\(o9)")
    }

    @Test("`devnet gossip`: 20 nodes over TLS on shaped links deliver every message to every node and form every certificate, in one JSON document")
    func devnetGossip() throws {
        let (status, out, err) = try run(try somaNode(), ["devnet", "gossip", "--nodes", "20", "--degree", "6", "--rounds", "3", "--json"])
        #expect(status == 0, "\(err)")
        let document = try #require(try JSONSerialization.jsonObject(with: out) as? [String: Any])
        let messages = try #require(document["messages"] as? [String: Any])
        let votes = try #require(document["votes"] as? [String: Any])
        #expect(messages["delivered"] as? Int == 3 * 20 * 19 && messages["expected"] as? Int == 3 * 20 * 19)
        // Fewer copies than flooding the degree-6 graph (5 too many per delivery), even in 3 rounds under load.
        #expect((messages["duplicatesPerDelivery"] as? Double ?? 9) < 5)
        #expect(votes["certificates"] as? Int == 3 * 20)
        #expect(err.contains("votes: 60 of 60 certificates"))
        let (bad, _, badErr) = try run(try somaNode(), ["devnet", "gossip", "--nodes", "5", "--degree", "3"])
        #expect(bad != 0 && badErr.contains("nodes x degree even"), "\(badErr)")
    }

    @Test("RocksDB's own ldb lists the column families of a store soma-node wrote, and lz4 reads its blocks")
    func realTools() async throws {
        let dir = TempDir("ldb")
        defer { dir.cleanup() }
        let (status, output) = try somaNode(["devnet", "generate", "--profile", "tiny", "--out", dir.path])
        #expect(status == 0, "\(output)")
        guard let ldb = tool("ldb", "rocksdb_ldb") else {
            Issue.record("ldb (rocksdb-tools) is not installed; tools/test installs it")
            return
        }
        let (s, out, err) = try run(ldb, ["--db=\(dir.path)/db", "list_column_families"])
        let listed = String(decoding: out, as: UTF8.self)
        #expect(s == 0, "\(err)")
        for name in NodeStore.columnFamilyNames { #expect(listed.contains(name), "\(name) not in \(listed)") }
        // The watermarks and a summary as ldb sees them (the RocksDB part of the store).
        let (s2, out2, _) = try run(ldb, ["--db=\(dir.path)/db", "--column_family=watermarks", "scan"])
        #expect(s2 == 0)
        #expect(String(decoding: out2, as: UTF8.self).contains("highestExecuted"))
        let (s3, out3, err3) = try run(ldb, ["--db=\(dir.path)/db", "--column_family=summaries", "--key_hex", "--value_hex", "get", "0x0000000000000003"])
        #expect(s3 == 0, "\(err3)")
        let hexValue = String(decoding: out3, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines).replacingOccurrences(of: "0x", with: "")
        let summary = try CertifiedCheckpointSummary(bcsBytes: try #require(HexCoding.decode(hexValue)))
        #expect(summary.summary.sequenceNumber == 3)
        // The blocks live in history segments: `lz4 -dc` reads a closed one whole, and what it
        // prints is every block of its checkpoints, decompressed, in order.
        guard let lz4 = tool("lz4") else { return }
        var closed: [(first: UInt64, last: UInt64, data: String)] = []
        var expected: [[UInt8]] = []
        try await withStore(dir.path) { store in
            closed = store.segments.closedSegments().map { ($0.first, $0.last, $0.data) }
            guard let first = closed.first else { return }
            for seq in first.first...first.last {
                for frame in try await store.blockFrames(at: seq) { expected.append(try LZ4Frame.decompress(frame, limit: 1 << 28)) }
            }
        }
        #expect(closed.count >= 3, "the tiny chain's 4 epochs close 3 segments at least: \(closed)")
        let segment = try #require(closed.first)
        let (s4, raw, err4) = try run(lz4, ["-dc", segment.data])
        #expect(s4 == 0, "\(err4)")
        #expect(Array(raw) == expected.flatMap { $0 } && !expected.isEmpty)
        let data = try CheckpointData(bcsBytes: try #require(expected.first))
        #expect(data.sequenceNumber == segment.first)
    }

    @Test("`inspect` shows watermarks, a checkpoint, a transaction and an object, as text and JSON")
    func inspect() async throws {
        let dir = TempDir("inspect")
        defer { dir.cleanup() }
        #expect(try somaNode(["devnet", "generate", "--profile", "tiny", "--out", dir.path]).0 == 0)
        let (s, out) = try somaNode(["inspect", "--data", dir.path, "--json"])
        #expect(s == 0)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        let marks = try #require(json["watermarks"] as? [String: Any])
        #expect((marks["highestExecuted"] as? [String: Any])?["seq"] as? Int == 29)
        #expect((json["epochs"] as? [Any])?.count == 4)
        var txDigest = ""
        var objectID = ""
        try await withStore(dir.path) { store in
            let data = try #require(try await store.checkpointData(at: 12))
            txDigest = data.entries[1].transaction.digest.hex
            objectID = data.entries[1].outputObjects[0].id.hex
        }
        let (s2, cp) = try somaNode(["inspect", "--data", dir.path, "--checkpoint", "12", "--json"])
        #expect(s2 == 0 && cp.contains(txDigest))
        let (s3, tx) = try somaNode(["inspect", "--data", dir.path, "--transaction", txDigest])
        #expect(s3 == 0 && tx.contains("checkpoint         12") && tx.contains("object changes"), "\(tx)")
        let (sc, cpText) = try somaNode(["inspect", "--data", dir.path, "--checkpoint", "12"])
        #expect(sc == 0 && cpText.hasPrefix("checkpoint 12 (epoch ") && cpText.contains("1 part of ") && cpText.contains("bytes (LZ4 frames)"), "\(cpText)")
        let (ss, storeText) = try somaNode(["inspect", "--data", dir.path])
        #expect(ss == 0 && storeText.contains("watermarks\n  highestVerified ") && storeText.contains("epochs\n  epoch 0: checkpoints 0–"), "\(storeText)")
        let (s4, obj) = try somaNode(["inspect", "--data", dir.path, "--object", objectID, "--json"])
        #expect(s4 == 0 && obj.contains("liveVersion"), "\(obj)")
        let (s5, missing) = try somaNode(["inspect", "--data", dir.path, "--checkpoint", "999"])
        #expect(s5 != 0 && missing.contains("not in the store"))
        let (s6, bad) = try somaNode(["inspect", "--data", dir.path, "--object", "xyz"])
        #expect(s6 != 0 && bad.contains("64 hex"))
        let (s7, none) = try somaNode(["verify", "--data", dir.file("nothing-here")])
        #expect(s7 != 0 && none.contains("no store"))
    }
}

@Suite("Crash safety: kill -9 during an import", .serialized)
struct CrashTests {
    @Test(
        "an import killed with SIGKILL at random moments always reopens consistent, verifies, and resumes to the same store (archive; pruned, with the background pruner deleting segments)",
        arguments: ["archive", "pruned"])
    func killAndResume(mode: String) async throws {
        // A pruned import keeps one epoch: the pruner runs beside it (every 500 ms) and after it.
        let storeFlags = mode == "pruned" ? ["--mode", "pruned", "--retain-epochs", "1"] : []
        let wanted = mode == "pruned" ? 12 : 20
        let storeMode = StoreMode(rawValue: mode) ?? .archive
        let base = TempDir("crash")
        defer { base.cleanup() }
        let chain = base.file("chain.bin")
        let (s, o) = try somaNode(["devnet", "export", "--profile", "demo", "--checkpoints", "400", "--epochs", "4",
                                   "--transactions", "15", "--seed", "5", "--file", chain])
        #expect(s == 0, "\(o)")
        let data = base.file("node")
        let binary = try somaNode()
        var kills = 0
        var attempts = 0
        var previous: UInt64 = 0
        var rng = SystemRandomNumberGenerator()
        while kills < wanted && attempts < 80 {
            attempts += 1
            let p = Process()
            p.executableURL = URL(fileURLWithPath: binary)
            p.arguments = ["import", "--file", chain, "--data", data, "--batch", "25"] + storeFlags
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            let delay = Double.random(in: 0.05...0.9, using: &rng)
            try await Task.sleep(for: .milliseconds(Int(delay * 1000)))
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
            p.waitUntilExit()
            if p.terminationReason == .uncaughtSignal {
                kills += 1
            } else {
                // Finished before the kill landed: start over from an empty store to keep killing.
                #expect(p.terminationStatus == 0)
                try? FileManager.default.removeItem(atPath: data)
                previous = 0
                continue
            }
            guard FileManager.default.fileExists(atPath: data + "/db") else { continue }
            // Killed before the genesis was committed: an empty store is consistent too.
            var initialised = false
            try await withStore(data, mode: storeMode) { store in initialised = try await store.chainID() != nil }
            guard initialised else { continue }
            // The store reopens consistent: verify replays it all, and nothing went backwards.
            let (vs, vo) = try somaNode(["verify", "--data", data])
            #expect(vs == 0, "after kill \(kills): \(vo)")
            var synced: UInt64 = 0
            try await withStore(data, mode: storeMode) { store in synced = try await store.watermark(.highestSynced)?.seq ?? 0 }
            #expect(synced >= previous, "highestSynced went from \(previous) back to \(synced)")
            previous = synced
        }
        #expect(kills >= wanted)
        // Resume to the end, then compare with an import that was never interrupted.
        let (fs, fo) = try somaNode(["import", "--file", chain, "--data", data] + storeFlags)
        #expect(fs == 0, "\(fo)")
        let reference = base.file("reference")
        #expect(try somaNode(["import", "--file", chain, "--data", reference] + storeFlags).0 == 0)
        let (vs, vo) = try somaNode(["verify", "--data", data])
        #expect(vs == 0 && (mode == "pruned" || vo.contains("matching a replay from genesis")), "\(vo)")
        if mode == "pruned" {
            // Pruning went through: early history is gone, segments included.
            var lowest: UInt64 = 0
            try await withStore(data, mode: storeMode) { lowest = try await $0.watermark(.lowestAvailable)?.seq ?? 0 }
            #expect(lowest >= 200, "lowestAvailable \(lowest)")
        }
        var a: ([Watermark: WatermarkValue], [EpochRecord], [UInt64]) = ([:], [], [])
        var b = a
        try await withStore(data, mode: storeMode) { a = (try await $0.watermarks(), try await $0.epochs(), try await $0.snapshotEpochs()) }
        try await withStore(reference, mode: storeMode) { b = (try await $0.watermarks(), try await $0.epochs(), try await $0.snapshotEpochs()) }
        #expect(a.0 == b.0)
        #expect(a.1 == b.1)
        #expect(a.2 == b.2)
        #expect(a.0[.highestExecuted]?.seq == 399)
    }
}
