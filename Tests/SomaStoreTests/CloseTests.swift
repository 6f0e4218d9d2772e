import Foundation
import SomaCore
import SomaDevnet
import SomaStore
import SomaTestSupport
import Testing

@Suite("A closed store refuses calls instead of crashing", .serialized)
struct CloseTests {
    @Test("calls after close throw StoreError.closed; close is idempotent; calls racing with close finish or throw closed")
    func callsAfterClose() async throws {
        let dir = TempDir("close")
        defer { dir.cleanup() }
        let generator = ChainGenerator(profile: .tiny, seed: 4)
        let checkpoints = await generator.generateAll(parallelism: 2)
        let store = try await NodeStore.open(path: dir.path)
        try await store.initialize(genesis: generator.genesis)
        try await store.commit(checkpoints.map(\.verified))

        // Readers hammering the store while it closes: each read answers or throws `closed`.
        let readers = (0..<8).map { k in
            Task { () -> (answered: Int, closed: Int, other: Int) in
                var r = (answered: 0, closed: 0, other: 0)
                for i in 0..<400 {
                    do {
                        _ = try await store.summary(at: UInt64((i + k) % 20))
                        _ = try await store.checkpointData(at: UInt64(i % 20))
                        r.answered += 1
                    } catch let e as StoreError where e.code == .closed {
                        r.closed += 1
                    } catch {
                        r.other += 1
                    }
                }
                return r
            }
        }
        try await Task.sleep(for: .milliseconds(30))
        await store.close()
        #expect(store.isClosed)
        var closed = 0, other = 0
        for t in readers {
            let r = await t.value
            closed += r.closed
            other += r.other
        }
        #expect(other == 0)
        #expect(closed > 0, "some reads came after close")

        await store.close()  // idempotent
        for call in 0..<3 {
            do {
                switch call {
                case 0: _ = try await store.watermark(.highestSynced)
                case 1: _ = try await store.summary(at: 1)
                default: try await store.commitSummaries([])
                }
                Issue.record("call \(call) after close answered")
            } catch let e as StoreError {
                #expect(e.code == .closed, "\(e)")
            }
        }
    }
}
