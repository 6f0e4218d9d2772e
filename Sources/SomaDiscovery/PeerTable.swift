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
    /// Refused by the table's bounds (an introducer's share, the inbound pool, a network
    /// group's share, a full table), its access rules, or the allow-list of a private node.
    case refused(String)
}

/// The persistent, bounded table of known peers (DESIGN §9), an actor over the `peers` column
/// family (or memory only, for tests without a store).
///
/// **Shares.** A record is *direct* once this node dialled its peer and the peer proved its
/// key; otherwise it is *introduced*: by the peer that passed it on in a `getKnownPeers`
/// answer, or, for a peer that dialled in and introduced itself in its hello, by the pooled
/// introducer `inbound(group)` of the network group it connected from. Each introducer holds
/// at most `maxPerIntroducer` introduced records, all inbound introducers together at most
/// `maxInbound`, and every network group (of the records' advertised addresses) at most
/// `maxPerGroup` records. So 10,000 fresh keys dialling in from one address fill one share,
/// and no group fills the table.
///
/// **Eviction.** When the table (or the inbound pool) is full, an introduced newcomer evicts
/// the worst introduced record (most failures in a row, then least recently seen) of the
/// introducer holding the most, and only if its own introducer holds fewer; direct records are
/// never evicted by introduced ones. A direct newcomer may evict an introduced record of a
/// full group, or when the table is full.
///
/// **Access before the record.** A table with an allow-list (`admitOnly`, a private node's)
/// admits only allow-listed peer ids, whatever the source.
public actor PeerTable {
    /// This node's id (never entered in its own table).
    public nonisolated let selfID: PeerID
    /// The most records held.
    public nonisolated let maxPeers: Int
    /// The most introduced records one introducer (a peer, or one inbound network group) may hold.
    public nonisolated let maxPerIntroducer: Int
    /// The most self-introduced (inbound) records held, all network groups together.
    public nonisolated let maxInbound: Int
    /// The most records whose addresses fall into one network group.
    public nonisolated let maxPerGroup: Int
    /// The only peer ids admitted (a private node's allow-list); `nil`: any.
    public private(set) var admitOnly: Set<PeerID>?
    let store: NodeStore?
    var records: [PeerID: PeerRecord] = [:]
    var perIntroducer: [Introducer: Int] = [:]
    var inboundCount = 0
    var perGroup: [AddressGroup: Int] = [:]
    var dirty: Set<PeerID> = []
    var removed: Set<PeerID> = []
    /// Salt of the tie-break between candidates that are equal on every measured score, so that
    /// no one can grind a key that sorts first.
    let tieSalt = UInt64.random(in: .min ... .max)

    /// A table for node `selfID`, persisted in `store` (if given). Bounds below 1 count as 1.
    /// - Parameters:
    ///   - maxPeers: the most records held.
    ///   - maxPerIntroducer: the most introduced records one peer, or one inbound network group,
    ///     may contribute (default: a sixteenth of `maxPeers`, at least 8).
    ///   - maxInbound: the most self-introduced records in all (default: a quarter of
    ///     `maxPeers`, at least `maxPerIntroducer`).
    ///   - maxPerGroup: the most records per network group (default: a sixteenth of `maxPeers`, at least 8).
    ///   - admitOnly: the only peer ids admitted (a private node passes its allow-list).
    public init(
        selfID: PeerID, store: NodeStore?, maxPeers: Int = 1_000, maxPerIntroducer: Int? = nil, maxInbound: Int? = nil,
        maxPerGroup: Int? = nil, admitOnly: Set<PeerID>? = nil
    ) {
        let total = max(1, maxPeers)
        self.selfID = selfID
        self.store = store
        self.maxPeers = total
        let share = max(1, maxPerIntroducer ?? max(8, total / 16))
        self.maxPerIntroducer = share
        self.maxInbound = max(1, maxInbound ?? max(share, total / 4))
        self.maxPerGroup = max(1, maxPerGroup ?? max(8, total / 16))
        self.admitOnly = admitOnly
    }

    /// Loads the stored records (call once, before use). Records that do not decode, whose
    /// contents or signature do not verify, or that are not allow-listed are dropped from the
    /// store; so are any beyond the bounds (the least recently seen first).
    /// - Returns: how many records were loaded.
    @discardableResult
    public func load() async throws -> Int {
        guard let store else { return 0 }
        var bad: [[UInt8]] = []
        var loaded: [PeerRecord] = []
        for (key, value) in try await store.peerRecords() {
            guard let r = try? PeerRecord(bcsBytes: value), r.peerID.raw.bytes == key, r.peerID != selfID,
                  (try? r.info.verifyContents()) != nil, admitOnly?.contains(r.peerID) ?? true
            else {
                bad.append(key)
                continue
            }
            loaded.append(r)
        }
        // Most recently seen first, so that what the bounds leave out is the oldest.
        for r in loaded.sorted(by: { $0.lastSeenMs > $1.lastSeenMs }) {
            if records.count < maxPeers && fitsShares(r) {
                insert(r)
            } else {
                bad.append(r.peerID.raw.bytes)
            }
        }
        dirty = []
        let dropped = removed.map(\.raw.bytes)
        removed = []
        if !bad.isEmpty || !dropped.isEmpty { try await store.writePeerRecords(put: [], delete: bad + dropped) }
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
    public func introducedCount(by introducer: Introducer) -> Int { perIntroducer[introducer] ?? 0 }

    /// How many introduced records peer `introducer` holds.
    public func introducedCount(by introducer: PeerID) -> Int { introducedCount(by: .peer(introducer)) }

    /// How many self-introduced (inbound) records are held, all groups together.
    public var inboundRecords: Int { inboundCount }

    /// How many records have an address in `group`.
    public func records(in group: AddressGroup) -> Int { perGroup[group] ?? 0 }

    /// Restricts the table to `allowed` (`nil`: lifts the restriction); records of other peers
    /// are dropped at once.
    public func restrict(to allowed: Set<PeerID>?) {
        guard admitOnly != allowed else { return }
        admitOnly = allowed
        guard let allowed else { return }
        for id in records.keys where !allowed.contains(id) { remove(id) }
    }

    // MARK: Admission

    /// Offers a verified record that `introducer` passed on. `direct`: it came from the peer
    /// itself on a connection this node dialled. Newest wins; the bounds decide for a new peer.
    public func admit(_ info: SignedNodeInfo, introducer: Introducer, direct: Bool, nowMs: UInt64) -> Admission {
        let id = info.info.peerID
        guard id != selfID else { return .unchanged }
        if let admitOnly, !admitOnly.contains(id) {
            return .refused("\(id.raw.short) is not allow-listed")
        }
        if let r = records[id] { return update(r, with: info, direct: direct, nowMs: nowMs) }
        if info.info.access == .private && !direct, case .peer(let p) = introducer, p != id {
            return .refused("a private record passed on by a third party")
        }
        let newcomer = PeerRecord(info: info, introducer: introducer, direct: direct, nowMs: nowMs)
        if let share = newcomer.share {
            if introducedCount(by: share) >= maxPerIntroducer {
                return .refused("introducer \(share) holds its share of \(maxPerIntroducer) records")
            }
            if case .inbound = share, inboundCount >= maxInbound {
                guard let victim = evictionVictim(newShare: share, inboundOnly: true) else {
                    return .refused("the inbound pool is full (\(maxInbound) records)")
                }
                remove(victim)
            }
        }
        if let why = makeRoom(in: AddressGroup.groups(of: info.info), direct: direct) { return .refused(why) }
        if records.count >= maxPeers {
            guard let victim = evictionVictim(newShare: newcomer.share, inboundOnly: false) else {
                return .refused("the table is full (\(maxPeers) records)")
            }
            remove(victim)
        }
        insert(newcomer)
        dirty.insert(id)
        return .added
    }

    /// Offers a record; a record its own peer introduced (`introducer` is its id) and not
    /// `direct` counts as inbound from an unknown network group.
    public func admit(_ info: SignedNodeInfo, introducer: PeerID, direct: Bool, nowMs: UInt64) -> Admission {
        let i: Introducer = !direct && introducer == info.info.peerID ? .inbound(.unknown) : .peer(introducer)
        return admit(info, introducer: i, direct: direct, nowMs: nowMs)
    }

    /// A newer record of a known peer replaces the old one (unless its addresses move it into a
    /// full network group); a direct offer makes it direct.
    func update(_ old: PeerRecord, with info: SignedNodeInfo, direct: Bool, nowMs: UInt64) -> Admission {
        var r = old
        let id = old.peerID
        var changed = false
        if info.info.timestampMs > r.info.info.timestampMs {
            let before = AddressGroup.groups(of: r.info.info)
            let entering = AddressGroup.groups(of: info.info).subtracting(before)
            // Take it out of the counts while room is made, so that it cannot evict itself.
            remove(id, persist: false)
            if let why = makeRoom(in: entering, direct: direct || r.direct, sparing: id) {
                insert(old)
                if !direct { return .refused(why) }
            } else {
                r.info = info
                r.lastSeenMs = nowMs
                changed = true
                insert(r)
            }
            r = records[id] ?? r
        }
        if direct && !r.direct {
            remove(id, persist: false)
            r.direct = true
            r.introducer = .peer(id)
            insert(r)
            changed = true
        }
        if direct {
            r.lastSeenMs = nowMs
            r.lastConnectedMs = nowMs
            records[id] = r
            changed = true
        }
        guard changed else { return .unchanged }
        dirty.insert(id)
        return .updated
    }

    /// Makes room for one more record in each of `groups`: a full group refuses an introduced
    /// newcomer, and gives a direct one the place of its worst introduced record.
    /// - Returns: why there is no room, or `nil`.
    func makeRoom(in groups: Set<AddressGroup>, direct: Bool, sparing: PeerID? = nil) -> String? {
        for g in groups.sorted() where records(in: g) >= maxPerGroup {
            guard direct else { return "network group \(g) holds its share of \(maxPerGroup) records" }
            guard let victim = worst(records.values.filter {
                !$0.direct && $0.peerID != sparing && AddressGroup.groups(of: $0.info.info).contains(g)
            }) else { return "network group \(g) holds \(maxPerGroup) direct records" }
            remove(victim)
        }
        return nil
    }

    /// Whether `r` fits every share and group bound as the table stands (loading).
    func fitsShares(_ r: PeerRecord) -> Bool {
        if let share = r.share {
            if introducedCount(by: share) >= maxPerIntroducer { return false }
            if case .inbound = share, inboundCount >= maxInbound { return false }
        }
        return AddressGroup.groups(of: r.info.info).allSatisfy { records(in: $0) < maxPerGroup }
    }

    /// The record to evict for a newcomer counted against `newShare` (`nil`: a direct one):
    /// the worst record of the introducer holding the most (only inbound ones, for room in the
    /// inbound pool), if that introducer holds more than the newcomer's would.
    func evictionVictim(newShare: Introducer?, inboundOnly: Bool) -> PeerID? {
        let shares = perIntroducer.filter { key, held in
            guard held > 0 else { return false }
            if inboundOnly, case .peer = key { return false }
            return true
        }
        if let (biggest, held) = shares.max(by: { $0.value < $1.value }) {
            if let newShare, newShare == biggest || introducedCount(by: newShare) + 1 > held { return nil }
            return worst(records.values.filter { $0.share == biggest })
        }
        // Only direct records: a direct newcomer replaces the one heard from least recently.
        guard newShare == nil, !inboundOnly else { return nil }
        return records.values.min { ($0.lastSeenMs, $0.peerID) < ($1.lastSeenMs, $1.peerID) }?.peerID
    }

    /// The record to give up first: most failures in a row, then least recently seen.
    func worst(_ candidates: [PeerRecord]) -> PeerID? {
        candidates.max { a, b in
            (a.consecutiveFailures, b.lastSeenMs, b.peerID) < (b.consecutiveFailures, a.lastSeenMs, a.peerID)
        }?.peerID
    }

    func insert(_ r: PeerRecord) {
        records[r.peerID] = r
        if let share = r.share {
            perIntroducer[share, default: 0] += 1
            if case .inbound = share { inboundCount += 1 }
        }
        for g in AddressGroup.groups(of: r.info.info) { perGroup[g, default: 0] += 1 }
        removed.remove(r.peerID)
    }

    /// Takes `id` out of the table; `persist`: also out of the store at the next flush.
    func remove(_ id: PeerID, persist: Bool = true) {
        guard let r = records.removeValue(forKey: id) else { return }
        if let share = r.share {
            perIntroducer[share, default: 1] -= 1
            if perIntroducer[share, default: 0] <= 0 { perIntroducer[share] = nil }
            if case .inbound = share { inboundCount = max(0, inboundCount - 1) }
        }
        for g in AddressGroup.groups(of: r.info.info) {
            perGroup[g, default: 1] -= 1
            if perGroup[g, default: 0] <= 0 { perGroup[g] = nil }
        }
        if persist {
            dirty.remove(id)
            removed.insert(id)
        }
    }

    /// Forgets records that can no longer be used: introduced ones whose record went stale (a
    /// day), and direct ones not heard from for `directExpiryMs` that keep failing.
    /// - Returns: how many were dropped.
    @discardableResult
    public func expire(nowMs: UInt64, directExpiryMs: UInt64 = 7 * 86_400_000) -> Int {
        let old = records.values.filter { r in
            if r.direct { return nowMs.saturatingSub(r.lastSeenMs) > directExpiryMs && r.consecutiveFailures >= 10 }
            return !SignedNodeInfo.isFresh(timestampMs: r.info.info.timestampMs, nowMs: nowMs)
        }
        for r in old { remove(r.peerID) }
        return old.count
    }
}
