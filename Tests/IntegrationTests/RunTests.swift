import Foundation
import NIOPosix
import SomaCore
import SomaNet
import SomaStore
import SomaTestSupport
import Testing

@Suite("soma-node run", .serialized)
struct RunTests {
    @Test("`run` serves every RPC of the demo chain to a peer that verifies what it gets, and stops cleanly on SIGTERM, store intact")
    func serveAndStop() async throws {
        let dir = TempDir("run")
        defer { dir.cleanup() }
        #expect(try somaNode(["devnet", "generate", "--profile", "demo", "--out", dir.path]).0 == 0)
        #expect(try somaNode(["init", "--data", dir.path]).0 == 0)
        let node = try RunningNode(data: dir.path)
        let process = node.process
        let port = try #require(node.address.split(separator: ":").last.flatMap { Int($0) }, "\(node.address)")
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let genesis = try Genesis(bcsBytes: Array(try Data(contentsOf: URL(fileURLWithPath: dir.file("genesis.bcs")))))
        let client = try await PeerClient.connect(
            host: "127.0.0.1", port: port, identity: HandshakeIdentity(key: SigningKey.generate(), chainID: genesis.chainID), group: group)
        let availability = try await client.availability()
        #expect(availability.highestSynced == 1_999 && availability.lowestAvailable == 0 && availability.snapshotEpochs == [1, 2])
        // The epoch chain, then every summary in two batches: one quorum check each.
        let ends = try await client.epochEndings(from: 0)
        let committees = try ChainVerifier.verifyEpochChain(genesis: genesis.committee, endOfEpochSummaries: ends)
        #expect(committees.count == 4)
        var tip: VerifiedTip? = nil
        var summaries: [CheckpointSummary] = []
        for from in [UInt64(0), 1_000] {
            let batch = try await client.summaries(from: from, count: 1_000)
            tip = try ChainVerifier.verifySummaryBatch(batch.batch, after: tip, committee: { $0 < committees.count ? committees[Int($0)] : nil })
            summaries += batch.summaries
        }
        #expect(tip?.summary.sequenceNumber == 1_999)
        // Blocks, one by one and streamed, each verified against its certified summary.
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<40 {
            let seq = UInt64.random(in: 1...1_999, using: &rng)
            let data = try CheckpointData(bcsBytes: try LZ4Frame.decompress(try await client.block(seq).frame, limit: 1 << 26))
            try BlockVerifier.verify(data, summary: summaries[Int(seq)], entryCount: summaries[Int(seq)].networkTotalTransactions - summaries[Int(seq) - 1].networkTotalTransactions)
        }
        for item in try await client.blocks(from: 1_500, count: 32) {
            let data = try CheckpointData(bcsBytes: try LZ4Frame.decompress(item.block.frame, limit: 1 << 26))
            try BlockVerifier.verify(data, summary: summaries[Int(item.seq)])
        }
        // A snapshot chunk proven against the certified state root of epoch 2.
        let manifest = try await client.snapshotManifest(epoch: 2)
        let end = try #require(ends[2].summary.endOfEpoch)
        #expect(manifest.stateRoot == end.stateRoot)
        let chunk = try await client.snapshotChunk(epoch: 2, index: 3)
        let objects = try BCS.read(from: try LZ4Frame.decompress(chunk.frame, limit: 1 << 26)[...]) { (r: inout BCSReader) throws(CoreError) in
            try r.readVector(Object.self, minElementSize: 75)
        }
        try Merkle.verifySubtree(chunkLeafHashes: objects.map { $0.reference.leafHash }, chunk: 3, chunkSize: manifest.chunkSize,
                                 treeSize: end.liveObjectCount, proof: chunk.proof, root: end.stateRoot)
        process.terminate()  // SIGTERM
        process.waitUntilExit()
        #expect(process.terminationReason == .exit && process.terminationStatus == 0)
        await client.close()
        try await group.shutdownGracefully()
        let (status, output) = try somaNode(["verify", "--data", dir.path])
        #expect(status == 0 && output.contains("verify: OK"), "\(output)")
        // Without a node key, run refuses with a clear message.
        try FileManager.default.removeItem(atPath: dir.file("node.key"))
        let (s2, o2) = try somaNode(["run", "--data", dir.path, "--listen", "127.0.0.1:0"])
        #expect(s2 != 0 && o2.contains("soma-node init"), "\(o2)")
    }
}
