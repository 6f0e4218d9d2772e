public import SomaCore
public import SomaStore

/// What became of a record offered to the table.
public enum Admission: Hashable, Sendable {
    /// A peer the table did not know.
    case added
    /// A newer record of a known peer (newest wins; its scores stay).
    case updated
    /// Not newer than the record held.
    case unchanged
    /// Refused by the table's bounds: the table is full and the record's introducer already
    /// holds its share, or a private record came from a third party.
    case refused(String)
}

/// The persistent, bounded table of known peers (DESIGN §9), an actor over the `peers` column
/// family (or memory only, for tests without a store).
///
/// **Eviction** is fair and flood-resistant. A record is *direct* once this node completed a
/// handshake with its peer (the peer proved its key), otherwise it is *introduced* by the peer
/// that passed it on. Each introducer may hold at most `maxPerIntroducer` introduced records;
/// beyond that its records are refused. When the table is full, a new introduced record evicts
/// the oldest introduced record of the introducer holding the most, and only if its own
/// introducer holds fewer; direct records are never evicted by introduced ones. So a peer that
/// floods thousands of signed records of fake peers fills its own share and nothing else.
public actor PeerTable {
    /// This node's id (never entered in its own table).
    public nonisolated let selfID: PeerID
    /// The most records held.
    public nonisolated let maxPeers: Int
    /// The most introduced records one introducer may hold.
    public nonisolated let maxPerIntroducer: Int
    let store: NodeStore?
    var records: [PeerID: PeerRecord] = [:]
    var perIntroducer: [PeerID: Int] = [:]
    var dirty: Set<PeerID> = []
    var removed: Set<PeerID> = []

    /// A table for node `selfID`, persisted in `store` (if given).
    /// - Parameters:
    ///   - maxPeers: the most records held.
    ///   - maxPerIntroducer: the most introduced records one peer may contribute (default: a
    ///     sixteenth of `maxPeers`, at least 8).
    public init(selfID: PeerID, store: NodeStore?, maxPeers: Int = 1_000, maxPerIntroducer: Int? = nil) {
        precondition(maxPeers >= 1, "a table holds at least one record")
        self.selfID = selfID
        self.store = store
        self.maxPeers = maxPeers
        self.maxPerIntroducer = max(1, maxPerIntroducer ?? max(8, maxPeers / 16))
    }

    /// Loads the stored records (call once, before use). Records that do not decode are
    /// dropped from the store; so are any beyond `maxPeers` (the least recently seen).
    /// - Returns: how many records were loaded.
    @discardableResult
    public func load() async throws -> Int {
        guard let store else { return 0 }
        var bad: [[UInt8]] = []
        for (key, value) in try await store.peerRecords() {
            guard let r = try? PeerRecord(bcsBytes: value), r.peerID.raw.bytes == key, r.peerID != selfID else {
                bad.append(key)
                continue
            }
            insert(r)
        }
        if records.count > maxPeers {
            for r in records.values.sorted(by: { $0.lastSeenMs < $1.lastSeenMs }).prefix(records.count - maxPeers) {
                remove(r.peerID)
            }
        }
        let dropped = removed.map(\.raw.bytes)
        removed = []
        try await store.writePeerRecords(put: [], delete: bad + dropped)
        return records.count
    }

    /// Writes the changed records to the store, in one batch.
    public func flush() async throws {
        guard let store, !dirty.isEmpty || !removed.isEmpty else { return }
        let put = dirty.compactMap { id in records[id].map { (peerID: id.raw.bytes, record: $0.bcsBytes) } }
        let delete = removed.map(\.raw.bytes)
        dirty = []
        removed = []
        do {
            try await store.writePeerRecords(put: put, delete: delete)
        } catch {
            // Keep them for the next flush.
            for (key, _) in put { if let id = PeerID(bytes: key) { dirty.insert(id) } }
            for key in delete { if let id = PeerID(bytes: key), records[id] == nil { removed.insert(id) } }
            throw error
        }
    }

    /// The number of records.
    public var count: Int { records.count }

    /// The record of `peerID`, if known.
    public func record(_ peerID: PeerID) -> PeerRecord? { records[peerID] }

    /// Every record.
    public var all: [PeerRecord] { Array(records.values) }

    /// How many introduced records `introducer` holds.
    public func introducedCount(by introducer: PeerID) -> Int { perIntroducer[introducer] ?? 0 }

    // MARK: Admission

    /// Offers a verified record: `introducer` passed it on (the peer itself when it came on its
    /// own connection, `direct`). Newest wins; the bounds above decide for a new peer.
    public func admit(_ info: SignedNodeInfo, introducer: PeerID, direct: Bool, nowMs: UInt64) -> Admission {
        let id = info.info.peerID
        guard id != selfID else { return .unchanged }
        if var r = records[id] {
            var changed = false
            if info.info.timestampMs > r.info.info.timestampMs {
                r.info = info
                r.lastSeenMs = nowMs
                changed = true
            }
            if direct && !r.direct {
                perIntroducer[r.introducer, default: 1] -= 1
                if perIntroducer[r.introducer] == 0 { perIntroducer[r.introducer] = nil }
                r.direct = true
                r.introducer = id
                changed = true
            }
            if direct {
                r.lastSeenMs = nowMs
                r.lastConnectedMs = nowMs
                changed = true
            }
            guard changed else { return .unchanged }
            records[id] = r
            dirty.insert(id)
            return .updated
        }
        if info.info.access == .private && !direct && introducer != id {
            return .refused("a private record passed on by a third party")
        }
        if !direct && introducedCount(by: introducer) >= maxPerIntroducer {
            return .refused("introducer \(introducer.raw.short) holds its share of \(maxPerIntroducer) records")
        }
        if records.count >= maxPeers {
            guard let victim = evictionVictim(newIntroducer: direct ? nil : introducer) else {
                return .refused("the table is full (\(maxPeers) records)")
            }
            remove(victim)
        }
        insert(PeerRecord(info: info, introducer: direct ? id : introducer, direct: direct, nowMs: nowMs))
        dirty.insert(id)
        return .added
    }

    /// The record to evict for a newcomer introduced by `newIntroducer` (`nil`: a direct one).
    func evictionVictim(newIntroducer: PeerID?) -> PeerID? {
        // The introducer holding the most introduced records (ties: the one whose oldest record
        // is oldest).
        if let (biggest, held) = perIntroducer.filter({ $0.value > 0 }).max(by: { $0.value < $1.value }) {
            if let newIntroducer, introducedCount(by: newIntroducer) + 1 > held { return nil }
            if newIntroducer == biggest { return nil }
            return records.values.filter { !$0.direct && $0.introducer == biggest }
                .min { ($0.consecutiveFailures, $1.lastSeenMs) > ($1.consecutiveFailures, $0.lastSeenMs) }?.peerID
        }
        // Only direct records: a direct newcomer replaces the one heard from least recently.
        guard newIntroducer == nil else { return nil }
        return records.values.min { $0.lastSeenMs < $1.lastSeenMs }?.peerID
    }

    func insert(_ r: PeerRecord) {
        records[r.peerID] = r
        if !r.direct { perIntroducer[r.introducer, default: 0] += 1 }
        removed.remove(r.peerID)
    }

    func remove(_ id: PeerID) {
        guard let r = records.removeValue(forKey: id) else { return }
        if !r.direct {
            perIntroducer[r.introducer, default: 1] -= 1
            if perIntroducer[r.introducer] == 0 { perIntroducer[r.introducer] = nil }
        }
        dirty.remove(id)
        removed.insert(id)
    }

    /// Forgets records that can no longer be used: introduced ones whose record went stale (a
    /// day), and direct ones not heard from for `directExpiryMs` that keep failing.
    /// - Returns: how many were dropped.
    @discardableResult
    public func expire(nowMs: UInt64, directExpiryMs: UInt64 = 7 * 86_400_000) -> Int {
        let old = records.values.filter { r in
            if r.direct { return nowMs > r.lastSeenMs + directExpiryMs && r.consecutiveFailures >= 10 }
            return nowMs > r.info.info.timestampMs + SignedNodeInfo.maxAgeMs
        }
        for r in old { remove(r.peerID) }
        return old.count
    }

    // MARK: Scores

    /// A dial of `peerID` succeeded (a handshake), after `latencyMs`.
    public func noteConnected(_ peerID: PeerID, latencyMs: UInt32?, nowMs: UInt64) {
        guard var r = records[peerID] else { return }
        r.consecutiveFailures = 0
        r.nextDialMs = 0
        r.lastConnectedMs = nowMs
        r.lastSeenMs = nowMs
        if let latencyMs { r.latencyMs = r.latencyMs == 0 ? latencyMs : (r.latencyMs * 7 + latencyMs * 3) / 10 }
        records[peerID] = r
        dirty.insert(peerID)
    }

    /// A dial of, or a request to, `peerID` failed: it is not dialled again before an
    /// exponential backoff (`baseMs` doubled per failure in a row, at most `maxMs`).
    public func noteFailure(_ peerID: PeerID, nowMs: UInt64, baseMs: UInt64, maxMs: UInt64) {
        guard var r = records[peerID] else { return }
        r.failures &+= 1
        r.consecutiveFailures &+= 1
        let shift = min(UInt64(r.consecutiveFailures - 1), 20)
        r.nextDialMs = nowMs + min(maxMs, baseMs << shift)
        records[peerID] = r
        dirty.insert(peerID)
    }

    /// A round trip to `peerID` took `latencyMs`.
    public func noteLatency(_ peerID: PeerID, latencyMs: UInt32) {
        guard var r = records[peerID] else { return }
        r.latencyMs = r.latencyMs == 0 ? latencyMs : (r.latencyMs * 7 + latencyMs * 3) / 10
        records[peerID] = r
        dirty.insert(peerID)
    }

    /// What sync measured of `peerID`: throughput (bytes/s) and failed requests since the last note.
    public func noteTransfer(_ peerID: PeerID, throughput: UInt64?, newFailures: UInt32) {
        guard var r = records[peerID] else { return }
        if let throughput, throughput > 0 { r.throughput = throughput }
        r.failures &+= newFailures
        records[peerID] = r
        dirty.insert(peerID)
    }

    /// Bans `peerID` until `untilMs` (it sent data that failed verification, or stalled).
    public func ban(_ peerID: PeerID, untilMs: UInt64, reason: String) {
        guard var r = records[peerID] else { return }
        guard untilMs > r.bannedUntilMs || r.banReason != reason else { return }
        r.bannedUntilMs = max(r.bannedUntilMs, untilMs)
        r.banReason = String(reason.prefix(200))
        records[peerID] = r
        dirty.insert(peerID)
    }

    // MARK: Choosing

    /// Peers worth dialling now, best first: public, not banned, not backing off, with an
    /// address, not in `excluding`. Better: direct before introduced, then those holding the
    /// most history, then the fastest, then the quickest to answer. (A private node dials out
    /// itself, and its allow-listed peers name it as a seed.)
    public func dialCandidates(nowMs: UInt64, excluding: Set<PeerID>) -> [PeerRecord] {
        records.values.filter { r in
            r.info.info.access == .public && !excluding.contains(r.peerID) && !r.isBanned(nowMs: nowMs)
                && r.nextDialMs <= nowMs && !r.info.info.addresses.isEmpty
        }.sorted { a, b in
            if a.direct != b.direct { return a.direct }
            let ha = a.info.info.highestHeld ?? 0, hb = b.info.info.highestHeld ?? 0
            if ha != hb { return ha > hb }
            if a.throughput != b.throughput { return a.throughput > b.throughput }
            if a.latencyMs != b.latencyMs { return (a.latencyMs == 0 ? .max : a.latencyMs) < (b.latencyMs == 0 ? .max : b.latencyMs) }
            return a.peerID < b.peerID
        }
    }

    /// Up to `limit` records to pass on in a `getKnownPeers` answer: public, fresh (signed less
    /// than a day ago), not banned, with an address, not `asker`'s own; direct ones first, then
    /// the most recently seen.
    public func advertisable(limit: Int, asker: PeerID?, nowMs: UInt64) -> [SignedNodeInfo] {
        records.values.filter { r in
            let i = r.info.info
            return i.access == .public && !i.addresses.isEmpty && r.peerID != asker && !r.isBanned(nowMs: nowMs)
                && nowMs <= i.timestampMs + SignedNodeInfo.maxAgeMs && i.timestampMs <= nowMs + SignedNodeInfo.maxSkewMs
        }.sorted { a, b in
            if a.direct != b.direct { return a.direct }
            return a.lastSeenMs > b.lastSeenMs
        }.prefix(limit).map(\.info)
    }
}
