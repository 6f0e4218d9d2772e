import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import SomaCore
import SomaGossip

/// `POST /v1/gossip/{topic}`'s body.
public struct PublishRequestJSON: Codable, Sendable {
    /// The message, hex.
    public var payload: String
    /// Acknowledged per target and retried; the answer waits for the delivery report.
    public var critical: Bool?
}

/// What a publish answers: the message id, and for a critical message who acknowledged it.
public struct PublishJSON: Codable, Sendable, Equatable {
    public var id: String
    public var topic: String
    public var acknowledged: [String]?
    public var missing: [String]?
}

/// `POST /v1/consensus/votes`'s body: a vote a member signed.
public struct VoteJSON: Codable, Sendable, Equatable {
    /// `vote` or `timeout`.
    public var kind: String
    public var epoch: UInt64
    public var round: UInt64
    /// The digest voted for (64 zeros for a timeout).
    public var digest: String
    /// The member's authority key and its signature of `"SomaConsensusVote::" ‖ bcs(statement)`.
    public var signer: String
    public var signature: String
}

/// What a vote answers: its message id and where the statement stands here.
public struct VoteAcceptedJSON: Codable, Sendable, Equatable {
    public var id: String
    /// Voting power counted for the statement here (of 10,000).
    public var power: UInt64
    public var certified: Bool
}

/// A gossip message as `/v1/gossip/{topic}/events` sends it.
public struct GossipMessageJSON: Codable, Sendable, Equatable {
    public var id: String
    public var topic: String
    public var payload: String
    /// The peer it came from.
    public var from: String?
    public var critical: Bool
}

/// A certificate as `/v1/consensus/certificates` sends it.
public struct VoteCertificateJSON: Codable, Sendable, Equatable {
    public var kind: String
    public var epoch: UInt64
    public var round: UInt64
    public var digest: String
    /// The signer bitmap (bit i of byte i/8: member i), hex, and the signatures in member order.
    public var signers: String
    public var signatures: [String]
}

extension APIRoutes {
    /// The largest request body taken (a consensus message's limit, as hex, with room).
    static let maxBody = 9 << 20

    func registerGossip(on router: Router<BasicRequestContext>) {
        router.post("/v1/gossip/:topic") { request, context in try await publish(request, topic: context.parameters.get("topic")) }
        router.get("/v1/gossip/:topic/events") { _, context in try gossipEvents(topic: context.parameters.get("topic")) }
        router.post("/v1/consensus/votes") { request, _ in try await vote(request) }
        router.get("/v1/consensus/certificates") { _, _ in certificateEvents() }
    }

    /// The JSON body of a request, decoded, or a 400 that says what is wrong with it.
    func body<T: Decodable>(_ request: Request, as type: T.Type) async throws -> T {
        let buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: Self.maxBody)
        } catch {
            throw APIError(status: .contentTooLarge, code: "too_large", message: "the body is over \(Self.maxBody) bytes")
        }
        do {
            return try JSONDecoder().decode(T.self, from: Data(buffer.readableBytesView))
        } catch {
            throw APIError.badRequest("the body is not the JSON expected (docs/API.md): \(error)")
        }
    }

    func carried(_ topic: String?) throws -> String {
        guard let topic, node.gossip.router.topics.contains(topic) else {
            throw APIError.notFound("no topic '\((topic ?? "").prefix(64))': this node carries \(node.gossip.router.topics.joined(separator: ", "))")
        }
        return topic
    }

    /// Publishes a message after the topic's validation (a message the peers would reject is a 400).
    func publish(_ request: Request, topic: String?) async throws -> Response {
        let topic = try carried(topic)
        guard topic != ConsensusRelay.votesTopic, topic != ConsensusRelay.certificatesTopic else {
            throw APIError.badRequest("votes go to POST /v1/consensus/votes (checked and counted there); certificates are formed by the node")
        }
        let input = try await body(request, as: PublishRequestJSON.self)
        guard input.payload.count % 2 == 0, let payload = HexCoding.decode(input.payload) else {
            throw APIError.badRequest("payload must be hex")
        }
        switch node.gossip.router.check(topic: topic, payload: payload) {
        case .reject(let why): throw APIError.badRequest("the topic refuses the message: \(why)")
        case .ignore: throw APIError.badRequest("the topic ignores the message (stale or redundant)")
        default: break
        }
        if input.critical == true {
            let report = await node.gossip.router.publishCritical(topic: topic, payload: payload)
            return JSON.response(PublishJSON(
                id: report.id.hex, topic: topic, acknowledged: report.acknowledged.map(\.description).sorted(),
                missing: report.missing.map(\.description).sorted()))
        }
        let id = node.gossip.router.publish(topic: topic, payload: payload)
        return JSON.response(PublishJSON(id: id.hex, topic: topic), status: .accepted)
    }

    /// Checks, counts and publishes a vote signed elsewhere.
    func vote(_ request: Request) async throws -> Response {
        let input = try await body(request, as: VoteJSON.self)
        let kind: VoteKind
        switch input.kind {
        case "vote": kind = .vote
        case "timeout": kind = .timeout
        default: throw APIError.badRequest("kind must be vote or timeout, not '\(input.kind.prefix(20))'")
        }
        let digest = try APIInput.digest(input.digest, name: "digest")
        let signerBytes = try APIInput.digest(input.signer, name: "signer")
        guard let signer = PublicKey(bytes: signerBytes.bytes) else { throw APIError.badRequest("signer is not an Ed25519 key") }
        guard input.signature.count == 128, let sig = HexCoding.decode(input.signature), let signature = Signature(bytes: sig) else {
            throw APIError.badRequest("signature must be 128 hex digits")
        }
        let statement = VoteStatement(kind: kind, epoch: input.epoch, round: input.round, digest: digest)
        let vote = Vote(statement: statement, signer: signer, signature: signature)
        let relay = node.gossip.consensus
        if case .reject(let why) = relay.submit(vote) {
            throw APIError.badRequest("vote refused: \(why)")
        }
        let id = GossipItem.Message.id(topic: ConsensusRelay.votesTopic, payload: vote.bcsBytes)
        return JSON.response(VoteAcceptedJSON(id: id.hex, power: relay.power(of: statement), certified: relay.isCertified(statement)), status: .accepted)
    }

    /// Server-Sent Events of a topic's messages from peers, from now on (`event: message`).
    func gossipEvents(topic: String?) throws -> Response {
        let topic = try carried(topic)
        let frames = node.gossip.router.subscribe(topic: topic).map { m in
            ServerSentEvent.frame(name: "message", id: m.id.hex, data: JSON.encode(GossipMessageJSON(
                id: m.id.hex, topic: m.topic, payload: HexCoding.encode(m.payload), from: m.from?.description, critical: m.critical)))
        }
        return sse("soma-node gossip \(topic)", frames)
    }

    /// Server-Sent Events of the certificates this node forms or receives (`event: certificate`).
    func certificateEvents() -> Response {
        let frames = node.gossip.consensus.subscribeCertificates().map { c in
            let s = c.statement
            return ServerSentEvent.frame(name: "certificate", id: nil, data: JSON.encode(VoteCertificateJSON(
                kind: s.kind == .vote ? "vote" : "timeout", epoch: s.epoch, round: s.round, digest: s.digest.hex,
                signers: HexCoding.encode(c.certificate.signers), signatures: c.certificate.signatures.map { HexCoding.encode($0.bytes) })))
        }
        return sse("soma-node certificates", frames)
    }

    /// A text/event-stream answer of `frames`, until the client goes or the node stops.
    func sse<S: AsyncSequence & Sendable>(_ comment: String, _ frames: S) -> Response where S.Element == [UInt8] {
        var headers = HTTPFields()
        headers[.contentType] = "text/event-stream"
        headers[.cacheControl] = "no-store"
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            try await writer.write(ByteBuffer(string: ": \(comment)\nretry: 2000\n\n"))
            for try await frame in frames { try await writer.write(ByteBuffer(bytes: frame)) }
            try await writer.finish(nil)
        })
    }
}
