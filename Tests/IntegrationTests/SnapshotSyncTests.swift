import Foundation
import SomaStore
import SomaTestSupport
import Testing

@Suite("soma-node sync --snapshot against a real serving node", .serialized)
struct SnapshotSyncTests {
    /// The store's restore progress: chunks written and whether the restore is complete.
    func progress(_ dir: String) async throws -> (done: Int, chunks: Int?, finished: Bool) {
        guard FileManager.default.fileExists(atPath: dir + "/db") else { return (0, nil, false) }
        var config = StoreConfiguration()
        config.adoptStoredMode = true
        let store = try await NodeStore.open(path: dir + "/db", configuration: config)
        let state = try await store.restoreState()
        let restored = try await store.restoredEpoch()
        await store.close()
        if let state { return (state.done.count, state.manifest.chunkRoots.count, false) }
        return (0, nil, restored != nil)
    }

    @Test("a restore killed (SIGKILL) at random moments verifies right after each kill, resumes with the chunks it wrote, fetches none of them again, and ends at the certified state root")
    func killAndRestart() async throws {
        let base = TempDir("snapshot-kill")
        defer { base.cleanup() }
        let source = base.file("a")
        #expect(try somaNode(["devnet", "generate", "--profile", "demo", "--checkpoints", "1200", "--snapshot-chunk-objects", "128", "--out", source]).0 == 0)
        #expect(try somaNode(["init", "--data", source]).0 == 0)
        // A slow peer, so that the restore takes a few seconds (at 1.5 MB/s it once ended
        // before the first kill at 0.6 s).
        try "net:\n  uploadBytesPerSecondPerPeer: 700000\n".write(toFile: source + "/soma-node.yaml", atomically: true, encoding: .utf8)
        let node = try RunningNode(data: source)
        defer { node.stop() }
        let fresh = base.file("fresh")
        let arguments = ["sync", "--data", fresh, "--genesis", source + "/genesis.bcs", "--peer", node.address, "--snapshot", "latest"]
        var previous = 0
        var chunks: Int? = nil
        let kills = try await killRepeatedly(arguments, attempts: 8, maxKills: 3, delayMs: 600...1_400, stepMs: 100) {
            let now = try await progress(fresh)
            if now.finished { return .finished }
            guard now.chunks != nil else { return .missed }
            chunks = now.chunks
            #expect(now.done >= previous, "written chunks went back from \(previous) to \(now.done)")
            previous = now.done
            // The store right after the kill verifies: the restore's chain, manifest and every
            // chunk written so far, against the certified state root.
            let (vs, vo) = try somaNode(["verify", "--data", fresh])
            #expect(vs == 0 && vo.contains("restore of epoch 2 is in progress") && vo.contains("\(now.done) of"), "\(vo)")
            return .caught
        }
        #expect(kills >= 2, "the restore was caught mid-way only \(kills) times")
        let (s, o) = try somaNode(arguments)
        #expect(s == 0, "\(o)")
        if let chunks {
            #expect(o.contains("\(previous) of \(chunks) chunks already written"), "\(o)")
            #expect(o.contains("\(chunks - previous) fetched"), "after \(previous) of \(chunks): \(o)")
        }
        #expect(o.contains("restored epoch 2's snapshot (checkpoint 1199)"), "\(o)")
        let (vs, vo) = try somaNode(["verify", "--data", fresh])
        #expect(vs == 0 && vo.contains("verify: OK"), "\(vo)")
        // The restored live set makes the root the source computed by executing all of history.
        let root = { (dir: String) throws -> String in
            let (_, out) = try somaNode(["inspect", "--data", dir, "--checkpoint", "1199", "--json"])
            return out.replacingOccurrences(of: " ", with: "").components(separatedBy: "\"stateRoot\":\"").dropFirst().first?.prefix(64).description ?? ""
        }
        #expect(try root(fresh) == root(source) && !(try root(source)).isEmpty)
    }

    @Test("--snapshot refuses an archive store, and names the epochs served when the one asked for is not")
    func refusals() async throws {
        let base = TempDir("snapshot-refuse")
        defer { base.cleanup() }
        let source = base.file("a")
        #expect(try somaNode(["devnet", "generate", "--profile", "tiny", "--out", source]).0 == 0)
        #expect(try somaNode(["init", "--data", source]).0 == 0)
        let node = try RunningNode(data: source)
        defer { node.stop() }
        let (s1, o1) = try somaNode(["sync", "--data", base.file("f1"), "--genesis", source + "/genesis.bcs", "--peer", node.address, "--snapshot", "latest", "--mode", "archive"])
        #expect(s1 != 0 && o1.contains("--mode pruned"), "\(o1)")
        let (s2, o2) = try somaNode(["sync", "--data", base.file("f2"), "--genesis", source + "/genesis.bcs", "--peer", node.address, "--snapshot", "0"])
        #expect(s2 != 0 && o2.contains("no source serves the snapshot of epoch 0 (served: 1, 2)"), "\(o2)")
    }
}
