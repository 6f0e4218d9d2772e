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
    /// Message ids to announce, by topic.
    var haves: [String: [MessageID]] = [:]
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

/// A topic's push tree and options.
struct TopicState {
    var options: TopicOptions
    var eager: Set<PeerID> = []
    var lazy: Set<PeerID> = []
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
    var critical: Bool
    /// Validation is under way (a copy arriving meanwhile is a duplicate).
    var pending: Bool
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

    /// A new peer joins a topic: eager while the tree has room, lazy after.
    func join(_ t: inout TopicState, _ peer: PeerID) {
        if t.eager.count < configuration.meshDegree { t.eager.insert(peer) } else { t.lazy.insert(peer) }
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
            topic: topic, expiry: expiry, holders: (seen[id]?.holders ?? []).union(announcers), encoded: encoded, critical: encoded.critical,
            pending: false)
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
            // A copy from an eager peer: the link leaves the tree, both ways (Plumtree): the peer
            // becomes lazy here, and the prune makes this node lazy there.
            if !m.critical, !options.preferred.contains(peer), topics[m.topic]!.eager.count > configuration.minimumEager,
               topics[m.topic]!.eager.remove(peer) != nil {
                topics[m.topic]!.lazy.insert(peer)
                enqueue(.prune(topic: m.topic), to: peer, priority: options.priority, now: now)
                stats.prunes += 1
            }
            return nil
        }
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
            topic: m.topic, expiry: expiry, holders: Set(announcers).union([peer]), encoded: nil, critical: m.critical, pending: true)
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
        // Preferred peers (the committee's nodes) first, then the rest of the tree.
        let preferred = topic.options.preferred.filter { peers[$0] != nil }
        for peer in preferred.sorted() + topic.eager.subtracting(preferred).sorted() where !skip.contains(peer) {
            enqueue(.message(encoded), id: id, to: peer, priority: priority, now: now)
            seen[id]!.sentTo.insert(peer)
        }
        // Announced to at most `lazyFanout` lazy peers, picked at random for each message.
        for peer in topic.lazy.subtracting(preferred).filter({ !skip.contains($0) }).shuffled().prefix(configuration.lazyFanout) {
            peers[peer]?.haves[entry.topic, default: []].append(id)
        }
    }

    /// `prune` from a peer: it leaves the topic's tree, unless this node would keep fewer eager
    /// peers than the minimum (a node that every neighbour prunes would otherwise hear of
    /// messages only through announcements; the pruner treats its copies as lazy ones).
    mutating func pruned(topic: String, by peer: PeerID) {
        guard let t = topics[topic], t.eager.count > configuration.minimumEager, topics[topic]!.eager.remove(peer) != nil else { return }
        topics[topic]!.lazy.insert(peer)
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
            if topics[entry.topic]!.lazy.remove(peer) != nil { topics[entry.topic]!.eager.insert(peer) }
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
            for peer in peers.keys {
                let haves = peers[peer]!.haves
                guard !haves.isEmpty else { continue }
                peers[peer]!.haves = [:]
                for (topic, ids) in haves {
                    guard let t = topics[topic] else { continue }
                    let unknown = ids.filter { id in
                        guard let e = seen[id] else { return false }
                        return !e.holders.contains(peer) && !e.sentTo.contains(peer)
                    }
                    var start = 0
                    while start < unknown.count {
                        let end = min(unknown.count, start + GossipLimits.maxIDs)
                        enqueue(.have(topic: topic, ids: unknown[start..<end].map(ShortID.init)), to: peer, priority: t.options.priority, now: now)
                        start = end
                    }
                }
            }
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
            if topics[m.topic]!.lazy.remove(next) != nil {
                topics[m.topic]!.eager.insert(next)
                stats.grafts += 1
            }
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
                    case .have: stats.haveBytes += item.sizeHint
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
    /// packed into one item where there are several, at the place of the first.
    func packed(_ items: [GossipItem]) -> [GossipItem] {
        var groups: [String: [Int]] = [:]
        for (i, item) in items.enumerated() {
            if case .message(let m) = item, !m.compressed, topics[m.topic]?.options.pack != nil {
                groups["\(m.critical ? 1 : 0)\(m.topic)", default: []].append(i)
            }
        }
        guard groups.values.contains(where: { $0.count > 1 }) else { return items }
        var replaced: [Int: GossipItem] = [:]
        var dropped = Set<Int>()
        for indices in groups.values where indices.count > 1 {
            guard case .message(let first) = items[indices[0]], let pack = topics[first.topic]?.options.pack else { continue }
            let bodies = indices.map { i -> [UInt8] in
                guard case .message(let m) = items[i] else { return [] }
                return m.body
            }
            guard let body = pack(bodies) else { continue }
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
