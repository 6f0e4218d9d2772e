import Foundation
public import Logging
import Metrics
public import NIOCore
public import SomaCore
public import SomaNet
import SomaStore
import Synchronization

/// The tunables of discovery (DESIGN §9); the defaults suit a public network.
public struct DiscoveryConfiguration: Sendable {
    /// Addresses (`HOST:PORT`) dialled when the node has no connection.
    public var seeds: [String] = []
    /// Outbound connections the node dials towards.
    public var targetConnections = 8
    /// The most records the peer table holds.
    public var maxPeers = 1_000
    /// The most introduced records one peer, or one inbound network group, may contribute
    /// (default: a sixteenth of `maxPeers`, at least 8).
    public var maxPerIntroducer: Int? = nil
    /// The most self-introduced (inbound) records, all network groups together (default: a
    /// quarter of `maxPeers`).
    public var maxInbound: Int? = nil
    /// The most records per network group of their addresses (default: a sixteenth of `maxPeers`, at least 8).
    public var maxPerGroup: Int? = nil
    /// The most outbound connections per network group (IPv4 /16, IPv6 /32) while candidates in
    /// other groups remain.
    public var maxOutboundPerGroup = 2
    /// Feeler dials a round (at most 16): records never reached are dialled once, briefly, so
    /// that they can be advertised (dial-back).
    public var feelers = 2
    /// How often the node exchanges known peers and dials.
    public var exchangeInterval: Duration = .seconds(10)
    /// Connected peers asked for their known peers each round.
    public var exchangeFanout = 3
    /// Dials at once.
    public var dialConcurrency = 4
    /// The first backoff after a failed dial; it doubles per failure in a row.
    public var backoffBase: Duration = .seconds(2)
    /// The longest backoff.
    public var backoffMax: Duration = .seconds(600)
    /// How often the node re-signs its record even when nothing changed.
    public var resignInterval: Duration = .seconds(3_600)
    /// Whether others may advertise this node.
    public var access: Access = .public
    /// What this node does.
    public var role: Role = .full
    /// The addresses this node advertises (`HOST:PORT`, at most 8); empty: none (a node that
    /// only dials out).
    public var advertise: [String] = []
    /// The peers a private node answers.
    public var allowedPeers: Set<PeerID> = []
    /// How long a `getKnownPeers` may take.
    public var requestTimeout: TimeAmount = .seconds(5)

    /// The defaults.
    public init() {}
}

/// What one exchange round did (for tests and logs).
public struct RoundReport: Sendable {
    /// Outbound connections after the round.
    public var connections = 0
    /// Records learnt or updated.
    public var admitted = 0
    /// Records that failed verification (bad signature, stale, future, malformed, wrong peer).
    public var rejected = 0
    /// Records the table's bounds refused.
    public var refused = 0
    /// Dials that connected.
    public var dialled = 0
    /// Dials that failed.
    public var dialFailures = 0
    /// Feeler dials that reached a peer at its address (dial-back), closed at once.
    public var reached = 0
}

/// Finds the node's data sources (DESIGN §9): keeps this node's signed ``NodeInfo`` current,
/// serves `getKnownPeers` from the ``PeerTable``, and every round asks a few connected peers for
/// theirs, dials towards `targetConnections` (best table entries first, seeds when isolated) and
/// backs off from peers that cannot be reached. The outbound connections it holds are what sync
/// draws from (``connections``).
public final class Discovery: Sendable {
    /// The peer table.
    public let table: PeerTable
    /// This node's identity for its handshakes (hellos carry the current signed record).
    public let identity: HandshakeIdentity
    /// The configuration.
    public let configuration: DiscoveryConfiguration
    let key: SigningKey
    let net: NetConfiguration
    let group: any EventLoopGroup
    let logger: Logger
    let held: @Sendable () async -> (holds: [HeldRange], snapshotEpochs: [UInt64])
    let pushes: AsyncStream<PushedCheckpoint>.Continuation?
    let onConnect: @Sendable (PeerClient) -> Void
    let gossip: GossipInbox?
    let state = Mutex(State())
    let metrics: DiscoveryMetrics
    let diversity: OutboundDiversity

    struct State {
        var own: SignedNodeInfo?
        var signedAt: ContinuousClock.Instant?
        var advertise: [String] = []
        var connections: [PeerID: Connection] = [:]
        var seedFailures: [String: (count: Int, next: ContinuousClock.Instant, reason: String)] = [:]
        var sourceFailures: [PeerID: Int] = [:]
    }

    /// An outbound connection.
    public struct Connection: Sendable {
        /// The client.
        public let client: PeerClient
        /// The address dialled.
        public let address: String
    }

    /// Discovery for the node with `key` on chain `chainID`.
    /// - Parameters:
    ///   - table: the peer table (load it first).
    ///   - held: what this node holds now (its record advertises it).
    ///   - pushes: where checkpoints that peers push on outbound connections go.
    ///   - onConnect: told of every new outbound connection (sync takes it as a source, gossip a link).
    ///   - gossip: where the gossip frames of outbound connections go, if given.
    public init(
        key: SigningKey, chainID: Digest, table: PeerTable, configuration: DiscoveryConfiguration = DiscoveryConfiguration(),
        net: NetConfiguration = NetConfiguration(), group: any EventLoopGroup, logger: Logger,
        pushes: AsyncStream<PushedCheckpoint>.Continuation? = nil, onConnect: @escaping @Sendable (PeerClient) -> Void = { _ in },
        gossip: GossipInbox? = nil,
        held: @escaping @Sendable () async -> (holds: [HeldRange], snapshotEpochs: [UInt64]) = { ([], []) }
    ) {
        self.key = key
        self.table = table
        self.configuration = configuration
        self.net = net
        self.group = group
        self.logger = logger
        self.held = held
        self.pushes = pushes
        self.onConnect = onConnect
        self.gossip = gossip
        self.identity = HandshakeIdentity(key: key, chainID: chainID, nodeInfoSlot: NodeInfoSlot())
        self.metrics = DiscoveryMetrics()
        self.diversity = OutboundDiversity(maxPerGroup: configuration.maxOutboundPerGroup)
        state.withLock { $0.advertise = Discovery.advertisable(configuration.advertise) }
    }

    /// The addresses a record can carry: `HOST:PORT` of at most 128 bytes, at most 8 of them
    /// (others would make this node's record fail verification at every peer).
    static func advertisable(_ addresses: [String]) -> [String] {
        Array(addresses.filter { $0.utf8.count <= NodeInfo.maxAddressBytes && NodeInfo.split(address: $0) != nil }
            .prefix(NodeInfo.maxAddresses))
    }

    /// Milliseconds since 1970 now.
    public static func nowMs() -> UInt64 { UInt64(saturating: Date().timeIntervalSince1970 * 1_000) }

    /// The access policy a server of this node applies: everyone for a public node, the
    /// allow-list for a private one.
    public var accessPolicy: AccessPolicy {
        configuration.access == .private ? AccessPolicy(allowed: configuration.allowedPeers) : .open
    }

    // MARK: This node's record

    /// Replaces the advertised addresses (once the listening port is known) and re-signs.
    public func setAddresses(_ addresses: [String]) async {
        state.withLock { $0.advertise = Discovery.advertisable(addresses) }
        await refreshOwnRecord(force: true)
    }

    /// This node's current signed record.
    public func ownRecord() async -> SignedNodeInfo {
        if let own = state.withLock({ $0.own }) { return own }
        await refreshOwnRecord(force: true)
        return state.withLock { $0.own! }
    }

    /// Re-signs this node's record when what it holds or where it listens changed, or when the
    /// record is older than `resignInterval`; hellos carry the new one from then on.
    public func refreshOwnRecord(force: Bool = false) async {
        let (allHolds, epochs) = await held()
        // Our own record must verify at every peer: no inverted range.
        let holds = Array(allHolds.filter { $0.lowest <= $0.highest }.prefix(NodeInfo.maxRanges))
        let now = ContinuousClock.now
        let nowMs = Discovery.nowMs()
        let (own, signedAt, addresses) = state.withLock { ($0.own, $0.signedAt, $0.advertise) }
        if !force, let own, let signedAt, now - signedAt < configuration.resignInterval,
           own.info.holds == holds, own.info.snapshotEpochs == Array(epochs.suffix(NodeInfo.maxSnapshotEpochs)),
           own.info.addresses == addresses {
            return
        }
        let info = NodeInfo(
            peerID: key.publicKey, addresses: addresses, timestampMs: max(nowMs, (own?.info.timestampMs ?? 0).saturatingAdd(1)),
            access: configuration.access, role: configuration.role, holds: Array(holds.prefix(NodeInfo.maxRanges)),
            snapshotEpochs: Array(epochs.suffix(NodeInfo.maxSnapshotEpochs)))
        let signed = SignedNodeInfo(signing: info, with: key)
        state.withLock {
            // Another refresh may have signed a newer one meanwhile.
            if let current = $0.own, current.info.timestampMs >= signed.info.timestampMs { return }
            $0.own = signed
            $0.signedAt = now
        }
        identity.nodeInfoSlot.set(state.withLock { $0.own!.bcsBytes })
    }

    // MARK: Serving

    /// The `getKnownPeers` answer: this node's record and up to 200 public, fresh records.
    public func knownPeers() async -> KnownPeers {
        let own = await ownRecord()
        let others = await table.advertisable(limit: KnownPeers.maxPeers, asker: nil, nowMs: Discovery.nowMs())
        return KnownPeers(own: own, peers: others)
    }

    // MARK: Learning

    /// Takes in the hellos of peers that connected to this node: their records are verified
    /// (and must be signed by the key the handshake proved) and entered as self-introduced,
    /// pooled by the network group of the address they connected from (so fresh keys dialling
    /// in from one place share one introducer's share); they become direct once this node dials
    /// them. Returns when `inbound` ends.
    public func consume(inbound: AsyncStream<InboundPeer>) async {
        await applyAccess()
        for await peer in inbound {
            var report = RoundReport()
            await learnInbound(peer.hello.nodeInfo, peerID: peer.peerID, remoteAddress: peer.remoteAddress, into: &report)
        }
        try? await table.flush()
    }

    /// One inbound peer's hello record: introduced by `inbound(group of remoteAddress)`.
    func learnInbound(_ bytes: [UInt8], peerID: PeerID, remoteAddress: String?, into report: inout RoundReport) async {
        guard !bytes.isEmpty else { return }
        await learn(bytes, from: .inbound(AddressGroup(remoteAddress: remoteAddress)), direct: false, mustBe: peerID, into: &report)
    }

    /// A private node's table admits only its allow-listed peers (DESIGN §8: access before the record).
    func applyAccess() async {
        await table.restrict(to: configuration.access == .private ? configuration.allowedPeers : nil)
    }

    /// Verifies one received record and offers it to the table.
    func learn(_ bytes: [UInt8], from introducer: Introducer, direct: Bool, mustBe: PeerID?, into report: inout RoundReport) async {
        do {
            let record = try SignedNodeInfo.verified(bytes, nowMs: Discovery.nowMs())
            await offer(record, from: introducer, direct: direct, mustBe: mustBe, into: &report)
        } catch {
            reject(error, from: introducer, into: &report)
        }
    }

    func offer(_ record: SignedNodeInfo, from introducer: Introducer, direct: Bool, mustBe: PeerID?, into report: inout RoundReport) async {
        if let mustBe, record.info.peerID != mustBe {
            reject(DiscoveryError(.wrongPeer, "a record of \(record.info.peerID.raw.short) on the connection of \(mustBe.raw.short)"),
                   from: introducer, into: &report)
            return
        }
        if configuration.access == .private && !configuration.allowedPeers.contains(record.info.peerID) {
            // Access before the record: whatever the source, a private node keeps only allow-listed peers.
            report.refused += 1
            metrics.refused.increment()
            return
        }
        switch await table.admit(record, introducer: introducer, direct: direct, nowMs: Discovery.nowMs()) {
        case .added, .updated:
            report.admitted += 1
            metrics.admitted.increment()
        case .unchanged:
            break
        case .refused(let why):
            report.refused += 1
            metrics.refused.increment()
            logger.trace("record refused", metadata: ["peer.id": "\(record.info.peerID.raw.short)", "reason": "\(why)"])
        }
    }

    func reject(_ error: DiscoveryError, from introducer: Introducer, into report: inout RoundReport) {
        report.rejected += 1
        metrics.rejected(error.code).increment()
        logger.debug("record rejected", metadata: ["peer.introducer": "\(introducer)", "reason": "\(error)"])
    }

    /// Verifies a `getKnownPeers` answer from `peer` and offers its records to the table: the
    /// peer's own record must be its own (it is entered as direct: this node is connected to
    /// it), the others are introduced by it.
    public func ingest(_ answer: KnownPeers, from peer: PeerID, into report: inout RoundReport) async {
        let nowMs = Discovery.nowMs()
        do {
            try answer.own.verify(nowMs: nowMs)
            await offer(answer.own, from: .peer(peer), direct: true, mustBe: peer, into: &report)
        } catch {
            reject(error, from: .peer(peer), into: &report)
        }
        for record in answer.peers.prefix(KnownPeers.maxPeers) {
            do {
                try record.verify(nowMs: nowMs)
                await offer(record, from: .peer(peer), direct: false, mustBe: nil, into: &report)
            } catch {
                reject(error, from: .peer(peer), into: &report)
            }
        }
    }

    // MARK: Connections

    /// Why each seed that could not be reached failed last (for a command's error message).
    public var seedFailures: [String: String] {
        state.withLock { s in s.seedFailures.mapValues(\.reason) }
    }

    /// The outbound connections open now.
    public var connections: [Connection] {
        state.withLock { s in Array(s.connections.values) }.filter { $0.client.isConnected }
    }

    /// The ids of the peers connected now.
    public var connectedIDs: Set<PeerID> { Set(connections.map(\.client.peerID)) }

    /// Dials `address`; on a handshake whose key is `expected` (if given) the connection is
    /// kept and the peer's record (from its hello) entered as direct.
    @discardableResult
    func dial(_ address: String, expected: PeerID?, into report: inout RoundReport) async -> Bool {
        await dialWithReason(address, expected: expected, into: &report) == nil
    }

    /// ``dial(_:expected:into:)``, returning why it failed (`nil`: connected). `keep: false` is
    /// a feeler: the handshake proves the peer's key at `address` (dial-back), its record is
    /// entered as direct and reached, and the connection is closed at once.
    func dialWithReason(_ address: String, expected: PeerID?, keep: Bool = true, into report: inout RoundReport) async -> String? {
        guard let (host, port) = NodeInfo.split(address: address) else { return "\(address) is not HOST:PORT" }
        let started = ContinuousClock.now
        let client: PeerClient
        do {
            client = try await PeerClient.connect(host: host, port: port, identity: identity, configuration: net, group: group, pushes: pushes, expectedPeer: expected,
                                                 allowed: configuration.access == .private ? configuration.allowedPeers : nil, gossip: gossip)
        } catch {
            report.dialFailures += 1
            metrics.dials(false).increment()
            logger.debug("dial failed", metadata: ["peer.address": "\(address)", "reason": "\(error)"])
            return "\(error)"
        }
        let latency = UInt32(millisecondsOf: (ContinuousClock.now - started).inSeconds)
        if let expected, client.peerID != expected {
            report.dialFailures += 1
            metrics.dials(false).increment()
            logger.debug("dialled a different peer", metadata: ["peer.address": "\(address)", "peer.id": "\(client.peerID.raw.short)"])
            await client.close()
            return "\(address) is now peer \(client.peerID.raw.short), not \(expected.raw.short)"
        }
        if client.peerID == key.publicKey {
            // Our own address (a seed list that names this node).
            await client.close()
            return "\(address) is this node"
        }
        if configuration.access == .private && !configuration.allowedPeers.contains(client.peerID) {
            // A private node talks only to its allow-listed peers, in both directions.
            await client.close()
            return "peer \(client.peerID.raw.short) at \(address) is not allow-listed"
        }
        if let r = await table.record(client.peerID), r.isBanned(nowMs: Discovery.nowMs()) {
            // A seed address whose peer is banned (bad data earlier, remembered across restarts).
            await client.close()
            return "peer \(client.peerID.raw.short) is banned until \(r.bannedUntilMs) ms: \(r.banReason)"
        }
        if !keep {
            if !client.hello.nodeInfo.isEmpty {
                await learn(client.hello.nodeInfo, from: .peer(client.peerID), direct: true, mustBe: client.peerID, into: &report)
            }
            await table.noteConnected(client.peerID, address: address, latencyMs: latency, nowMs: Discovery.nowMs())
            await client.close()
            report.reached += 1
            metrics.feelers(true).increment()
            return nil
        }
        let kept = state.withLock { s -> Bool in
            if let old = s.connections[client.peerID], old.client.isConnected { return false }
            s.connections[client.peerID] = Connection(client: client, address: address)
            return true
        }
        guard kept else {
            await client.close()
            return "already connected to \(client.peerID.raw.short)"
        }
        report.dialled += 1
        metrics.dials(true).increment()
        if !client.hello.nodeInfo.isEmpty {
            await learn(client.hello.nodeInfo, from: .peer(client.peerID), direct: true, mustBe: client.peerID, into: &report)
        }
        await table.noteConnected(client.peerID, address: address, latencyMs: latency, nowMs: Discovery.nowMs())
        logger.info("connected to peer", metadata: ["peer.address": "\(address)", "peer.id": "\(client.peerID.raw.short)"])
        onConnect(client)
        return nil
    }

    /// Dials the best table entries until `targetConnections` are open (at most
    /// `dialConcurrency` at once), spread over network groups: at most `maxOutboundPerGroup`
    /// connections in one group while candidates in other groups remain.
    func dialTowardsTarget(into report: inout RoundReport) async {
        let open = connectedIDs
        let need = configuration.targetConnections - open.count
        guard need > 0 else { return }
        let concurrency = max(1, configuration.dialConcurrency)
        let nowMs = Discovery.nowMs()
        var remaining = await table.dialCandidates(nowMs: nowMs, excluding: open.union([key.publicKey]))
        var connected = 0
        while connected < need && !remaining.isEmpty {
            let groups = OutboundDiversity.groups(of: connections.map(\.address))
            let batch = diversity.pick(remaining, open: groups, count: min(concurrency, need - connected))
            guard !batch.isEmpty else { break }
            let chosen = Set(batch.map(\.record.peerID))
            remaining.removeAll { chosen.contains($0.peerID) }
            let results = await withTaskGroup(of: (PeerID, Bool, RoundReport).self) { tasks in
                for (record, addresses) in batch {
                    tasks.addTask {
                        var r = RoundReport()
                        for address in addresses.prefix(NodeInfo.maxAddresses) {
                            if await self.dial(address, expected: record.peerID, into: &r) { return (record.peerID, true, r) }
                        }
                        return (record.peerID, false, r)
                    }
                }
                var out: [(PeerID, Bool, RoundReport)] = []
                for await x in tasks { out.append(x) }
                return out
            }
            for (peerID, ok, r) in results {
                report.merge(r)
                if ok {
                    connected += 1
                } else {
                    await table.noteFailure(peerID, nowMs: Discovery.nowMs(), baseMs: configuration.backoffBase.milliseconds,
                                            maxMs: configuration.backoffMax.milliseconds)
                }
            }
        }
    }

    /// Dial-back: dials up to `feelers` records this node never reached (peers that dialled in,
    /// records passed on by others) once each, to prove their key at their address; only then
    /// are they advertised. The connection is closed at once (it is not an outbound slot). A
    /// failure backs off as any failed dial does.
    func feel(into report: inout RoundReport) async {
        guard configuration.feelers > 0 else { return }
        let nowMs = Discovery.nowMs()
        let candidates = await table.unreached(nowMs: nowMs, excluding: connectedIDs.union([key.publicKey]))
            .prefix(min(configuration.feelers, 16))
        let results = await withTaskGroup(of: (PeerID, Bool, RoundReport).self) { tasks in
            for record in candidates {
                tasks.addTask {
                    var r = RoundReport()
                    for address in record.info.info.addresses.prefix(NodeInfo.maxAddresses) {
                        if await self.dialWithReason(address, expected: record.peerID, keep: false, into: &r) == nil {
                            return (record.peerID, true, r)
                        }
                    }
                    return (record.peerID, false, r)
                }
            }
            var out: [(PeerID, Bool, RoundReport)] = []
            for await x in tasks { out.append(x) }
            return out
        }
        for (peerID, ok, r) in results {
            report.merge(r)
            if !ok {
                metrics.feelers(false).increment()
                await table.noteFailure(peerID, nowMs: Discovery.nowMs(), baseMs: configuration.backoffBase.milliseconds,
                                        maxMs: configuration.backoffMax.milliseconds)
            }
        }
    }

    /// Dials the seeds that are not connected, each backing off after failures.
    func dialSeeds(into report: inout RoundReport) async {
        let now = ContinuousClock.now
        let connectedAddresses = Set(connections.map(\.address))
        let due = configuration.seeds.filter { seed in
            !connectedAddresses.contains(seed) && state.withLock { $0.seedFailures[seed].map { $0.next <= now } ?? true }
        }
        await withTaskGroup(of: (String, String?, RoundReport).self) { tasks in
            for seed in due {
                tasks.addTask {
                    var r = RoundReport()
                    let failure = await self.dialWithReason(seed, expected: nil, into: &r)
                    return (seed, failure, r)
                }
            }
            for await (seed, failure, r) in tasks {
                report.merge(r)
                state.withLock { s in
                    if let failure {
                        let n = (s.seedFailures[seed]?.count ?? 0) + 1
                        let shift = UInt64(min(max(n, 1) - 1, 20))
                        let ms = min(configuration.backoffMax.milliseconds, configuration.backoffBase.milliseconds.saturatingMul(1 << shift))
                        let wait = Duration.milliseconds(Int64(clamping: min(ms, 86_400_000)))
                        s.seedFailures[seed] = (n, ContinuousClock.now + wait, failure)
                    } else {
                        s.seedFailures[seed] = nil
                    }
                }
            }
        }
    }

    /// Asks up to `exchangeFanout` connected peers (chosen at random) for their known peers.
    func exchange(into report: inout RoundReport) async {
        let chosen = connections.shuffled().prefix(max(0, configuration.exchangeFanout))
        let answers = await withTaskGroup(of: (PeerID, KnownPeers?, UInt32).self) { tasks in
            for c in chosen {
                tasks.addTask {
                    let started = ContinuousClock.now
                    do {
                        let bytes = try await c.client.callBuffer(.getKnownPeers, [], timeout: self.configuration.requestTimeout)
                        let answer = try BCS.decode(KnownPeers.self, fromContiguous: bytes.readableBytesView)
                        return (c.client.peerID, answer, UInt32(millisecondsOf: (ContinuousClock.now - started).inSeconds))
                    } catch {
                        self.logger.debug("getKnownPeers failed", metadata: ["peer.id": "\(c.client.peerID.raw.short)", "reason": "\(error)"])
                        return (c.client.peerID, nil, 0)
                    }
                }
            }
            var out: [(PeerID, KnownPeers?, UInt32)] = []
            for await x in tasks { out.append(x) }
            return out
        }
        for (peer, answer, latency) in answers {
            metrics.exchanges(answer != nil).increment()
            guard let answer else {
                await table.noteFailure(peer, nowMs: Discovery.nowMs(), baseMs: configuration.backoffBase.milliseconds,
                                        maxMs: configuration.backoffMax.milliseconds)
                continue
            }
            await table.noteLatency(peer, latencyMs: max(1, latency))
            await ingest(answer, from: peer, into: &report)
        }
    }

    /// One round: re-sign if needed, forget expired records and closed connections, dial the
    /// best entries (the seeds too when isolated), exchange known peers, dial again with what
    /// was learnt, and persist the table.
    @discardableResult
    public func round() async -> RoundReport {
        var report = RoundReport()
        await applyAccess()
        await refreshOwnRecord()
        await table.expire(nowMs: Discovery.nowMs())
        state.withLock { s in s.connections = s.connections.filter { $0.value.client.isConnected } }
        await dialTowardsTarget(into: &report)
        if connections.isEmpty { await dialSeeds(into: &report) }
        await exchange(into: &report)
        await dialTowardsTarget(into: &report)
        await feel(into: &report)
        report.connections = connections.count
        metrics.connections.record(report.connections)
        metrics.knownPeers.record(await table.count)
        do {
            try await table.flush()
        } catch {
            logger.warning("cannot persist the peer table", metadata: ["reason": "\(error)"])
        }
        return report
    }

    /// Runs rounds until the connections reach the target or a round learns and dials nothing
    /// new (at most `maxRounds`): a quick start before a one-shot sync.
    @discardableResult
    public func bootstrap(maxRounds: Int = 8) async -> Int {
        for _ in 0..<max(0, maxRounds) {
            let r = await round()
            if r.connections >= configuration.targetConnections || (r.admitted == 0 && r.dialled == 0) { break }
        }
        return connections.count
    }

    /// Runs a round every `exchangeInterval` until cancelled.
    public func run() async {
        while !Task.isCancelled {
            let r = await round()
            logger.trace("discovery round", metadata: ["connections": "\(r.connections)", "admitted": "\(r.admitted)", "rejected": "\(r.rejected)"])
            // An isolated node retries sooner.
            let wait = r.connections == 0 ? min(configuration.exchangeInterval, .seconds(2)) : configuration.exchangeInterval
            try? await Task.sleep(for: wait)
        }
    }

    /// Notes what sync measured of a connected peer: its throughput (bytes/s; NaN, infinite or
    /// negative rates are clamped), its failed requests in all (the difference since the last
    /// note is recorded), and a ban with its remaining time (saturating).
    public func noteSource(_ peerID: PeerID, throughput: Double?, failures: Int, bannedFor: Duration?, reason: String?) async {
        let connected = connectedIDs
        let new = state.withLock { s -> Int in
            let old = s.sourceFailures[peerID] ?? 0
            if s.sourceFailures[peerID] == nil && s.sourceFailures.count >= Discovery.maxSourceNotes {
                // Bounded: forget the counts of peers no longer connected.
                s.sourceFailures = s.sourceFailures.filter { connected.contains($0.key) }
            }
            s.sourceFailures[peerID] = max(0, failures)
            let (d, overflow) = failures.subtractingReportingOverflow(old)
            return overflow ? 0 : max(0, d)
        }
        await table.noteTransfer(peerID, throughput: throughput.map { UInt64(saturating: $0) }, newFailures: UInt32(clamping: new))
        if let bannedFor, bannedFor > .zero {
            await table.ban(peerID, untilMs: Discovery.nowMs().saturatingAdd(bannedFor.milliseconds), reason: reason ?? "banned by sync")
        }
    }

    /// The most peers whose failure counts ``noteSource(_:throughput:failures:bannedFor:reason:)`` remembers.
    static let maxSourceNotes = 4_096

    /// Closes every outbound connection and persists the table.
    public func close() async {
        let open = state.withLock { s -> [Connection] in
            let c = Array(s.connections.values)
            s.connections = [:]
            return c
        }
        for c in open { await c.client.close() }
        try? await table.flush()
    }
}

extension RoundReport {
    mutating func merge(_ other: RoundReport) {
        admitted += other.admitted
        rejected += other.rejected
        refused += other.refused
        dialled += other.dialled
        dialFailures += other.dialFailures
        reached += other.reached
    }
}

/// Discovery's metrics (swift-metrics; whatever backend the process bootstrapped).
struct DiscoveryMetrics: Sendable {
    let admitted = Counter(label: "soma_discovery_records_admitted_total")
    let refused = Counter(label: "soma_discovery_records_refused_total")
    let connections = Gauge(label: "soma_discovery_connections")
    let knownPeers = Gauge(label: "soma_discovery_known_peers")

    func rejected(_ code: DiscoveryError.Code) -> Counter {
        Counter(label: "soma_discovery_records_rejected_total", dimensions: [("reason", code.rawValue)])
    }

    func dials(_ ok: Bool) -> Counter {
        Counter(label: "soma_discovery_dials_total", dimensions: [("outcome", ok ? "connected" : "failed")])
    }

    func feelers(_ ok: Bool) -> Counter {
        Counter(label: "soma_discovery_feelers_total", dimensions: [("outcome", ok ? "reached" : "failed")])
    }

    func exchanges(_ ok: Bool) -> Counter {
        Counter(label: "soma_discovery_exchanges_total", dimensions: [("outcome", ok ? "answered" : "failed")])
    }
}
