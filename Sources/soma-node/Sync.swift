import ArgumentParser
import Foundation
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
            and commits in order with execution and the state-root check at every epoch end. A stop \
            or crash resumes after the store's highestSynced.
            """)

    @Option(help: "The node's data directory (created if missing).")
    var data: String
    @Option(help: "The chain's genesis file (default: DIR/genesis.bcs).")
    var genesis: String?
    @Option(help: "A peer to sync from, HOST:PORT (repeat for several).")
    var peer: [String] = []
    @Option(help: "The checkpoint to stop at, or `latest`.")
    var until = "latest"
    @Option(help: "Block streams in flight.")
    var window = 8

    func validate() throws {
        guard !peer.isEmpty else { throw ValidationError("give at least one --peer HOST:PORT") }
        for p in peer {
            guard let colon = p.lastIndex(of: ":"), Int(p[p.index(after: colon)...]) != nil, colon != p.startIndex else {
                throw ValidationError("--peer takes HOST:PORT, not \(p)")
            }
        }
        guard until == "latest" || UInt64(until) != nil else { throw ValidationError("--until takes a checkpoint number or latest") }
        guard window >= 1 && window <= 256 else { throw ValidationError("--window must be 1...256") }
    }

    func run() async throws {
        let start = ContinuousClock.now
        let config = NodeConfiguration(dataDirectory: data)
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
        for p in peer {
            let colon = p.lastIndex(of: ":")!
            let host = String(p[..<colon])
            let port = Int(p[p.index(after: colon)...])!
            do {
                clients.append(try await PeerClient.connect(
                    host: host, port: port, identity: HandshakeIdentity(key: key, chainID: chainGenesis.chainID), group: group))
            } catch {
                print("peer \(p): \(error)")
            }
        }
        guard !clients.isEmpty else {
            try? await group.shutdownGracefully()
            throw CLIError("no peer could be reached")
        }
        let store = try await NodeStore.open(path: config.databasePath)
        do {
            var sync = PeerSync(store: store, genesis: chainGenesis, peers: clients)
            sync.window = window
            let report = try await sync.catchUp(until: UInt64(until)) { seq in
                let secs = elapsed(since: start)
                print("  synced up to checkpoint \(seq) (\(format(Double(seq) / secs, 0)) checkpoints/s)")
            }
            let secs = elapsed(since: start)
            print("synced \(report.checkpoints) checkpoints (\(report.transactions) transactions, \(format(Double(report.rawBytes) / 1e6)) MB) from \(clients.count) peers in \(format(secs)) s; tip \(report.tip)")
            print("  block streams per peer: " + zip(peer, report.streamsPerPeer).map { "\($0) \($1)" }.joined(separator: ", "))
            if let root = try await store.epochs().last(where: { $0.stateRoot != nil }) {
                print("  state root    \(root.stateRoot!.hex) (epoch \(root.epoch), \(root.liveObjectCount ?? 0) live objects)")
            }
        } catch {
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
