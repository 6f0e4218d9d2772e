import ArgumentParser
import Foundation
import NIOCore
import NIOPosix
import SomaCore
import SomaGossip
import SomaNet
import Synchronization

struct GossipBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gossip",
        abstract: "SomaGossip: urgent-message latency behind a history stream on a 100 Mbit/s link (first in, first out against the write scheduler); 32 nodes of degree 6: duplicates, bytes per delivered byte and propagation latency of vote-sized messages; vote-to-certificate latency at every node.")

    @Option(help: "Seconds of the latency measurement, for each of the two schedulers.")
    var seconds = 10
    @Option(help: "Nodes of the dissemination measurement.")
    var nodes = 32
    @Option(help: "Peers of each node.")
    var degree = 6
    @Option(help: "Rounds of votes (every node votes once a round).")
    var rounds = 40

    mutating func run() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        print("== urgent messages behind a history stream, one TLS connection shaped to 100 Mbit/s, 1 ms")
        let idle = try await urgentLatency(prioritize: true, saturate: false, group: group)
        let fifo = try await urgentLatency(prioritize: false, saturate: true, group: group)
        let scheduled = try await urgentLatency(prioritize: true, saturate: true, group: group)
        line("idle link: urgent latency p50 / p99", "\(fmt(idle.p50, 2)) / \(fmt(idle.p99, 2)) ms", "\(idle.count) messages")
        line("first in, first out: p50 / p99", "\(fmt(fifo.p50, 1)) / \(fmt(fifo.p99, 1)) ms", "stream \(fmt(fifo.mbps)) MB/s")
        line("write scheduler: p50 / p99", "\(fmt(scheduled.p50, 2)) / \(fmt(scheduled.p99, 2)) ms", "stream \(fmt(scheduled.mbps)) MB/s")
        line("added delay p99, first in first out", "\(fmt(fifo.p99 - idle.p50, 1)) ms")
        line("added delay p99, write scheduler", "\(fmt(scheduled.p99 - idle.p50, 2)) ms", "goal <= 15")
        line("ratio p99 scheduler / fifo", fmt(scheduled.p99 / max(0.001, fifo.p99), 3))

        print("\n== \(nodes) nodes, degree \(degree), TLS, links of 100 Mbit/s and 2 ms: \(rounds) rounds of \(nodes) vote-sized messages")
        let spread = try await dissemination(group: group)
        line("duplicates per message per node", fmt(spread.duplicates, 3), "goal <= 1; gossipsub ~3")
        line("bytes sent / (payload x receivers)", fmt(spread.bytesRatio, 2), "goal <= 1.2; \(spread.payload)-byte messages")
        line("propagation latency p50 / p99", "\(fmt(spread.p50, 1)) / \(fmt(spread.p99, 1)) ms", "\(spread.deliveries) deliveries")
        line("pulls (want) / prunes", "\(spread.pulled) / \(spread.prunes)")
        line("bytes: messages / announcements / rest", "\(fmt(spread.messageShare * 100, 0))% / \(fmt(spread.haveShare * 100, 0))% / \(fmt((1 - spread.messageShare - spread.haveShare) * 100, 0))%")

        print("\n== vote to certificate: \(nodes) validators of equal power, each votes; the certificate at every node")
        let certs = try await voteToCertificate(group: group)
        line("vote-to-certificate latency p50 / p99", "\(fmt(certs.p50, 1)) / \(fmt(certs.p99, 1)) ms", "\(certs.count) certificates")
        try await group.shutdownGracefully()
    }

    // MARK: Urgent latency

    struct Latency {
        var p50: Double
        var p99: Double
        var count: Int
        var mbps: Double
    }

    /// A server streams 512 KiB block items to a client over one shaped TLS connection (four
    /// `getBlocks` streams in flight when `saturate`), and sends a consensus-class gossip frame
    /// every 10 ms on the same connection; the client notes each one's latency.
    func urgentLatency(prioritize: Bool, saturate: Bool, group: any EventLoopGroup) async throws -> Latency {
        var net = NetConfiguration()
        net.linkShape = .hundredMegabit
        net.writeScheduling.prioritize = prioritize
        net.uploadBytesPerSecond = nil
        net.uploadBytesPerSecondPerPeer = nil
        let chain = Hashing.sha256(Array("bench-gossip".utf8))
        let (inbound, inboundPeers) = AsyncStream<InboundPeer>.makeStream()
        let server = try await NetServer.start(
            host: "127.0.0.1", port: 0, identity: HandshakeIdentity(key: SigningKey.generate(), chainID: chain), service: SyntheticHistory(),
            configuration: net, group: group, inbound: inboundPeers)
        let latencies = Shared<[Double]>([])
        let client = try await PeerClient.connect(
            host: "127.0.0.1", port: server.port, identity: HandshakeIdentity(key: SigningKey.generate(), chainID: chain),
            configuration: net, group: group,
            gossip: { _, frame in
                let now = DispatchTime.now().uptimeNanoseconds
                guard let f = try? BCS.decode(GossipFrame.self, fromContiguous: frame.readableBytesView) else { return }
                for case .message(let m) in f.items where m.body.count == 8 {
                    let sent = m.body.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
                    latencies.value.withLock { $0.append(Double(now &- sent) / 1e6) }
                }
            })
        var iterator = inbound.makeAsyncIterator()
        guard let peer = await iterator.next() else { throw ValidationError("the client did not connect") }
        let received = Counter()
        let stop = ContinuousClock.now + .seconds(seconds)
        let streams = (0..<(saturate ? 4 : 0)).map { k in
            Task {
                var from = UInt64(k) * 1_000_000
                while ContinuousClock.now < stop {
                    _ = try? await client.blocks(from: from, count: 32, timeout: .seconds(30)) { item in
                        received.value.add(item.readableBytes, ordering: .relaxed)
                    }
                    from += 32
                }
            }
        }
        let start = ContinuousClock.now
        var n: UInt8 = 0
        while ContinuousClock.now < stop {
            var stamp = DispatchTime.now().uptimeNanoseconds
            let body = withUnsafeBytes(of: &stamp) { Array($0) }
            n &+= 1
            let frame = GossipFrame(priority: .consensus, items: [.message(.init(topic: "urgent", critical: false, compressed: false, body: body))])
            peer.send(.gossip, frame.bytes)
            try await Task.sleep(for: .milliseconds(10))
        }
        for s in streams { await s.value }
        let d = ContinuousClock.now - start
        let elapsed = Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
        try await Task.sleep(for: .milliseconds(500))
        await client.close()
        await server.shutdown(drain: .zero)
        let sorted = latencies.value.withLock { $0 }.sorted()
        guard !sorted.isEmpty else { throw ValidationError("no urgent message arrived") }
        return Latency(
            p50: sorted[sorted.count / 2], p99: sorted[min(sorted.count - 1, sorted.count * 99 / 100)], count: sorted.count,
            mbps: Double(received.value.load(ordering: .relaxed)) / 1e6 / elapsed)
    }

    // MARK: Dissemination

    struct Spread {
        var duplicates: Double
        var bytesRatio: Double
        var payload: Int
        var p50: Double
        var p99: Double
        var deliveries: Int
        var pulled: Int
        var prunes: Int
        var messageShare: Double
        var haveShare: Double
    }

    /// The nodes of a random graph, connected over shaped TLS links, carrying `topics`.
    func network(group: any EventLoopGroup, topics: [String: TopicOptions], seed: UInt64) async throws -> ([GossipNode], [SigningKey]) {
        var net = NetConfiguration()
        net.linkShape = LinkShape(bytesPerSecond: 12_500_000, delay: .milliseconds(2))
        let chain = Hashing.sha256(Array("bench-gossip".utf8))
        let keys = (0..<nodes).map { i in try! SigningKey(seed: Hashing.sha256(Array("bench-validator-\(i)".utf8)).bytes) }
        var all: [GossipNode] = []
        for key in keys { all.append(try await GossipNode.start(key: key, chainID: chain, net: net, topics: topics, group: group)) }
        for (a, peers) in randomRegularGraph(n: nodes, degree: degree, seed: seed).enumerated() {
            for b in peers where a < b { try await all[a].connect(host: "127.0.0.1", port: all[b].port) }
        }
        let deadline = ContinuousClock.now + .seconds(10)
        while all.contains(where: { $0.router.peers.count < degree }) && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        return (all, keys)
    }

    func dissemination(group: any EventLoopGroup) async throws -> Spread {
        var options = TopicOptions()
        options.priority = .consensus
        let (all, keys) = try await network(group: group, topics: ["votes": options], seed: 7)
        // Each node notes when each message reached it; the payload carries its send time.
        let arrivals = Shared<[Double]>([])
        var listeners: [Task<Void, Never>] = []
        for node in all {
            let stream = node.router.subscribe(topic: "votes")
            listeners.append(Task {
                for await m in stream {
                    let now = DispatchTime.now().uptimeNanoseconds
                    let sent = m.payload.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
                    arrivals.value.withLock { $0.append(Double(now &- sent) / 1e6) }
                }
            })
        }
        // A vote's size: statement 49 bytes, signer 32, signature 64.
        let statement = VoteStatement(kind: .vote, epoch: 1, round: 0, digest: Hashing.sha256([1]))
        let payloadSize = Vote(statement: statement, key: keys[0]).bcsBytes.count
        let before = all.map(\.router.statistics)
        for round in 0..<rounds {
            for (i, node) in all.enumerated() {
                var stamp = DispatchTime.now().uptimeNanoseconds
                var payload = withUnsafeBytes(of: &stamp) { Array($0) } + [UInt8(i), UInt8(truncatingIfNeeded: round)]
                payload += [UInt8](repeating: 0x5a, count: payloadSize - payload.count)
                node.router.publish(topic: "votes", payload: payload)
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        let expected = rounds * nodes * (nodes - 1)
        let deadline = ContinuousClock.now + .seconds(20)
        while arrivals.value.withLock({ $0.count }) < expected && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        let after = all.map(\.router.statistics)
        for l in listeners { l.cancel() }
        for n in all { await n.close() }
        let delivered = arrivals.value.withLock { $0 }.sorted()
        let duplicates = zip(after, before).reduce(0) { $0 + $1.0.duplicates - $1.1.duplicates }
        let bytes = zip(after, before).reduce(0) { $0 + $1.0.bytesSent - $1.1.bytesSent }
        return Spread(
            duplicates: Double(duplicates) / Double(max(1, delivered.count)),
            bytesRatio: Double(bytes) / Double(payloadSize * max(1, delivered.count)), payload: payloadSize,
            p50: delivered.isEmpty ? 0 : delivered[delivered.count / 2], p99: delivered.isEmpty ? 0 : delivered[delivered.count * 99 / 100],
            deliveries: delivered.count,
            pulled: zip(after, before).reduce(0) { $0 + $1.0.pulled - $1.1.pulled },
            prunes: zip(after, before).reduce(0) { $0 + $1.0.prunes - $1.1.prunes },
            messageShare: Double(zip(after, before).reduce(0) { $0 + $1.0.messageBytes - $1.1.messageBytes }) / Double(max(1, bytes)),
            haveShare: Double(zip(after, before).reduce(0) { $0 + $1.0.haveBytes - $1.1.haveBytes }) / Double(max(1, bytes)))
    }

    // MARK: Vote to certificate

    func voteToCertificate(group: any EventLoopGroup) async throws -> (p50: Double, p99: Double, count: Int) {
        let (all, keys) = try await network(group: group, topics: [:], seed: 8)
        let n = UInt64(nodes)
        let members = keys.map(\.publicKey).sorted().enumerated().map { i, k in
            Member(name: k, votingPower: 10_000 / n + (i == 0 ? 10_000 % n : 0), address: "")
        }
        let committee = Committee(epoch: 1, members: members)
        let relays = all.map { node in ConsensusRelay(router: node.router) { $0 == 1 ? committee : nil } }
        for r in relays { r.setCommitteePeers(Set(keys.map(\.publicKey))) }
        let latencies = Shared<[Double]>([])
        let roundStart = Shared<[UInt64: UInt64]>([:])
        var listeners: [Task<Void, Never>] = []
        for relay in relays {
            let stream = relay.subscribeCertificates()
            listeners.append(Task {
                for await cert in stream {
                    let now = DispatchTime.now().uptimeNanoseconds
                    if let start = roundStart.value.withLock({ $0[cert.statement.round] }) {
                        latencies.value.withLock { $0.append(Double(now &- start) / 1e6) }
                    }
                }
            })
        }
        for round in 1...UInt64(rounds) {
            let statement = VoteStatement(kind: .vote, epoch: 1, round: round, digest: Hashing.sha256(Array("block \(round)".utf8)))
            roundStart.value.withLock { $0[round] = DispatchTime.now().uptimeNanoseconds }
            for (i, relay) in relays.enumerated() { relay.submitVote(statement, key: keys[i]) }
            try await Task.sleep(for: .milliseconds(100))
        }
        let deadline = ContinuousClock.now + .seconds(10)
        while latencies.value.withLock({ $0.count }) < rounds * nodes && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        for l in listeners { l.cancel() }
        for node in all { await node.close() }
        let sorted = latencies.value.withLock { $0 }.sorted()
        guard !sorted.isEmpty else { return (0, 0, 0) }
        return (sorted[sorted.count / 2], sorted[sorted.count * 99 / 100], sorted.count)
    }
}

/// `getBlocks` answers of 512 KiB items of filler (what travels matters here, not what it says).
struct SyntheticHistory: HistoryServing {
    static let item = ByteBuffer(bytes: [UInt8](repeating: 0xa5, count: 512 << 10))

    func handle(method: UInt16, payload: [UInt8]) async -> Result<ByteBuffer, RPCError> {
        .failure(.unavailable("only getBlocks is served"))
    }

    func blockItem(seq: UInt64, part: UInt32) async -> Result<(ByteBuffer, UInt32)?, RPCError> {
        .success((Self.item, 1))
    }
}

/// A connected random graph of `n` nodes of `degree` peers each (pairing model, retried).
func randomRegularGraph(n: Int, degree: Int, seed: UInt64) -> [[Int]] {
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
            if a == b || adj[a].contains(b) { ok = false; break }
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

/// A value shared between tasks.
final class Shared<T: Sendable>: Sendable {
    let value: Mutex<T>
    init(_ initial: T) { value = Mutex(initial) }
}

/// A counter shared between tasks.
final class Counter: Sendable {
    let value = Atomic<Int>(0)
}
