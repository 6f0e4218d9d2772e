public import SomaCore
public import SomaNet
import SomaStore

/// A gossip message's id: `SHA-256("GossipMessage::" ‖ bcs(topic) ‖ payload)` over the
/// uncompressed payload (DESIGN §12), so the same message has one id on every node whatever
/// its encoding on a link.
public typealias MessageID = Digest

/// The first 12 bytes of a message id: what announcements (`have`) and pulls (`want`) carry.
/// Finding a second message whose id shares them with a given one takes about 2^96 hashes;
/// even against every id a node remembers (2^18) it takes 2^78.
public struct ShortID: Hashable, Sendable, CustomStringConvertible {
    /// Bytes 0..<8 and 8..<12 of the id.
    public let high: UInt64
    public let low: UInt32

    /// The short id of `id`.
    public init(_ id: MessageID) {
        let b = id.bytes
        high = b[0..<8].reduce(0) { $0 << 8 | UInt64($1) }
        low = b[8..<12].reduce(0) { $0 << 8 | UInt32($1) }
    }

    init(high: UInt64, low: UInt32) {
        self.high = high
        self.low = low
    }

    /// Its 12 bytes in order.
    public var bytes: [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: high >> (56 - 8 * $0)) } + (0..<4).map { UInt8(truncatingIfNeeded: low >> (24 - 8 * $0)) }
    }

    /// Hex of the 12 bytes.
    public var description: String { HexCoding.encode(bytes) }
}

/// The limits of the gossip wire (docs/PROTOCOL.md, gossip).
public enum GossipLimits {
    /// The longest topic name, in UTF-8 bytes.
    public static let maxTopicBytes = 64
    /// Items in one gossip frame.
    public static let maxItems = 1_024
    /// Ids in one `have`, `want` or `ack` item.
    public static let maxIDs = 1_024
    /// The longest origin key (``TopicOptions/origin``) a `prune` names.
    public static let maxOriginBytes = 64
    /// The largest message payload (uncompressed), the default of ``TopicOptions/maxMessageBytes``.
    public static let maxMessageBytes = 4 << 20
}

/// One item of a gossip frame.
public enum GossipItem: Sendable, Equatable {
    /// A message: topic, whether the sender wants an acknowledgement, and the payload (LZ4
    /// frame when `compressed`; the id is over the decompressed bytes).
    case message(Message)
    /// Lazy announcement: the sender holds these messages of `topic` (short ids).
    case have(topic: String, ids: [ShortID])
    /// Pull: send these messages (short ids); the sender also becomes an eager peer of their
    /// topics (a graft).
    case want(ids: [ShortID])
    /// The sender received a message twice: send it no more of `topic` eagerly (it moves to the
    /// lazy peers of the topic's tree, or of the tree of `origin` when the topic keeps one per
    /// origin, ``TopicOptions/origin``; empty: the topic's).
    case prune(topic: String, origin: [UInt8])
    /// The sender received these critical messages.
    case ack(ids: [MessageID])
    /// Several messages of `topic` in one item, in the topic's packed form (its
    /// ``TopicOptions/pack``; votes: the statement once, then signer and signature of each):
    /// the receiver unpacks them into the exact payloads and handles each as a message.
    case packed(topic: String, critical: Bool, body: [UInt8])

    /// A message as it travels.
    public struct Message: Sendable, Equatable {
        /// Its topic.
        public var topic: String
        /// Acknowledge on receipt (critical delivery).
        public var critical: Bool
        /// The payload is an LZ4 frame of the message's bytes.
        public var compressed: Bool
        /// The bytes as sent.
        public var body: [UInt8]

        /// A message item.
        public init(topic: String, critical: Bool, compressed: Bool, body: [UInt8]) {
            self.topic = topic
            self.critical = critical
            self.compressed = compressed
            self.body = body
        }
    }
}

/// The payload of a gossip frame (method 24, one-way): `u8 priority ‖ Vec<GossipItem>`. The
/// first byte is the class the frame was sent in (``Priority``), which the sender's scheduler
/// reads without decoding the rest.
public struct GossipFrame: Sendable, Equatable, BCSCodable {
    /// The class the frame travels in.
    public var priority: Priority
    /// Its items, at most ``GossipLimits/maxItems``.
    public var items: [GossipItem]

    /// A frame.
    public init(priority: Priority, items: [GossipItem]) {
        self.priority = priority
        self.items = items
    }

    /// Writes `u8 priority ‖ Vec<GossipItem>`.
    public func encode(to w: inout BCSWriter) {
        w.write(priority.rawValue)
        w.writeLength(items.count)
        for item in items { item.encode(to: &w) }
    }

    /// The wire bytes.
    public var bytes: [UInt8] { BCS.encode(self, capacity: 64 + items.reduce(0) { $0 + $1.sizeHint }) }

    /// Decodes a frame strictly: known priority and tags, bounded counts, topics of 1...64
    /// UTF-8 bytes, no trailing bytes (``BCS/decode(_:from:)``). Message bodies are bounded by
    /// the frame itself (the transport's frame limit); decompression is bounded by the receiver.
    public init(from r: inout BCSReader) throws(CoreError) {
        let raw = try r.readU8()
        guard let p = Priority(rawValue: raw) else { throw CoreError(.unknownTag, "gossip frame of priority \(raw)") }
        priority = p
        let count = try r.readLength(minElementSize: 2)
        guard count <= GossipLimits.maxItems else {
            throw CoreError(.lengthTooLarge, "gossip frame of \(count) items, at most \(GossipLimits.maxItems)")
        }
        var items: [GossipItem] = []
        items.reserveCapacity(count)
        for _ in 0..<count { items.append(try GossipItem(from: &r)) }
        self.items = items
    }
}

extension GossipItem {
    var sizeHint: Int {
        switch self {
        case .message(let m): 16 + m.topic.utf8.count + m.body.count
        case .have(let t, let ids): 8 + t.utf8.count + 12 * ids.count
        case .want(let ids): 8 + 12 * ids.count
        case .ack(let ids): 8 + 32 * ids.count
        case .prune(let t, let origin): 4 + t.utf8.count + origin.count
        case .packed(let t, _, let body): 8 + t.utf8.count + body.count
        }
    }

    func encode(to w: inout BCSWriter) {
        switch self {
        case .message(let m):
            w.writeULEB128(0)
            w.write(m.topic)
            w.write(UInt8((m.critical ? 1 : 0) | (m.compressed ? 2 : 0)))
            w.writeBytes(m.body)
        case .have(let topic, let ids):
            w.writeULEB128(1)
            w.write(topic)
            w.writeLength(ids.count)
            for id in ids { w.writeRaw(id.bytes) }
        case .want(let ids):
            w.writeULEB128(2)
            w.writeLength(ids.count)
            for id in ids { w.writeRaw(id.bytes) }
        case .prune(let topic, let origin):
            w.writeULEB128(3)
            w.write(topic)
            w.writeBytes(origin)
        case .ack(let ids):
            w.writeULEB128(4)
            w.writeLength(ids.count)
            for id in ids { w.write(id) }
        case .packed(let topic, let critical, let body):
            w.writeULEB128(5)
            w.write(topic)
            w.write(UInt8(critical ? 1 : 0))
            w.writeBytes(body)
        }
    }

    init(from r: inout BCSReader) throws(CoreError) {
        switch try r.readTag(count: 6, type: "GossipItem") {
        case 0:
            let topic = try Self.readTopic(&r)
            let flags = try r.readU8()
            guard flags & ~3 == 0 else { throw CoreError(.unknownTag, "gossip message flags \(flags)") }
            self = .message(Message(topic: topic, critical: flags & 1 != 0, compressed: flags & 2 != 0, body: try r.readBytes()))
        case 1:
            let topic = try Self.readTopic(&r)
            self = .have(topic: topic, ids: try Self.readShortIDs(&r))
        case 2:
            self = .want(ids: try Self.readShortIDs(&r))
        case 3:
            let topic = try Self.readTopic(&r)
            let origin = try r.readBytes()
            guard origin.count <= GossipLimits.maxOriginBytes else {
                throw CoreError(.lengthTooLarge, "a prune of an origin of \(origin.count) bytes, at most \(GossipLimits.maxOriginBytes)")
            }
            self = .prune(topic: topic, origin: origin)
        case 4:
            self = .ack(ids: try Self.readIDs(&r))
        default:
            let topic = try Self.readTopic(&r)
            let flags = try r.readU8()
            guard flags & ~1 == 0 else { throw CoreError(.unknownTag, "packed gossip flags \(flags)") }
            self = .packed(topic: topic, critical: flags == 1, body: try r.readBytes())
        }
    }

    static func readTopic(_ r: inout BCSReader) throws(CoreError) -> String {
        let topic = try r.readString()
        guard !topic.isEmpty, topic.utf8.count <= GossipLimits.maxTopicBytes else {
            throw CoreError(.lengthTooLarge, "gossip topic of \(topic.utf8.count) bytes, 1...\(GossipLimits.maxTopicBytes)")
        }
        return topic
    }

    /// The count of an id list, 1...``GossipLimits/maxIDs`` ids of `width` bytes.
    static func idCount(_ r: inout BCSReader, width: Int) throws(CoreError) -> Int {
        let count = try r.readLength(minElementSize: width)
        guard count >= 1, count <= GossipLimits.maxIDs else {
            throw CoreError(.lengthTooLarge, "\(count) message ids in one item, 1...\(GossipLimits.maxIDs)")
        }
        return count
    }

    static func readShortIDs(_ r: inout BCSReader) throws(CoreError) -> [ShortID] {
        let count = try idCount(&r, width: 12)
        var ids: [ShortID] = []
        ids.reserveCapacity(count)
        for _ in 0..<count {
            let high = try r.readU64()
            let low = try r.readU32()
            // BCS integers are little-endian; a short id is the id's first 12 bytes in order.
            ids.append(ShortID(high: high.byteSwapped, low: low.byteSwapped))
        }
        return ids
    }

    static func readIDs(_ r: inout BCSReader) throws(CoreError) -> [MessageID] {
        let count = try idCount(&r, width: 32)
        var ids: [MessageID] = []
        ids.reserveCapacity(count)
        for _ in 0..<count { ids.append(try r.readDigest()) }
        return ids
    }
}

extension GossipItem.Message {
    /// The id of a message of `topic` with `payload` (uncompressed).
    public static func id(topic: String, payload: [UInt8]) -> MessageID {
        var w = BCSWriter(capacity: 16 + topic.utf8.count + payload.count)
        w.write(topic)
        w.writeRaw(payload)
        return Hashing.sha256(domain: DomainPrefix("GossipMessage"), w.bytes)
    }

    /// A message item for `payload`, LZ4-compressed when that is at least `threshold` bytes
    /// and the frame is smaller.
    public static func encoding(topic: String, payload: [UInt8], critical: Bool, threshold: Int) -> GossipItem.Message {
        if payload.count >= threshold {
            let frame = LZ4Frame.compress(payload)
            if frame.count < payload.count {
                return GossipItem.Message(topic: topic, critical: critical, compressed: true, body: frame)
            }
        }
        return GossipItem.Message(topic: topic, critical: critical, compressed: false, body: payload)
    }

    /// The payload: the body, or the body decompressed within `limit` bytes.
    /// - Throws: ``CoreError`` when the body is not an LZ4 frame of at most `limit` bytes.
    public func payload(limit: Int) throws(CoreError) -> [UInt8] {
        guard compressed else {
            guard body.count <= limit else { throw CoreError(.lengthTooLarge, "message of \(body.count) bytes, the topic allows \(limit)") }
            return body
        }
        do {
            return try LZ4Frame.decompress(body, limit: limit)
        } catch {
            throw CoreError(.invalidValue, "compressed message: \(error.message)")
        }
    }
}
