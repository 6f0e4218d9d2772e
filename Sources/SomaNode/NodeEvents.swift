import Foundation
public import SomaCore
public import SomaStore
import Synchronization

/// Something the node did that a subscriber hears of (`/v1/events`, ``Node/events(after:)``).
public enum NodeEvent: Sendable, Equatable {
    /// A checkpoint was stored (`highestSynced` reached it), with its number of transactions.
    case checkpoint(CertifiedCheckpointSummary, transactions: UInt64)
    /// An epoch ended at this certified checkpoint; the next epoch's committee is in its summary.
    case epoch(CertifiedCheckpointSummary)
    /// A source was banned (not replayed on resume).
    case ban(source: String, reason: String, timeMs: UInt64)

    /// Where a subscriber that received this event resumes (`nil` for bans, which carry no id).
    public var position: EventPosition? {
        switch self {
        case .checkpoint(let c, _):
            return EventPosition(seq: c.summary.sequenceNumber, epochSent: false)
        case .epoch(let c):
            return EventPosition(seq: c.summary.sequenceNumber, epochSent: true)
        case .ban:
            return nil
        }
    }
}

/// A point in the event stream: after checkpoint `seq`'s event, and after its epoch event too
/// when `epochSent` (or when it ends no epoch). Its SSE id is `seq` or `seq` + `e`.
public struct EventPosition: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// The checkpoint.
    public var seq: UInt64
    /// Whether the epoch event of `seq` (if it has one) was sent.
    public var epochSent: Bool

    /// A position.
    public init(seq: UInt64, epochSent: Bool) {
        self.seq = seq
        self.epochSent = epochSent
    }

    /// Parses an SSE id (`Last-Event-ID`): decimal digits, optionally followed by `e`.
    public init?(id: String) {
        var digits = Substring(id)
        var epochSent = false
        if digits.hasSuffix("e") {
            digits = digits.dropLast()
            epochSent = true
        }
        guard !digits.isEmpty, digits.count <= 20, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let seq = UInt64(digits) else { return nil }
        self.seq = seq
        self.epochSent = epochSent
    }

    /// The SSE id.
    public var description: String { epochSent ? "\(seq)e" : "\(seq)" }

    public static func < (a: EventPosition, b: EventPosition) -> Bool {
        a.seq != b.seq ? a.seq < b.seq : (!a.epochSent && b.epochSent)
    }
}

/// Publishes the node's events to every subscriber, each with a bounded buffer: a subscriber
/// that falls `buffer` events behind is dropped (its stream ends and ``EventSubscription/droppedReason``
/// says why); publishing never waits for one.
public final class EventHub: Sendable {
    struct Subscriber {
        let continuation: AsyncStream<NodeEvent>.Continuation
        let reason: DropReason
    }

    struct State {
        /// The last checkpoint published (events up to here went to live subscribers).
        var cursor: UInt64?
        /// `networkTotalTransactions` of `cursor`.
        var cursorTotal: UInt64 = 0
        var subscribers: [Int: Subscriber] = [:]
        var nextID = 0
        var finished = false
    }

    let store: NodeStore
    let buffer: Int
    let state = Mutex(State())
    /// Most checkpoints one ``advance(to:)`` publishes (the next call goes on from there).
    static let maxPerAdvance: UInt64 = 10_000

    /// A hub reading summaries from `store`, holding `buffer` events a subscriber.
    public init(store: NodeStore, buffer: Int) {
        self.store = store
        self.buffer = max(1, buffer)
    }

    /// The live subscribers.
    public var subscriberCount: Int { state.withLock { $0.subscribers.count } }

    /// Publishes a ban.
    public func publishBan(label: String, reason: String) {
        NodeGauges.ban(reason: reason)
        publish([.ban(source: label, reason: reason, timeMs: NodeStatus.nowMs())])
    }

    /// Publishes the checkpoints stored since the last call, up to `synced` (at most
    /// ``maxPerAdvance`` a call), in pages of half a subscriber's buffer with a pause between
    /// them, so that a burst (a catch-up stores thousands a second) never overflows a
    /// subscriber that keeps reading. The first call only sets where events start.
    func advance(to synced: UInt64) async {
        guard let (cursor, total) = state.withLock({ s -> (UInt64, UInt64)? in
            guard let c = s.cursor else { return nil }
            return (c, s.cursorTotal)
        }) else {
            let total = (try? await store.summary(at: synced))?.summary.networkTotalTransactions ?? 0
            state.withLock { s in
                if s.cursor == nil { s.cursor = synced; s.cursorTotal = total }
            }
            return
        }
        guard synced > cursor else { return }
        let last = min(synced, cursor + EventHub.maxPerAdvance)
        let page = UInt64(max(1, buffer / 2))
        var previous = total
        var reached = cursor
        while reached < last {
            var out: [NodeEvent] = []
            let end = min(last, reached + page)
            for seq in (reached + 1)...end {
                guard let c = try? await store.summary(at: seq) else { break }
                let total = c.summary.networkTotalTransactions
                out.append(.checkpoint(c, transactions: total >= previous ? total - previous : 0))
                if c.summary.endOfEpoch != nil { out.append(.epoch(c)) }
                previous = total
                reached = seq
            }
            state.withLock { s in
                s.cursor = reached
                s.cursorTotal = previous
            }
            publish(out)
            guard reached == end, reached < last else { break }
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    func publish(_ events: [NodeEvent]) {
        guard !events.isEmpty else { return }
        // Streams end outside the lock: ending one runs its termination handler, which takes it.
        let dropped = state.withLock { s -> [Subscriber] in
            var dropped: [Subscriber] = []
            for (id, sub) in s.subscribers {
                for e in events {
                    if case .dropped = sub.continuation.yield(e) {
                        s.subscribers[id] = nil
                        dropped.append(sub)
                        break
                    }
                }
            }
            return dropped
        }
        for sub in dropped {
            sub.reason.value.withLock { $0 = "too slow: more than \(buffer) events waiting" }
            sub.continuation.finish()
        }
    }

    /// Ends every subscription (the node stops).
    func finish() {
        let all = state.withLock { s -> [Subscriber] in
            s.finished = true
            defer { s.subscribers = [:] }
            return Array(s.subscribers.values)
        }
        for sub in all {
            sub.reason.value.withLock { $0 = $0 ?? "the node is stopping" }
            sub.continuation.finish()
        }
    }

    /// Subscribes: the events after `after` (read back from the store, then live), or only the
    /// live ones when `after` is nil.
    public func subscribe(after: EventPosition?) -> EventSubscription {
        let (stream, continuation) = AsyncStream.makeStream(of: NodeEvent.self, bufferingPolicy: .bufferingOldest(buffer))
        let reason = DropReason()
        let (cursor, finished) = state.withLock { s -> (UInt64?, Bool) in
            if !s.finished {
                let id = s.nextID
                s.nextID += 1
                s.subscribers[id] = Subscriber(continuation: continuation, reason: reason)
                continuation.onTermination = { [weak self] _ in self?.state.withLock { _ = $0.subscribers.removeValue(forKey: id) } }
            }
            return (s.cursor, s.finished)
        }
        if finished {
            reason.value.withLock { $0 = "the node is stopping" }
            continuation.finish()
        }
        return EventSubscription(store: store, after: after, liveFrom: cursor, live: stream, reason: reason)
    }
}

/// Why a subscription ended early, set once.
final class DropReason: Sendable {
    let value = Mutex<String?>(nil)
}

/// One subscriber's events: first those after its position read back from the store (up to
/// where live events began), then the live ones; ends when the node stops or drops it.
public struct EventSubscription: AsyncSequence, Sendable {
    public typealias Element = NodeEvent
    let store: NodeStore
    let after: EventPosition?
    let liveFrom: UInt64?
    let live: AsyncStream<NodeEvent>
    let reason: DropReason

    /// Why the stream ended early (too slow, the node stopping), once it has.
    public var droppedReason: String? { reason.value.withLock { $0 } }

    public func makeAsyncIterator() -> Iterator {
        Iterator(store: store, position: after, liveFrom: liveFrom, live: live.makeAsyncIterator())
    }

    /// Reads back, then goes live.
    public struct Iterator: AsyncIteratorProtocol {
        let store: NodeStore
        var position: EventPosition?
        let liveFrom: UInt64?
        var live: AsyncStream<NodeEvent>.Iterator
        var pending: [NodeEvent] = []
        var previousTotal: UInt64?

        /// Checkpoints read back from the store at a time.
        static let page: UInt64 = 256

        public mutating func next() async -> NodeEvent? {
            if !pending.isEmpty { return take() }
            if let p = position, let liveFrom, p < EventPosition(seq: liveFrom, epochSent: true) {
                await readBack(from: p, to: liveFrom)
                if !pending.isEmpty { return take() }
            }
            while let e = await live.next() {
                if let p = position, let q = e.position, q <= p { continue }
                if let q = e.position { position = q }
                return e
            }
            return nil
        }

        mutating func take() -> NodeEvent {
            let e = pending.removeFirst()
            if let q = e.position { position = q }
            return e
        }

        /// Fills `pending` with the events after `p` up to checkpoint `end`, a page at a time.
        mutating func readBack(from p: EventPosition, to end: UInt64) async {
            var seq = p.seq
            if !p.epochSent, let c = try? await store.summary(at: seq), c.summary.endOfEpoch != nil {
                pending.append(.epoch(c))
            }
            let lowest = (try? await store.watermark(.lowestAvailable))?.seq ?? 0
            if seq < lowest { seq = lowest }
            guard seq < end else {
                if pending.isEmpty { position = EventPosition(seq: end, epochSent: true) }
                return
            }
            if previousTotal == nil { previousTotal = (try? await store.summary(at: seq))?.summary.networkTotalTransactions }
            let last = Swift.min(end, seq + Iterator.page)
            var reached = seq
            for s in (seq + 1)...last {
                guard let c = try? await store.summary(at: s) else { break }
                let total = c.summary.networkTotalTransactions
                let prev = previousTotal ?? total
                pending.append(.checkpoint(c, transactions: total >= prev ? total - prev : 0))
                if c.summary.endOfEpoch != nil { pending.append(.epoch(c)) }
                previousTotal = total
                reached = s
            }
            if pending.isEmpty {
                // Nothing readable (pruned or missing): go live from where live events begin.
                position = EventPosition(seq: Swift.max(reached, end), epochSent: true)
            }
        }
    }
}

extension Node {
    /// The node's events after `after` (read back from the store), or from now on; the
    /// authority's subscription in process.
    public func events(after: EventPosition? = nil) -> EventSubscription {
        events.subscribe(after: after)
    }
}
