import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import SomaCore

/// What an `epoch` event says (SSE id `SEQe`).
public struct EpochEventJSON: Codable, Sendable, Equatable {
    /// The epoch that ended.
    public var epoch: UInt64
    /// Its last checkpoint.
    public var lastCheckpoint: UInt64
    /// The certified state root at its end and the live objects it covers.
    public var stateRoot: String
    public var liveObjectCount: UInt64
    /// The committee of the next epoch.
    public var nextCommittee: CommitteeJSON?
}

/// What a `ban` event says (no id: bans are not replayed).
public struct BanEventJSON: Codable, Sendable, Equatable {
    public var source: String
    public var reason: String
    public var timeMs: UInt64
}

/// What the `dropped` event, the last of a stream the node ends, says.
public struct DroppedEventJSON: Codable, Sendable, Equatable {
    public var reason: String
}

extension APIRoutes {
    /// `/v1/events`: Server-Sent Events of synced checkpoints, epoch ends and bans. A client
    /// resumes with `Last-Event-ID` (or `?after=ID`): the events after it are read back from
    /// the store, then live ones follow. A client that falls `http.eventBuffer` events behind
    /// is dropped with a `dropped` event; the node never waits for it.
    func events(_ request: Request) throws -> Response {
        var after: EventPosition? = nil
        let lastID = request.headers[HTTPField.Name("Last-Event-ID")!] ?? request.uri.queryParameters["after"].map(String.init)
        if let lastID {
            guard let p = EventPosition(id: lastID) else {
                throw APIError.badRequest("'\(lastID.prefix(40))' is not an event id: expected a checkpoint number, optionally followed by 'e'")
            }
            after = p
        }
        let subscription = node.events(after: after)
        var headers = HTTPFields()
        headers[.contentType] = "text/event-stream"
        headers[.cacheControl] = "no-store"
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            try await writer.write(ByteBuffer(string: ": soma-node events\nretry: 2000\n\n"))
            for await event in subscription {
                if subscription.droppedReason != nil { break }
                try await writer.write(ByteBuffer(bytes: ServerSentEvent.encode(event)))
            }
            if let reason = subscription.droppedReason {
                try await writer.write(ByteBuffer(bytes: ServerSentEvent.frame(name: "dropped", id: nil, data: JSON.encode(DroppedEventJSON(reason: reason)))))
            }
            try await writer.finish(nil)
        })
    }
}

/// The text/event-stream encoding of node events.
enum ServerSentEvent {
    static func encode(_ event: NodeEvent) -> [UInt8] {
        switch event {
        case .checkpoint(let c, let transactions):
            return frame(name: "checkpoint", id: event.position?.description,
                         data: JSON.encode(CheckpointJSON(c, transactions: transactions, blockHeld: true)))
        case .epoch(let c):
            let end = c.summary.endOfEpoch
            return frame(name: "epoch", id: event.position?.description, data: JSON.encode(EpochEventJSON(
                epoch: c.summary.epoch, lastCheckpoint: c.summary.sequenceNumber, stateRoot: end?.stateRoot.hex ?? "",
                liveObjectCount: end?.liveObjectCount ?? 0,
                nextCommittee: end.map { CommitteeJSON($0.nextCommittee) })))
        case .ban(let source, let reason, let timeMs):
            return frame(name: "ban", id: nil, data: JSON.encode(BanEventJSON(source: source, reason: reason, timeMs: timeMs)))
        }
    }

    /// One event: `event:`, `id:` (when given) and one `data:` line (JSON has no raw newline).
    static func frame(name: String, id: String?, data: [UInt8]) -> [UInt8] {
        var out = Array("event: \(name)\n".utf8)
        if let id { out += Array("id: \(id)\n".utf8) }
        out += Array("data: ".utf8)
        out += data
        out += Array("\n\n".utf8)
        return out
    }
}
