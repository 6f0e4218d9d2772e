import Foundation
import SomaCore
import SomaGossip
import SomaNet

/// A router with the consensus relay's topics, one peer whose frames are fuzzed, and a link
/// that keeps what the router sends back.
final class FuzzLink: GossipLink {
    func send(_ frame: [UInt8]) {
        // Whatever the router sends must decode (it is someone else's input next).
        guard (try? BCS.decode(GossipFrame.self, from: frame)) != nil else { fail("the router sent a frame that does not decode") }
    }
}

let gossipFixture: (GossipRouter, ConsensusRelay, PeerID, [SigningKey]) = {
    let keys = (0..<4).map { try! SigningKey(seed: Hashing.sha256([UInt8($0), 0x9f]).bytes) }
    let committee = Committee(epoch: 1, members: keys.map(\.publicKey).sorted().map { Member(name: $0, votingPower: 2_500, address: "") })
    let router = GossipRouter(localID: keys[0].publicKey)
    let relay = ConsensusRelay(router: router) { $0 == 1 ? committee : nil }
    router.register(topic: "t", options: TopicOptions())
    router.addPeer(keys[1].publicKey, link: FuzzLink())
    return (router, relay, keys[1].publicKey, keys)
}()

/// Gossip frames from a peer (SomaGossip, PROTOCOL §5a): a frame that decodes re-encodes to the
/// same bytes (the encoding is canonical); any frame, decodable or not, goes through the
/// router (votes, packs, pulls, announcements, acks) without a trap, and what the router sends
/// back decodes.
let gossipTarget = FuzzTarget(
    name: "gossip",
    summary: "gossip frames from a peer: canonical decoding, then GossipRouter.receive with the consensus relay's topics; what it sends decodes",
    seeds: {
        let (_, _, _, keys) = gossipFixture
        let s = VoteStatement(kind: .vote, epoch: 1, round: 2, digest: Hashing.sha256([2]))
        let votes = keys.map { Vote(statement: s, key: $0).bcsBytes }
        let id = GossipItem.Message.id(topic: "t", payload: [1])
        return [
            GossipFrame(priority: .consensus, items: [.message(.init(topic: ConsensusRelay.votesTopic, critical: false, compressed: false, body: votes[1]))]).bytes,
            GossipFrame(priority: .consensus, items: [.packed(topic: ConsensusRelay.votesTopic, critical: false, body: VotePackBytes.of(Array(votes.dropFirst())))]).bytes,
            GossipFrame(priority: .consensus, items: [.packed(topic: ConsensusRelay.votesTopic, critical: false, body: VotePackBytes.of(Array(votes.dropFirst()), indexed: true))]).bytes,
            GossipFrame(priority: .checkpoints, items: [.message(.init(topic: "t", critical: true, compressed: false, body: [1])), .have(topic: "t", ids: [ShortID(id)]), .want(ids: [ShortID(id)]), .ack(ids: [id]), .prune(topic: "t", origin: []), .prune(topic: ConsensusRelay.votesTopic, origin: keys[2].publicKey.raw.bytes)]).bytes,
        ]
    },
    run: { input in
        let (router, _, peer, _) = gossipFixture
        if let frame = try? BCS.decode(GossipFrame.self, from: input) {
            guard frame.bytes == input else { fail("a gossip frame decoded but re-encodes to other bytes") }
        }
        router.receive(from: peer, frame: input)
        router.flush()
    }
)

/// A vote pack of `payloads` (each a `bcs(Vote)`), through the votes topic's packing: signers
/// by key, or by index in the fixture's committee when `indexed`.
enum VotePackBytes {
    static func of(_ payloads: [[UInt8]], indexed: Bool = false) -> [UInt8] {
        let keys = gossipFixture.3
        let committee = Committee(epoch: 1, members: keys.map(\.publicKey).sorted().map { Member(name: $0, votingPower: 2_500, address: "") })
        return ConsensusRelay.votesOptions(preferred: []) { indexed && $0 == 1 ? committee : nil }.pack?(payloads) ?? []
    }
}
