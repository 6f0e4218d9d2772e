@testable import SomaSync
import Synchronization
import Testing

/// Sources for a scheduler under test: each has `slots` request slots; `holds` says which work
/// (a key) a source may take. Every slot taken, given back, and every hedge is recorded.
actor FakeSources {
    var free: [Int]
    var holds: @Sendable (Int, Int) -> Bool
    var taken: [Int] = []
    var released: [Int] = []
    var hedged: [Int] = []

    init(count: Int, slots: Int, holds: @escaping @Sendable (Int, Int) -> Bool = { _, _ in true }) {
        free = Array(repeating: slots, count: count)
        self.holds = holds
    }

    func pick(_ work: Int, excluding: Set<Int>) -> Int? {
        guard let i = free.indices.first(where: { free[$0] > 0 && !excluding.contains($0) && holds(work, $0) }) else { return nil }
        free[i] -= 1
        taken.append(i)
        return i
    }

    /// The slot comes back (what the pool does when a job judges an answer).
    func giveBack(_ i: Int) { free[i] += 1 }

    func release(_ i: Int) {
        free[i] += 1
        released.append(i)
    }

    func hedge(_ i: Int) { hedged.append(i) }

    func setHolds(_ rule: @escaping @Sendable (Int, Int) -> Bool) { holds = rule }

    var choice: SourceChoice<Int> {
        SourceChoice(
            pick: { [self] work, excluding in await self.pick(work, excluding: excluding) },
            release: { [self] in await self.release($0) },
            hedged: { [self] in await self.hedge($0) })
    }
}

/// How many test tasks ended.
final class Ended: Sendable {
    let count = Atomic<Int>(0)
}

/// What a scheduler's launch closure started: (key, source, task id), and the tasks, which wait
/// until cancelled and count how many ended.
final class Launches {
    var started: [(key: Int, source: Int, id: Int)] = []
    var tasks: [Int: Task<Void, Never>] = [:]
    let ended = Ended()

    func launch(_ key: Int, _ source: Int, _ id: Int) -> Task<Void, Never> {
        started.append((key, source, id))
        let ended = self.ended
        let task = Task {
            try? await Task.sleep(for: .seconds(600))
            ended.count.add(1, ordering: .relaxed)
        }
        tasks[id] = task
        return task
    }
}

@Suite("The fetch scheduler: window, order, hedges, requeues, slots")
struct SchedulerTests {
    func make(_ sources: FakeSources, _ launches: Launches, window: Int = 4, minHedge: Duration = .milliseconds(400), patience: Int = 20)
        async -> FetchScheduler<Int, Int>
    {
        FetchScheduler<Int, Int>(
            sources: await sources.choice, window: window, minHedgeDelay: minHedge, requestTimeout: .seconds(10), patience: patience
        ) { key, _, source, id in launches.launch(key, source, id) }
    }

    @Test("fills the window lowest key first, requeued work before new work, never more than the window")
    func window() async {
        let sources = FakeSources(count: 2, slots: 8)
        let launches = Launches()
        let s = await make(sources, launches, window: 3)
        var next = 10
        s.enqueue(5, 5)
        await s.fill(next: {
            defer { next += 1 }
            return (next, next)
        })
        #expect(launches.started.map(\.key) == [5, 10, 11])
        #expect(s.flights.count == 3)
        // Nothing more while the window is full.
        await s.fill(next: { (99, 99) })
        #expect(launches.started.count == 3)
        await s.stopAll()
    }

    @Test("the room closure bounds new work")
    func room() async {
        let sources = FakeSources(count: 1, slots: 8)
        let launches = Launches()
        let s = await make(sources, launches, window: 8)
        for k in 0..<6 { s.enqueue(k, k) }
        // The run's own memory bound: two pieces at most, whatever the window.
        await s.fill(room: { s.flights.count < 2 }, next: { nil })
        #expect(launches.started.map(\.key) == [0, 1])
        #expect(s.queue.map(\.key) == [2, 3, 4, 5])
        await s.stopAll()
    }

    @Test("work no source holds waits in the queue; later work still goes to others")
    func waiting() async {
        // Source 0 holds only keys below 100; there is no other source.
        let sources = FakeSources(count: 1, slots: 8, holds: { work, _ in work < 100 })
        let launches = Launches()
        let s = await make(sources, launches, window: 8)
        s.enqueue(200, 200)
        s.enqueue(1, 1)
        s.enqueue(300, 300)
        await s.fill(next: { nil })
        #expect(launches.started.map(\.key) == [1])
        #expect(s.queue.map(\.key) == [200, 300])
        await s.stopAll()
    }

    @Test("a failure requeues the work only when no source is left on it, in key order")
    func requeue() async {
        let sources = FakeSources(count: 2, slots: 4)
        let launches = Launches()
        let s = await make(sources, launches, window: 4, minHedge: .milliseconds(1))
        s.enqueue(7, 7)
        s.enqueue(9, 9)
        await s.fill(next: { nil })
        #expect(launches.started.map(\.key) == [7, 9])
        // Key 7 waited past the hedge delay: a second source is asked.
        await s.hedge(now: .now + .seconds(1))
        #expect(await sources.hedged.count == 2)
        #expect(s.hedges == 2)
        #expect(s.flights[7]?.sources.count == 2)
        let first7 = launches.started[0]
        #expect(s.answered(task: first7.id, key: 7, source: first7.source) != nil)
        #expect(s.failed(7, source: first7.source) == false)
        #expect(s.flights[7]?.sources.count == 1)
        let other7 = launches.started.first { $0.key == 7 && $0.source != first7.source }!
        #expect(s.answered(task: other7.id, key: 7, source: other7.source) != nil)
        #expect(s.failed(7, source: other7.source) == true)
        #expect(s.flights[7] == nil)
        s.enqueue(3, 3)
        #expect(s.queue.map(\.key) == [3, 7])
        await s.stopAll()
    }

    @Test("the first answer wins: the other requests are cancelled and count as losers")
    func firstWins() async {
        let sources = FakeSources(count: 2, slots: 4)
        let launches = Launches()
        let s = await make(sources, launches, window: 4, minHedge: .milliseconds(1))
        s.enqueue(1, 1)
        await s.fill(next: { nil })
        await s.hedge(now: .now + .seconds(1))
        #expect(launches.started.count == 2)
        let (a, b) = (launches.started[0], launches.started[1])
        #expect(a.source != b.source)
        #expect(s.answered(task: b.id, key: 1, source: b.source) != nil)
        s.delivered(1, seconds: 0.5)
        #expect(s.usualSeconds == 0.5)
        await launches.tasks[a.id]?.value  // cancelled: ends at once
        #expect(launches.ended.count.load(ordering: .relaxed) == 1)
        // The loser's answer no longer counts.
        #expect(s.answered(task: a.id, key: 1, source: a.source) == nil)
        #expect(s.pendingRequests == 0)
        #expect(s.isIdle)
        await s.stopAll()
        #expect(await sources.released.isEmpty)
    }

    @Test("no hedge before the delay, none to a source already asked, at most half the window hedged")
    func hedgeLimits() async {
        let sources = FakeSources(count: 3, slots: 8)
        let launches = Launches()
        let s = await make(sources, launches, window: 4, minHedge: .milliseconds(400))
        for k in 0..<4 { s.enqueue(k, k) }
        await s.fill(next: { nil })
        await s.hedge(now: .now)
        #expect(s.hedges == 0)
        await s.hedge(now: .now + .seconds(5))
        // max(2, 4 / 2) flights may have two sources: the two oldest keys.
        #expect(s.hedges == 2)
        #expect(s.flights[0]?.sources.count == 2 && s.flights[1]?.sources.count == 2)
        #expect(s.flights[2]?.sources.count == 1 && s.flights[3]?.sources.count == 1)
        await s.hedge(now: .now + .seconds(10))
        #expect(s.hedges == 2)
        await s.stopAll()
    }

    @Test("the hedge delay: three times the usual answer, at least the minimum, before half the timeout")
    func hedgeDelay() {
        typealias S = FetchScheduler<Int, Int>
        #expect(S.hedgeDelay(usual: nil, minimum: .milliseconds(400), timeout: .seconds(10)) == .milliseconds(800))
        #expect(S.hedgeDelay(usual: 1, minimum: .milliseconds(400), timeout: .seconds(10)) == .seconds(3))
        #expect(S.hedgeDelay(usual: 0.01, minimum: .milliseconds(400), timeout: .seconds(10)) == .milliseconds(400))
        #expect(S.hedgeDelay(usual: 100, minimum: .milliseconds(400), timeout: .seconds(10)) == .seconds(5))
    }

    @Test("stopAll waits for every task and gives back the slot of each request that never answered, once")
    func stopAll() async {
        let sources = FakeSources(count: 2, slots: 4)
        let launches = Launches()
        let s = await make(sources, launches, window: 4, minHedge: .milliseconds(1))
        for k in 0..<3 { s.enqueue(k, k) }
        await s.fill(next: { nil })
        await s.hedge(now: .now + .seconds(1))
        let started = launches.started.count
        #expect(started == 5)
        // One request answered (its task ends; its slot is the job's to give back), the rest
        // never did.
        let done = launches.started[0]
        launches.tasks[done.id]?.cancel()
        await launches.tasks[done.id]?.value
        _ = s.answered(task: done.id, key: done.key, source: done.source)
        await sources.giveBack(done.source)
        await s.stopAll()
        #expect(launches.ended.count.load(ordering: .relaxed) == started)
        let released = await sources.released
        #expect(released.count == started - 1)
        #expect(await sources.free == [4, 4])
        #expect(s.isIdle && s.pendingRequests == 0)
    }

    @Test("back-off waits longer each time and gives up after its patience; progress starts it over")
    func backOff() async throws {
        let sources = FakeSources(count: 1, slots: 1)
        let launches = Launches()
        let s = await make(sources, launches, patience: 2)
        let clock = ContinuousClock()
        let took = try await clock.measure {
            try await s.backOff { SyncError("stuck") }
            try await s.backOff { SyncError("stuck") }
        }
        #expect(took >= .milliseconds(300))  // 100 ms, then 200 ms
        await #expect(throws: SyncError.self) { try await s.backOff { SyncError("stuck") } }
        s.progressed()
        #expect(s.stuck == 0)
        try await s.backOff { SyncError("stuck") }
        #expect(s.stuck == 1)
    }
}
