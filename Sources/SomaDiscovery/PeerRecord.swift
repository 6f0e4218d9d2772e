public import SomaCore

/// What the table keeps about one peer: its newest signed record, who told us about it, and how
/// it has served us. Stored in the `peers` column family under its peer id.
public struct PeerRecord: Sendable, BCSCodable {
    /// Its newest signed record (newest timestamp wins).
    public var info: SignedNodeInfo
    /// The peer that told us about it (itself, when it came on its own connection).
    public var introducer: PeerID
    /// Whether this node has completed a handshake with it (it proved its key to us).
    public var direct: Bool
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
    static let version: UInt8 = 1

    /// A new record for `info`, learnt from `introducer` at `nowMs`.
    public init(info: SignedNodeInfo, introducer: PeerID, direct: Bool, nowMs: UInt64) {
        self.info = info
        self.introducer = introducer
        self.direct = direct
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

    /// Whether it is banned at `nowMs`.
    public func isBanned(nowMs: UInt64) -> Bool { bannedUntilMs > nowMs }

    /// Writes a version byte, then the fields in order.
    public func encode(to writer: inout BCSWriter) {
        writer.write(PeerRecord.version)
        writer.write(info)
        writer.write(introducer)
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
    }

    /// Reads what ``encode(to:)`` wrote.
    public init(from reader: inout BCSReader) throws(CoreError) {
        let v = try reader.readU8()
        guard v == PeerRecord.version else { throw CoreError(.invalidValue, "peer record version \(v)") }
        info = try reader.read(SignedNodeInfo.self)
        introducer = try reader.read(PeerID.self)
        direct = try reader.readBool()
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
    /// Whether this node has had a handshake with it.
    public var direct: Bool
    /// Who told us about it (hex peer id).
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
        introducer = record.introducer.raw.hex
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
