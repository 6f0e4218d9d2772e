public import NIOCore

/// The priority class of a frame (DESIGN §8, §12): consensus messages before checkpoints and
/// control frames, both before bulk transfers. Carried in bits 1–2 of a frame's flags.
public enum Priority: UInt8, Sendable, CaseIterable, Comparable, CustomStringConvertible {
    /// Consensus messages (votes, certificates, proposals): latency-critical.
    case consensus = 0
    /// Checkpoint pushes, requests, small answers and every control frame.
    case checkpoints = 1
    /// History streams, blocks, snapshot chunks, batches of summaries, proven reads.
    case bulk = 2

    public static func < (a: Priority, b: Priority) -> Bool { a.rawValue < b.rawValue }

    /// `consensus`, `checkpoints` or `bulk`.
    public var description: String {
        switch self {
        case .consensus: "consensus"
        case .checkpoints: "checkpoints"
        case .bulk: "bulk"
        }
    }

    /// The class of a frame as the scheduler sends it: a gossip frame's own class (its payload's
    /// first byte), the answers and stream items of the bulk methods, and `checkpoints` for the
    /// rest. Every frame of one request id has one class, so a stream stays in order.
    public static func of(_ frame: Frame) -> Priority {
        switch frame.kind {
        case .oneWay:
            if frame.method == Method.gossip.rawValue,
               let byte = frame.payload.getInteger(at: frame.payload.readerIndex, as: UInt8.self),
               let priority = Priority(rawValue: byte) {
                return priority
            }
            return .checkpoints
        case .request:
            return .checkpoints
        case .response, .error, .streamItem, .streamEnd:
            return bulkMethods.contains(frame.method) ? .bulk : .checkpoints
        }
    }

    /// Methods whose answers are bulk transfers.
    static let bulkMethods: Set<UInt16> = [
        Method.getBlock.rawValue, Method.getBlocks.rawValue, Method.getSnapshotChunk.rawValue, Method.getSummaries.rawValue,
        Method.getEpochEndings.rawValue, Method.getTransactions.rawValue, Method.getObjects.rawValue,
    ]
}

/// How a connection's outgoing frames are ordered (``NetConfiguration/writeScheduling``).
public struct WriteScheduling: Sendable, Equatable {
    /// Strict priority by class and fragments of at most `fragmentBytes` (the default); `false`
    /// sends whole frames first in, first out (the baseline of `tools/bench gossip`).
    public var prioritize = true
    /// The largest payload of one fragment: an urgent frame waits for at most one fragment
    /// being written (64 KiB: 5.2 ms at 100 Mbit/s).
    public var fragmentBytes = 64 << 10
    /// After this many frames or fragments of higher classes were written while a lower class
    /// waited, one of the lowest waiting class goes (bulk is never starved).
    public var quota = 8
    /// Bytes written to the transport whose write has not completed, at most, before the
    /// scheduler waits (with ``fragmentBytes``: one fragment ahead).
    public var writeAheadBytes = 64 << 10

    /// The defaults.
    public init() {}
}

/// Orders a connection's outgoing frames by ``Priority`` and cuts large ones into fragments
/// (DESIGN §8): SwiftNIO's write queue is first in, first out, so a 4 MiB block answer written
/// before a vote would hold the vote for the whole block. Frames wait here, one queue per class;
/// the scheduler writes the next fragment of the most urgent class (within the starvation
/// quota) whenever the transport is writable and less than ``WriteScheduling/writeAheadBytes``
/// are still being written, so an urgent frame waits for at most one fragment and what the
/// transport holds. A frame's write promise completes when its last fragment was written, so a
/// writer that waits for it (a history stream) holds at most one frame here.
///
/// Fragments carry the frame's kind, method and request id, the class in flag bits 1–2 and the
/// `more` flag (bit 0) on all but the last; ``FrameDecoder`` puts them back together. Within a
/// class, frames go whole and in order: fragments of two frames of one class never interleave.
final class WriteScheduler: ChannelDuplexHandler {
    typealias InboundIn = Frame
    typealias InboundOut = Frame
    typealias OutboundIn = Frame
    typealias OutboundOut = Frame

    private struct Pending {
        var frame: Frame
        let promise: EventLoopPromise<Void>?
    }

    private let scheduling: WriteScheduling
    private var queues: [CircularBuffer<Pending>] = Priority.allCases.map { _ in CircularBuffer() }
    /// Bytes handed to the transport whose write has not completed.
    private var writing = 0
    /// Higher-class writes since a lower class last got one, while one waited.
    private var sinceLower = 0
    private var pumping = false
    private var closed = false

    init(scheduling: WriteScheduling) {
        self.scheduling = scheduling
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard !closed else {
            promise?.fail(WireError(.connectionClosed, "the connection is closed"))
            return
        }
        var frame = unwrapOutboundIn(data)
        let priority = scheduling.prioritize ? Priority.of(frame) : .checkpoints
        frame.flags = priority.rawValue << FrameFlags.priorityShift
        queues[Int(priority.rawValue)].append(Pending(frame: frame, promise: promise))
    }

    func flush(context: ChannelHandlerContext) {
        pump(context)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { pump(context) }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        failAll()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        failAll()
    }

    private func failAll() {
        closed = true
        let error = WireError(.connectionClosed, "the connection closed before the frame was sent")
        for i in queues.indices {
            while let p = queues[i].popFirst() { p.promise?.fail(error) }
        }
    }

    /// The class to write next: the most urgent one waiting, unless lower ones have waited
    /// through `quota` writes (then the lowest waiting one, once).
    private func pick() -> Int? {
        guard let top = queues.firstIndex(where: { !$0.isEmpty }) else { return nil }
        guard let lowest = queues.lastIndex(where: { !$0.isEmpty }), lowest != top else {
            sinceLower = 0
            return top
        }
        if sinceLower >= scheduling.quota {
            sinceLower = 0
            return lowest
        }
        sinceLower += 1
        return top
    }

    /// Writes fragments while the transport takes them, flushing after each batch; completions
    /// that arrive during a flush continue the loop.
    private func pump(_ context: ChannelHandlerContext) {
        guard !pumping, !closed else { return }
        pumping = true
        defer { pumping = false }
        var wrote = true
        while wrote {
            wrote = false
            while writing < scheduling.writeAheadBytes, context.channel.isWritable, let q = pick() {
                writeNext(context, queue: q)
                wrote = true
            }
            if wrote { context.flush() }
        }
    }

    private func writeNext(_ context: ChannelHandlerContext, queue q: Int) {
        let remaining = queues[q][queues[q].startIndex].frame.payload.readableBytes
        let size = scheduling.prioritize ? min(remaining, scheduling.fragmentBytes) : remaining
        let slice = queues[q][queues[q].startIndex].frame.payload.readSlice(length: size)!
        let head = queues[q][queues[q].startIndex]
        let last = head.frame.payload.readableBytes == 0
        let fragment = Frame(
            kind: head.frame.kind, flags: head.frame.flags | (last ? 0 : FrameFlags.more), method: head.frame.method,
            requestID: head.frame.requestID, payload: slice)
        if last { queues[q].removeFirst() }
        let cost = Frame.headerBytes + 4 + size
        writing += cost
        let written = context.eventLoop.makePromise(of: Void.self)
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        written.futureResult.whenComplete { result in
            let (scheduler, context) = bound.value
            scheduler.writing -= cost
            if last {
                switch result {
                case .success: head.promise?.succeed(())
                case .failure(let error): head.promise?.fail(error)
                }
            }
            scheduler.pump(context)
        }
        context.write(wrapOutboundOut(fragment), promise: written)
    }
}
