public import SomaCore
public import SomaNet

/// How a source stands with the scheduler, for reports and `soma-node sync`'s summary.
public struct SourceStats: Sendable, CustomStringConvertible {
    /// The label it was added with (usually `HOST:PORT`).
    public var label: String
    /// Who it is: a peer (its id proven in the handshake) or an archive (its location).
    public var source: SourceID
    /// Its peer id, for a peer.
    public var peerID: PeerID? { source.peerID }
    /// Checkpoints it delivered that were verified and used.
    public var checkpoints = 0
    /// Bytes of blocks received from it (used or not).
    public var bytes = 0
    /// Requests that failed (timeouts, stalls, refusals, closed connections).
    public var failures = 0
    /// Hedged re-requests sent to it because another source straggled.
    public var hedges = 0
    /// Measured throughput (bytes/s, moving average), if measured.
    public var throughput: Double?
    /// Why it is banned, while it is.
    public var banReason: String?
    /// Whether the ban in force is for bad data (data that failed verification, or a claim it
    /// could not back): only such a ban is worth recording beyond this process (the peer
    /// table). A stall ban is a pause, not a verdict.
    public var bannedForBadData = false
    /// How much longer it is banned, while it is.
    public var bannedFor: Duration?
    /// The lowest and highest checkpoints it says it holds.
    public var holds: ClosedRange<UInt64>?

    /// One line: label, checkpoints, MB, failures, ban.
    public var description: String {
        var s = "\(label): \(checkpoints) checkpoints, \(String(format2: Double(bytes) / 1e6)) MB"
        if failures > 0 { s += ", \(failures) failed requests" }
        if hedges > 0 { s += ", \(hedges) hedged" }
        if let banReason { s += ", banned: \(banReason)" }
        return s
    }
}

extension String {
    init(format2 value: Double) {
        let r = (value * 10).rounded() / 10
        self = "\(r)"
    }
}

/// The sources a sync draws from, with their scores (DESIGN §9, §10): each one's advertised
/// range, a moving average of its throughput, its requests in flight, failures and bans.
///
/// The scheduler asks for the best source that holds a range (``pick(covering:excluding:)``):
/// a source that does not hold the range is never asked for it; a banned one is skipped until
/// its ban expires; among the rest, the one with the most throughput per request in flight wins,
/// and an unmeasured source is tried first. A source that sends anything that fails
/// verification is banned (``ban(_:reason:)``); timeouts halve its measured throughput and two in
/// a row ban it for the stall ban time.
public actor SourcePool {
    struct Entry {
        let client: any SyncSource
        var stats: SourceStats
        /// Most requests it has at once.
        var limit: Int
        var availability: Availability?
        var inFlight = 0
        var consecutiveFailures = 0
        var bannedUntil: ContinuousClock.Instant?
        var badData = false
    }

    var entries: [Entry] = []
    let perSourceInFlight: Int
    let banDuration: Duration
    let stallBanDuration: Duration
    /// Called with the label and reason whenever a source is banned.
    let onBan: (@Sendable (String, String) -> Void)?

    /// A pool of `clients` (peers or archives; labels in the same order).
    /// - Parameters:
    ///   - perSourceInFlight: most requests one source has at once.
    ///   - banDuration: how long a source that sent bad data is avoided.
    ///   - stallBanDuration: how long a source that timed out twice in a row is avoided.
    public init(
        clients: [any SyncSource], labels: [String], perSourceInFlight: Int = 4, banDuration: Duration = .seconds(600),
        stallBanDuration: Duration = .seconds(60), onBan: (@Sendable (String, String) -> Void)? = nil
    ) {
        precondition(clients.count == labels.count, "one label per client")
        self.perSourceInFlight = max(1, perSourceInFlight)
        entries = zip(clients, labels).map { Entry(client: $0, stats: SourceStats(label: $1, source: $0.sourceID), limit: max(1, perSourceInFlight)) }
        self.banDuration = banDuration
        self.stallBanDuration = stallBanDuration
        self.onBan = onBan
    }

    /// Adds a source (a new connection, an archive); returns its index.
    /// - Parameters:
    ///   - availability: what it holds, if already asked (otherwise the next ``refresh()`` asks).
    ///   - throughput: its throughput measured before (bytes/s), if known: it then competes by
    ///     it instead of being tried first.
    ///   - inFlight: most requests it has at once (default: the pool's `perSourceInFlight`); an
    ///     object store serves more parallel ranged reads than a peer.
    @discardableResult
    public func add(_ client: any SyncSource, label: String, availability: Availability? = nil, throughput: Double? = nil, inFlight: Int? = nil) -> Int {
        var entry = Entry(client: client, stats: SourceStats(label: label, source: client.sourceID), limit: max(1, inFlight ?? perSourceInFlight))
        entry.stats.throughput = throughput
        if let a = availability {
            entry.availability = a
            entry.stats.holds = a.lowestAvailable...max(a.lowestAvailable, a.highestSynced)
        }
        entries.append(entry)
        return entries.count - 1
    }

    /// The index of the source with `peerID`, if there is one.
    public func index(of peerID: PeerID) -> Int? {
        entries.firstIndex { $0.client.sourceID == .peer(peerID) }
    }

    /// Puts a new connection in place of source `i` (a reconnection): its scores stay, its
    /// availability is polled again.
    public func replace(_ i: Int, with client: any SyncSource) {
        let old = entries[i]
        entries[i] = Entry(
            client: client, stats: old.stats, limit: old.limit, availability: nil, inFlight: old.inFlight, bannedUntil: old.bannedUntil,
            badData: old.badData)
        entries[i].stats.source = client.sourceID
    }

    /// The number of sources.
    public var count: Int { entries.count }

    /// Every source's client.
    public var clients: [any SyncSource] { entries.map(\.client) }

    /// The peers among the sources.
    public var peers: [PeerClient] { entries.compactMap { $0.client as? PeerClient } }

    /// The client of source `i`.
    public func client(_ i: Int) -> any SyncSource { entries[i].client }

    /// The label of source `i`.
    public func label(_ i: Int) -> String { entries[i].stats.label }

    /// Asks every source that is not banned what it holds (concurrently); a source that does not
    /// answer counts a failure.
    public func refresh() async {
        let now = ContinuousClock.now
        let targets = entries.indices.filter { entries[$0].bannedUntil.map { $0 <= now } ?? true }
        let clients = targets.map { entries[$0].client }
        let answers = await withTaskGroup(of: (Int, Availability?).self) { group in
            for (k, c) in clients.enumerated() {
                group.addTask { (k, try? await c.availability()) }
            }
            var out = [Availability?](repeating: nil, count: clients.count)
            for await (k, a) in group { out[k] = a }
            return out
        }
        for (k, i) in targets.enumerated() {
            if let a = answers[k] {
                entries[i].availability = a
                entries[i].stats.holds = a.lowestAvailable...max(a.lowestAvailable, a.highestSynced)
            } else {
                entries[i].stats.failures += 1
                entries[i].availability = nil
                entries[i].stats.holds = nil
            }
        }
    }

    /// Notes that the source(s) with `peerID` hold up to `highest` (they pushed it).
    public func noteHolds(peerID: PeerID, highest: UInt64) {
        for i in entries.indices where entries[i].client.sourceID == .peer(peerID) {
            guard var a = entries[i].availability, highest > a.highestSynced else { continue }
            a.highestSynced = highest
            entries[i].availability = a
            entries[i].stats.holds = a.lowestAvailable...max(a.lowestAvailable, highest)
        }
    }

    /// The highest checkpoint a source that is not banned says it holds. A claim, not a fact:
    /// a sync aims at it but bans a source that cannot back it with certified summaries, and
    /// never converts a difference of claims to `Int` unchecked.
    public var highestHeld: UInt64 {
        let now = ContinuousClock.now
        return entries.filter { $0.bannedUntil.map { $0 <= now } ?? true }.compactMap { $0.availability?.highestSynced }.max() ?? 0
    }

    /// The highest checkpoint a source not banned for bad data says it holds: a source set aside
    /// for a stall (or disconnected) still counts, as it will be asked again; a source that sent
    /// bad data or could not back its claim does not. What a run re-aims at after a lie.
    public var highestCredible: UInt64 {
        let now = ContinuousClock.now
        return entries.filter { e in !(e.badData && (e.bannedUntil.map { $0 > now } ?? false)) }
            .compactMap { $0.availability?.highestSynced }.max() ?? 0
    }

    /// Sources that are not banned, are connected and answered the last availability poll.
    public var usable: [Int] {
        let now = ContinuousClock.now
        return entries.indices.filter {
            (entries[$0].bannedUntil.map { $0 <= now } ?? true) && entries[$0].availability != nil && entries[$0].client.isConnected
        }
    }

    func eligible(_ i: Int, _ range: ClosedRange<UInt64>, _ now: ContinuousClock.Instant) -> Bool {
        let e = entries[i]
        if let until = e.bannedUntil, until > now { return false }
        // A dropped connection is no ban, but the source is of no use until it reconnects.
        guard e.client.isConnected, let a = e.availability else { return false }
        return a.lowestAvailable <= range.lowerBound && a.highestSynced >= range.upperBound
    }

    /// Whether any source that is not banned holds `range`.
    public func anyHolds(_ range: ClosedRange<UInt64>) -> Bool {
        let now = ContinuousClock.now
        return entries.indices.contains { eligible($0, range, now) }
    }

    /// The best source for `range` that has a free request slot and is not in `excluding`, and
    /// takes the slot; `nil` if none.
    public func pick(covering range: ClosedRange<UInt64>, excluding: Set<Int> = []) -> Int? {
        // pick checks bans, the connection and the poll's answer; this, the range.
        pick(excluding: excluding) { _, a in a.lowestAvailable <= range.lowerBound && a.highestSynced >= range.upperBound }
    }

    /// Where the claims of the sources not banned begin and end: each one's `lowestAvailable`
    /// and `highestSynced + 1`, sorted. The scheduler cuts spans there.
    public var claimBoundaries: [UInt64] {
        let now = ContinuousClock.now
        var out = Set<UInt64>()
        for e in entries where e.bannedUntil.map({ $0 <= now }) ?? true {
            guard let a = e.availability else { continue }
            out.insert(a.lowestAvailable)
            if a.highestSynced < .max { out.insert(a.highestSynced + 1) }
        }
        return out.sorted()
    }

    /// What source `i` said it holds at the last poll, if it answered.
    public func availability(_ i: Int) -> Availability? { entries[i].availability }

    /// The best source that is not banned, answered the last poll, satisfies `wanted` (its index
    /// and availability), has a free request slot and is not in `excluding`; takes the slot.
    public func pick(excluding: Set<Int> = [], where wanted: @Sendable (Int, Availability) -> Bool) -> Int? {
        let now = ContinuousClock.now
        var best: (Int, Double)? = nil
        for i in entries.indices where !excluding.contains(i) && entries[i].inFlight < entries[i].limit {
            if let until = entries[i].bannedUntil, until > now { continue }
            guard entries[i].client.isConnected, let a = entries[i].availability, wanted(i, a) else { continue }
            // Unmeasured sources first (infinite score), then throughput per request in flight.
            // Among equals (unmeasured ones), the one with fewer requests in flight.
            let score = (entries[i].stats.throughput ?? .infinity) / Double(entries[i].inFlight + 1)
            if best == nil || score > best!.1 || (score == best!.1 && entries[i].inFlight < entries[best!.0].inFlight) { best = (i, score) }
        }
        if let (i, _) = best { entries[i].inFlight += 1 }
        return best?.0
    }

    /// Takes a request slot on source `i` (for requests that are not block spans).
    public func take(_ i: Int) { entries[i].inFlight += 1 }

    /// Source `i` answered: `bytes` in `duration`, of which `used` checkpoints were used.
    public func succeeded(_ i: Int, bytes: Int, duration: Duration, used: Int) {
        entries[i].inFlight -= 1
        entries[i].consecutiveFailures = 0
        entries[i].stats.bytes += bytes
        entries[i].stats.checkpoints += used
        let rate = Double(bytes) / max(duration.inSeconds, 1e-4)
        if bytes > 0 {
            entries[i].stats.throughput = entries[i].stats.throughput.map { 0.7 * $0 + 0.3 * rate } ?? rate
        }
    }

    /// Source `i` failed a request; a timeout (`stalled`) twice in a row bans it for the stall
    /// ban time.
    public func failed(_ i: Int, stalled: Bool, reason: String) {
        entries[i].inFlight -= 1
        entries[i].stats.failures += 1
        entries[i].consecutiveFailures += 1
        entries[i].stats.throughput = entries[i].stats.throughput.map { $0 / 2 } ?? 1
        if stalled && entries[i].consecutiveFailures >= 2 {
            ban(i, reason: "unresponsive: \(reason)", for: stallBanDuration)
        }
    }

    /// Bans source `i` for the stall ban time if its last `count` requests all failed.
    public func banIfFailing(_ i: Int, after count: Int, reason: String) {
        guard entries[i].consecutiveFailures >= count, !isBanned(i) else { return }
        ban(i, reason: "\(count) requests in a row failed: \(reason)", for: stallBanDuration)
    }

    /// Source `i` released a slot without an outcome (its request was cancelled: another source
    /// answered first).
    public func released(_ i: Int) {
        entries[i].inFlight -= 1
    }

    /// Source `i` said it does not hold something it advertised: forget its availability until
    /// the next poll.
    public func lacks(_ i: Int) {
        entries[i].inFlight -= 1
        entries[i].availability = nil
        entries[i].stats.holds = nil
    }

    /// Source `i` turned out not to hold what it advertised (a short answer): forget its
    /// availability until the next poll.
    public func noteLacks(_ i: Int) {
        entries[i].availability = nil
        entries[i].stats.holds = nil
    }

    /// Counts a hedged request sent to source `i`.
    public func hedged(_ i: Int) { entries[i].stats.hedges += 1 }

    /// Bans source `i`: without `duration` for bad data (the ban time; recorded as such, see
    /// ``SourceStats/bannedForBadData``), with `duration` for a pause (a stall). A ban is kept
    /// by source id: every entry of the same source is banned with it, and a reconnection
    /// (``replace(_:with:)``) keeps it. A pause never shortens or downgrades a bad-data ban.
    public func ban(_ i: Int, reason: String, for duration: Duration? = nil) {
        let now = ContinuousClock.now
        let until = now + (duration ?? banDuration)
        let source = entries[i].client.sourceID
        for k in entries.indices where k == i || entries[k].client.sourceID == source {
            let current = entries[k].bannedUntil.flatMap { $0 > now ? $0 : nil }
            if duration != nil, entries[k].badData, let current, current >= until { continue }
            entries[k].bannedUntil = max(until, current ?? until)
            entries[k].badData = duration == nil || (entries[k].badData && current != nil)
            entries[k].stats.banReason = reason
        }
        onBan?(entries[i].stats.label, reason)
    }

    /// Releases a slot and bans (bad data).
    public func misbehaved(_ i: Int, reason: String) {
        entries[i].inFlight -= 1
        ban(i, reason: reason)
    }

    /// Whether source `i` is banned now.
    public func isBanned(_ i: Int) -> Bool {
        entries[i].bannedUntil.map { $0 > ContinuousClock.now } ?? false
    }

    /// Every source's standing.
    public var stats: [SourceStats] {
        let now = ContinuousClock.now
        return entries.map { e in
            var s = e.stats
            if let until = e.bannedUntil, until > now {
                s.bannedFor = until - now
                s.bannedForBadData = e.badData
            } else {
                s.banReason = nil
            }
            return s
        }
    }
}
