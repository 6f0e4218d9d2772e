import NIOPosix

/// The dedicated threads on which every RocksDB call runs (never an event loop, never the
/// cooperative pool). A thin owner of an `NIOThreadPool`.
public final class BlockingPool: Sendable {
    private let pool: NIOThreadPool

    /// Starts `threads` threads.
    public init(threads: Int = 4) {
        pool = NIOThreadPool(numberOfThreads: max(1, threads))
        pool.start()
    }

    /// Runs `body` on a pool thread and returns its result.
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await pool.runIfActive(body)
    }

    /// Stops the threads once the queued work is done.
    public func shutdown() async throws {
        try await pool.shutdownGracefully()
    }
}
