/// One kind of state-sync work driven by the ``StateSyncLoop``: checkpoint blocks
/// (``SyncRun``) or snapshot chunks (``RestoreRun``). Its requests, verification and writes run
/// as tasks that post ``Event``s to the loop; all of its state is touched by the loop only.
protocol StateSyncJob: AnyObject {
    associatedtype Event: Sendable
    /// Whether the work is done (checked before each step).
    var isFinished: Bool { get }
    /// Starts whatever can start now: requests, hedges, a write.
    func schedule() async throws
    /// Takes in one event.
    func handle(_ event: Event) async throws
    /// Stops every task the job started and waits for them (also after an error).
    func stopAll() async
}

/// The state-sync event loop (DESIGN §2, §10): one loop per run, one ``FetchScheduler`` per job,
/// a single consumer of the events that the job's tasks post. Each turn schedules what can
/// start, then waits for the next event (or a tick every 100 ms, so hedges and back-offs run
/// when nothing answers) and hands it to the job. On return or error every task the job started
/// has ended.
final class StateSyncLoop<Event: Sendable> {
    /// Where the job's tasks post their events.
    let post: AsyncStream<Event>.Continuation
    private var iterator: AsyncStream<Event>.Iterator
    private let tick: Event

    /// A loop whose ticker posts `tick`.
    init(tick: Event) {
        let (events, post) = AsyncStream.makeStream(of: Event.self)
        self.post = post
        self.iterator = events.makeAsyncIterator()
        self.tick = tick
    }

    /// Runs `job` until it is finished, an error is thrown or the task is cancelled (a cancelled
    /// run throws `CancellationError`: it never reports work it did not finish).
    func run<Job: StateSyncJob>(_ job: Job) async throws where Job.Event == Event {
        let ticker = Task { [post, tick] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(100))
                post.yield(tick)
            }
        }
        defer { ticker.cancel() }
        do {
            while !job.isFinished {
                try Task.checkCancellation()
                try await job.schedule()
                guard let event = await iterator.next() else { break }
                try await job.handle(event)
            }
            // The event stream ends early only when this task is cancelled.
            try Task.checkCancellation()
        } catch {
            await job.stopAll()
            post.finish()
            throw error
        }
        await job.stopAll()
        post.finish()
    }
}
