import ArgumentParser
import Foundation
import SomaCore
import SomaDiscovery
import SomaStore

struct Peers: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the node's persistent peer table: addresses, role, held ranges, scores, bans.",
        discussion: """
            Reads the `peers` column family of DIR/db read-only, so it works beside a running node \
            (it shows what the node had written when the command started; the node persists its \
            table every discovery round). --json prints one JSON object for scripts.
            """)

    @Option(help: "The node's data directory.")
    var data: String
    @Flag(help: "Print JSON instead of a table.")
    var json = false

    func run() async throws {
        let path = DataDirectory(root: data).database
        guard FileManager.default.fileExists(atPath: path) else { throw CLIError("no store at \(path): give --data the directory of a node (one that `soma-node run` or `sync` used)") }
        var config = StoreConfiguration()
        config.database.readOnly = true
        let store = try await NodeStore.open(path: path, configuration: config)
        let records: [PeerRecord]
        var undecodable = 0
        do {
            var out: [PeerRecord] = []
            for (_, value) in try await store.peerRecords() {
                if let r = try? PeerRecord(bcsBytes: value) { out.append(r) } else { undecodable += 1 }
            }
            records = out
        } catch {
            await store.close()
            throw error
        }
        await store.close()
        let now = Discovery.nowMs()
        let summaries = records.sorted { a, b in
            if a.direct != b.direct { return a.direct }
            return a.lastSeenMs > b.lastSeenMs
        }.map { PeerSummary($0, nowMs: now) }
        if json {
            struct Output: Encodable {
                let peers: [PeerSummary]
                let known: Int
                let direct: Int
                let banned: Int
                let undecodable: Int
            }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            let out = Output(
                peers: summaries, known: summaries.count, direct: summaries.filter(\.direct).count,
                banned: summaries.filter { $0.bannedUntilMs != nil }.count, undecodable: undecodable)
            print(String(decoding: try encoder.encode(out), as: UTF8.self))
            return
        }
        print("\(summaries.count) known peers (\(summaries.filter(\.direct).count) dialled, \(summaries.filter { $0.bannedUntilMs != nil }.count) banned)\(undecodable > 0 ? ", \(undecodable) undecodable records" : "")")
        guard !summaries.isEmpty else { return }
        print("PEER              ADDRESS                 ROLE      ACCESS   HOLDS             SEEN   MB/S   RTT  FAIL  STATUS")
        for s in summaries {
            let seen = now > s.lastSeenMs ? ago((now - s.lastSeenMs) / 1_000) : "now"
            let status = s.bannedUntilMs.map { "banned \(ago(($0 - min($0, now)) / 1_000)): \(s.banReason ?? "")" }
                ?? (s.direct ? "dialled" : s.introducer.hasPrefix("inbound") ? s.introducer : "introduced by \(s.introducer.prefix(8))")
            let mbps = s.throughput > 0 ? format(Double(s.throughput) / 1e6) : "-"
            let rtt = s.latencyMs > 0 ? "\(s.latencyMs)ms" : "-"
            print([
                pad(String(s.peerID.prefix(16)), 17), pad(s.addresses.first ?? "-", 23), pad(s.role, 9), pad(s.access, 8),
                pad(s.holds.joined(separator: ","), 17), pad(seen, 6), pad(mbps, 6), pad(rtt, 5), pad("\(s.failures)", 5), status,
            ].joined(separator: " "))
        }
    }

    func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }

    func ago(_ seconds: UInt64) -> String {
        seconds < 120 ? "\(seconds)s" : seconds < 7_200 ? "\(seconds / 60)m" : seconds < 172_800 ? "\(seconds / 3_600)h" : "\(seconds / 86_400)d"
    }
}
