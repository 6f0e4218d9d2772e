public import SomaCore

/// Who passed a record on to this node: whose share of the table it counts against.
public enum Introducer: Hashable, Sendable, CustomStringConvertible, BCSCodable {
    /// A peer that passed it on in a `getKnownPeers` answer (or, for a direct record, the peer itself).
    case peer(PeerID)
    /// The peer itself, in the hello of a connection it made to this node: such
    /// self-introductions are pooled by the network group of the address they came from, so
    /// fresh keys dialling in from one place share one introducer's share.
    case inbound(AddressGroup)

    /// The peer's hex id, or `inbound from GROUP`.
    public var description: String {
        switch self {
        case .peer(let p): p.raw.hex
        case .inbound(let g): "inbound from \(g)"
        }
    }

    /// Writes a tag (peer 0, inbound 1), then the value.
    public func encode(to writer: inout BCSWriter) {
        switch self {
        case .peer(let p):
            writer.writeULEB128(0)
            writer.write(p)
        case .inbound(let g):
            writer.writeULEB128(1)
            writer.write(g)
        }
    }

    /// Reads what ``encode(to:)`` wrote.
    public init(from reader: inout BCSReader) throws(CoreError) {
        switch try reader.readTag(count: 2, type: "Introducer") {
        case 0: self = .peer(try reader.read(PeerID.self))
        default: self = .inbound(try reader.read(AddressGroup.self))
        }
    }
}

/// What the table keeps about one peer: its newest signed record, who told us about it, and how
/// it has served us. Stored in the `peers` column family under its peer id.
public struct PeerRecord: Sendable, BCSCodable {
    /// Its newest signed record (newest timestamp wins).
    public var info: SignedNodeInfo
    /// Who told us about it: a peer, or (`inbound`) the peer itself on a connection it made to
    /// us, pooled by the network group it came from; for a direct record, the peer itself.
    public var introducer: Introducer
    /// Whether this node has dialled it and completed a handshake (it proved its key to us).
    public var direct: Bool
    /// The address this node last reached it at (dialled, key proven); empty: never. Only a
    /// record whose current addresses include it is advertised to others (dial-back).
    public var reachedAddress: String
    /// When it entered the table (ms since 1970).
    public var firstSeenMs: UInt64
    /// When we last heard from it or about it with a newer record (ms since 1970).
    public var lastSeenMs: UInt64
    /// When this node last completed a handshake with it (0: never).
    public var lastConnectedMs: UInt64
    /// Measured download throughput from it in bytes/s (0: not measured).
    public var throughput: UInt64
    /// Measured round-trip time of its answers in ms (0: not measured).
    public var latencyMs: UInt32
    /// Failed dials and requests, in all.
    public var failures: UInt32
    /// Failed dials and requests since the last success (drives the backoff).
    public var consecutiveFailures: UInt32
    /// Banned until then (ms since 1970; 0: not banned).
    public var bannedUntilMs: UInt64
    /// Why it was last banned.
    public var banReason: String
    /// Not dialled again before then (ms since 1970): the backoff after failures.
    public var nextDialMs: UInt64

    /// The version of the stored encoding.
    static let version: UInt8 = 2

    /// A new record for `info`, learnt from `introducer` at `nowMs`.
    public init(info: SignedNodeInfo, introducer: Introducer, direct: Bool, nowMs: UInt64) {
        self.info = info
        self.introducer = direct ? .peer(info.info.peerID) : introducer
        self.direct = direct
        reachedAddress = ""
        firstSeenMs = nowMs
        lastSeenMs = nowMs
        lastConnectedMs = direct ? nowMs : 0
        throughput = 0
        latencyMs = 0
        failures = 0
        consecutiveFailures = 0
        bannedUntilMs = 0
        banReason = ""
        nextDialMs = 0
    }

    /// Its peer id.
    public var peerID: PeerID { info.info.peerID }

    /// Whether it counts against an introducer's share (it is not direct): that introducer.
    var share: Introducer? { direct ? nil : introducer }

    /// Whether it was reached at one of the addresses its current record names (dial-back).
    public var isReached: Bool { direct && !reachedAddress.isEmpty && info.info.addresses.contains(reachedAddress) }

    /// Whether it is banned at `nowMs`.
    public func isBanned(nowMs: UInt64) -> Bool { bannedUntilMs > nowMs }

    /// Writes a version byte, then the fields in order.
    public func encode(to writer: inout BCSWriter) {
        writer.write(PeerRecord.version)
        writer.write(info)
        // A direct record is its own introducer (the decoder refuses anything else).
        writer.write(direct ? .peer(info.info.peerID) : introducer)
        writer.write(direct)
        writer.write(firstSeenMs)
        writer.write(lastSeenMs)
        writer.write(lastConnectedMs)
        writer.write(throughput)
        writer.write(latencyMs)
        writer.write(failures)
        writer.write(consecutiveFailures)
        writer.write(bannedUntilMs)
        writer.write(banReason)
        writer.write(nextDialMs)
        writer.write(reachedAddress)
    }

    /// Reads what ``encode(to:)`` wrote (version 2), or a version 1 record (an introducer peer
    /// id, no reached address: a self-introduced one becomes `inbound` from ``AddressGroup/unknown``,
    /// a direct one is advertised again only after this node reaches it again).
    public init(from reader: inout BCSReader) throws(CoreError) {
        let v = try reader.readU8()
        guard v == 1 || v == PeerRecord.version else { throw CoreError(.invalidValue, "peer record version \(v)") }
        info = try reader.read(SignedNodeInfo.self)
        let legacyIntroducer: PeerID?
        if v == 1 {
            legacyIntroducer = try reader.read(PeerID.self)
            introducer = .peer(info.info.peerID)
        } else {
            legacyIntroducer = nil
            introducer = try reader.read(Introducer.self)
        }
        direct = try reader.readBool()
        if v == PeerRecord.version, direct, introducer != .peer(info.info.peerID) {
            // One value, one encoding: the encoder writes a direct record as its own introducer.
            throw CoreError(.invalidValue, "a direct peer record introduced by \(introducer), not by the peer itself")
        }
        if let legacyIntroducer {
            introducer = direct || legacyIntroducer != info.info.peerID ? .peer(legacyIntroducer) : .inbound(.unknown)
        }
        firstSeenMs = try reader.readU64()
        lastSeenMs = try reader.readU64()
        lastConnectedMs = try reader.readU64()
        throughput = try reader.readU64()
        latencyMs = try reader.readU32()
        failures = try reader.readU32()
        consecutiveFailures = try reader.readU32()
        bannedUntilMs = try reader.readU64()
        banReason = try reader.readString()
        nextDialMs = try reader.readU64()
        if v == 1 {
            reachedAddress = ""
        } else {
            let a = try reader.readString()
            guard a.utf8.count <= NodeInfo.maxAddressBytes else {
                throw CoreError(.lengthTooLarge, "a reached address of \(a.utf8.count) bytes")
            }
            reachedAddress = a
        }
        if direct { introducer = .peer(info.info.peerID) }
    }
}

/// A peer's standing as `soma-node peers` shows it.
public struct PeerSummary: Sendable, Codable {
    /// The peer id (hex).
    public var peerID: String
    /// Its advertised addresses.
    public var addresses: [String]
    /// public or private.
    public var access: String
    /// archive, full or validator.
    public var role: String
    /// The ranges it holds, `LOW...HIGH`.
    public var holds: [String]
    /// The snapshot epochs it serves.
    public var snapshotEpochs: [UInt64]
    /// The signing time of its record (ms since 1970).
    public var recordTimestampMs: UInt64
    /// Whether this node has dialled it and had a handshake with it.
    public var direct: Bool
    /// Whether its current record names the address this node reached it at (it is advertised).
    public var reached: Bool
    /// Who told us about it (hex peer id, or `inbound from GROUP`).
    public var introducer: String
    /// Last heard of (ms since 1970).
    public var lastSeenMs: UInt64
    /// Last handshake (ms since 1970; 0 never).
    public var lastConnectedMs: UInt64
    /// Measured throughput in bytes/s (0: not measured).
    public var throughput: UInt64
    /// Measured round trip in ms (0: not measured).
    public var latencyMs: UInt32
    /// Failures in all.
    public var failures: UInt32
    /// Banned until (ms since 1970), if banned now.
    public var bannedUntilMs: UInt64?
    /// Why, if banned now.
    public var banReason: String?
    /// Whether it is connected now (only a running node knows; `nil` from the stored table).
    public var connected: Bool?

    /// The summary of `record` at `nowMs`.
    public init(_ record: PeerRecord, nowMs: UInt64, connected: Bool? = nil) {
        let i = record.info.info
        peerID = i.peerID.raw.hex
        addresses = i.addresses
        access = i.access.description
        role = i.role.description
        holds = i.holds.map(\.description)
        snapshotEpochs = i.snapshotEpochs
        recordTimestampMs = i.timestampMs
        direct = record.direct
        reached = record.isReached
        introducer = record.introducer.description
        lastSeenMs = record.lastSeenMs
        lastConnectedMs = record.lastConnectedMs
        throughput = record.throughput
        latencyMs = record.latencyMs
        failures = record.failures
        let banned = record.isBanned(nowMs: nowMs)
        bannedUntilMs = banned ? record.bannedUntilMs : nil
        banReason = banned ? record.banReason : nil
        self.connected = connected
    }
}
