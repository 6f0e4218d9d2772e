import Foundation
import NIOCore
import NIOPosix
import SomaCore
import SomaDevnet
import SomaNet
import SomaNode
import SomaStore
import SomaSync
import SomaTestSupport
import Testing

/// Serves a store, optionally lying: every proof it sends names the wrong entry.
struct ProofServing: HistoryServing {
    let inner: HistoryService
    let lie: Bool

    func handle(method: UInt16, payload: [UInt8]) async -> Result<ByteBuffer, RPCError> {
        let answer = await inner.handle(method: method, payload: payload)
        guard lie, method == Method.getTransactions.rawValue, case .success(let buffer) = answer,
              var items = try? BCS.decode(ProvenItems<EntryWithProof>.self, fromContiguous: buffer.readableBytesView)
        else { return answer }
        items.items = items.items.map { item in
            guard var item else { return nil }
            item.proof.index ^= 1
            return item
        }
        return .success(ByteBuffer(bytes: items.bcsBytes))
    }

    func blockItem(seq: UInt64, part: UInt32) async -> Result<(ByteBuffer, UInt32)?, RPCError> {
        await inner.blockItem(seq: seq, part: part)
    }
}

@Suite("A node asks its peers for just the transactions and objects it misses", .serialized)
struct FetchTests {
    @Test("getTransactions and getObjects: answers are verified against the certified checkpoints this node holds; what no source holds is absent; a source whose proofs fail is not believed; requests are bounded")
    func fetch() async throws {
        let source = TempDir("fetch-source")
        defer { source.cleanup() }
        // The chain, whole, in the source's store; the asking node holds its first 150 checkpoints.
        let profile = DevnetProfile(name: "api", validators: 4, epochs: 4, checkpoints: 240, transactionsPerCheckpoint: 6, accounts: 24)
        let generator = ChainGenerator(profile: profile, seed: 14)
        let chain = await generator.generateAll(parallelism: 2)
        let store = try await NodeStore.open(path: source.file("db"))
        try await store.initialize(genesis: generator.genesis)
        try await store.commit(chain.map(\.verified))
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        func serve(lie: Bool) async throws -> (NetServer, PeerClient) {
            let server = try await NetServer.start(
                host: "127.0.0.1", port: 0, identity: HandshakeIdentity(key: SigningKey.generate(), chainID: generator.genesis.chainID),
                service: ProofServing(inner: HistoryService(store: store), lie: lie), group: group)
            let client = try await PeerClient.connect(
                host: "127.0.0.1", port: server.port, identity: HandshakeIdentity(key: SigningKey.generate(), chainID: generator.genesis.chainID),
                group: group)
            return (server, client)
        }
        let (honestServer, honest) = try await serve(lie: false)
        let (liarServer, liar) = try await serve(lie: true)
        let asking = try await APINode("fetch", committed: 150, sources: { [SourceOffer(label: "liar", client: liar), SourceOffer(label: "honest", client: honest)] })
        // Held by the asker (checkpoint 120) and not (the first checkpoints after 150 in the same epoch).
        let tip = chain[149].certified.summary.epoch
        let later = try #require(chain[150...].first { $0.certified.summary.epoch == tip && !$0.data.entries.isEmpty })
        let wanted = [chain[119].data.entries[0].transaction.digest, later.data.entries[0].transaction.digest]
        let unknown = Hashing.sha256(Array("no such transaction".utf8))
        let fetched = try await asking.node.fetchTransactions(wanted + [unknown])
        #expect(Set(fetched.keys) == Set(wanted))
        #expect(fetched[wanted[1]]?.checkpoint.summary.sequenceNumber == later.certified.summary.sequenceNumber)
        #expect(fetched[wanted[1]]?.effects == later.data.entries[0].effects)
        // Object versions, through the transaction that wrote them.
        let object = later.data.entries[0].outputObjects[0]
        let objects = try await asking.node.fetchObjects([ObjectQuery(id: object.id, version: object.version)])
        #expect(objects[ObjectQuery(id: object.id, version: object.version)]?.object == object)
        // The liar alone: nothing it says is believed.
        let alone = try await APINode("fetch-liar", committed: 150, sources: { [SourceOffer(label: "liar", client: liar)] })
        #expect(try await alone.node.fetchTransactions(wanted).isEmpty)
        // Its lie is refused by the verifier, not by the transport: the same answers unaltered verify.
        let items = try await liar.transactions(wanted)
        #expect(items.count == 2 && items.allSatisfy { $0 != nil })
        // Bounds: 0 or more than 64 digests are refused.
        await #expect(throws: (any Error).self) { try await honest.transactions([]) }
        await #expect(throws: (any Error).self) { try await honest.transactions(Array(repeating: unknown, count: 65)) }
        try await alone.stop()
        try await asking.stop()
        for c in [honest, liar] { await c.close() }
        for s in [honestServer, liarServer] { try? await s.close() }
        try? await group.shutdownGracefully()
        await store.close()
    }
}
