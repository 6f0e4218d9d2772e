import NIOCore
import SomaCore
import SomaNet

/// One peer as the router sees it.
struct PeerState {
    var link: any GossipLink
    /// Items waiting to share a frame, by class; when the first of each arrived's batch is due.
    var outbox: [[(item: GossipItem, id: MessageID?)]] = [[], [], []]
    var outboxBytes = [0, 0, 0]
    var dueAt: [ContinuousClock.Instant?] = [nil, nil, nil]
    /// Smoothed round trip and its variation (seconds), from acknowledgements.
    var srtt: Double?
    var rttvar = 0.0
    var penalty: Double
    var reported = false
    /// Throttling by topic.
    var buckets: [String: Bucket] = [:]

    init(link: any GossipLink, penalty: Double) {
        self.link = link
        self.penalty = penalty
    }
}

/// A token bucket for messages and one for bytes (one second's worth of burst each).
struct Bucket {
    var messages: Double
    var bytes: Double
    var last: ContinuousClock.Instant

    mutating func take(bytes size: Int, options: TopicOptions, now: ContinuousClock.Instant) -> Bool {
        let elapsed = (now - last).seconds
        last = now
        messages = min(options.messagesPerSecond, messages + elapsed * options.messagesPerSecond)
        bytes = min(options.bytesPerSecond, bytes + elapsed * options.bytesPerSecond)
        guard messages >= 1, bytes >= Double(size) else { return false }
        messages -= 1
        bytes -= Double(size)
        return true
    }
}

/// A push tree: the peers messages are sent to eagerly, and those they are announced to.
struct PushTree {
    var eager: Set<PeerID> = []
    var lazy: Set<PeerID> = []
}

/// A topic's push tree and options, and the trees of its origins (a topic with
/// ``TopicOptions/origin``): each origin's messages settle into a tree of their own, so that
/// concurrent publishers do not prune each other's paths.
struct TopicState {
    var options: TopicOptions
    var eager: Set<PeerID> = []
    var lazy: Set<PeerID> = []
    var origins: [[UInt8]: PushTree] = [:]
    /// Origins in the order their trees were made (the oldest is forgotten past ``maxOrigins``).
    var originOrder = CircularBuffer<[UInt8]>()

    /// Most origin trees a topic keeps (a committee has at most 1,024 members).
    static let maxOrigins = 4_096

    /// The tree `origin`'s messages travel (the topic's for `nil` or an origin without one yet).
    func tree(_ origin: [UInt8]?) -> PushTree { origin.flatMap { origins[$0] } ?? PushTree(eager: eager, lazy: lazy) }
}

/// A message id the router remembers.
struct SeenEntry {
    var topic: String
    var expiry: ContinuousClock.Instant
    /// Peers known to hold the message from what they sent (the message, a `have`, an `ack`).
    var holders: Set<PeerID>
    /// Peers this node sent it to.
    var sentTo: Set<PeerID> = []
    /// The message as it is sent, while retained for `want`s and retries.
    var encoded: GossipItem.Message?
    /// Its origin (``TopicOptions/origin``): the tree it travels.
    var origin: [UInt8]?
    var critical: Bool
    /// Validation is under way (a copy arriving meanwhile is a duplicate).
    var pending: Bool
    /// It arrived as the answer to this node's pull.
    var pulled = false
}

/// A message announced but not received.
struct MissingEntry {
    var topic: String
    var announcers: [PeerID]
    var asked: Set<PeerID> = []
    /// When to pull from the next announcer.
    var deadline: ContinuousClock.Instant
    /// When the entry is dropped (the seen TTL after the first announcement).
    var expiry: ContinuousClock.Instant
}

/// A critical message sent to a peer and not yet acknowledged.
struct RetryKey: Hashable {
    var id: MessageID
    var peer: PeerID
}

struct RetryEntry {
    var sentAt: ContinuousClock.Instant
    var retryAt: ContinuousClock.Instant
    var giveUpAt: ContinuousClock.Instant
    var attempts = 0
}

/// A publisher waiting for the acknowledgements of its critical message.
struct Tracker {
    var targets: Set<PeerID>
    var acknowledged: Set<PeerID>
    var deadline: ContinuousClock.Instant
    var continuation: CheckedContinuation<DeliveryReport, Never>
}

/// Everything a ``GossipRouter`` keeps, behind its lock. Methods run with the lock held and
/// never call out: frames, deliveries and reports are collected and handed out after it.
struct RouterState {
    let configuration: GossipConfiguration
    var peers: [PeerID: PeerState] = [:]
    /// Peers that disconnected within the delivery deadline: critical messages are still meant
    /// for them (sent when they come back).
    var departed: [PeerID: ContinuousClock.Instant] = [:]
    var topics: [String: TopicState] = [:]
    var subscribers: [String: [Int: AsyncStream<GossipMessage>.Continuation]] = [:]
    var nextSubscriber = 0
    var subscribersClosed = false
    var seen: [MessageID: SeenEntry] = [:]
    var seenOrder = CircularBuffer<(MessageID, ContinuousClock.Instant)>()
    var retainOrder = CircularBuffer<(MessageID, Int)>()
    var retainedBytes = 0
    /// Announced messages not held, by short id.
    var missing: [ShortID: MissingEntry] = [:]
    /// The short id of every remembered message (announcements and pulls name messages by it).
    var shortIDs: [ShortID: MessageID] = [:]
    var retries: [RetryKey: RetryEntry] = [:]
    /// Messages to announce to lazy peers, with when they were forwarded: each is announced on
    /// the first `have` tick one interval after, to peers picked then (see ``announce(now:)``).
    var announcements = CircularBuffer<(MessageID, ContinuousClock.Instant)>()
    var trackers: [MessageID: Tracker] = [:]
    var deliveries: [Outgoing] = []
    var penalties: [(PeerID, Double, String)] = []
    var nextHave = ContinuousClock.now
    var stats = GossipStatistics()
    /// How long an announced message may stay missing before it is pulled: it adapts to how
    /// long eager copies take here (a pull answered by an eager copy from another peer was
    /// premature and lengthens it by a quarter, up to 1 s; a pull that was needed shortens it
    /// slowly back towards the configured value), so a loaded or slow network does not turn
    /// into pulls and grafts.
    var missingTimeout: Duration

    /// Most missing messages tracked at once (announcements beyond are ignored).
    static let maxMissing = 65_536
    /// Most announcers remembered per missing message.
    static let maxAnnouncers = 8

    init(configuration: GossipConfiguration) {
        self.configuration = configuration
        self.missingTimeout = configuration.missingTimeout
    }

    /// A new peer joins a topic and its origins' trees: eager while a tree has room, lazy after.
    func join(_ t: inout TopicState, _ peer: PeerID) {
        if t.eager.count < configuration.meshDegree { t.eager.insert(peer) } else { t.lazy.insert(peer) }
        for (origin, var tree) in t.origins {
            if tree.eager.count < configuration.meshDegree { tree.eager.insert(peer) } else { tree.lazy.insert(peer) }
            t.origins[origin] = tree
        }
    }

    /// A peer leaves every tree; a lazy peer takes an eager one's place.
    mutating func leave(_ peer: PeerID) {
        func drop(_ tree: inout PushTree) {
            tree.lazy.remove(peer)
            if tree.eager.remove(peer) != nil, let promoted = tree.lazy.min() {
                tree.lazy.remove(promoted)
                tree.eager.insert(promoted)
            }
        }
        for name in topics.keys {
            var base = PushTree(eager: topics[name]!.eager, lazy: topics[name]!.lazy)
            drop(&base)
            topics[name]!.eager = base.eager
            topics[name]!.lazy = base.lazy
            for origin in topics[name]!.origins.keys { drop(&topics[name]!.origins[origin]!) }
        }
    }

    /// The origin of a message of a topic with `options` (nil: the topic has one tree, or the
    /// payload names no origin of 1...64 bytes).
    func origin(of payload: [UInt8], options: TopicOptions) -> [UInt8]? {
        guard let f = options.origin, let o = f(payload), !o.isEmpty, o.count <= GossipLimits.maxOriginBytes else { return nil }
        return o
    }

    /// Gives `origin` a tree in `topic` if it has none: a copy of the topic's (whose peers are
    /// all eager up to the mesh degree), the oldest origin's tree forgotten past the bound.
    mutating func plant(_ topic: String, _ origin: [UInt8]) {
        guard var t = topics[topic], t.origins[origin] == nil else { return }
        t.origins[origin] = PushTree(eager: t.eager, lazy: t.lazy)
        t.originOrder.append(origin)
        while t.originOrder.count > TopicState.maxOrigins, let old = t.originOrder.popFirst() { t.origins.removeValue(forKey: old) }
        topics[topic] = t
    }

    /// Moves `peer` to the lazy peers of `origin`'s tree in `topic` (the topic's for nil) while
    /// the tree keeps more eager peers than its floor (``GossipConfiguration/minimumEager`` for
    /// a topic's tree; 1 for an origin's: the peer that delivered first stays); whether it moved.
    mutating func demote(_ peer: PeerID, topic: String, origin: [UInt8]?) -> Bool {
        guard topics[topic] != nil else { return false }
        if let origin {
            guard var tree = topics[topic]!.origins[origin], tree.eager.count > 1, tree.eager.remove(peer) != nil else { return false }
            tree.lazy.insert(peer)
            topics[topic]!.origins[origin] = tree
            return true
        }
        guard topics[topic]!.eager.count > configuration.minimumEager, topics[topic]!.eager.remove(peer) != nil else { return false }
        topics[topic]!.lazy.insert(peer)
        return true
    }

    /// Moves `peer` from the lazy to the eager peers of `origin`'s tree in `topic` (a graft);
    /// whether it moved.
    mutating func promote(_ peer: PeerID, topic: String, origin: [UInt8]?) -> Bool {
        guard topics[topic] != nil else { return false }
        if let origin {
            plant(topic, origin)
            guard topics[topic]!.origins[origin]?.lazy.remove(peer) != nil else { return false }
            topics[topic]!.origins[origin]!.eager.insert(peer)
            return true
        }
        guard topics[topic]!.lazy.remove(peer) != nil else { return false }
        topics[topic]!.eager.insert(peer)
        return true
    }

    // MARK: Seen messages

    /// Records a message this node holds (published, or accepted from a peer).
    mutating func remember(_ id: MessageID, topic: String, payload: [UInt8], encoded: GossipItem.Message, now: ContinuousClock.Instant) {
        let expiry = now + configuration.seenTTL
        if seen[id] == nil {
            seenOrder.append((id, expiry))
            shortIDs[ShortID(id)] = shortIDs[ShortID(id)] ?? id
        }
        let announcers = missing.removeValue(forKey: ShortID(id))?.announcers ?? []
        seen[id] = SeenEntry(
            topic: topic, expiry: expiry, holders: (seen[id]?.holders ?? []).union(announcers), encoded: encoded,
            origin: topics[topic].flatMap { origin(of: payload, options: $0.options) }, critical: encoded.critical, pending: false)
        retain(id, bytes: encoded.body.count)
        trimSeen()
    }

    mutating func retain(_ id: MessageID, bytes: Int) {
        retainOrder.append((id, bytes))
        retainedBytes += bytes
        while retainedBytes > configuration.retainBytes, let (old, size) = retainOrder.popFirst() {
            retainedBytes -= size
            seen[old]?.encoded = nil
        }
    }

    mutating func trimSeen() {
        while seenOrder.count > configuration.seenCapacity, let (old, expiry) = seenOrder.popFirst() {
            if seen[old]?.expiry == expiry { forget(old) }
        }
    }

    mutating func forget(_ id: MessageID) {
        seen.removeValue(forKey: id)
        if shortIDs[ShortID(id)] == id { shortIDs.removeValue(forKey: ShortID(id)) }
    }

    // MARK: Receiving

    /// Checks a received message item: topic, throttle, size, duplicates. A new message is
    /// recorded as pending validation and returned; a duplicate updates who holds it (and
    /// prunes an eager sender); anything else is dropped, penalties noted.
    mutating func screen(
        _ m: GossipItem.Message, from peer: PeerID, now: ContinuousClock.Instant
    ) -> (GossipMessage, TopicOptions, GossipItem.Message)? {
        guard let topic = topics[m.topic] else { return nil }
        let options = topic.options
        var bucket = peers[peer]!.buckets[m.topic] ?? Bucket(messages: options.messagesPerSecond, bytes: options.bytesPerSecond, last: now)
        let allowed = bucket.take(bytes: m.body.count, options: options, now: now)
        peers[peer]!.buckets[m.topic] = bucket
        guard allowed else {
            stats.throttled += 1
            penalties.append((peer, 1, "over the \(m.topic) rate (\(Int(options.messagesPerSecond)) messages/s, \(Int(options.bytesPerSecond)) bytes/s)"))
            return nil
        }
        let payload: [UInt8]
        do {
            payload = try m.payload(limit: options.maxMessageBytes)
        } catch {
            stats.malformed += 1
            penalties.append((peer, 20, "a \(m.topic) message that does not decode: \(error)"))
            return nil
        }
        let id = GossipItem.Message.id(topic: m.topic, payload: payload)
        if m.critical { enqueue(.ack(ids: [id]), to: peer, priority: options.priority, now: now) }
        if seen[id] != nil {
            stats.duplicates += 1
            // It holds the message: no retry to it, and a publisher counts it as delivered.
            acknowledged([id], by: peer, now: now, measure: false)
            // A copy from an eager peer: the link leaves the tree (of the message's origin, where
            // the topic has origins), both ways (Plumtree): the peer becomes lazy here, and the
            // prune makes this node lazy there.
            let origin = origin(of: payload, options: options)
            if !m.critical, !options.preferred.contains(peer), demote(peer, topic: m.topic, origin: origin) {
                enqueue(.prune(topic: m.topic, origin: origin ?? []), to: peer, priority: options.priority, now: now)
                stats.prunes += 1
            }
            return nil
        }
        let origin = origin(of: payload, options: options)
        let expiry = now + configuration.seenTTL
        // Peers that announced it hold it too.
        let missed = missing.removeValue(forKey: ShortID(id))
        let announcers = missed?.announcers ?? []
        if let missed, !missed.asked.isEmpty {
            if missed.asked.contains(peer) {
                missingTimeout = max(configuration.missingTimeout, missingTimeout * 0.95)
            } else {
                missingTimeout = min(.seconds(1), missingTimeout * 1.25)
            }
        }
        seen[id] = SeenEntry(
            topic: m.topic, expiry: expiry, holders: Set(announcers).union([peer]), encoded: nil, origin: origin, critical: m.critical, pending: true,
            pulled: missed?.asked.contains(peer) == true)
        seenOrder.append((id, expiry))
        shortIDs[ShortID(id)] = shortIDs[ShortID(id)] ?? id
        trimSeen()
        return (GossipMessage(id: id, topic: m.topic, payload: payload, from: peer, critical: m.critical), options, m)
    }

    /// A validated message: retained, delivered to the subscribers, forwarded.
    mutating func accept(_ message: GossipMessage, encoded: GossipItem.Message, now: ContinuousClock.Instant) {
        stats.received += 1
        seen[message.id]!.pending = false
        seen[message.id]!.encoded = encoded
        retain(message.id, bytes: encoded.body.count)
        // A pull that was needed: the peer joins the tree of the message's origin (a topic's tree
        // was grafted when the pull was sent; an origin is known, and trusted, only now).
        if seen[message.id]!.pulled, let origin = seen[message.id]!.origin, let from = message.from,
           promote(from, topic: message.topic, origin: origin) {
            stats.grafts += 1
        }
        for c in (subscribers[message.topic] ?? [:]).values { deliveries.append(.deliver(c, message)) }
        forward(message.id, from: message.from, critical: message.critical, now: now, tracker: nil)
    }

    /// Sends a held message on: a critical one to every peer not known to hold it (each to be
    /// acknowledged), another to the topic's eager peers, announced to its lazy ones.
    mutating func forward(_ id: MessageID, from: PeerID?, critical: Bool, now: ContinuousClock.Instant, tracker: MessageID?) {
        guard let entry = seen[id], let encoded = entry.encoded, let topic = topics[entry.topic] else { return }
        let skip = entry.holders.union(entry.sentTo).union(from.map { [$0] } ?? [])
        let priority = topic.options.priority
        if critical {
            for (peer, since) in departed where since + configuration.deliveryDeadline <= now { departed.removeValue(forKey: peer) }
            for peer in Set(peers.keys).union(departed.keys) where !skip.contains(peer) {
                enqueue(.message(encoded), id: id, to: peer, priority: priority, now: now)
                retries[RetryKey(id: id, peer: peer)] = RetryEntry(
                    sentAt: now, retryAt: now + retryTimeout(peer), giveUpAt: now + configuration.deliveryDeadline)
                seen[id]!.sentTo.insert(peer)
            }
            return
        }
        // The tree of the message's origin, or the topic's: preferred peers (the committee's
        // nodes) first, then the rest of the tree.
        if let origin = entry.origin { plant(entry.topic, origin) }
        let tree = topics[entry.topic]!.tree(entry.origin)
        let preferred = topic.options.preferred.filter { peers[$0] != nil }
        for peer in preferred.sorted() + tree.eager.subtracting(preferred).sorted() where !skip.contains(peer) {
            enqueue(.message(encoded), id: id, to: peer, priority: priority, now: now)
            seen[id]!.sentTo.insert(peer)
        }
        // Announced a little later to the peers it was not sent to.
        if configuration.lazyFanout > 0 {
            if announcements.count >= configuration.seenCapacity { announcements.removeFirst() }
            announcements.append((id, now))
        }
    }

    /// Announces the messages forwarded at least one interval ago, each to at most `lazyFanout`
    /// peers picked at random among those it was not sent to and not known to hold it by now.
    /// Waiting an interval lets peers' own announcements arrive first: a peer that announced a
    /// message is not told of it, so announcements between two holders mostly go one way, and
    /// the fanout goes to the peers that may lack it (a peer that lacks a message never
    /// announces it, so every neighbour holding it keeps it among the candidates). Candidates
    /// are every peer of the tree, not only its lazy ones now: a peer grafted since the message
    /// was forwarded (lazy then, so not sent it) must still hear of it.
    mutating func announce(now: ContinuousClock.Instant) {
        var haves: [PeerID: [String: [MessageID]]] = [:]
        while let (id, at) = announcements.first, at + configuration.haveInterval <= now {
            announcements.removeFirst()
            guard let entry = seen[id], let topic = topics[entry.topic] else { continue }
            let known = entry.holders.union(entry.sentTo).union(topic.options.preferred)
            let tree = topic.tree(entry.origin)
            let candidates = tree.lazy.union(tree.eager).filter { !known.contains($0) && peers[$0] != nil }
            for peer in candidates.shuffled().prefix(configuration.lazyFanout) {
                haves[peer, default: [:]][entry.topic, default: []].append(id)
            }
        }
        for (peer, byTopic) in haves {
            for (name, ids) in byTopic {
                guard let t = topics[name] else { continue }
                for start in stride(from: 0, to: ids.count, by: GossipLimits.maxIDs) {
                    let chunk = ids[start..<min(ids.count, start + GossipLimits.maxIDs)]
                    enqueue(.have(topic: name, ids: chunk.map(ShortID.init)), to: peer, priority: t.options.priority, now: now)
                }
            }
        }
    }

    /// `prune` from a peer: it leaves the topic's tree (or the tree of `origin`, if this node
    /// keeps one), unless this node would keep fewer eager peers than the floor (a node that
    /// every neighbour prunes would otherwise hear of messages only through announcements; the
    /// pruner treats its copies as lazy ones).
    mutating func pruned(topic: String, origin: [UInt8], by peer: PeerID) {
        _ = demote(peer, topic: topic, origin: origin.isEmpty ? nil : origin)
    }

    /// `have` from a peer: the ids this node lacks become missing (pulled if they do not arrive).
    mutating func announced(_ ids: [ShortID], topic: String, by peer: PeerID, now: ContinuousClock.Instant) {
        guard topics[topic] != nil else { return }
        for id in ids {
            if let full = shortIDs[id], seen[full] != nil {
                seen[full]!.holders.insert(peer)
            } else if missing[id] != nil {
                if missing[id]!.announcers.count < Self.maxAnnouncers, !missing[id]!.announcers.contains(peer) {
                    missing[id]!.announcers.append(peer)
                    // A parked entry (everyone asked) has someone new to ask.
                    missing[id]!.deadline = min(missing[id]!.deadline, now + missingTimeout)
                }
            } else if missing.count < Self.maxMissing {
                missing[id] = MissingEntry(
                    topic: topic, announcers: [peer], deadline: now + missingTimeout, expiry: now + configuration.seenTTL)
            }
        }
    }

    /// `want` from a peer: the messages it asks for, if held; it becomes eager for their topics.
    mutating func wanted(_ shorts: [ShortID], by peer: PeerID) {
        let now = ContinuousClock.now
        for short in shorts {
            guard let id = shortIDs[short] else { continue }
            // Not to a peer that has shown it holds the message since it asked (its `have` can
            // share the frame of its `want`).
            guard let entry = seen[id], let encoded = entry.encoded, let topic = topics[entry.topic], !entry.holders.contains(peer) else { continue }
            enqueue(.message(encoded), id: id, to: peer, priority: topic.options.priority, now: now, asked: true)
            stats.served += 1
            seen[id]!.sentTo.insert(peer)
            _ = promote(peer, topic: entry.topic, origin: entry.origin)
        }
    }

    /// `ack` from a peer: its retries stop; the round trip is measured on first sends (Karn);
    /// a publisher waiting for it learns of it.
    mutating func acknowledged(_ ids: [MessageID], by peer: PeerID, now: ContinuousClock.Instant, measure: Bool = true) {
        for id in ids {
            seen[id]?.holders.insert(peer)
            if let r = retries.removeValue(forKey: RetryKey(id: id, peer: peer)), r.attempts == 0, measure {
                sampleRTT(peer, (now - r.sentAt).seconds)
            }
            guard var t = trackers[id], t.targets.contains(peer) else { continue }
            t.acknowledged.insert(peer)
            if t.acknowledged == t.targets {
                trackers.removeValue(forKey: id)
                deliveries.append(.report(t.continuation, DeliveryReport(id: id, acknowledged: t.acknowledged, missing: [])))
            } else {
                trackers[id] = t
            }
        }
    }

    mutating func sampleRTT(_ peer: PeerID, _ sample: Double) {
        guard var p = peers[peer] else { return }
        if let srtt = p.srtt {
            p.rttvar = 0.75 * p.rttvar + 0.25 * abs(srtt - sample)
            p.srtt = 0.875 * srtt + 0.125 * sample
        } else {
            p.srtt = sample
            p.rttvar = sample / 2
        }
        peers[peer] = p
    }

    /// The retry timeout of a peer: `srtt + 4 rttvar` (RFC 6298), at least the minimum; the
    /// initial timeout before a sample.
    func retryTimeout(_ peer: PeerID) -> Duration {
        guard let p = peers[peer], let srtt = p.srtt else { return configuration.initialRetry }
        return max(configuration.minimumRetry, .seconds(srtt + 4 * p.rttvar))
    }

    // MARK: Timers

    mutating func tick(now: ContinuousClock.Instant) {
        if now >= nextHave {
            nextHave = now + configuration.haveInterval
            announce(now: now)
        }
        for (id, m) in missing where m.deadline <= now {
            guard shortIDs[id] == nil, let t = topics[m.topic], m.deadline < m.expiry else {
                missing.removeValue(forKey: id)
                continue
            }
            guard let next = m.announcers.first(where: { !m.asked.contains($0) && peers[$0] != nil }) else {
                // Everyone who announced it was asked: wait for an answer or a new announcer,
                // and keep the announcers (they hold it) until the entry expires.
                missing[id]!.deadline = m.expiry
                continue
            }
            enqueue(.want(ids: [id]), to: next, priority: t.options.priority, now: now)
            stats.pulled += 1
            // A graft: the peer joins the topic's tree (an origin's tree, once the message shows
            // its origin).
            if t.options.origin == nil, promote(next, topic: m.topic, origin: nil) { stats.grafts += 1 }
            missing[id]!.asked.insert(next)
            missing[id]!.deadline = now + missingTimeout
        }
        for (key, r) in retries where r.retryAt <= now {
            if now >= r.giveUpAt {
                retries.removeValue(forKey: key)
                continue
            }
            guard peers[key.peer] != nil, let entry = seen[key.id], let encoded = entry.encoded, let t = topics[entry.topic] else {
                // Not connected (or the message is gone): look again shortly.
                retries[key]!.retryAt = now + .milliseconds(50)
                continue
            }
            enqueue(.message(encoded), id: key.id, to: key.peer, priority: t.options.priority, now: now)
            stats.retries += 1
            let attempts = r.attempts + 1
            retries[key]!.attempts = attempts
            retries[key]!.retryAt = now + retryTimeout(key.peer) * (1 << min(attempts, 5))
        }
        while let (old, expiry) = seenOrder.first, expiry <= now {
            seenOrder.removeFirst()
            if seen[old]?.expiry == expiry { forget(old) }
        }
    }

    /// Publishers whose deadline passed, with their reports.
    mutating func expiredTrackers(now: ContinuousClock.Instant) -> [(CheckedContinuation<DeliveryReport, Never>, DeliveryReport)] {
        var out: [(CheckedContinuation<DeliveryReport, Never>, DeliveryReport)] = []
        for (id, t) in trackers where t.deadline <= now {
            trackers.removeValue(forKey: id)
            out.append((t.continuation, DeliveryReport(id: id, acknowledged: t.acknowledged, missing: t.targets.subtracting(t.acknowledged))))
        }
        return out
    }

    // MARK: Sending

    /// Queues `item` for `peer` in `priority`'s batch; a message item carries its id, so that
    /// it is dropped at flush time if the peer has meanwhile shown it holds the message (unless
    /// the peer `asked` for it).
    mutating func enqueue(
        _ item: GossipItem, id: MessageID? = nil, to peer: PeerID, priority: Priority, now: ContinuousClock.Instant, asked: Bool = false
    ) {
        guard peers[peer] != nil else { return }
        let p = Int(priority.rawValue)
        if peers[peer]!.outbox[p].isEmpty { peers[peer]!.dueAt[p] = now + configuration.batchDelay[p] }
        peers[peer]!.outbox[p].append((item, asked ? nil : id))
        peers[peer]!.outboxBytes[p] += item.sizeHint
    }

    /// Sends the frames due now (all with `force`); returns the deliveries and reports collected.
    mutating func due(now: ContinuousClock.Instant, force: Bool) -> [Outgoing] {
        var out = deliveries
        deliveries = []
        for peer in peers.keys {
            for p in 0..<3 {
                guard !peers[peer]!.outbox[p].isEmpty else { continue }
                guard force || peers[peer]!.outboxBytes[p] >= configuration.batchBytes || peers[peer]!.dueAt[p]! <= now else { continue }
                // Messages the peer has shown it holds since they were queued are not sent.
                let queued = peers[peer]!.outbox[p].filter { entry in
                    guard let id = entry.id else { return true }
                    return seen[id]?.holders.contains(peer) != true
                }
                stats.messagesSent += queued.reduce(0) { n, e in if case .message = e.item { n + 1 } else { n } }
                // Pulls of messages that arrived meanwhile are not sent either.
                let items = packed(Self.merged(queued.map(\.item)).compactMap { item -> GossipItem? in
                    guard case .want(let ids) = item else { return item }
                    let still = ids.filter { shortIDs[$0] == nil }
                    return still.isEmpty ? nil : .want(ids: still)
                })
                peers[peer]!.outbox[p] = []
                peers[peer]!.outboxBytes[p] = 0
                peers[peer]!.dueAt[p] = nil
                let link = peers[peer]!.link
                var batch: [GossipItem] = []
                var size = 0
                // Sent here, under the lock (a link never blocks): a frame leaves with what the
                // router knew when it was built, and frames to a peer leave in order.
                func send() {
                    guard !batch.isEmpty else { return }
                    let bytes = GossipFrame(priority: Priority(rawValue: UInt8(p))!, items: batch).bytes
                    stats.framesSent += 1
                    stats.bytesSent += bytes.count + Frame.headerBytes + 4
                    link.send(bytes)
                    batch = []
                    size = 0
                }
                for item in items {
                    switch item {
                    case .message, .packed: stats.messageBytes += item.sizeHint
                    case .have(_, let ids):
                        stats.haveBytes += item.sizeHint
                        stats.announced += ids.count
                    default: break
                    }
                    if !batch.isEmpty && (size + item.sizeHint > configuration.batchBytes || batch.count == GossipLimits.maxItems) { send() }
                    batch.append(item)
                    size += item.sizeHint
                }
                send()
            }
        }
        return out
    }

    /// The items with the messages of each topic that has a codec (and of one criticality)
    /// packed into one item, at the place of the first (also a single message, when its packed
    /// form is smaller: a vote named by committee index is).
    func packed(_ items: [GossipItem]) -> [GossipItem] {
        var groups: [String: [Int]] = [:]
        for (i, item) in items.enumerated() {
            if case .message(let m) = item, !m.compressed, topics[m.topic]?.options.pack != nil {
                groups["\(m.critical ? 1 : 0)\(m.topic)", default: []].append(i)
            }
        }
        guard !groups.isEmpty else { return items }
        var replaced: [Int: GossipItem] = [:]
        var dropped = Set<Int>()
        for indices in groups.values {
            guard case .message(let first) = items[indices[0]], let pack = topics[first.topic]?.options.pack else { continue }
            let bodies = indices.map { i -> [UInt8] in
                guard case .message(let m) = items[i] else { return [] }
                return m.body
            }
            guard let body = pack(bodies), indices.count > 1 || body.count < first.body.count else { continue }
            replaced[indices[0]] = .packed(topic: first.topic, critical: first.critical, body: body)
            dropped.formUnion(indices.dropFirst())
        }
        return items.enumerated().compactMap { i, item in dropped.contains(i) ? nil : (replaced[i] ?? item) }
    }

    /// The items of a batch with their acknowledgements and pulls merged (one `ack` and one `want`
    /// item each, at the end).
    static func merged(_ items: [GossipItem]) -> [GossipItem] {
        var out: [GossipItem] = []
        var acks: [MessageID] = []
        var wants: [ShortID] = []
        for item in items {
            switch item {
            case .ack(let ids): acks += ids
            case .want(let ids): wants += ids
            default: out.append(item)
            }
        }
        for chunk in stride(from: 0, to: acks.count, by: GossipLimits.maxIDs) {
            out.append(.ack(ids: Array(acks[chunk..<min(acks.count, chunk + GossipLimits.maxIDs)])))
        }
        for chunk in stride(from: 0, to: wants.count, by: GossipLimits.maxIDs) {
            out.append(.want(ids: Array(wants[chunk..<min(wants.count, chunk + GossipLimits.maxIDs)])))
        }
        return out
    }
}

extension Duration {
    /// The duration in seconds.
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
