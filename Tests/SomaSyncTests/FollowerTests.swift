import Logging
import SomaCore
import SomaDevnet
import SomaStore
import SomaSync
import SomaTestSupport
import Synchronization
import Testing

@Suite("the tip follower")
struct FollowerTests {
    @Test("a follower woken early (a nudge or a push) waits again afterwards: it does not spin until the next poll")
    func waitsAfterAWake() async throws {
        let dir = TempDir("follower")
        defer { dir.cleanup() }
        let profile = DevnetProfile(name: "follow", validators: 4, epochs: 1, checkpoints: 2, transactionsPerCheckpoint: 1, accounts: 4)
        let genesis = ChainGenerator(profile: profile, seed: 5).genesis
        let store = try await NodeStore.open(path: dir.file("db"))
        try await store.initialize(genesis: genesis)
        let rounds = Atomic<Int>(0)
        let follower = TipFollower(
            store: store, genesis: genesis, sources: { rounds.add(1, ordering: .relaxed); return [] },
            pollInterval: .seconds(3_600), logger: Logger(label: "test"))
        let running = Task { try await follower.run() }
        for _ in 0..<3 {
            try await Task.sleep(for: .milliseconds(100))
            follower.nudge()
        }
        try await Task.sleep(for: .milliseconds(300))
        running.cancel()
        follower.stop()
        _ = try? await running.value
        // One round at the start and one per nudge; a loop that does not wait makes thousands.
        #expect(rounds.load(ordering: .relaxed) <= 6, "\(rounds.load(ordering: .relaxed)) rounds")
        await store.close()
    }
}
