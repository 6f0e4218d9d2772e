import NIOCore
import SomaCore
import SomaDevnet
import SomaNet
import SomaStore
import SomaTestSupport
import Testing

/// Inputs the fuzz targets (`tools/fuzz`, docs/RELIABILITY.md) found, kept as tests.
@Suite("Fuzz findings in SomaNet", .serialized)
struct FuzzRegressionTests {
    /// A store holding the devnet `tiny` chain, served by a HistoryService.
    static func withService(_ body: (HistoryService) async throws -> Void) async throws {
        let dir = TempDir("fuzz-regression")
        defer { dir.cleanup() }
        let generator = ChainGenerator(profile: .tiny, seed: 4)
        let checkpoints = await generator.generateAll(parallelism: 2)
        let store = try await NodeStore.open(path: dir.path)
        try await store.initialize(genesis: generator.genesis)
        try await store.commit(checkpoints.map(\.verified))
        try await body(HistoryService(store: store))
        await store.close()
    }

    @Test("dispatch: getBlock of part UInt32.max of a held checkpoint is badRequest, not an overflow trap")
    func blockPartMax() async throws {
        try await Self.withService { service in
            let result = await service.handle(method: Method.getBlock.rawValue, payload: BlockRequest(seq: 5, part: .max).bcsBytes)
            guard case .failure(.badRequest) = result else {
                Issue.record("expected badRequest, got \(result)")
                return
            }
        }
    }
}
