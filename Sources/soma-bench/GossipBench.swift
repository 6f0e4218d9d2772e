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
    @Option(help: "The push tree's floor of eager peers per node (GossipConfiguration.minimumEager).")
    var minimumEager = GossipConfiguration().minimumEager
    @Option(help: "Lazy peers each message is announced to (GossipConfiguration.lazyFanout).")
    var lazyFanout = GossipConfiguration().lazyFanout
    @Option(help: "Eager peers a topic starts with (GossipConfiguration.meshDegree).")
    var meshDegree = GossipConfiguration().meshDegree
    @Option(help: "How long consensus-class items wait to share a frame, milliseconds (GossipConfiguration.batchDelay).")
    var consensusBatchMs = 3
    @Option(help: "How often announcements go to lazy peers, milliseconds (GossipConfiguration.haveInterval).")
    var haveIntervalMs = Int(GossipConfiguration().haveInterval.components.attoseconds / 1_000_000_000_000_000) + Int(GossipConfiguration().haveInterval.components.seconds) * 1_000

    func validate() throws {
        guard (1...600).contains(seconds) else { throw ValidationError("--seconds must be 1...600") }
        guard (2...256).contains(nodes) else { throw ValidationError("--nodes must be 2...256") }
        guard degree >= 1, degree < nodes, nodes * degree % 2 == 0 else {
            throw ValidationError("--degree must be 1...nodes-1, with nodes x degree even (a regular graph)")
        }
        guard (1...10_000).contains(rounds) else { throw ValidationError("--rounds must be 1...10000") }
        guard (0...64).contains(minimumEager), (0...64).contains(lazyFanout), (0...64).contains(meshDegree) else {
            throw ValidationError("--minimum-eager, --lazy-fanout and --mesh-degree must be 0...64")
        }
        guard (0...1_000).contains(consensusBatchMs) else { throw ValidationError("--consensus-batch-ms must be 0...1000") }
        guard (1...10_000).contains(haveIntervalMs) else { throw ValidationError("--have-interval-ms must be 1...10000") }
    }

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

        print("\n== \(nodes) nodes, degree \(degree), TLS, links of 100 Mbit/s and 2 ms: \(rounds) rounds, every node votes once a round")
        let link = LinkShape(bytesPerSecond: 12_500_000, delay: .milliseconds(2))
        var gossip = GossipConfiguration()
        gossip.minimumEager = minimumEager
        gossip.lazyFanout = lazyFanout
        gossip.meshDegree = meshDegree
        gossip.batchDelay[0] = .milliseconds(consensusBatchMs)
        gossip.haveInterval = .milliseconds(haveIntervalMs)
        // The votes travel on the relay's votes topic (its packing), without its counting: no
        // statement is ever certified here, so every vote goes to every node.
        let spreading = try await GossipCluster.start(count: nodes, degree: degree, seed: 7, link: link, gossip: gossip, group: group)
        let committee = spreading.committee
        for node in spreading.nodes {
            var options = ConsensusRelay.votesOptions(preferred: []) { $0 == committee.epoch ? committee : nil }
            options.validate = { _ in .accept }
            node.router.register(topic: ConsensusRelay.votesTopic, options: options)
        }
        let keys = spreading.keys
        let spread = try await spreading.disseminate(topic: ConsensusRelay.votesTopic, rounds: rounds, pause: .milliseconds(100)) { node, round in
            Vote(statement: VoteStatement(kind: .vote, epoch: 1, round: UInt64(round), digest: Hashing.sha256([UInt8(truncatingIfNeeded: round)])), key: keys[node]).bcsBytes
        }
        await spreading.close()
        line("deliveries", "\(spread.delivered) of \(spread.expected)")
        line("duplicates per message per node", fmt(spread.duplicatesPerDelivery, 3), "goal <= 1; gossipsub ~3")
        line("bytes sent / (payload x receivers)", fmt(spread.bytesPerPayloadByte, 2), "goal <= 1.2; 145-byte votes")
        line("propagation latency p50 / p99", "\(fmt(spread.latencyP50, 1)) / \(fmt(spread.latencyP99, 1)) ms")
        line("pulls (want) / prunes", "\(spread.pulls) / \(spread.prunes)")
        line("frames / announced ids per delivery", "\(fmt(spread.framesPerDelivery, 2)) / \(fmt(spread.announcedPerDelivery, 2))")
        line("bytes: messages / announcements / rest", "\(fmt(spread.messageShare * 100, 0))% / \(fmt(spread.announcementShare * 100, 0))% / \(fmt((1 - spread.messageShare - spread.announcementShare) * 100, 0))%")

        print("\n== vote to certificate: \(nodes) validators of equal power, each votes; the certificate at every node")
        let voting = try await GossipCluster.start(count: nodes, degree: degree, seed: 8, link: link, group: group)
        let certs = try await voting.certify(rounds: rounds, pause: .milliseconds(100))
        await voting.close()
        line("vote-to-certificate latency p50 / p99", "\(fmt(certs.latencyP50, 1)) / \(fmt(certs.latencyP99, 1)) ms", "\(certs.certificates) of \(certs.expected) certificates")
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

/// A value shared between tasks.
final class Shared<T: Sendable>: Sendable {
    let value: Mutex<T>
    init(_ initial: T) { value = Mutex(initial) }
}

/// A counter shared between tasks.
final class Counter: Sendable {
    let value = Atomic<Int>(0)
}
