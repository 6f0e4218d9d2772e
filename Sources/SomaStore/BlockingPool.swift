import NIOPosix
import Synchronization

/// The dedicated threads on which every RocksDB call runs (never an event loop, never the
/// cooperative pool). A thin owner of an `NIOThreadPool`.
public final class BlockingPool: Sendable {
    private let pool: NIOThreadPool
    private let stopped = Atomic<Bool>(false)

    /// Starts `threads` threads.
    public init(threads: Int = 4) {
        pool = NIOThreadPool(numberOfThreads: max(1, threads))
        pool.start()
    }

    /// Runs `body` on a pool thread and returns its result.
    /// - Throws: what `body` throws, or ``StoreError/Code/closed`` once the pool is shut down.
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        do {
            return try await pool.runIfActive(body)
        } catch is NIOThreadPoolError.ThreadPoolInactive {
            throw StoreError(.closed, "the store's thread pool is stopped (the store is closed)")
        } catch is CancellationError where stopped.load(ordering: .relaxed) {
            // A pool that is shut down refuses new work with a cancellation.
            throw StoreError(.closed, "the store's thread pool is stopped (the store is closed)")
        }
    }

    /// Stops the threads once the queued work is done.
    public func shutdown() async throws {
        stopped.store(true, ordering: .relaxed)
        try await pool.shutdownGracefully()
    }
}
