import NIOCore
import NIOPosix
import SomaCore
import SomaDevnet
import SomaNet
import SomaStore
import SomaTestSupport
import Synchronization
import Testing

/// A served store holding a generated chain, and a connected client.
struct ServedChain {
    let dir: TempDir
    let generator: ChainGenerator
    let store: NodeStore
    let group: MultiThreadedEventLoopGroup
    let server: NetServer
    let client: PeerClient

    static func start(configuration: NetConfiguration = NetConfiguration()) async throws -> ServedChain {
        let dir = TempDir("net")
        let generator = ChainGenerator(profile: .tiny, seed: 4)
        let checkpoints = await generator.generateAll(parallelism: 2)
        var config = StoreConfiguration()
        config.snapshotChunkSize = 16
        let store = try await NodeStore.open(path: dir.path, configuration: config)
        try await store.initialize(genesis: generator.genesis)
        try await store.commit(checkpoints.map(\.verified))
        // The last epoch end's snapshot is built beside the commits: served once done.
        try await store.finishSnapshotBuild()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let chainID = generator.genesis.chainID
        let server = try await NetServer.start(
            host: "127.0.0.1", port: 0, identity: HandshakeIdentity(key: DevnetKeys.validator(seed: 77, index: 0), chainID: chainID),
            service: HistoryService(store: store), configuration: configuration, group: group)
        let client = try await PeerClient.connect(
            host: "127.0.0.1", port: server.port, identity: HandshakeIdentity(key: DevnetKeys.validator(seed: 77, index: 1), chainID: chainID),
            group: group)
        return ServedChain(dir: dir, generator: generator, store: store, group: group, server: server, client: client)
    }

    func stop() async {
        await client.close()
        try? await server.close()
        try? await group.shutdownGracefully()
        await store.close()
        dir.cleanup()
    }
}

@Suite("History RPCs over real sockets", .serialized)
struct RPCTests {
    @Test("every RPC answers from the store, and what it answers verifies on the client")
    func everyRPC() async throws {
        let served = try await ServedChain.start()
        let client = served.client
        let genesis = served.generator.genesis
        #expect(client.peerID == DevnetKeys.validator(seed: 77, index: 0).publicKey)

        let availability = try await client.availability()
        #expect(availability.highestSynced == 29 && availability.highestVerified == 29 && availability.lowestAvailable == 0)
        #expect(availability.snapshotEpochs == [1, 2])

        // The epoch chain from genesis, verified by the client.
        let ends = try await client.epochEndings(from: 0)
        #expect(ends.count == 3)
        let committees = try ChainVerifier.verifyEpochChain(genesis: genesis.committee, endOfEpochSummaries: ends)
        #expect(try await client.epochEndings(from: 2).count == 1)

        // Summaries in two batches, one quorum check each; then with every certificate.
        let first = try await client.summaries(from: 0, count: 20)
        #expect(first.summaries.count == 20 && first.certificates.compactMap { $0 }.count == 1)
        var tip = try ChainVerifier.verifySummaryBatch(first.batch, after: nil, committee: { $0 < committees.count ? committees[Int($0)] : nil })
        let rest = try await client.summaries(from: 20, count: 1_000)
        #expect(rest.summaries.count == 10)
        tip = try ChainVerifier.verifySummaryBatch(rest.batch, after: tip, committee: { $0 < committees.count ? committees[Int($0)] : nil })
        #expect(tip.summary.sequenceNumber == 29)
        let all = try await client.summaries(from: 5, count: 5, allCertificates: true)
        #expect(all.certificates.allSatisfy { $0 != nil })

        // Blocks: the stored bytes as they are, verifying against the certified summaries.
        for seq in [UInt64(0), 7, 29] {
            let answer = try await client.block(seq)
            #expect(answer.frame == (try await served.store.blockFrames(at: seq))[0])
            #expect(answer.count == 1 && answer.proof.isEmpty)
            let data = try CheckpointData(bcsBytes: try LZ4Frame.decompress(answer.frame, limit: 1 << 24))
            let summary = try await served.store.summary(at: seq)!.summary
            try BlockVerifier.verify(data, summary: summary)
        }

        // A snapshot chunk proven against the certified state root.
        let manifest = try await client.snapshotManifest(epoch: 2)
        let end = ends[2].summary.endOfEpoch!
        #expect(manifest.stateRoot == end.stateRoot)
        let chunk = try await client.snapshotChunk(epoch: 2, index: 1)
        let objects = try BCS.read(from: try LZ4Frame.decompress(chunk.frame, limit: 1 << 24)[...]) { (r: inout BCSReader) throws(CoreError) in
            try r.readVector(Object.self, minElementSize: 75)
        }
        try Merkle.verifySubtree(chunkLeafHashes: objects.map { $0.reference.leafHash }, chunk: 1, chunkSize: 16,
                                 treeSize: end.liveObjectCount, proof: chunk.proof, root: end.stateRoot)
        await served.stop()
    }

    @Test("missing data, bad requests, unknown methods and garbage payloads get typed errors and the connection lives on")
    func errors() async throws {
        let served = try await ServedChain.start()
        let client = served.client
        await #expect(throws: RPCError.notFound("block 999 is not held (pruned or not yet synced)")) { _ = try await client.block(999) }
        await #expect(throws: RPCError.self) { _ = try await client.block(3, part: 1) }
        await #expect(throws: RPCError.badRequest("count must be 1...1000")) { _ = try await client.summaries(from: 0, count: 0) }
        await #expect(throws: RPCError.self) { _ = try await client.summaries(from: 1_000, count: 1) }
        await #expect(throws: RPCError.notFound("no snapshot of epoch 0")) { _ = try await client.snapshotManifest(epoch: 0) }
        await #expect(throws: RPCError.self) { _ = try await client.call(.getBlock, [1, 2, 3]) }
        await #expect(throws: RPCError.self) { _ = try await client.call(.getAvailability, [0]) }
        await #expect(throws: RPCError.self) { _ = try await client.call(.hello, []) }
        // Still served after all that.
        #expect(try await client.availability().highestSynced == 29)
        await served.stop()
    }

    @Test("hundreds of requests in flight on one connection are all answered, each with its own answer")
    func multiplexing() async throws {
        var config = NetConfiguration()
        config.maxInFlightPerConnection = 1_000
        let served = try await ServedChain.start(configuration: config)
        let client = served.client
        try await withThrowingTaskGroup(of: (UInt64, UInt64).self) { group in
            for i in 0..<300 {
                let seq = UInt64(i % 30)
                group.addTask {
                    let data = try CheckpointData(bcsBytes: try LZ4Frame.decompress(try await client.block(seq).frame, limit: 1 << 24))
                    return (seq, data.sequenceNumber)
                }
            }
            for try await (asked, got) in group { #expect(asked == got) }
        }
        await served.stop()
    }

    @Test("beyond the in-flight limit a connection is answered busy, not queued")
    func busy() async throws {
        var config = NetConfiguration()
        config.maxInFlightPerConnection = 1
        config.busyRetryAfterMs = 250
        let served = try await ServedChain.start(configuration: config)
        let client = served.client
        let outcomes = try await withThrowingTaskGroup(of: Bool.self) { group in
            for i in 0..<60 {
                group.addTask {
                    do {
                        _ = try await client.block(UInt64(i % 30))
                        return true
                    } catch let e as RPCError {
                        #expect(e == .busy(retryAfterMs: 250))
                        return false
                    }
                }
            }
            var results: [Bool] = []
            for try await r in group { results.append(r) }
            return results
        }
        #expect(outcomes.contains(true))
        #expect(outcomes.contains(false))
        await served.stop()
    }
}

@Suite("pushCheckpoint")
struct PushTests {
    @Test("a pushed certified tip reaches the server's listener with the pusher's proven key; a malformed push closes that connection")
    func push() async throws {
        let dir = TempDir("push")
        defer { dir.cleanup() }
        let generator = ChainGenerator(profile: .tiny, seed: 4)
        let checkpoints = await generator.generateAll(parallelism: 2)
        let store = try await NodeStore.open(path: dir.path)
        try await store.initialize(genesis: generator.genesis)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let (stream, continuation) = AsyncStream<PushedCheckpoint>.makeStream()
        let chainID = generator.genesis.chainID
        let server = try await NetServer.start(
            host: "127.0.0.1", port: 0, identity: HandshakeIdentity(key: DevnetKeys.validator(seed: 1, index: 0), chainID: chainID),
            service: HistoryService(store: store), group: group, pushes: continuation)
        let pusher = DevnetKeys.validator(seed: 1, index: 1)
        let client = try await PeerClient.connect(host: "127.0.0.1", port: server.port, identity: HandshakeIdentity(key: pusher, chainID: chainID), group: group)
        client.push(checkpoints[4].certified)
        var iterator = stream.makeAsyncIterator()
        let received = await iterator.next()
        #expect(received?.peerID == pusher.publicKey)
        #expect(received?.certified == checkpoints[4].certified)
        // A push that does not decode: the server closes the connection. Pushes are decoded off
        // the event loop, so a request sent right after may still be answered first: wait for
        // the close itself.
        client.send(.pushCheckpoint, [1, 2, 3])
        let deadline = ContinuousClock.now + .seconds(10)
        while client.isConnected && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(!client.isConnected, "the connection survived a malformed push")
        await #expect(throws: WireError.self) { _ = try await client.availability() }
        await client.close()
        try await server.close()
        continuation.finish()
        try await group.shutdownGracefully()
        await store.close()
    }
}

@Suite("Streamed blocks and multi-part checkpoints")
struct StreamTests {
    @Test("getBlocks streams consecutive blocks, each as stored; bounds and missing ranges are errors")
    func stream() async throws {
        let served = try await ServedChain.start()
        let items = try await served.client.blocks(from: 1, count: 32)
        #expect(items.map(\.seq) == Array(1...29))
        for item in items {
            #expect(item.part == 0 && item.block.count == 1)
            #expect(item.block.frame == (try await served.store.blockFrames(at: item.seq))[0])
        }
        await #expect(throws: RPCError.badRequest("count must be 1...32")) { _ = try await served.client.blocks(from: 1, count: 33) }
        await #expect(throws: RPCError.self) { _ = try await served.client.blocks(from: 500, count: 2) }
        #expect(try await served.client.availability().highestSynced == 29)
        await served.stop()
    }

    @Test("getBlocks can hand each item to a consumer as it arrives, as received and in order, instead of keeping the stream")
    func consumed() async throws {
        let served = try await ServedChain.start()
        let seen = Collected()
        let count = try await served.client.blocks(from: 1, count: 32) { seen.append($0) }
        let kept = try await served.client.blocks(from: 1, count: 32)
        #expect(count == 29)
        let handed = try seen.items.map { try BCS.decode(BlockItem.self, fromContiguous: $0.readableBytesView) }
        #expect(handed.map(\.bcsBytes) == kept.map(\.bcsBytes))
        #expect(handed.map(\.seq) == Array(1...29))
        // A missing range is still an error answer, not an empty stream.
        await #expect(throws: RPCError.self) { _ = try await served.client.blocks(from: 500, count: 2) { _ in } }
        await served.stop()
    }

    final class Collected: Sendable {
        private let state = Mutex<[ByteBuffer]>([])
        func append(_ b: ByteBuffer) { state.withLock { $0.append(b) } }
        var items: [ByteBuffer] { state.withLock { $0 } }
    }

    @Test("a checkpoint of 2,500 entries is served in 3 parts whose proofs verify against the certified content digest")
    func parts() async throws {
        let dir = TempDir("parts")
        defer { dir.cleanup() }
        let profile = DevnetProfile(name: "wide", validators: 4, epochs: 1, checkpoints: 2, transactionsPerCheckpoint: 2_500, accounts: 50)
        let generator = ChainGenerator(profile: profile, seed: 2)
        let checkpoints = await generator.generateAll(parallelism: 2)
        let store = try await NodeStore.open(path: dir.path)
        try await store.initialize(genesis: generator.genesis)
        try await store.commit(checkpoints.map(\.verified))
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let chainID = generator.genesis.chainID
        let server = try await NetServer.start(
            host: "127.0.0.1", port: 0, identity: HandshakeIdentity(key: DevnetKeys.validator(seed: 1, index: 0), chainID: chainID),
            service: HistoryService(store: store), group: group)
        let client = try await PeerClient.connect(host: "127.0.0.1", port: server.port, identity: HandshakeIdentity(key: SigningKey.generate(), chainID: chainID), group: group)
        let summary = checkpoints[0].certified.summary
        let count = try ChainVerifier.entryCount(of: summary, previous: generator.genesis.checkpoint.summary)
        var entries = 0
        for part in UInt32(0)..<3 {
            let answer = try await client.block(1, part: part)
            #expect(answer.count == 3)
            let data = try CheckpointData(bcsBytes: try LZ4Frame.decompress(answer.frame, limit: 1 << 26))
            try BlockVerifier.verifyPart(data, part: UInt64(part), proof: answer.proof, summary: summary, entryCount: count)
            entries += data.entries.count
        }
        #expect(entries == 2_500)
        await #expect(throws: RPCError.self) { _ = try await client.block(1, part: 3) }
        let streamed = try await client.blocks(from: 1, count: 1)
        #expect(streamed.map(\.part) == [0, 1, 2])
        await client.close()
        try await server.close()
        try await group.shutdownGracefully()
        await store.close()
    }
}

/// Requests with the extreme value of every field, answered by ``HistoryService`` over a small
/// store: each is an error answer (or an empty one), never a trap. Before the checked ranges,
/// `from + count - 1` and `part + 1` trapped the server.
@Suite("History service: extreme request fields", .serialized)
struct HistoryBoundsTests {
    func ask(_ service: HistoryService, _ method: Method, _ payload: [UInt8]) async -> Result<ByteBuffer, RPCError> {
        await service.handle(method: method.rawValue, payload: payload)
    }

    func isBadRequest(_ r: Result<ByteBuffer, RPCError>) -> Bool {
        if case .failure(.badRequest) = r { return true }
        return false
    }

    func isNotFound(_ r: Result<ByteBuffer, RPCError>) -> Bool {
        if case .failure(.notFound) = r { return true }
        return false
    }

    @Test("the checked range helper refuses what passes UInt64.max and a zero count")
    func rangeHelper() throws {
        #expect(try RequestRange.checked(from: 5, count: 3) == 5...7)
        #expect(try RequestRange.checked(from: UInt64.max, count: 1) == UInt64.max...UInt64.max)
        #expect(throws: RPCError.self) { try RequestRange.checked(from: UInt64.max, count: 2) }
        #expect(throws: RPCError.self) { try RequestRange.checked(from: UInt64.max - 10, count: UInt32.max) }
        #expect(throws: RPCError.self) { try RequestRange.checked(from: 0, count: 0) }
        #expect(RequestRange.of(from: UInt64.max, count: 32) == nil)
        #expect(throws: RPCError.self) { try BlocksRequest(from: UInt64.max - 3, count: 32).range() }
        #expect(throws: RPCError.self) { try BlocksRequest(from: 0, count: 33).range() }
        #expect(try BlocksRequest(from: 10, count: 32).range() == 10...41)
    }

    @Test("summaries, blocks, manifests and chunks at the extremes answer badRequest or notFound")
    func extremes() async throws {
        let served = try await ServedChain.start()
        let service = HistoryService(store: served.store)

        // getSummaries
        for (from, count) in [(UInt64.max, UInt32(1_000)), (UInt64.max - 1, UInt32(3)), (UInt64.max, UInt32.max), (0, UInt32.max), (0, 0)] {
            let r = await ask(service, .getSummaries, SummariesRequest(from: from, count: count, allCertificates: true).bcsBytes)
            #expect(isBadRequest(r), "from \(from) count \(count): \(r)")
        }
        #expect(isNotFound(await ask(service, .getSummaries, SummariesRequest(from: UInt64.max, count: 1, allCertificates: false).bcsBytes)))
        #expect(isNotFound(await ask(service, .getSummaries, SummariesRequest(from: 1 << 63, count: 1_000, allCertificates: false).bcsBytes)))
        guard case .success(let ok) = await ask(service, .getSummaries, SummariesRequest(from: 20, count: 1_000, allCertificates: false).bcsBytes) else {
            Issue.record("an in-range request failed")
            return
        }
        let answer = try BCS.decode(SummariesResponse.self, fromContiguous: ok.readableBytesView)
        #expect(answer.summaries.map(\.sequenceNumber) == Array(20...29), "capped at highestVerified")

        // getBlock
        #expect(isNotFound(await ask(service, .getBlock, BlockRequest(seq: UInt64.max, part: UInt32.max).bcsBytes)))
        #expect(isNotFound(await ask(service, .getBlock, BlockRequest(seq: UInt64.max, part: 0).bcsBytes)))
        let beyondParts = await ask(service, .getBlock, BlockRequest(seq: 3, part: UInt32.max).bcsBytes)
        #expect(isBadRequest(beyondParts), "\(beyondParts)")
        if case .success(let item) = await service.blockItem(seq: UInt64.max, part: UInt32.max) { #expect(item == nil) }

        // getSnapshotManifest / getSnapshotChunk
        #expect(isNotFound(await ask(service, .getSnapshotManifest, SnapshotRequest(epoch: UInt64.max).bcsBytes)))
        #expect(isNotFound(await ask(service, .getSnapshotChunk, SnapshotRequest(epoch: UInt64.max, index: UInt32.max).bcsBytes)))
        for index in [UInt32.max, UInt32.max - 1, 1 << 31] {
            let r = await ask(service, .getSnapshotChunk, SnapshotRequest(epoch: 1, index: index).bcsBytes)
            #expect(isBadRequest(r), "chunk \(index): \(r)")
        }
        guard case .success = await ask(service, .getSnapshotChunk, SnapshotRequest(epoch: 1, index: 0).bcsBytes) else {
            Issue.record("chunk 0 of epoch 1 is served")
            return
        }

        // getEpochEndings
        guard case .success(let none) = await ask(service, .getEpochEndings, EpochEndingsRequest(fromEpoch: UInt64.max, max: UInt32.max).bcsBytes) else {
            Issue.record("epoch endings from the last epoch fail")
            return
        }
        #expect(try BCS.read(from: Array(none.readableBytesView)[...]) { (r: inout BCSReader) throws(CoreError) in
            try r.readVector(CertifiedCheckpointSummary.self, minElementSize: 64)
        }.isEmpty)

        // The same over the wire: the server answers and keeps serving.
        await #expect(throws: RPCError.self) { _ = try await served.client.summaries(from: UInt64.max, count: 1_000, allCertificates: true) }
        #expect(try await served.client.availability().highestSynced == 29)
        await served.stop()
    }
}
