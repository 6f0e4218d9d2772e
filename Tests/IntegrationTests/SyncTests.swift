import Foundation
#if canImport(Glibc)
import Glibc
#endif
import SomaCore
import SomaStore
import SomaTestSupport
import Testing

@Suite("soma-node sync from real serving nodes", .serialized)
struct SyncTests {
    @Test("a fresh node given one seed discovers and catches up from all 3 serving nodes, spreads its requests over them, and ends with their watermarks and state root; a second run resumes from its peer table without seeds")
    func catchUpFromThree() async throws {
        let base = TempDir("sync")
        defer { base.cleanup() }
        let source = base.file("a")
        #expect(try somaNode(["devnet", "generate", "--profile", "demo", "--checkpoints", "400", "--epochs", "4", "--out", source]).0 == 0)
        #expect(try somaNode(["init", "--data", source]).0 == 0)
        for copy in ["b", "c"] {
            // The same chain, but a node key of its own (a copied key would be the same peer).
            try FileManager.default.copyItem(atPath: source, toPath: base.file(copy))
            try FileManager.default.removeItem(atPath: base.file(copy) + "/node.key")
            #expect(try somaNode(["init", "--data", base.file(copy)]).0 == 0)
        }
        // a knows no one; b and c know a (discovery connects all three).
        let first = try RunningNode(data: source)
        let nodes = try [first] + ["b", "c"].map { try RunningNode(data: base.file($0), arguments: ["--peer", first.address]) }
        defer { nodes.forEach { $0.stop() } }
        // Wait until a has heard of both (its table is persisted every round; `peers` reads it beside the node).
        var known = 0
        for _ in 0..<100 where known < 2 {
            try await Task.sleep(for: .milliseconds(100))
            let (_, json) = try somaNode(["peers", "--data", source, "--json"])
            known = (try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])?["known"] as? Int ?? 0
        }
        #expect(known == 2)
        let fresh = base.file("fresh")
        // First up to 150 from one seed, then the rest with no seed: the second run finds its
        // sources in the peer table the first one persisted, and resumes after highestSynced.
        let (s1, o1) = try somaNode(["sync", "--data", fresh, "--genesis", source + "/genesis.bcs", "--until", "150", "--peer", first.address])
        #expect(s1 == 0, "\(o1)")
        #expect(o1.contains("tip 150"), "\(o1)")
        #expect(o1.contains("discovery: connected to 3 peers"), "\(o1)")
        let (ps, po) = try somaNode(["peers", "--data", fresh, "--json"])
        let table = try JSONSerialization.jsonObject(with: Data(po.utf8)) as? [String: Any]
        #expect(ps == 0 && table?["known"] as? Int == 3 && table?["direct"] as? Int == 3, "\(po)")
        let (s2, o2) = try somaNode(["sync", "--data", fresh])
        #expect(s2 == 0, "\(o2)")
        #expect(o2.contains("synced 249 checkpoints"), "\(o2)")
        #expect(o2.contains("discovery: connected to 3 peers"), "\(o2)")
        // Every peer served blocks: "  peer HOST:PORT: N checkpoints, ...".
        #expect(o1.contains("from 3 of 3 sources"), "\(o1)")
        for node in nodes {
            let line = o1.split(separator: "\n").first { $0.contains("peer \(node.address): ") }.map(String.init) ?? ""
            let count = line.components(separatedBy: ": ").dropFirst().first?.split(separator: " ").first.flatMap { Int($0) } ?? 0
            #expect(count > 0, "\(line)")
        }
        let (vs, vo) = try somaNode(["verify", "--data", fresh])
        #expect(vs == 0 && vo.contains("matching a replay from genesis"), "\(vo)")
        // Discovery's metrics, as Prometheus scrapes them from a.
        let port = try #require(first.httpPort)
        let (_, scrape, _) = try run("/usr/bin/curl", ["-s", "http://127.0.0.1:\(port)/metrics"])
        let metrics = String(decoding: scrape, as: UTF8.self)
        #expect(metrics.contains("soma_discovery_known_peers") && metrics.contains("soma_discovery_connections"), "\(metrics)")
        #expect(metrics.contains("soma_discovery_dials_total{outcome=\"connected\"}"), "\(metrics)")
        nodes.forEach { $0.stop() }
        var a: ([Watermark: WatermarkValue], [EpochRecord]) = ([:], [])
        var b = a
        let sourceStore = try await NodeStore.open(path: source + "/db")
        a = (try await sourceStore.watermarks(), try await sourceStore.epochs())
        await sourceStore.close()
        let freshStore = try await NodeStore.open(path: fresh + "/db")
        b = (try await freshStore.watermarks(), try await freshStore.epochs())
        await freshStore.close()
        #expect(a.0 == b.0)
        #expect(a.1 == b.1)
    }

    @Test("in a 6-node network (5 serving nodes that know only the first), a fresh node given the last one as its only seed finds all 5 and syncs from every one of them")
    func sixNodeNetwork() async throws {
        let base = TempDir("sync-six")
        defer { base.cleanup() }
        let source = base.file("n0")
        #expect(try somaNode(["devnet", "generate", "--profile", "demo", "--checkpoints", "480", "--epochs", "3", "--out", source]).0 == 0)
        #expect(try somaNode(["init", "--data", source]).0 == 0)
        for i in 1..<5 {
            try FileManager.default.copyItem(atPath: source, toPath: base.file("n\(i)"))
            try FileManager.default.removeItem(atPath: base.file("n\(i)") + "/node.key")
            #expect(try somaNode(["init", "--data", base.file("n\(i)")]).0 == 0)
        }
        let first = try RunningNode(data: source)
        let nodes = try [first] + (1..<5).map { try RunningNode(data: base.file("n\($0)"), arguments: ["--peer", first.address]) }
        defer { nodes.forEach { $0.stop() } }
        // The seed of the fresh node is the last one, which has heard of the others through the first.
        var known = 0
        for _ in 0..<150 where known < 4 {
            try await Task.sleep(for: .milliseconds(100))
            let (_, json) = try somaNode(["peers", "--data", base.file("n4"), "--json"])
            known = (try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])?["known"] as? Int ?? 0
        }
        #expect(known == 4)
        let fresh = base.file("fresh")
        let (s, o) = try somaNode(["sync", "--data", fresh, "--genesis", source + "/genesis.bcs", "--peer", nodes[4].address, "--window", "16"])
        #expect(s == 0, "\(o)")
        #expect(o.contains("discovery: connected to 5 peers") && o.contains("from 5 of 5 sources"), "\(o)")
        for node in nodes {
            let line = o.split(separator: "\n").first { $0.contains("peer \(node.address): ") }.map(String.init) ?? ""
            let count = line.components(separatedBy: ": ").dropFirst().first?.split(separator: " ").first.flatMap { Int($0) } ?? 0
            #expect(count > 0, "\(line)")
        }
        let (vs, vo) = try somaNode(["verify", "--data", fresh])
        #expect(vs == 0 && vo.contains("matching a replay from genesis"), "\(vo)")
    }

    @Test("sync killed (SIGKILL) at random moments resumes each time from highestSynced, never fetching committed checkpoints again, verifies after every kill, and ends equal to the source")
    func killAndRestart() async throws {
        let base = TempDir("sync-kill")
        defer { base.cleanup() }
        let source = base.file("a")
        #expect(try somaNode(["devnet", "generate", "--profile", "demo", "--checkpoints", "1200", "--out", source]).0 == 0)
        #expect(try somaNode(["init", "--data", source]).0 == 0)
        let node = try RunningNode(data: source)
        defer { node.stop() }
        let fresh = base.file("fresh")
        let arguments = ["sync", "--data", fresh, "--genesis", source + "/genesis.bcs", "--peer", node.address, "--window", "2"]
        // The kills land between a fifth and three fifths of an uninterrupted sync's time on this
        // machine (timed once into another store): a faster sync is still caught mid-way.
        let probe = ["sync", "--data", base.file("probe"), "--genesis", source + "/genesis.bcs", "--peer", node.address, "--window", "2"]
        let started = ContinuousClock.now
        #expect(try somaNode(probe).0 == 0)
        let d = started.duration(to: .now)
        let ms = Int(d.components.seconds) * 1_000 + Int(d.components.attoseconds / 1_000_000_000_000_000)
        var previous: UInt64 = 0
        let kills = try await killRepeatedly(arguments, attempts: 6, maxKills: 3, delayMs: max(100, ms / 5)...max(200, ms * 3 / 5), stepMs: max(50, ms / 10)) {
            let store = try await NodeStore.open(path: fresh + "/db")
            let synced = try await store.watermark(.highestSynced)?.seq ?? 0
            let initialised = try await store.chainID() != nil
            await store.close()
            guard initialised else { return .missed }
            #expect(synced >= previous, "highestSynced went back from \(previous) to \(synced)")
            previous = synced
            // The store verifies right after the kill, not only at the end: summaries stored
            // ahead of their blocks come with the committees that verify them, and the
            // segments agree with the watermarks.
            let (vs, vo) = try somaNode(["verify", "--data", fresh])
            #expect(vs == 0 && vo.contains("verify: OK"), "after a kill at \(synced): \(vo)")
            return .caught
        }
        #expect(kills >= 1, "the sync was never caught mid-way")
        let (s, o) = try somaNode(arguments)
        #expect(s == 0, "\(o)")
        // The last run fetched exactly what was not committed.
        #expect(o.contains("synced \(1199 - previous) checkpoints"), "after \(previous): \(o)")
        let (vs, vo) = try somaNode(["verify", "--data", fresh])
        #expect(vs == 0 && vo.contains("matching a replay from genesis"), "\(vo)")
    }

    @Test("sync refuses peers on another chain and reports when none is reachable")
    func wrongChain() async throws {
        let base = TempDir("sync-chain")
        defer { base.cleanup() }
        #expect(try somaNode(["devnet", "generate", "--profile", "tiny", "--out", base.file("a")]).0 == 0)
        #expect(try somaNode(["init", "--data", base.file("a")]).0 == 0)
        #expect(try somaNode(["devnet", "generate", "--profile", "tiny", "--seed", "9", "--out", base.file("other")]).0 == 0)
        let node = try RunningNode(data: base.file("a"))
        defer { node.stop() }
        let (s, o) = try somaNode(["sync", "--data", base.file("fresh"), "--genesis", base.file("other") + "/genesis.bcs", "--peer", node.address])
        #expect(s != 0)
        #expect(o.contains("chain") && o.contains("no peer could be reached"), "\(o)")
    }
}
