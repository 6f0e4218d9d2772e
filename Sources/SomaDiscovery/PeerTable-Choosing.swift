public import SomaCore

// The peer table's scores, and what it chooses from them: whom to dial, whom to advertise.

extension PeerTable {
    // MARK: Scores

    /// A dial of `peerID` at `address` succeeded (a handshake: the peer proved its key), after
    /// `latencyMs`. The address counts as reached (dial-back) while its record names it.
    public func noteConnected(_ peerID: PeerID, address: String? = nil, latencyMs: UInt32?, nowMs: UInt64) {
        guard var r = records[peerID] else { return }
        r.consecutiveFailures = 0
        r.nextDialMs = 0
        r.lastConnectedMs = nowMs
        r.lastSeenMs = nowMs
        if let address, address.utf8.count <= NodeInfo.maxAddressBytes { r.reachedAddress = address }
        if let latencyMs { r.latencyMs = smoothedLatency(old: r.latencyMs, new: latencyMs) }
        records[peerID] = r
        dirty.insert(peerID)
    }

    /// A dial of, or a request to, `peerID` failed: it is not dialled again before an
    /// exponential backoff (`baseMs` doubled per failure in a row, at most `maxMs`; every step
    /// saturates, so no count or configured value can overflow).
    public func noteFailure(_ peerID: PeerID, nowMs: UInt64, baseMs: UInt64, maxMs: UInt64) {
        guard var r = records[peerID] else { return }
        if r.failures < .max { r.failures += 1 }
        if r.consecutiveFailures < .max { r.consecutiveFailures += 1 }
        let shift = UInt64(min(r.consecutiveFailures - 1, 20))
        r.nextDialMs = nowMs.saturatingAdd(min(maxMs, baseMs.saturatingMul(1 << shift)))
        records[peerID] = r
        dirty.insert(peerID)
    }

    /// A round trip to `peerID` took `latencyMs`.
    public func noteLatency(_ peerID: PeerID, latencyMs: UInt32) {
        guard var r = records[peerID] else { return }
        r.latencyMs = smoothedLatency(old: r.latencyMs, new: latencyMs)
        records[peerID] = r
        dirty.insert(peerID)
    }

    /// What sync measured of `peerID`: throughput (bytes/s) and failed requests since the last note.
    public func noteTransfer(_ peerID: PeerID, throughput: UInt64?, newFailures: UInt32) {
        guard var r = records[peerID] else { return }
        if let throughput, throughput > 0 { r.throughput = throughput }
        let (f, overflow) = r.failures.addingReportingOverflow(newFailures)
        r.failures = overflow ? .max : f
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
    /// address, not in `excluding`. Better is what this node saw itself: reached before, then
    /// fewer failures in a row, then higher measured throughput, then lower measured latency.
    /// What a record claims to hold is a hint only: holding something beats holding nothing,
    /// and how much is never compared (a liar claims `UInt64.max`). Ties are broken by a salted
    /// hash, so no key can be ground to sort first. (A private node dials out itself, and its
    /// allow-listed peers name it as a seed.)
    public func dialCandidates(nowMs: UInt64, excluding: Set<PeerID>) -> [PeerRecord] {
        let salt = tieSalt
        return records.values.filter { r in
            r.info.info.access == .public && !excluding.contains(r.peerID) && !r.isBanned(nowMs: nowMs)
                && r.nextDialMs <= nowMs && !r.info.info.addresses.isEmpty
        }.map { ($0, PeerTable.tieBreak($0.peerID, salt: salt)) }.sorted { x, y in
            let (a, b) = (x.0, y.0)
            if a.direct != b.direct { return a.direct }
            if a.consecutiveFailures != b.consecutiveFailures { return a.consecutiveFailures < b.consecutiveFailures }
            if a.throughput != b.throughput { return a.throughput > b.throughput }
            if a.latencyMs != b.latencyMs { return (a.latencyMs == 0 ? .max : a.latencyMs) < (b.latencyMs == 0 ? .max : b.latencyMs) }
            let ha = !a.info.info.heldRanges.isEmpty, hb = !b.info.info.heldRanges.isEmpty
            if ha != hb { return ha }
            return x.1 < y.1
        }.map(\.0)
    }

    /// Records this node never reached at an address their record names (dial-back pending),
    /// that may be dialled now: public, not banned, not backing off, with an address, not in
    /// `excluding`; fewest failures first, then the oldest in the table.
    public func unreached(nowMs: UInt64, excluding: Set<PeerID>) -> [PeerRecord] {
        records.values.filter { r in
            !r.isReached && r.info.info.access == .public && !excluding.contains(r.peerID) && !r.isBanned(nowMs: nowMs)
                && r.nextDialMs <= nowMs && !r.info.info.addresses.isEmpty
        }.sorted { a, b in
            (a.consecutiveFailures, a.firstSeenMs, a.peerID) < (b.consecutiveFailures, b.firstSeenMs, b.peerID)
        }
    }

    static func tieBreak(_ id: PeerID, salt: UInt64) -> Int {
        var h = Hasher()
        h.combine(salt)
        h.combine(id)
        return h.finalize()
    }

    /// Up to `limit` records to pass on in a `getKnownPeers` answer: public, reached by this
    /// node at an address their current record names (dial-back: never on an introduction
    /// alone), fresh, not banned, not `asker`'s own; most recently connected first.
    public func advertisable(limit: Int, asker: PeerID?, nowMs: UInt64) -> [SignedNodeInfo] {
        records.values.filter { r in
            r.info.info.access == .public && r.isReached && r.peerID != asker && !r.isBanned(nowMs: nowMs)
                && SignedNodeInfo.isFresh(timestampMs: r.info.info.timestampMs, nowMs: nowMs)
        }.sorted { a, b in
            if a.lastConnectedMs != b.lastConnectedMs { return a.lastConnectedMs > b.lastConnectedMs }
            return a.peerID < b.peerID
        }.prefix(max(0, limit)).map(\.info)
    }
}

/// Spreads outbound connections over network groups (DESIGN §9): at most `maxPerGroup`
/// outbound connections in one group, unless no candidate in another group is left.
public struct OutboundDiversity: Sendable {
    /// The most outbound connections per network group while candidates elsewhere remain.
    public var maxPerGroup: Int

    /// A policy with at most `maxPerGroup` (at least 1) connections per group.
    public init(maxPerGroup: Int) {
        self.maxPerGroup = max(1, maxPerGroup)
    }

    /// Up to `count` of `candidates` (best first) to dial next, each with the addresses to try
    /// in order, given the groups of the connections `open` now: first the best candidates with
    /// an address in a group below the bound (each pick counts towards its group), and only
    /// when those run out, the rest with all their addresses.
    public func pick(_ candidates: [PeerRecord], open: [AddressGroup: Int], count: Int)
        -> [(record: PeerRecord, addresses: [String])] {
        guard count > 0 else { return [] }
        var counts = open
        var picked: [(record: PeerRecord, addresses: [String])] = []
        var taken: Set<PeerID> = []
        for c in candidates where picked.count < count {
            let fit = c.info.info.addresses.filter { counts[AddressGroup(address: $0), default: 0] < maxPerGroup }
            guard let first = fit.first else { continue }
            picked.append((c, fit))
            taken.insert(c.peerID)
            counts[AddressGroup(address: first), default: 0] += 1
        }
        for c in candidates where picked.count < count && !taken.contains(c.peerID) {
            picked.append((c, c.info.info.addresses))
            taken.insert(c.peerID)
        }
        return picked
    }

    /// How many of the `addresses` of open connections fall into each group.
    public static func groups(of addresses: [String]) -> [AddressGroup: Int] {
        var out: [AddressGroup: Int] = [:]
        for a in addresses { out[AddressGroup(address: a), default: 0] += 1 }
        return out
    }
}
