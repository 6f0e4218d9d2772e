public import Logging
public import SomaCore
public import SomaNet
import Synchronization

/// Where a router sends gossip frames to one peer (a connection of the node, or an in-process
/// link in tests). `send` must not block: the transport queues the frame in its priority class.
public protocol GossipLink: Sendable {
    /// Sends one gossip frame's payload (``GossipFrame/bytes``: the priority byte first).
    func send(_ frame: [UInt8])
    /// Closes the connection (a peer past the penalty limit).
    func disconnect()
}

extension GossipLink {
    /// Nothing to close.
    public func disconnect() {}
}

/// What a topic's validation hook decides about a message before it is delivered or forwarded.
public enum Verdict: Sendable, Equatable {
    /// Deliver and forward it.
    case accept
    /// Neither deliver nor forward it, without blame (a stale or redundant message).
    case ignore
    /// Invalid: dropped, and the peer that sent it is penalised.
    case reject(String)
}

/// A message as a subscriber receives it.
public struct GossipMessage: Sendable, Equatable {
    /// Its id (``GossipItem/Message/id(topic:payload:)``).
    public var id: MessageID
    /// Its topic.
    public var topic: String
    /// Its payload, decompressed.
    public var payload: [UInt8]
    /// The peer it came from (`nil`: published by this node).
    public var from: PeerID?
    /// Whether it was sent as a critical message.
    public var critical: Bool

    /// A message.
    public init(id: MessageID, topic: String, payload: [UInt8], from: PeerID?, critical: Bool) {
        self.id = id
        self.topic = topic
        self.payload = payload
        self.from = from
        self.critical = critical
    }
}

/// How a topic is carried.
public struct TopicOptions: Sendable {
    /// The class its frames travel in (consensus topics: ``Priority/consensus``).
    public var priority: Priority = .checkpoints
    /// The largest payload, decompressed.
    public var maxMessageBytes = 1 << 20
    /// Messages per second one peer may send on the topic (a burst of one second's worth).
    public var messagesPerSecond: Double = 2_000
    /// Payload bytes per second one peer may send on the topic.
    public var bytesPerSecond = Double(32 << 20)
    /// Peers that get every message of the topic first and are never pruned from its tree (the
    /// committee's nodes, for consensus topics).
    public var preferred: Set<PeerID> = []
    /// Packs several of the topic's messages that share a frame into one item, `nil` when it
    /// cannot (then they go one by one); `unpack` must give back exactly the payloads (their
    /// ids are over them). Without them, messages travel one by one.
    public var pack: (@Sendable ([[UInt8]]) -> [UInt8]?)?
    /// The inverse of `pack`, throwing on anything that is not a packed body; at most
    /// ``GossipLimits/maxItems`` payloads.
    public var unpack: (@Sendable ([UInt8]) throws -> [[UInt8]])?
    /// The origin of a message (votes: the signer's key), 1...64 bytes: a topic with origins
    /// keeps a push tree per origin, so that the messages of many concurrent publishers each
    /// settle into a tree of one copy per node (one shared tree, pruned by every publisher's
    /// duplicates, keeps cycles or breaks). Runs under the router's lock: it must be cheap.
    /// Without it (or for `nil`), the topic has one tree.
    public var origin: (@Sendable ([UInt8]) -> [UInt8]?)?
    /// Runs on every new message before it is delivered or forwarded (off the router's lock).
    public var validate: @Sendable (GossipMessage) -> Verdict = { _ in .accept }

    /// The defaults (class checkpoints, 1 MiB, 2,000 messages/s and 32 MiB/s a peer, no validation).
    public init() {}
}

/// The router's tunables (DESIGN §12).
public struct GossipConfiguration: Sendable {
    /// Eager peers a topic keeps (the push tree's degree); the other peers get announcements.
    public var meshDegree = 8
    /// A copy of a message already seen prunes its eager sender only while the topic keeps more
    /// eager peers than this: concurrent prunes on one cycle cannot cut a node off the tree.
    public var minimumEager = 2
    /// How long small messages wait to share a frame, by class (consensus, checkpoints, bulk).
    public var batchDelay: [Duration] = [.milliseconds(3), .milliseconds(3), .milliseconds(5)]
    /// A frame is sent as soon as its items hold this many bytes.
    public var batchBytes = 32 << 10
    /// Lazy peers each message is announced to, picked at random per message among those not
    /// known to hold it one ``haveInterval`` after it was forwarded (a node that lacks a message
    /// never announces it, so it stays a candidate of every neighbour that holds it).
    public var lazyFanout = 6
    /// How often announcements (`have`) go to lazy peers; a message is announced on the first
    /// tick at least this long after it was forwarded.
    public var haveInterval: Duration = .milliseconds(100)
    /// How long an announced message may stay missing before it is pulled (`want`) from the
    /// next peer that announced it, at least (the router lengthens it while pulls turn out
    /// premature, up to 1 s).
    public var missingTimeout: Duration = .milliseconds(100)
    /// Message ids remembered (the oldest go first).
    public var seenCapacity = 200_000
    /// How long a message id is remembered: longer than any message stays valid.
    public var seenTTL: Duration = .seconds(120)
    /// Payload bytes kept to answer `want`s (the oldest go first).
    public var retainBytes = 64 << 20
    /// Payloads of at least this many bytes are LZ4-compressed when that makes them smaller.
    public var compressThreshold = 1_024
    /// The first retry of an unacknowledged critical message, before a round trip is measured.
    public var initialRetry: Duration = .milliseconds(200)
    /// The shortest retry timeout, whatever the measured round trip.
    public var minimumRetry: Duration = .milliseconds(20)
    /// How long a critical message is retried before its target counts as not acknowledged.
    public var deliveryDeadline: Duration = .seconds(10)
    /// Penalty points at which a peer is reported as misbehaving (``GossipRouter/onMisbehaving``);
    /// points decay by one a second.
    public var penaltyLimit = 100.0
    /// Messages a subscriber's stream buffers; a slower subscriber loses the oldest.
    public var subscriberBuffer = 8_192

    /// The defaults.
    public init() {}
}

/// Who acknowledged a critical message (DESIGN §12): every target of the publisher, acknowledged
/// or not by the deadline.
public struct DeliveryReport: Sendable, Equatable {
    /// The message.
    public var id: MessageID
    /// Targets that acknowledged it.
    public var acknowledged: Set<PeerID>
    /// Targets that did not within ``GossipConfiguration/deliveryDeadline``.
    public var missing: Set<PeerID>
}

/// What a router has done, for tests, metrics and the bench.
public struct GossipStatistics: Sendable, Equatable {
    /// New messages received from peers (each counted once).
    public var received = 0
    /// Copies of messages already seen.
    public var duplicates = 0
    /// Messages published by this node.
    public var published = 0
    /// Messages sent to peers (each copy).
    public var messagesSent = 0
    /// Frames sent and their bytes (gossip payload bytes plus the 16-byte frame header each).
    public var framesSent = 0
    public var bytesSent = 0
    /// Bytes of message items and of announcement items (`have`) among them.
    public var messageBytes = 0
    public var haveBytes = 0
    /// Message ids announced (in `have` items sent).
    public var announced = 0
    /// Messages dropped by validation, throttling or decoding, and frames that did not decode.
    public var rejected = 0
    public var throttled = 0
    public var malformed = 0
    /// Messages pulled with `want` after an announcement, and `want`s answered.
    public var pulled = 0
    public var served = 0
    /// Critical messages sent again after a missing acknowledgement.
    public var retries = 0
    /// Prunes sent (a duplicate from an eager peer) and grafts (a pull from a lazy one).
    public var prunes = 0
    public var grafts = 0
}

/// Message propagation (DESIGN §12): dedup by message id, eager push along a tree, lazy
/// announcements to the other peers with pulls of what goes missing, per-topic validation,
/// batching and compression, acknowledged critical messages with retries, and per-peer throttling.
///
/// The push tree is Plumtree's (Leitão, Pereira, Rodrigues 2007): each topic starts with up to
/// ``GossipConfiguration/meshDegree`` eager peers; a copy of a message already seen from an eager
/// peer prunes that peer to lazy (so the eager links converge to a tree and each node receives
/// each message about once); lazy peers get periodic `have` announcements; a message announced
/// but not received within ``GossipConfiguration/missingTimeout`` is pulled with `want`, which
/// also grafts the announcer back into the tree. A message is never sent to a peer known to hold
/// it (it sent it to us, announced it, acknowledged it, or we sent it there).
///
/// Critical messages go to every peer, each acknowledges (`ack`), and unacknowledged ones are
/// sent again after a timeout adapted to the peer's measured round trip until
/// ``GossipConfiguration/deliveryDeadline``; the publisher's ``publishCritical(topic:payload:)``
/// reports who did not acknowledge.
///
/// The router is transport-agnostic: ``addPeer(_:link:)`` gives it a ``GossipLink`` per peer and
/// ``receive(from:frame:)`` hands it what a peer sent; ``run()`` drives its timers.
public final class GossipRouter: Sendable {
    /// This node's peer id.
    public let localID: PeerID
    /// The tunables.
    public let configuration: GossipConfiguration
    /// Told once when a peer's penalty reaches the limit (with the last reason), as its link is
    /// closed; the node may also ban it.
    public let onMisbehaving: @Sendable (PeerID, String) -> Void
    let logger: Logger
    let state: Mutex<RouterState>

    /// A router for the node `localID`.
    public init(
        localID: PeerID, configuration: GossipConfiguration = GossipConfiguration(), logger: Logger = Logger(label: "soma.gossip"),
        onMisbehaving: @escaping @Sendable (PeerID, String) -> Void = { _, _ in }
    ) {
        self.localID = localID
        self.configuration = configuration
        self.logger = logger
        self.onMisbehaving = onMisbehaving
        self.state = Mutex(RouterState(configuration: configuration))
    }

    // MARK: Topics, peers, subscribers

    /// Ends every subscriber's stream (a stopping node: its readers, such as event streams of
    /// its HTTP API, end too).
    public func finishSubscribers() {
        let all = state.withLock { s -> [AsyncStream<GossipMessage>.Continuation] in
            defer {
                s.subscribers = [:]
                s.subscribersClosed = true
            }
            return s.subscribers.values.flatMap(\.values)
        }
        for c in all { c.finish() }
    }

    /// Carries `topic` with `options` (replacing earlier options). Messages of topics not
    /// registered are neither delivered nor forwarded.
    public func register(topic: String, options: TopicOptions = TopicOptions()) {
        precondition(!topic.isEmpty && topic.utf8.count <= GossipLimits.maxTopicBytes, "topic names are 1...64 UTF-8 bytes")
        state.withLock { s in
            if s.topics[topic] == nil {
                var t = TopicState(options: options)
                for id in s.peers.keys.sorted() { s.join(&t, id) }
                s.topics[topic] = t
            } else {
                s.topics[topic]!.options = options
            }
        }
    }

    /// The messages of `topic` received from now on (not those this node publishes); the stream
    /// ends when ``finishSubscribers()`` is called.
    public func subscribe(topic: String) -> AsyncStream<GossipMessage> {
        let (stream, continuation) = AsyncStream<GossipMessage>.makeStream(bufferingPolicy: .bufferingNewest(configuration.subscriberBuffer))
        let key = state.withLock { s -> Int? in
            guard !s.subscribersClosed else { return nil }
            s.nextSubscriber += 1
            s.subscribers[topic, default: [:]][s.nextSubscriber] = continuation
            return s.nextSubscriber
        }
        guard let key else {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [weak self] _ in
            self?.state.withLock { s in _ = s.subscribers[topic]?.removeValue(forKey: key) }
        }
        return stream
    }

    /// Starts sending to `peer` through `link` (a reconnection replaces the old link; critical
    /// messages it had not acknowledged are sent again on their next retry).
    public func addPeer(_ peer: PeerID, link: any GossipLink) {
        state.withLock { s in
            let known = s.peers[peer] != nil
            s.departed.removeValue(forKey: peer)
            s.peers[peer] = PeerState(link: link, penalty: s.peers[peer]?.penalty ?? 0)
            if !known {
                for name in s.topics.keys { s.join(&s.topics[name]!, peer) }
            }
        }
    }

    /// Stops sending to `peer` (its place in every topic's tree goes to a lazy peer).
    public func removePeer(_ peer: PeerID) {
        state.withLock { s in
            guard s.peers.removeValue(forKey: peer) != nil else { return }
            s.departed[peer] = .now
            s.leave(peer)
        }
    }

    /// The peers the router sends to.
    public var peers: Set<PeerID> { state.withLock { Set($0.peers.keys) } }

    /// What the router has done so far.
    public var statistics: GossipStatistics { state.withLock { $0.stats } }

    /// The eager and lazy peers of `topic`, or of the tree of `origin` in it.
    public func tree(topic: String, origin: [UInt8]? = nil) -> (eager: Set<PeerID>, lazy: Set<PeerID>) {
        state.withLock { s in
            guard let t = s.topics[topic] else { return ([], []) }
            let tree = t.tree(origin)
            return (tree.eager, tree.lazy)
        }
    }

    /// What `topic`'s validation says of `payload` as if a peer had sent it (`nil`: the topic
    /// is not carried). An out-of-process publisher's messages go through it first: the node
    /// forwards nothing its peers would reject.
    public func check(topic: String, payload: [UInt8]) -> Verdict? {
        guard let options = state.withLock({ $0.topics[topic]?.options }) else { return nil }
        guard payload.count <= options.maxMessageBytes else { return .reject("\(payload.count) bytes, the topic allows \(options.maxMessageBytes)") }
        let id = GossipItem.Message.id(topic: topic, payload: payload)
        return options.validate(GossipMessage(id: id, topic: topic, payload: payload, from: nil, critical: false))
    }

    /// The topics carried.
    public var topics: [String] { state.withLock { $0.topics.keys.sorted() } }

    /// Whether this node holds (or held, within the TTL) the message.
    public func hasSeen(_ id: MessageID) -> Bool { state.withLock { $0.seen[id] != nil } }

    // MARK: Publishing

    /// Publishes `payload` on `topic` (registered) to the network.
    /// - Returns: the message id (also when the message was seen before: then nothing is sent).
    @discardableResult
    public func publish(topic: String, payload: [UInt8], critical: Bool = false) -> MessageID {
        let id = GossipItem.Message.id(topic: topic, payload: payload)
        let sends = state.withLock { s -> [Outgoing] in
            guard s.topics[topic] != nil, s.seen[id] == nil else { return [] }
            s.stats.published += 1
            let encoded = GossipItem.Message.encoding(topic: topic, payload: payload, critical: critical, threshold: configuration.compressThreshold)
            s.remember(id, topic: topic, payload: payload, encoded: encoded, now: .now)
            s.forward(id, from: nil, critical: critical, now: .now, tracker: nil)
            return s.due(now: .now, force: false)
        }
        deliverSends(sends)
        return id
    }


    /// Publishes a critical message: sent to every peer, acknowledged by each, retried until
    /// ``GossipConfiguration/deliveryDeadline``.
    /// - Returns: who acknowledged and who did not (an empty report when the message was seen before).
    public func publishCritical(topic: String, payload: [UInt8]) async -> DeliveryReport {
        let id = GossipItem.Message.id(topic: topic, payload: payload)
        return await withCheckedContinuation { (continuation: CheckedContinuation<DeliveryReport, Never>) in
            let sends = state.withLock { s -> [Outgoing] in
                guard s.topics[topic] != nil, s.seen[id] == nil else {
                    continuation.resume(returning: DeliveryReport(id: id, acknowledged: [], missing: []))
                    return []
                }
                s.stats.published += 1
                let now = ContinuousClock.now
                let encoded = GossipItem.Message.encoding(topic: topic, payload: payload, critical: true, threshold: configuration.compressThreshold)
                s.remember(id, topic: topic, payload: payload, encoded: encoded, now: now)
                // Targets: the peers, and those that left within the deadline (they may come back).
                let targets = Set(s.peers.keys).union(s.departed.filter { $0.value + configuration.deliveryDeadline > now }.keys)
                guard !targets.isEmpty else {
                    continuation.resume(returning: DeliveryReport(id: id, acknowledged: [], missing: []))
                    return []
                }
                s.trackers[id] = Tracker(targets: targets, acknowledged: [], deadline: now + configuration.deliveryDeadline, continuation: continuation)
                s.forward(id, from: nil, critical: true, now: now, tracker: id)
                return s.due(now: now, force: false)
            }
            deliverSends(sends)
        }
    }

    // MARK: Receiving

    /// Handles a gossip frame `peer` sent (the payload of a method-24 frame). A frame that does not
    /// decode is dropped and penalises the peer.
    public func receive(from peer: PeerID, frame bytes: some Collection<UInt8>) {
        let frame: GossipFrame
        do {
            frame = try BCS.decode(GossipFrame.self, fromContiguous: Array(bytes))
        } catch {
            penalise(peer, points: 50, "a gossip frame that does not decode: \(error)")
            state.withLock { $0.stats.malformed += 1 }
            return
        }
        let now = ContinuousClock.now
        var fresh: [(GossipMessage, TopicOptions, GossipItem.Message)] = []
        let items = unpacked(frame.items, from: peer)
        var sends = state.withLock { s -> [Outgoing] in
            guard s.peers[peer] != nil else { return [] }
            for item in items {
                switch item {
                case .message(let m):
                    if let candidate = s.screen(m, from: peer, now: now) { fresh.append(candidate) }
                case .have(let topic, let ids):
                    s.announced(ids, topic: topic, by: peer, now: now)
                case .want(let ids):
                    s.wanted(ids, by: peer)
                case .prune(let topic, let origin):
                    s.pruned(topic: topic, origin: origin, by: peer)
                case .ack(let ids):
                    s.acknowledged(ids, by: peer, now: now)
                case .packed:
                    break
                }
            }
            return s.due(now: now, force: false)
        }
        for (who, points, why) in state.withLock({ s in defer { s.penalties = [] }; return s.penalties }) {
            penalise(who, points: points, why)
        }
        // Validation runs off the lock; what passes is delivered and forwarded.
        for (message, options, encoded) in fresh {
            switch options.validate(message) {
            case .accept:
                sends += state.withLock { s -> [Outgoing] in
                    guard s.seen[message.id]?.pending == true else { return [] }
                    s.accept(message, encoded: encoded, now: now)
                    return s.due(now: now, force: false)
                }
            case .ignore:
                state.withLock { s in s.seen[message.id]?.pending = false }
            case .reject(let why):
                state.withLock { s in
                    s.seen[message.id]?.pending = false
                    s.stats.rejected += 1
                }
                penalise(peer, points: 20, "invalid message on \(message.topic): \(why)")
            }
        }
        deliverSends(sends)
    }

    /// The items with every packed one replaced by its messages (a body that does not unpack,
    /// or a topic without a codec, is dropped and penalises the sender).
    func unpacked(_ items: [GossipItem], from peer: PeerID) -> [GossipItem] {
        guard items.contains(where: { if case .packed = $0 { true } else { false } }) else { return items }
        var out: [GossipItem] = []
        for item in items {
            guard case .packed(let topic, let critical, let body) = item else {
                out.append(item)
                continue
            }
            guard let unpack = state.withLock({ $0.topics[topic]?.options.unpack }) else { continue }
            do {
                let payloads = try unpack(body)
                guard payloads.count <= GossipLimits.maxItems else { throw CoreError(.lengthTooLarge, "\(payloads.count) packed messages") }
                for p in payloads { out.append(.message(.init(topic: topic, critical: critical, compressed: false, body: p))) }
            } catch {
                state.withLock { $0.stats.malformed += 1 }
                penalise(peer, points: 20, "packed \(topic) messages that do not unpack: \(error)")
            }
        }
        return out
    }

    /// Adds penalty points to `peer`; at the limit, ``onMisbehaving`` is told once and the
    /// peer's link is closed.
    func penalise(_ peer: PeerID, points: Double, _ reason: String) {
        let link = state.withLock { s -> (any GossipLink)? in
            guard var p = s.peers[peer] else { return nil }
            p.penalty += points
            let crossed = p.penalty >= configuration.penaltyLimit && !p.reported
            if crossed { p.reported = true }
            s.peers[peer] = p
            return crossed ? p.link : nil
        }
        logger.debug("gossip penalty", metadata: ["peer.id": "\(peer.raw.short)", "reason": "\(reason)"])
        if let link {
            logger.notice("disconnecting a misbehaving gossip peer", metadata: ["peer.id": "\(peer.raw.short)", "reason": "\(reason)"])
            onMisbehaving(peer, reason)
            link.disconnect()
        }
    }

    // MARK: Timers

    /// Drives batching, announcements, pulls, retries and expiry (about once a millisecond)
    /// until the task is cancelled.
    public func run() async {
        var lastSecond = ContinuousClock.now
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(1))
            let now = ContinuousClock.now
            let (sends, reports) = state.withLock { s -> ([Outgoing], [(CheckedContinuation<DeliveryReport, Never>, DeliveryReport)]) in
                if now - lastSecond >= .seconds(1) {
                    lastSecond = now
                    for id in s.peers.keys { s.peers[id]!.penalty = max(0, s.peers[id]!.penalty - 1) }
                }
                s.tick(now: now)
                return (s.due(now: now, force: false), s.expiredTrackers(now: now))
            }
            deliverSends(sends)
            for (c, r) in reports { c.resume(returning: r) }
        }
        // Whoever still waits for a report gets it now.
        let reports = state.withLock { $0.expiredTrackers(now: .now + .seconds(1_000_000)) }
        for (c, r) in reports { c.resume(returning: r) }
    }

    /// Sends every queued item now (tests; a stopping node).
    public func flush() {
        deliverSends(state.withLock { $0.due(now: .now, force: true) })
    }

    func deliverSends(_ sends: [Outgoing]) {
        for o in sends {
            switch o {
            case .deliver(let continuation, let message): continuation.yield(message)
            case .report(let continuation, let report): continuation.resume(returning: report)
            }
        }
    }
}

/// What the router hands out after its lock: messages to subscribers, reports to publishers
/// (frames go to their links under the lock).
enum Outgoing {
    case deliver(AsyncStream<GossipMessage>.Continuation, GossipMessage)
    case report(CheckedContinuation<DeliveryReport, Never>, DeliveryReport)
}
