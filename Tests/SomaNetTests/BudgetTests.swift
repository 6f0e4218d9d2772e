import Foundation
import NIOCore
import NIOPosix
import SomaCore
import SomaDevnet
import SomaNet
import SomaStore
import SomaTestSupport
import Testing

@Suite("Serving protection: upload byte budgets and slow readers")
struct BudgetTests {
    /// Fetches blocks on `loops` concurrent loops for `seconds`; returns bytes (frames) per second.
    static func drain(_ client: PeerClient, loops: Int, seconds: Double) async throws -> Double {
        let start = ContinuousClock.now
        let deadline = start + .milliseconds(Int(seconds * 1000))
        let total = try await withThrowingTaskGroup(of: Int.self) { group in
            for l in 0..<loops {
                group.addTask {
                    var bytes = 0
                    var i = UInt64(l)
                    while ContinuousClock.now < deadline {
                        bytes += 16 + (try await client.call(.getBlock, BlockRequest(seq: i % 30, part: 0).bcsBytes)).count
                        i += 1
                    }
                    return bytes
                }
            }
            var sum = 0
            for try await b in group { sum += b }
            return sum
        }
        let d = ContinuousClock.now - start
        return Double(total) / (Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18)
    }

    // Rates are low enough that a debug-build client keeps asking for more than the budget
    // even while the rest of the suite loads both cores: the budget, not the client, binds.
    @Test("a per-peer budget of 250 kB/s is never exceeded by more than 5% over 10 s, and binds")
    func perPeer() async throws {
        var config = NetConfiguration()
        config.uploadBytesPerSecondPerPeer = 250_000
        let served = try await ServedChain.start(configuration: config)
        let rate = try await Self.drain(served.client, loops: 8, seconds: 10)
        // Never more than 5% over the budget; and the budget, not the client, was what bound
        // (on a loaded machine the event loop can fall somewhat behind, never ahead).
        #expect(rate <= 250_000 * 1.05, "measured \(rate) B/s")
        #expect(rate >= 250_000 * 0.8, "measured \(rate) B/s")
        await served.stop()
    }

    @Test("a global budget of 400 kB/s shared by three peers is never exceeded by more than 5% over 10 s, and binds")
    func global() async throws {
        var config = NetConfiguration()
        config.uploadBytesPerSecond = 400_000
        let served = try await ServedChain.start(configuration: config)
        let chainID = served.generator.genesis.chainID
        var clients = [served.client]
        for i in 2...3 {
            clients.append(try await PeerClient.connect(
                host: "127.0.0.1", port: served.server.port,
                identity: HandshakeIdentity(key: DevnetKeys.validator(seed: 77, index: i), chainID: chainID), group: served.group))
        }
        let rates = try await withThrowingTaskGroup(of: Double.self) { group in
            for c in clients { group.addTask { try await Self.drain(c, loops: 4, seconds: 10) } }
            var out: [Double] = []
            for try await r in group { out.append(r) }
            return out
        }
        let total = rates.reduce(0, +)
        #expect(total <= 400_000 * 1.05, "measured \(rates) B/s, \(total) in all")
        #expect(total >= 400_000 * 0.8, "measured \(rates) B/s, \(total) in all")
        for c in clients.dropFirst() { await c.close() }
        await served.stop()
    }

    @Test("a token bucket paces reservations to its rate after its burst")
    func bucket() {
        let budget = ByteBudget(bytesPerSecond: 1_000, burstBytes: 500)
        #expect(budget.reserve(500) == .zero)
        let wait = budget.reserve(1_000)
        #expect(wait > .milliseconds(900) && wait <= .milliseconds(1_000))
    }
}
