import SomaNet

/// Where a fetch scheduler gets its sources: any kind of source (peers today, archives and
/// local folders later) as long as it can be picked for a piece of work, given its slot back,
/// and counted for a hedge.
///
/// `pick` takes a request slot on the source it returns; every slot taken is given back exactly
/// once, either by the job that judges the answer (``SourcePool/succeeded(_:bytes:duration:used:)``
/// and the like) or by ``FetchScheduler/stopAll()`` through `release` for requests that never
/// answered.
struct SourceChoice<Work: Sendable>: Sendable {
    /// The best source for `work` that is not in `excluding`, its slot taken; `nil` if none.
    var pick: @Sendable (Work, Set<Int>) async -> Int?
    /// Gives a slot back without an outcome (a request that never answered).
    var release: @Sendable (Int) async -> Void
    /// Counts a hedged request sent to a source.
    var hedged: @Sendable (Int) async -> Void
}

extension SourceChoice {
    /// Sources from `pool`, `eligible` saying which of them (index and what it holds) may take `work`.
    static func pool(_ pool: SourcePool, eligible: @escaping @Sendable (Work, Int, Availability) -> Bool) -> SourceChoice {
        SourceChoice(
            pick: { work, excluding in await pool.pick(excluding: excluding) { i, a in eligible(work, i, a) } },
            release: { await pool.released($0) },
            hedged: { await pool.hedged($0) })
    }
}

/// The request bookkeeping of one state-sync run (DESIGN §10), the same for checkpoint blocks
/// and snapshot chunks: a queue of work in key order, a window of requests in flight, each
/// flight's sources, hedged re-requests of stragglers after an adaptive delay, requeueing of
/// work whose every source failed, the slots every source still owes the pool, and the back-off
/// of a run that cannot move.
///
/// It is owned by one event loop (``StateSyncLoop``) and used from it only: not Sendable, no
/// locks. Requests run as tasks made by the `launch` closure of ``start(_:_:on:)``; each one
/// reports back to the loop with its task id, and the loop hands the answer to ``answered(task:key:source:)``
/// before it judges it.
///
/// The lowest key is always served first (requeued work goes back in key order, hedges start
/// with the oldest flight), because the run commits in key order and the oldest piece holds up
/// everything behind it.
final class FetchScheduler<Key: Hashable & Comparable & Sendable, Work: Sendable> {
    /// A piece of work in flight: the sources asked for it, since when, and their request tasks.
    struct Flight {
        var work: Work
        var sources: Set<Int>
        var started: ContinuousClock.Instant
        var tasks: [Int] = []
    }

    /// How a run makes a request task: the work's key and the work, the source, the task id to
    /// report back with.
    typealias Launch = (Key, Work, Int, Int) -> Task<Void, Never>

    let sources: SourceChoice<Work>
    /// Requests in flight at most (hedges do not count against it).
    let window: Int
    /// The shortest hedge delay.
    let minHedgeDelay: Duration
    /// The request timeout (a hedge always comes before half of it).
    let requestTimeout: Duration
    /// Times a run may find itself unable to move in a row before ``backOff(_:)`` gives up.
    let patience: Int
    let launch: Launch

    /// Work waiting for a source, in key order.
    private(set) var queue: [(key: Key, work: Work)] = []
    /// Work in flight, by key.
    private(set) var flights: [Key: Flight] = [:]
    /// Every request task not yet answered, by id, with its source.
    private var tasks: [Int: (task: Task<Void, Never>, source: Int)] = [:]
    private var nextTaskID = 0
    /// The moving average of the time a whole answer took, in seconds.
    private(set) var usualSeconds: Double?
    /// Hedged requests started.
    private(set) var hedges = 0
    /// Back-offs in a row (reset by ``progressed()``).
    private(set) var stuck = 0

    init(
        sources: SourceChoice<Work>, window: Int, minHedgeDelay: Duration, requestTimeout: Duration, patience: Int = 20,
        launch: @escaping Launch
    ) {
        self.sources = sources
        self.window = max(1, window)
        self.minHedgeDelay = minHedgeDelay
        self.requestTimeout = requestTimeout
        self.patience = patience
        self.launch = launch
    }

    /// Whether nothing is in flight.
    var isIdle: Bool { flights.isEmpty }
    /// Requests not answered yet (including hedges and losers still running).
    var pendingRequests: Int { tasks.count }
    /// Whether work waits in the queue.
    var hasQueued: Bool { !queue.isEmpty }

    /// Puts `work` in the queue at its place in key order (a requeue goes before new work with
    /// higher keys).
    func enqueue(_ key: Key, _ work: Work) {
        let at = queue.firstIndex { $0.key > key } ?? queue.count
        queue.insert((key, work), at: at)
    }

    /// Starts queued work first, then work from `next`, while fewer than `window` flights are up
    /// and `room()` allows; work no source can take waits in the queue (at most `waitLimit`
    /// pieces are passed over in one call, so later work can go to other sources).
    func fill(room: () -> Bool = { true }, waitLimit: Int = 4, next: () -> (Key, Work)? = { nil }) async {
        var waiting: [(Key, Work)] = []
        while flights.count < window, waiting.count < waitLimit, room() {
            let item: (Key, Work)
            if !queue.isEmpty {
                let q = queue.removeFirst()
                item = (q.key, q.work)
            } else if let n = next() {
                item = n
            } else {
                break
            }
            guard let source = await sources.pick(item.1, []) else {
                waiting.append(item)
                continue
            }
            start(item.0, item.1, on: source)
        }
        for (key, work) in waiting { enqueue(key, work) }
    }

    /// Starts a request for `work` on `source` (whose slot the caller took), joining the flight
    /// of the same key if there is one.
    func start(_ key: Key, _ work: Work, on source: Int) {
        let id = nextTaskID
        nextTaskID += 1
        var flight = flights[key] ?? Flight(work: work, sources: [], started: .now)
        flight.sources.insert(source)
        flight.tasks.append(id)
        flights[key] = flight
        tasks[id] = (launch(key, work, source, id), source)
    }

    /// A request task reported: forgets the task; returns its flight when the answer still
    /// counts (the flight is up and `source` is among its sources), `nil` for a loser (the key
    /// was delivered by another source, or the request was given up).
    func answered(task id: Int, key: Key, source: Int) -> Flight? {
        tasks.removeValue(forKey: id)
        guard let flight = flights[key], flight.sources.contains(source) else { return nil }
        return flight
    }

    /// `key` was delivered: its flight ends, the other sources' requests for it are cancelled
    /// (each still reports, as a loser), and a whole answer's time `seconds` enters the average.
    func delivered(_ key: Key, seconds: Double?) {
        guard let flight = flights.removeValue(forKey: key) else { return }
        for id in flight.tasks { tasks[id]?.task.cancel() }
        if let seconds { usualSeconds = usualSeconds.map { 0.8 * $0 + 0.2 * seconds } ?? seconds }
    }

    /// `source` failed `key`: it leaves the flight; when no source is left, the work goes back to
    /// the queue. Returns whether it was requeued.
    @discardableResult
    func failed(_ key: Key, source: Int) -> Bool {
        guard var flight = flights[key] else { return false }
        flight.sources.remove(source)
        if flight.sources.isEmpty {
            flights.removeValue(forKey: key)
            enqueue(key, flight.work)
            return true
        }
        flights[key] = flight
        return false
    }

    /// How long a request waits before it is also asked of another source: three times the
    /// usual time of an answer (twice `minimum` before any was measured), never less than
    /// `minimum`, and always before half the request timeout.
    static func hedgeDelay(usual seconds: Double?, minimum: Duration, timeout: Duration) -> Duration {
        let usual: Duration = seconds.map { .seconds(3 * $0) } ?? minimum * 2
        return max(minimum, min(usual, timeout / 2))
    }

    /// The delay in force now.
    var hedgeDelay: Duration { Self.hedgeDelay(usual: usualSeconds, minimum: minHedgeDelay, timeout: requestTimeout) }

    /// Asks each flight that has waited past the hedge delay with one source of a second source,
    /// oldest key first, while fewer than `max(2, window / 2)` flights have two sources.
    func hedge(now: ContinuousClock.Instant = .now) async {
        let delay = hedgeDelay
        var extra = flights.values.filter { $0.sources.count > 1 }.count
        for key in flights.keys.sorted() where extra < max(2, window / 2) {
            guard let flight = flights[key], flight.sources.count == 1, now - flight.started > delay else { continue }
            guard let source = await sources.pick(flight.work, flight.sources) else { continue }
            await sources.hedged(source)
            hedges += 1
            extra += 1
            start(key, flight.work, on: source)
        }
    }

    /// The run moved (something was delivered or committed): the back-off starts over.
    func progressed() { stuck = 0 }

    /// The run cannot move: waits a little longer each time in a row (100 ms more each time,
    /// at most a second); after `patience` times in a row throws what `failure` makes.
    func backOff(_ failure: () async -> any Error) async throws {
        stuck += 1
        if stuck > patience { throw await failure() }
        try await Task.sleep(for: .milliseconds(min(100 * stuck, 1_000)))
    }

    /// Cancels every request, waits until each task has ended, and gives back the slot of every
    /// request that never reported (counted here, since a stopped loop reads no more events).
    /// Nothing of this scheduler runs after it returns.
    func stopAll() async {
        let open = tasks
        tasks = [:]
        flights = [:]
        for (_, t) in open { t.task.cancel() }
        for (_, t) in open {
            await t.task.value
            await sources.release(t.source)
        }
    }
}
