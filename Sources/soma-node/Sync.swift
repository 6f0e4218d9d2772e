import ArgumentParser
import Foundation
import NIOCore
import NIOPosix
import SomaCore
import SomaNet
import SomaNode
import SomaStore
import SomaSync

struct Sync: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Catch a store up from peers, verifying everything, then exit.",
        discussion: """
            Verifies the epoch chain, every summary batch (one quorum check each) and every block, \
            and commits in order with execution and the state-root check at every epoch end. Blocks \
            come from all peers at once, by measured throughput; a peer that sends anything that \
            fails verification is banned and its work goes to the others. A stop or crash resumes \
            after the store's highestSynced. Shows a progress bar on a terminal, log lines otherwise.
            """)

    @Option(help: "The node's data directory (created if missing).")
    var data: String
    @Option(help: "The chain's genesis file (default: DIR/genesis.bcs).")
    var genesis: String?
    @Option(help: "A peer to sync from, HOST:PORT (repeat for several).")
    var peer: [String] = []
    @Option(help: "The checkpoint to stop at, or `latest`.")
    var until = "latest"
    @Option(help: "Block requests in flight over all peers.")
    var window = 12
    @Option(help: "Seconds without an answer (or between two streamed blocks) before a request counts as stalled.")
    var timeout = 10
    @Option(help: "Store mode: archive (all history) or pruned.")
    var mode = "archive"
    @Flag(help: "Check the signatures of every certificate, not one per batch.")
    var verifyAllCertificates = false

    func validate() throws {
        guard !peer.isEmpty else { throw ValidationError("give at least one --peer HOST:PORT") }
        for p in peer {
            guard let colon = p.lastIndex(of: ":"), let port = Int(p[p.index(after: colon)...]), (1...65_535).contains(port),
                  colon != p.startIndex
            else {
                throw ValidationError("--peer takes HOST:PORT, not \(p)")
            }
        }
        guard until == "latest" || UInt64(until) != nil else { throw ValidationError("--until takes a checkpoint number or latest") }
        guard window >= 1 && window <= 256 else { throw ValidationError("--window must be 1...256") }
        guard timeout >= 1 && timeout <= 3_600 else { throw ValidationError("--timeout must be 1...3600 seconds") }
        guard StoreMode(rawValue: mode) != nil else { throw ValidationError("--mode takes archive or pruned") }
    }

    func run() async throws {
        let start = ContinuousClock.now
        var config = NodeConfiguration(dataDirectory: data)
        config.store.mode = StoreMode(rawValue: mode)!
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        guard let bytes = FileManager.default.contents(atPath: genesis ?? config.genesisPath) else {
            throw CLIError("no genesis at \(genesis ?? config.genesisPath): give --genesis FILE")
        }
        let chainGenesis: Genesis
        do {
            chainGenesis = try Genesis(bcsBytes: Array(bytes))
            try chainGenesis.verify()
        } catch {
            throw CLIError("the genesis does not verify: \(error)")
        }
        try writeGenesis(chainGenesis, to: DataDirectory(root: data))
        let key = (try? NodeKey.load(from: config.keyPath)) ?? SigningKey.generate()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        var clients: [PeerClient] = []
        var labels: [String] = []
        for p in peer {
            let colon = p.lastIndex(of: ":")!
            do {
                clients.append(try await PeerClient.connect(
                    host: String(p[..<colon]), port: Int(p[p.index(after: colon)...])!,
                    identity: HandshakeIdentity(key: key, chainID: chainGenesis.chainID), group: group))
                labels.append(p)
            } catch {
                print("peer \(p): \(error)")
            }
        }
        guard !clients.isEmpty else {
            try? await group.shutdownGracefully()
            throw CLIError("no peer could be reached")
        }
        let store = try await NodeStore.open(path: config.databasePath, configuration: config.store)
        let display = ProgressDisplay()
        do {
            var settings = SyncConfiguration()
            settings.window = window
            settings.requestTimeout = .seconds(Int64(timeout))
            settings.verifyAllCertificates = verifyAllCertificates
            let terminal = display.terminal
            let pool = SourcePool(
                clients: clients, labels: labels, perSourceInFlight: settings.perSourceInFlight,
                banDuration: settings.banDuration, stallBanDuration: settings.stallBanDuration,
                onBan: { label, reason in
                    print("\(terminal ? "\r\u{1B}[K" : "")peer \(label) banned: \(reason)")
                })
            let sync = PeerSync(store: store, genesis: chainGenesis, pool: pool, configuration: settings)
            let report = try await sync.catchUp(until: UInt64(until)) { display.update($0) }
            display.finish()
            let secs = elapsed(since: start)
            let used = report.sources.filter { $0.checkpoints > 0 }.count
            print("synced \(report.checkpoints) checkpoints (\(report.transactions) transactions, \(format(Double(report.rawBytes) / 1e6)) MB) from \(used) of \(clients.count) peers in \(format(secs)) s (\(format(Double(report.checkpoints) / secs, 0)) checkpoints/s, \(format(Double(report.rawBytes) / 1e6 / secs)) MB/s); tip \(report.tip)")
            print("  \(report.quorumChecks) summary batches quorum-checked, \(report.hedges) hedged requests")
            for s in report.sources { print("  peer \(s)") }
            if let root = try await store.epochs().last(where: { $0.stateRoot != nil }) {
                print("  state root    \(root.stateRoot!.hex) (epoch \(root.epoch), \(root.liveObjectCount ?? 0) live objects)")
            }
        } catch {
            display.finish()
            for c in clients { await c.close() }
            try? await group.shutdownGracefully()
            await store.close()
            throw error
        }
        for c in clients { await c.close() }
        try? await group.shutdownGracefully()
        await store.close()
    }
}
