import Synchronization

/// A token bucket of upload bytes: `bytesPerSecond` on average, bursts up to `burstBytes`.
/// ``reserve(_:)`` takes the bytes at once (the bucket may go into debt) and says how long the
/// sender must wait before sending them, so that the long-run rate holds without a queue.
public final class ByteBudget: Sendable {
    /// The average rate.
    public let bytesPerSecond: Double
    /// The largest burst.
    public let burstBytes: Double
    private let state: Mutex<(tokens: Double, last: ContinuousClock.Instant)>

    /// A bucket of `bytesPerSecond` (> 0), full at the start, with bursts of `burstBytes`
    /// (default: a tenth of a second's worth, at least 16 KiB).
    public init(bytesPerSecond: Int, burstBytes: Int? = nil) {
        precondition(bytesPerSecond > 0, "a byte budget needs a positive rate")
        self.bytesPerSecond = Double(bytesPerSecond)
        let burst = Double(burstBytes ?? max(bytesPerSecond / 10, 16 << 10))
        self.burstBytes = burst
        state = Mutex((burst, ContinuousClock.now))
    }

    /// Takes `bytes` from the bucket; returns how long to wait before sending them (zero if
    /// the bucket covered them).
    public func reserve(_ bytes: Int) -> Duration {
        let now = ContinuousClock.now
        return state.withLock { s in
            let elapsed = now - s.last
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            s.tokens = min(burstBytes, s.tokens + seconds * bytesPerSecond) - Double(bytes)
            s.last = now
            guard s.tokens < 0 else { return .zero }
            return .nanoseconds(Int64(-s.tokens / bytesPerSecond * 1e9))
        }
    }
}
