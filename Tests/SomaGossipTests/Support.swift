import Foundation
import SomaCore
@testable import SomaGossip
import SomaNet
import Synchronization

/// An in-process network of gossip routers. A link delivers each frame to the other router
/// after `delay`; the network checks every frame sent and records a violation when a node
/// sends a peer a message that peer had already shown it holds (sent it, announced it or
/// acknowledged it).
final class SimNet: Sendable {
    struct Pair: Hashable { let from: PeerID; let to: PeerID }

    let delay: Duration
    let routers = Mutex<[PeerID: GossipRouter]>([:])
    let runners = Mutex<[PeerID: Task<Void, Never>]>([:])
    /// What `to` knows `from` holds: ids `from` showed it.
    let shown = Mutex<[Pair: Set<MessageID>]>([:])
    let violations = Mutex<[String]>([])
    let shownShort = Mutex<[Pair: Set<ShortID>]>([:])
    let inFlight = Atomic<Int>(0)

    init(delay: Duration = .milliseconds(1)) {
        self.delay = delay
    }

    static func key(_ i: Int) -> SigningKey {
        try! SigningKey(seed: Array(Hashing.sha256(Array("gossip-node-\(i)".utf8)).bytes))
    }

    /// Starts a router for `id` and its timers.
    @discardableResult
    func start(_ id: PeerID, configuration: GossipConfiguration = GossipConfiguration(), topics: [String: TopicOptions],
               onMisbehaving: @escaping @Sendable (PeerID, String) -> Void = { _, _ in }) -> GossipRouter {
        let router = GossipRouter(localID: id, configuration: configuration, onMisbehaving: onMisbehaving)
        for (t, o) in topics { router.register(topic: t, options: o) }
        routers.withLock { $0[id] = router }
        runners.withLock { $0[id] = Task { await router.run() } }
        return router
    }

    /// Stops `id`: its timers end, frames to it are lost, its peers forget it.
    func kill(_ id: PeerID, neighbours: [PeerID]) {
        runners.withLock { $0.removeValue(forKey: id)?.cancel() }
        routers.withLock { _ = $0.removeValue(forKey: id) }
        for n in neighbours { router(n)?.removePeer(id) }
        shown.withLock { s in s = s.filter { $0.key.from != id && $0.key.to != id } }
        shownShort.withLock { s in s = s.filter { $0.key.from != id && $0.key.to != id } }
    }

    func router(_ id: PeerID) -> GossipRouter? { routers.withLock { $0[id] } }

    /// Links `a` and `b` both ways.
    func connect(_ a: PeerID, _ b: PeerID) {
        router(a)?.addPeer(b, link: Link(net: self, from: a, to: b))
        router(b)?.addPeer(a, link: Link(net: self, from: b, to: a))
    }

    /// Cuts the link between `a` and `b` both ways (frames in flight are dropped on arrival).
    func disconnect(_ a: PeerID, _ b: PeerID) {
        router(a)?.removePeer(b)
        router(b)?.removePeer(a)
    }

    struct Link: GossipLink {
        let net: SimNet
        let from: PeerID
        let to: PeerID
        func send(_ frame: [UInt8]) { net.carry(frame, from: from, to: to) }
    }

    func carry(_ bytes: [UInt8], from: PeerID, to: PeerID) {
        guard let frame = try? BCS.decode(GossipFrame.self, from: bytes) else {
            violations.withLock { $0.append("\(from.raw.short) sent a frame that does not decode") }
            return
        }
        let known = shown.withLock { $0[Pair(from: to, to: from)] ?? [] }
        let knownShort = shownShort.withLock { $0[Pair(from: to, to: from)] ?? [] }
        var ids: Set<MessageID> = []
        var shorts: Set<ShortID> = []
        for item in frame.items {
            switch item {
            case .message(let m):
                let id = GossipItem.Message.id(topic: m.topic, payload: (try? m.payload(limit: 64 << 20)) ?? [])
                if (known.contains(id) || knownShort.contains(ShortID(id))) && !m.critical {
                    violations.withLock { $0.append("\(from.raw.short) sent \(to.raw.short) message \(id.hex.prefix(8)) it had shown it holds") }
                }
                ids.insert(id)
            case .have(_, let list):
                shorts.formUnion(list)
            case .ack(let list): ids.formUnion(list)
            default: break
            }
        }
        inFlight.add(1, ordering: .relaxed)
        lane(from: from, to: to).yield((bytes, ids, shorts, ContinuousClock.now + delay))
    }

    /// One lane per direction of a link: frames arrive in the order sent, each `delay` after it
    /// was sent (as over a TCP connection).
    let lanes = Mutex<[Pair: AsyncStream<([UInt8], Set<MessageID>, Set<ShortID>, ContinuousClock.Instant)>.Continuation]>([:])

    func lane(from: PeerID, to: PeerID) -> AsyncStream<([UInt8], Set<MessageID>, Set<ShortID>, ContinuousClock.Instant)>.Continuation {
        lanes.withLock { lanes in
            if let c = lanes[Pair(from: from, to: to)] { return c }
            let (stream, c) = AsyncStream<([UInt8], Set<MessageID>, Set<ShortID>, ContinuousClock.Instant)>.makeStream()
            lanes[Pair(from: from, to: to)] = c
            Task {
                for await (bytes, ids, shorts, due) in stream {
                    try? await Task.sleep(until: due)
                    if let r = router(to) {
                        r.receive(from: from, frame: bytes)
                        shown.withLock { $0[Pair(from: from, to: to), default: []].formUnion(ids) }
                        shownShort.withLock { $0[Pair(from: from, to: to), default: []].formUnion(shorts) }
                    }
                    inFlight.subtract(1, ordering: .relaxed)
                }
            }
            return c
        }
    }

    func stopAll() {
        runners.withLock { r in
            for t in r.values { t.cancel() }
            r = [:]
        }
        lanes.withLock { l in
            for c in l.values { c.finish() }
            l = [:]
        }
    }

    /// A connected random graph of `n` nodes where each has `degree` peers.
    static func randomGraph(n: Int, degree: Int, seed: UInt64) -> [[Int]] {
        GossipCluster.randomRegularGraph(n: n, degree: degree, seed: seed)
    }
}

struct SplitMix {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Waits until `condition` holds, up to `seconds`.
func eventually(_ seconds: Double = 10, _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return condition()
}

/// Collects what a router's subscription delivers.
final class Inbox: Sendable {
    let messages = Mutex<[GossipMessage]>([])
    let task = Mutex<Task<Void, Never>?>(nil)

    init(_ stream: AsyncStream<GossipMessage>) {
        task.withLock { $0 = Task { [self] in for await m in stream { self.messages.withLock { $0.append(m) } } } }
    }

    var ids: Set<MessageID> { messages.withLock { Set($0.map(\.id)) } }
    var count: Int { messages.withLock { $0.count } }
}
