import Foundation
public import NIOCore
public import SomaCore
public import SomaNet
import Synchronization

/// N gossip-only nodes in one process on 127.0.0.1, on a random regular graph, each link
/// optionally shaped (bandwidth and delay in front of every socket): `soma-node devnet gossip`
/// and `tools/bench gossip` run these. Decision where DESIGN is silent: the cluster lives here,
/// not in SomaDevnet, which stays free of networking (its chain generator is pure).
public final class GossipCluster: Sendable {
    /// The nodes, in key order of their index.
    public let nodes: [GossipNode]
    /// Their keys (node `i` has key `i`; as validators, the committee's authority keys).
    public let keys: [SigningKey]
    /// Who is connected to whom (node indices).
    public let graph: [[Int]]

    private init(nodes: [GossipNode], keys: [SigningKey], graph: [[Int]]) {
        self.nodes = nodes
        self.keys = keys
        self.graph = graph
    }

    /// The key of node `index` of a cluster made from `seed`.
    public static func key(seed: UInt64, index: Int) -> SigningKey {
        try! SigningKey(seed: Hashing.sha256(Array("soma-gossip-cluster-\(seed)-\(index)".utf8)).bytes)
    }

    /// Starts `count` nodes on a random `degree`-regular graph from `seed` and connects them;
    /// returns once every node has its peers (or after 10 s).
    public static func start(
        count: Int, degree: Int, seed: UInt64, link: LinkShape?, tls: Bool = true, topics: [String: TopicOptions] = [:],
        gossip: GossipConfiguration = GossipConfiguration(), group: any EventLoopGroup
    ) async throws -> GossipCluster {
        precondition(count >= 2 && degree >= 1 && degree < count && count * degree % 2 == 0, "a regular graph needs 1 <= degree < count and count * degree even")
        var net = NetConfiguration()
        net.linkShape = link
        net.tls = tls
        let chain = Hashing.sha256(Array("soma-gossip-cluster-\(seed)".utf8))
        let keys = (0..<count).map { key(seed: seed, index: $0) }
        var nodes: [GossipNode] = []
        for k in keys { nodes.append(try await GossipNode.start(key: k, chainID: chain, net: net, gossip: gossip, topics: topics, group: group)) }
        let graph = randomRegularGraph(n: count, degree: degree, seed: seed)
        for (a, peers) in graph.enumerated() {
            for b in peers where a < b { try await nodes[a].connect(host: "127.0.0.1", port: nodes[b].port) }
        }
        let deadline = ContinuousClock.now + .seconds(10)
        while nodes.contains(where: { $0.router.peers.count < degree }) && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        return GossipCluster(nodes: nodes, keys: keys, graph: graph)
    }

    /// A committee of the nodes' keys with equal voting power, epoch 1.
    public var committee: Committee { Committee.equalPower(keys.map(\.publicKey), epoch: 1) }

    /// Stops every node.
    public func close() async {
        for n in nodes { await n.close() }
    }

    /// A connected random graph of `n` nodes of `degree` peers each (the pairing model, drawn
    /// again until simple and connected).
    public static func randomRegularGraph(n: Int, degree: Int, seed: UInt64) -> [[Int]] {
        var state = seed
        func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        while true {
            var stubs = (0..<n).flatMap { Array(repeating: $0, count: degree) }
            for i in stride(from: stubs.count - 1, to: 0, by: -1) { stubs.swapAt(i, Int(next() % UInt64(i + 1))) }
            var adj = Array(repeating: Set<Int>(), count: n)
            var ok = true
            for k in stride(from: 0, to: stubs.count, by: 2) {
                let (a, b) = (stubs[k], stubs[k + 1])
                if a == b || adj[a].contains(b) {
                    ok = false
                    break
                }
                adj[a].insert(b)
                adj[b].insert(a)
            }
            guard ok else { continue }
            var reached: Set<Int> = [0]
            var frontier = [0]
            while let x = frontier.popLast() { for y in adj[x] where reached.insert(y).inserted { frontier.append(y) } }
            if reached.count == n { return adj.map { $0.sorted() } }
        }
    }

    // MARK: Measurements

    /// What ``disseminate(topic:rounds:payloadBytes:pause:)`` saw.
    public struct Dissemination: Sendable, Codable {
        /// Deliveries expected (every message at every node but its publisher) and made.
        public var expected: Int
        public var delivered: Int
        /// Copies of already-seen messages per delivery.
        public var duplicatesPerDelivery: Double
        /// Gossip bytes sent (frames with their headers) per payload byte delivered.
        public var bytesPerPayloadByte: Double
        /// Latency from publish to delivery, milliseconds.
        public var latencyP50: Double
        public var latencyP99: Double
        /// Pulls and prunes during the run.
        public var pulls: Int
        public var prunes: Int
        /// Shares of the bytes: message items and announcements.
        public var messageShare: Double
        public var announcementShare: Double
        /// Frames sent and ids announced per delivery.
        public var framesPerDelivery: Double
        public var announcedPerDelivery: Double
    }

    /// Each round, every node publishes one `payloadBytes`-byte message on `topic` (registered
    /// at start); then waits for every delivery (up to 20 s) and reports.
    public func disseminate(topic: String, rounds: Int, payloadBytes: Int, pause: Duration) async throws -> Dissemination {
        try await disseminate(topic: topic, rounds: rounds, pause: pause) { node, round in
            var payload = [UInt8(truncatingIfNeeded: node), UInt8(truncatingIfNeeded: node >> 8)]
            payload += withUnsafeBytes(of: UInt32(round).littleEndian) { Array($0) }
            return payload + [UInt8](repeating: 0x5a, count: max(0, payloadBytes - payload.count))
        }
    }

    /// Each round, every node publishes the message `payload(node, round)` on `topic`; then waits
    /// for every delivery (up to 20 s) and reports. Latency is from each message's publication
    /// to each of its deliveries.
    public func disseminate(
        topic: String, rounds: Int, pause: Duration, payload: (Int, Int) -> [UInt8]
    ) async throws -> Dissemination {
        let arrivals = Arrivals()
        let published = PublishTimes()
        var listeners: [Task<Void, Never>] = []
        for node in nodes {
            let stream = node.router.subscribe(topic: topic)
            listeners.append(Task {
                for await m in stream {
                    let now = DispatchTime.now().uptimeNanoseconds
                    if let sent = published.get(m.id) { arrivals.add(Double(now &- sent) / 1e6) }
                }
            })
        }
        let before = nodes.map(\.router.statistics)
        var payloadBytes = 0
        for round in 0..<rounds {
            for (i, node) in nodes.enumerated() {
                let bytes = payload(i, round)
                payloadBytes += bytes.count
                published.set(GossipItem.Message.id(topic: topic, payload: bytes), DispatchTime.now().uptimeNanoseconds)
                node.router.publish(topic: topic, payload: bytes)
            }
            try await Task.sleep(for: pause)
        }
        let expected = rounds * nodes.count * (nodes.count - 1)
        let deadline = ContinuousClock.now + .seconds(20)
        while arrivals.count < expected && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        for l in listeners { l.cancel() }
        let after = nodes.map(\.router.statistics)
        func total(_ f: (GossipStatistics) -> Int) -> Int { zip(after, before).reduce(0) { $0 + f($1.0) - f($1.1) } }
        let latencies = arrivals.sorted
        let bytes = total(\.bytesSent)
        let delivered = max(1, latencies.count)
        let meanPayload = Double(payloadBytes) / Double(max(1, rounds * nodes.count))
        return Dissemination(
            expected: expected, delivered: latencies.count,
            duplicatesPerDelivery: Double(total(\.duplicates)) / Double(delivered),
            bytesPerPayloadByte: Double(bytes) / (meanPayload * Double(delivered)),
            latencyP50: latencies.isEmpty ? 0 : latencies[latencies.count / 2],
            latencyP99: latencies.isEmpty ? 0 : latencies[latencies.count * 99 / 100],
            pulls: total(\.pulled), prunes: total(\.prunes),
            messageShare: Double(total(\.messageBytes)) / Double(max(1, bytes)),
            announcementShare: Double(total(\.haveBytes)) / Double(max(1, bytes)),
            framesPerDelivery: Double(total(\.framesSent)) / Double(delivered),
            announcedPerDelivery: Double(total(\.announced)) / Double(delivered))
    }

    /// What ``certify(rounds:pause:)`` saw.
    public struct Certification: Sendable, Codable {
        /// Certificates expected (one a round at every node) and seen.
        public var expected: Int
        public var certificates: Int
        /// From the round's start to the certificate at a node, milliseconds.
        public var latencyP50: Double
        public var latencyP99: Double
    }

    /// A ``ConsensusRelay`` at every node with ``committee``; each round every node votes for
    /// the round's statement; reports when each node had the certificate.
    public func certify(rounds: Int, pause: Duration) async throws -> Certification {
        let committee = self.committee
        let relays = nodes.map { node in ConsensusRelay(router: node.router) { $0 == committee.epoch ? committee : nil } }
        for r in relays { r.setCommitteePeers(Set(keys.map(\.publicKey))) }
        let arrivals = Arrivals()
        let starts = RoundStarts()
        var listeners: [Task<Void, Never>] = []
        for relay in relays {
            let stream = relay.subscribeCertificates()
            listeners.append(Task {
                for await cert in stream {
                    let now = DispatchTime.now().uptimeNanoseconds
                    if let start = starts.get(cert.statement.round) { arrivals.add(Double(now &- start) / 1e6) }
                }
            })
        }
        for round in 1...UInt64(max(1, rounds)) {
            let statement = VoteStatement(kind: .vote, epoch: committee.epoch, round: round, digest: Hashing.sha256(Array("block \(round)".utf8)))
            starts.set(round, DispatchTime.now().uptimeNanoseconds)
            for (i, relay) in relays.enumerated() { relay.submitVote(statement, key: keys[i]) }
            try await Task.sleep(for: pause)
        }
        let expected = rounds * nodes.count
        let deadline = ContinuousClock.now + .seconds(10)
        while arrivals.count < expected && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        for l in listeners { l.cancel() }
        let latencies = arrivals.sorted
        return Certification(
            expected: expected, certificates: latencies.count,
            latencyP50: latencies.isEmpty ? 0 : latencies[latencies.count / 2],
            latencyP99: latencies.isEmpty ? 0 : latencies[latencies.count * 99 / 100])
    }
}

/// Latencies noted by several tasks.
final class Arrivals: Sendable {
    private let values = Mutex<[Double]>([])
    func add(_ v: Double) { values.withLock { $0.append(v) } }
    var count: Int { values.withLock { $0.count } }
    var sorted: [Double] { values.withLock { $0 }.sorted() }
}

/// When each message was published (monotonic nanoseconds).
final class PublishTimes: Sendable {
    private let values = Mutex<[MessageID: UInt64]>([:])
    func set(_ id: MessageID, _ t: UInt64) { values.withLock { $0[id] = t } }
    func get(_ id: MessageID) -> UInt64? { values.withLock { $0[id] } }
}

/// When each round started (monotonic nanoseconds).
final class RoundStarts: Sendable {
    private let values = Mutex<[UInt64: UInt64]>([:])
    func set(_ round: UInt64, _ t: UInt64) { values.withLock { $0[round] = t } }
    func get(_ round: UInt64) -> UInt64? { values.withLock { $0[round] } }
}

extension Committee {
    /// A committee of `names` with equal voting power (the remainder to the first member in
    /// key order): devnets, tests and benchmarks of the consensus relay.
    public static func equalPower(_ names: [PublicKey], epoch: UInt64) -> Committee {
        let n = UInt64(max(1, names.count))
        let members = names.sorted().enumerated().map { i, k in
            Member(name: k, votingPower: 10_000 / n + (i == 0 ? 10_000 % n : 0), address: "")
        }
        return Committee(epoch: epoch, members: members)
    }
}
