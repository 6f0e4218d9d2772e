public import NIOCore

/// An emulated network link for tests, demos and benchmarks (`soma-node devnet gossip`,
/// `tools/bench gossip`): what a connection writes leaves at most at `bytesPerSecond` and
/// reaches the socket `delay` later (propagation). Loopback has neither a bandwidth worth the
/// name nor a delay; this puts both into the sender's pipeline, in front of the socket.
public struct LinkShape: Sendable, Equatable {
    /// Bandwidth of the link, bytes per second (at least 1).
    public var bytesPerSecond: Int
    /// One-way delay added to every byte.
    public var delay: TimeAmount

    /// A link of `bytesPerSecond` and `delay`.
    public init(bytesPerSecond: Int, delay: TimeAmount) {
        self.bytesPerSecond = max(1, bytesPerSecond)
        self.delay = delay
    }

    /// 100 Mbit/s with a 1 ms delay.
    public static let hundredMegabit = LinkShape(bytesPerSecond: 12_500_000, delay: .milliseconds(1))
}

/// Serialises a connection's outgoing bytes at the link's rate: each write is "on the wire"
/// from when the link is free until its bytes at the rate have passed (its promise completes
/// then, as a socket's would once the kernel took it), and reaches the socket `delay` later.
/// A writer that waits for its promises (the write scheduler) therefore sees the link's
/// bandwidth, not loopback's.
final class LinkShaper: ChannelOutboundHandler {
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let shape: LinkShape
    private var pending = CircularBuffer<(ByteBuffer, EventLoopPromise<Void>?)>()
    /// When the link finishes what it was given so far.
    private var free = NIODeadline.now()

    init(shape: LinkShape) {
        self.shape = shape
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        pending.append((unwrapOutboundIn(data), promise))
    }

    func flush(context: ChannelHandlerContext) {
        let now = NIODeadline.now()
        while let (buffer, promise) = pending.popFirst() {
            let start = max(now, free)
            let nanos = Int64(buffer.readableBytes) * 1_000_000_000 / Int64(shape.bytesPerSecond)
            let done = start + .nanoseconds(nanos)
            free = done
            let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.eventLoop.scheduleTask(deadline: done) { promise?.succeed(()) }
            context.eventLoop.scheduleTask(deadline: done + shape.delay) {
                bound.value.writeAndFlush(NIOAny(buffer), promise: nil)
            }
        }
    }
}
