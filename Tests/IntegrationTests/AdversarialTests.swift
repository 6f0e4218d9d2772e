import Foundation
import NIOCore
import NIOPosix
import SomaCore
import SomaNet
import SomaStore
import SomaTestSupport
import Synchronization
import Testing

/// Counts raw connections the node closed.
final class ClosedCounter: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    final class Count: Sendable { let value = Atomic<Int>(0) }
    let closed: Count

    init(_ closed: Count) { self.closed = closed }
    func channelInactive(context: ChannelHandlerContext) { closed.value.add(1, ordering: .relaxed) }
    func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
}

@Suite("A hostile peer against a real `soma-node run`", .serialized)
struct AdversarialTests {
    /// Every request with the extreme values of its fields, malformed payloads and forged
    /// pushes: each is answered with an error or closes that connection; the node never crashes,
    /// serves an honest peer throughout, and its store verifies afterwards.
    @Test("extreme values of every request field, garbage payloads, forged and malformed pushes, a thousand connections")
    func hostilePeer() async throws {
        let dir = TempDir("adversarial")
        defer { dir.cleanup() }
        #expect(try somaNode(["devnet", "generate", "--profile", "tiny", "--out", dir.path]).0 == 0)
        #expect(try somaNode(["init", "--data", dir.path]).0 == 0)
        let node = try RunningNode(data: dir.path)
        defer { node.stop() }
        let port = try #require(node.address.split(separator: ":").last.flatMap { Int($0) }, "\(node.address)")
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let genesis = try Genesis(bcsBytes: Array(try Data(contentsOf: URL(fileURLWithPath: dir.file("genesis.bcs")))))
        let connect = { try await PeerClient.connect(host: "127.0.0.1", port: port, identity: HandshakeIdentity(key: SigningKey.generate(), chainID: genesis.chainID), group: group) }
        let honest = try await connect()
        var hostile = try await connect()

        let big = UInt64.max, big32 = UInt32.max
        var requests: [(Method, [UInt8])] = [
            (.getAvailability, [1]),
            (.getKnownPeers, [0xFF]),
            (.getEpochEndings, EpochEndingsRequest(fromEpoch: big, max: big32).bcsBytes),
            (.getEpochEndings, EpochEndingsRequest(fromEpoch: 0, max: 0).bcsBytes),
            (.getEpochEndings, EpochEndingsRequest(fromEpoch: 0, max: big32).bcsBytes),
            (.getSummaries, SummariesRequest(from: big, count: big32, allCertificates: true).bcsBytes),
            (.getSummaries, SummariesRequest(from: big - 5, count: 1_000, allCertificates: true).bcsBytes),
            (.getSummaries, SummariesRequest(from: 0, count: 0, allCertificates: false).bcsBytes),
            (.getSummaries, SummariesRequest(from: 29, count: 1_000, allCertificates: true).bcsBytes),
            (.getBlock, BlockRequest(seq: big, part: big32).bcsBytes),
            (.getBlock, BlockRequest(seq: 5, part: big32).bcsBytes),
            (.getSnapshotManifest, SnapshotRequest(epoch: big, index: big32).bcsBytes),
            (.getSnapshotChunk, SnapshotRequest(epoch: big, index: big32).bcsBytes),
            (.getSnapshotChunk, SnapshotRequest(epoch: 1, index: big32).bcsBytes),
            (.getBlocks, BlocksRequest(from: big, count: 32).bcsBytes),
            (.getBlocks, BlocksRequest(from: big - 3, count: 32).bcsBytes),
            (.getBlocks, BlocksRequest(from: 0, count: big32).bcsBytes),
            (.getBlocks, BlocksRequest(from: 0, count: 0).bcsBytes),
            (.gossip, [UInt8](repeating: 0xFF, count: 64)),
            (.hello, []), (.helloProof, []), (.goodbye, []), (.pushCheckpoint, []),
        ]
        // Truncated, trailing and oversized-length payloads of every request type.
        for method in [Method.getEpochEndings, .getSummaries, .getBlock, .getSnapshotManifest, .getSnapshotChunk, .getBlocks] {
            requests.append((method, []))
            requests.append((method, [0x01]))
            requests.append((method, [UInt8](repeating: 0xFF, count: 40)))
            requests.append((method, BlockRequest(seq: 1, part: 0).bcsBytes + [0]))
        }
        var refused = 0
        for (method, payload) in requests {
            do {
                _ = try await hostile.call(method, payload)
            } catch is RPCError {
                refused += 1
            }
        }
        // Three are within bounds and answered: getKnownPeers (its payload is not read),
        // epoch endings from 0 (capped at 100) and summaries from the tip (one summary).
        #expect(refused == requests.count - 3, "\(refused) of \(requests.count) refused")
        #expect(try await honest.availability().highestSynced == 29)

        // A forged push (a real summary with its sequence number and epoch at the extreme) is a
        // hint the node checks and drops; a malformed one closes that connection.
        let ends = try await honest.epochEndings(from: 0)
        var forged = try #require(ends.first)
        forged.summary.sequenceNumber = big
        forged.summary.epoch = big
        hostile.push(forged)
        hostile.send(.pushCheckpoint, [0xFF, 0xFF, 0xFF])
        try await Task.sleep(for: .milliseconds(500))
        #expect(!hostile.isConnected)
        hostile = try await connect()
        #expect(try await hostile.availability().highestSynced == 29)
        await hostile.close()

        // A thousand connections from one address: all but the address's share are closed at
        // once; the node keeps serving.
        let closed = ClosedCounter.Count()
        var raw: [any Channel] = []
        for _ in 0..<1_000 {
            if let c = try? await ClientBootstrap(group: group)
                .channelInitializer({ ch in ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(ClosedCounter(closed)) } })
                .connect(host: "127.0.0.1", port: port).get() {
                raw.append(c)
            }
        }
        try await Task.sleep(for: .seconds(1))
        #expect(closed.value.load(ordering: .relaxed) >= raw.count - 16, "\(closed.value.load(ordering: .relaxed)) of \(raw.count) closed")
        #expect(try await honest.availability().highestSynced == 29)
        for c in raw { try? await c.close() }
        try await Task.sleep(for: .milliseconds(300))
        let late = try await connect()
        #expect(try await late.availability().highestSynced == 29)
        await late.close()
        await honest.close()

        #expect(node.process.isRunning, "the node crashed")
        node.stop()
        #expect(node.process.terminationStatus == 0)
        let (vs, vo) = try somaNode(["verify", "--data", dir.path])
        #expect(vs == 0 && vo.contains("verify: OK"), "\(vo)")
        try await group.shutdownGracefully()
    }
}

