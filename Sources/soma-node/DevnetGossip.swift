import ArgumentParser
import Foundation
import NIOPosix
import SomaCore
import SomaGossip
import SomaNet

struct DevnetGossip: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gossip",
        abstract: "Run N gossip nodes in this process over loopback with shaped links, send messages and votes through them, and report what arrived.",
        discussion: """
            The nodes sit on a random graph (--degree peers each); every link carries at most \
            --mbit megabits per second and adds --delay-ms (emulated in front of each socket). \
            Each round every node publishes one message of --bytes bytes; then every node, as a \
            validator of a committee of all nodes with equal power, votes once a round and the \
            certificates are awaited at every node. Prints deliveries, duplicates, bytes per \
            payload byte, latencies and certificates (--json: one JSON document).
            """)

    @Option(help: "Nodes in the network (2...256).")
    var nodes = 20
    @Option(help: "Peers of each node (nodes x degree must be even).")
    var degree = 6
    @Option(help: "Bandwidth of each link, megabits per second (0: unshaped).")
    var mbit = 100
    @Option(help: "One-way delay of each link, milliseconds.")
    var delayMs = 2
    @Option(help: "Rounds of messages and of votes.")
    var rounds = 10
    @Option(help: "Bytes of each message (at least 11).")
    var bytes = 145
    @Option(help: "Seed of the graph and the keys.")
    var seed: UInt64 = 1
    @Flag(help: "Plaintext links instead of TLS 1.3.")
    var plaintext = false
    @Flag(help: "Print one JSON document.")
    var json = false

    func validate() throws {
        guard (2...256).contains(nodes) else { throw ValidationError("--nodes must be 2...256") }
        guard degree >= 1, degree < nodes, nodes * degree % 2 == 0 else {
            throw ValidationError("--degree must be 1...nodes-1, with nodes x degree even (a regular graph)")
        }
        guard (0...100_000).contains(mbit) else { throw ValidationError("--mbit must be 0...100000") }
        guard (0...10_000).contains(delayMs) else { throw ValidationError("--delay-ms must be 0...10000") }
        guard (1...10_000).contains(rounds) else { throw ValidationError("--rounds must be 1...10000") }
        guard (11...1_048_576).contains(bytes) else { throw ValidationError("--bytes must be 11...1048576") }
    }

    func run() async throws {
        let console = Console(json: json)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let link = mbit > 0 ? LinkShape(bytesPerSecond: mbit * 125_000, delay: .milliseconds(Int64(delayMs))) : nil
        console.say("\(nodes) nodes, degree \(degree), \(plaintext ? "plaintext" : "TLS 1.3"), links of \(mbit > 0 ? "\(mbit) Mbit/s" : "loopback speed") and \(delayMs) ms")
        var options = TopicOptions()
        options.maxMessageBytes = max(bytes, 1 << 20)
        let spreading = try await GossipCluster.start(
            count: nodes, degree: degree, seed: seed, link: link, tls: !plaintext, topics: ["devnet": options], group: group)
        let spread = try await spreading.disseminate(topic: "devnet", rounds: rounds, payloadBytes: bytes, pause: .milliseconds(100))
        await spreading.close()
        console.say("messages: \(spread.delivered) of \(spread.expected) deliveries, \(format(spread.duplicatesPerDelivery, 2)) duplicates per delivery, \(format(spread.bytesPerPayloadByte, 2)) bytes sent per payload byte, latency p50 \(format(spread.latencyP50)) ms, p99 \(format(spread.latencyP99)) ms, \(spread.pulls) pulls, \(spread.prunes) prunes")
        let voting = try await GossipCluster.start(count: nodes, degree: degree, seed: seed &+ 1, link: link, tls: !plaintext, group: group)
        let certs = try await voting.certify(rounds: rounds, pause: .milliseconds(100))
        await voting.close()
        console.say("votes: \(certs.certificates) of \(certs.expected) certificates (one a round at every node), vote to certificate p50 \(format(certs.latencyP50)) ms, p99 \(format(certs.latencyP99)) ms")
        try await group.shutdownGracefully()
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            struct Output: Encodable {
                let nodes: Int, degree: Int, mbit: Int, delayMs: Int, rounds: Int, bytes: Int, tls: Bool
                let messages: GossipCluster.Dissemination
                let votes: GossipCluster.Certification
            }
            let data = try encoder.encode(Output(
                nodes: nodes, degree: degree, mbit: mbit, delayMs: delayMs, rounds: rounds, bytes: bytes, tls: !plaintext,
                messages: spread, votes: certs))
            FileHandle.standardOutput.write(data + Data("\n".utf8))
        }
        guard spread.delivered == spread.expected, certs.certificates == certs.expected else {
            throw CLIError("not everything arrived: \(spread.delivered) of \(spread.expected) deliveries, \(certs.certificates) of \(certs.expected) certificates")
        }
    }
}
