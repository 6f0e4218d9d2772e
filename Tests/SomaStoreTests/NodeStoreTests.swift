import Foundation
import SomaCore
import SomaDevnet
import SomaStore
import SomaTestSupport
import Testing

/// Generates a chain and returns its genesis and verified checkpoints.
func makeChain(_ profile: DevnetProfile = .tiny, seed: UInt64 = 3) async -> (ChainGenerator, [VerifiedCheckpoint]) {
    let generator = ChainGenerator(profile: profile, seed: seed)
    let checkpoints = await generator.generateAll(parallelism: 2)
    return (generator, checkpoints.map(\.verified))
}

/// A store of the tiny chain, committed whole, that keeps the last 2 epochs' snapshots in
/// chunks of 16 objects.
func storeWithSnapshots(at path: String, mode: StoreMode = .archive) async throws -> (ChainGenerator, NodeStore) {
    let (generator, checkpoints) = await makeChain()
    var config = StoreConfiguration()
    config.snapshotChunkSize = 16
    config.retainSnapshots = 2
    config.mode = mode
    let store = try await NodeStore.open(path: path, configuration: config)
    try await store.initialize(genesis: generator.genesis)
    try await store.commit(checkpoints)
    // The last epoch end's snapshot is built beside the commits: waited for here.
    try await store.finishSnapshotBuild()
    return (generator, store)
}

@Suite("NodeStore: commit, execution, reads, snapshots, pruning")
struct NodeStoreTests {
    @Test("a tiny chain commits and executes in one pass; every read answers")
    func ingestAndRead() async throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        let (generator, checkpoints) = await makeChain()
        let store = try await NodeStore.open(path: dir.path)
        try await store.initialize(genesis: generator.genesis)
        try await store.initialize(genesis: generator.genesis)  // idempotent
        try await store.commit(Array(checkpoints[0..<10]))
        try await store.commit(Array(checkpoints[10...]))
        let marks = try await store.watermarks()
        let last = checkpoints.last!.certified
        for w in [Watermark.highestVerified, .highestSynced, .highestExecuted] {
            #expect(marks[w] == WatermarkValue(seq: last.summary.sequenceNumber, digest: last.digest), "\(w)")
        }
        #expect(marks[.lowestAvailable]?.seq == 0)
        #expect(try await store.chainID() == generator.genesis.chainID)
        #expect(try await store.genesis() == generator.genesis)
        // Summaries, digests, blocks and contents.
        let cp = checkpoints[7]
        let seq = cp.certified.summary.sequenceNumber
        #expect(try await store.summary(at: seq) == cp.certified)
        #expect(try await store.sequenceNumber(ofSummary: cp.certified.digest) == seq)
        #expect(try await store.blockFrames(at: seq) == cp.frames)
        #expect(try await store.checkpointData(at: seq) == cp.data)
        #expect(try await store.summary(at: 10_000) == nil)
        #expect(try await store.checkpointData(at: 10_000) == nil)
        // Transactions and objects.
        let entry = cp.data.entries[2]
        let found = try await store.transaction(entry.transaction.digest)
        #expect(found?.seq == seq)
        #expect(found?.entry == entry)
        let object = entry.outputObjects[0]
        #expect(try await store.object(object.id, version: object.version) == object)
        #expect(try await store.object(Digest.zero) == nil)
        // The live set equals the generator's, object by object for a sample.
        let epochs = try await store.epochs()
        #expect(epochs.count == DevnetProfile.tiny.epochs + 1)
        #expect(epochs.last?.lastCheckpoint == nil)
        for (e, record) in epochs.dropLast().enumerated() {
            let end = generator.endOfEpochSummaries[e].summary
            #expect(record.lastCheckpoint == end.sequenceNumber)
            #expect(record.stateRoot == end.endOfEpoch?.stateRoot)
            #expect(try await store.committee(epoch: UInt64(e + 1)) == end.endOfEpoch?.nextCommittee)
        }
        let live = try await store.liveVersion(object.id)
        #expect(live != nil)
        #expect(try await store.object(object.id)?.version == live?.version)
        await store.close()
    }

    @Test("checkpoints out of order, foreign, or not linking are refused and nothing is written")
    func ordering() async throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        let (generator, checkpoints) = await makeChain()
        let store = try await NodeStore.open(path: dir.path)
        try await store.initialize(genesis: generator.genesis)
        await #expect(throws: StoreError.self) { try await store.commit([checkpoints[1]]) }
        try await store.commit([checkpoints[0]])
        await #expect(throws: StoreError.self) { try await store.commit([checkpoints[0]]) }
        let (other, otherCheckpoints) = await makeChain(seed: 99)
        await #expect(throws: StoreError.self) { try await store.commit([otherCheckpoints[1]]) }
        await #expect(throws: StoreError.self) { try await store.initialize(genesis: other.genesis) }
        #expect(try await store.watermark(.highestSynced)?.seq == 1)
        await store.close()
    }

    @Test("a wrong certified state root stops execution at that checkpoint, nothing after it applied")
    func stateRootMismatch() async throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        let (generator, checkpoints) = await makeChain()
        let store = try await NodeStore.open(path: dir.path)
        try await store.initialize(genesis: generator.genesis)
        let endIndex = checkpoints.firstIndex { $0.certified.summary.endOfEpoch != nil }!
        // Tamper with the live set the executor reads: remove one live object.
        try await store.commit(Array(checkpoints[0..<(endIndex - 1)]))
        let victim = checkpoints[0].data.entries[0].outputObjects[0].id
        try store.database.put(store.database.columnFamily("liveObjects")!, victim.bytes, Array(repeating: 7, count: 40))
        do {
            try await store.commit(Array(checkpoints[(endIndex - 1)...]))
            Issue.record("execution over a tampered live set succeeded")
        } catch let e as StoreError {
            #expect(e.code == .executionFailed)
            #expect(e.message.contains("checkpoint"))
        }
        let executed = try await store.watermark(.highestExecuted)!.seq
        #expect(executed < checkpoints[endIndex].certified.summary.sequenceNumber)
        await store.close()
    }

    @Test("commit without execution, then executePending catches up with the same roots")
    func deferredExecution() async throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        let (generator, checkpoints) = await makeChain()
        let store = try await NodeStore.open(path: dir.path)
        try await store.initialize(genesis: generator.genesis)
        try await store.commit(checkpoints, execute: false)
        #expect(try await store.watermark(.highestExecuted)?.seq == 0)
        _ = try await store.executePending(maxCheckpoints: 5)
        #expect(try await store.watermark(.highestExecuted)?.seq == 5)
        _ = try await store.executePending()
        #expect(try await store.watermark(.highestExecuted)?.seq == checkpoints.last!.certified.summary.sequenceNumber)
        #expect(try await store.epochs().dropLast().allSatisfy { $0.stateRoot != nil })
        await store.close()
    }

    @Test("summaries ahead of blocks: highestVerified runs ahead, blocks then fill in")
    func summariesAhead() async throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        let (generator, checkpoints) = await makeChain()
        let store = try await NodeStore.open(path: dir.path)
        try await store.initialize(genesis: generator.genesis)
        try await store.commitSummaries(checkpoints[0..<20].map(\.certified))
        #expect(try await store.watermark(.highestVerified)?.seq == 20)
        #expect(try await store.watermark(.highestSynced)?.seq == 0)
        try await store.commit(checkpoints)
        #expect(try await store.watermark(.highestSynced)?.seq == UInt64(checkpoints.count))
        await #expect(throws: StoreError.self) { try await store.commitSummaries([checkpoints[3].certified]) }
        await store.close()
    }

    @Test("a catch-up whose verified summaries already show later epoch ends builds the snapshot of the newest end only, from the blocks, reproducing its state root; the epoch chain's hint does the same")
    func catchUpSkipsPassedSnapshots() async throws {
        for hinted in [false, true] {
            let dir = TempDir()
            defer { dir.cleanup() }
            let (generator, checkpoints) = await makeChain()
            var config = StoreConfiguration()
            config.snapshotChunkSize = 16
            config.retainSnapshots = 2
            let store = try await NodeStore.open(path: dir.path, configuration: config)
            try await store.initialize(genesis: generator.genesis)
            let ends = generator.endOfEpochSummaries
            #expect(ends.count >= 3)
            if hinted {
                store.noteVerifiedEpochEnd(UInt64(ends.count - 1))
            } else {
                // Every summary verified and stored ahead of the blocks, as a sync does.
                try await store.commitSummaries(checkpoints.map(\.certified))
            }
            try await store.commit(checkpoints, bulk: true)
            try await store.finishSnapshotBuild()
            let last = UInt64(ends.count - 1)
            #expect(try await store.snapshotEpochs() == [last], "hinted: \(hinted)")
            let manifest = try #require(try await store.snapshotManifest(epoch: last))
            #expect(manifest.stateRoot == ends[Int(last)].summary.endOfEpoch!.stateRoot)
            #expect(try await store.verifyAll().replayedFromGenesis)
            await store.close()
        }
    }

    @Test("snapshots are built at epoch ends, reproduce the state root chunk by chunk, and old ones are dropped")
    func snapshots() async throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        let (generator, store) = try await storeWithSnapshots(at: dir.path)
        #expect(try await store.snapshotEpochs() == [1, 2])
        let manifest = try #require(try await store.snapshotManifest(epoch: 2))
        let end = generator.endOfEpochSummaries[2].summary.endOfEpoch!
        #expect(manifest.stateRoot == end.stateRoot)
        #expect(manifest.objectCount == end.liveObjectCount)
        #expect(manifest.chunkRoots.count == Int((end.liveObjectCount + 15) / 16))
        var all: [Object] = []
        for i in manifest.chunkRoots.indices {
            let frame = try #require(try await store.snapshotChunk(epoch: 2, index: UInt32(i)))
            let objects = try BCS.read(from: try LZ4Frame.decompress(frame, limit: 1 << 24)[...]) { (r: inout BCSReader) throws(CoreError) in
                try r.readVector(Object.self, minElementSize: 75)
            }
            try Merkle.verifySubtree(
                chunkLeafHashes: objects.map { $0.reference.leafHash }, chunk: UInt64(i), chunkSize: 16,
                treeSize: manifest.objectCount, proof: try manifest.proof(chunk: i), root: manifest.stateRoot)
            all += objects
        }
        #expect(all.count == Int(manifest.objectCount))
        #expect(all.map(\.id) == all.map(\.id).sorted())
        await store.close()
    }

    @Test("a pruned store keeps the last epochs of blocks and object versions and advances lowestAvailable")
    func pruning() async throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        let profile = DevnetProfile(name: "prune", validators: 4, epochs: 5, checkpoints: 50, transactionsPerCheckpoint: 5, accounts: 8)
        let (generator, checkpoints) = await makeChain(profile)
        var config = StoreConfiguration()
        config.mode = .pruned
        config.retainEpochs = 2
        let store = try await NodeStore.open(path: dir.path, configuration: config)
        try await store.initialize(genesis: generator.genesis)
        try await store.commit(checkpoints)
        // One history segment per epoch, sealed at its end.
        #expect(store.segments.closedSegments().count == 5)
        let report = try await store.prune()
        // The chain ends with epoch 4's end, so epoch 5 is current: keep 4 and 5, prune 0...3.
        #expect(report.epochs == [0, 1, 2, 3])
        let firstKept = profile.lastCheckpoint(ofEpoch: 3) + 1
        #expect(report.lowestAvailable == firstKept)
        // Their segments went whole: epoch 4's is the only one left.
        #expect(store.segments.firstSeq == firstKept)
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path + "/segments").filter { $0.hasSuffix(".seg") }
        #expect(files.count == 1, "\(files)")
        #expect(try await store.watermark(.lowestAvailable)?.seq == firstKept)
        #expect(try await store.checkpointData(at: firstKept - 1) == nil)
        #expect(try await store.checkpointData(at: firstKept) != nil)
        #expect(try await store.summary(at: 1) != nil)
        // A version superseded in a pruned epoch is gone; every live object is still readable.
        let early = checkpoints[0].data.entries[0]
        let superseded = early.effects.changes.first { $0.input != nil }!
        #expect(try await store.object(superseded.id, version: superseded.input!.version) == nil)
        for e in checkpoints.last!.data.entries {
            for o in e.outputObjects {
                #expect(try await store.object(o.id, version: o.version) == o)
                if let live = try await store.liveVersion(o.id) { #expect(try await store.object(o.id)?.version == live.version) }
            }
        }
        #expect(try await store.prune().epochs.isEmpty)
        await store.close()
        let reopened = try await NodeStore.open(path: dir.path, configuration: config)
        #expect(try await reopened.verifyAll().checkpoints == UInt64(checkpoints.count) + 1 - firstKept)
        await reopened.close()
        // Archive stores refuse to open as pruned and are never pruned.
        await #expect(throws: StoreError.self) { _ = try await NodeStore.open(path: dir.path) }
    }

    @Test("the store survives close and reopen with the same watermarks and data")
    func reopen() async throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        let (generator, checkpoints) = await makeChain()
        do {
            let store = try await NodeStore.open(path: dir.path)
            try await store.initialize(genesis: generator.genesis)
            try await store.commit(Array(checkpoints[0..<12]))
            await store.close()
        }
        let store = try await NodeStore.open(path: dir.path)
        #expect(try await store.watermark(.highestExecuted)?.seq == 12)
        try await store.commit(Array(checkpoints[12...]))
        #expect(try await store.epochs().dropLast().allSatisfy { $0.stateRoot != nil })
        let stats = try await store.statistics()
        #expect(stats.map(\.family).contains("blocks"))
        await store.close()
        await store.close()
    }
}
