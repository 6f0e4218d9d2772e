public import SomaCore

/// The one error type of SomaDiscovery: a ``Code`` and a message.
public struct DiscoveryError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong.
    public enum Code: String, Hashable, Sendable {
        /// A record does not decode, or breaks a bound (too many or too long addresses, ranges, epochs).
        case malformed
        /// A record's signature does not verify under its peer id.
        case badSignature
        /// A record is older than the staleness limit (a day).
        case stale
        /// A record is dated further ahead than the clock-skew limit (30 s).
        case future
        /// A record claims another peer id than the connection it came on proved.
        case wrongPeer
        /// The store of the peer table failed.
        case store
    }

    /// What went wrong.
    public let code: Code
    /// Details.
    public let message: String

    /// Creates an error.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// `code: message`.
    public var description: String { "\(code.rawValue): \(message)" }
}

/// Whether other nodes may tell third parties about a node.
public enum Access: UInt8, Hashable, Sendable, CaseIterable, CustomStringConvertible {
    /// Advertised by whoever knows it; answers everyone.
    case `public` = 0
    /// Never advertised by others; answers only allow-listed peer ids.
    case `private` = 1

    /// `public` or `private`.
    public var description: String { self == .public ? "public" : "private" }
}

/// What a node keeps and does.
public enum Role: UInt8, Hashable, Sendable, CaseIterable, CustomStringConvertible {
    /// Keeps and serves all history.
    case archive = 0
    /// Keeps recent history.
    case full = 1
    /// Takes part in consensus.
    case validator = 2

    /// `archive`, `full` or `validator`.
    public var description: String {
        switch self {
        case .archive: "archive"
        case .full: "full"
        case .validator: "validator"
        }
    }
}

/// A range of checkpoints whose blocks a node holds.
public struct HeldRange: Hashable, Sendable, BCSCodable, CustomStringConvertible {
    /// The first checkpoint held.
    public var lowest: UInt64
    /// The last checkpoint held.
    public var highest: UInt64

    /// Creates a range (`lowest <= highest`).
    public init(lowest: UInt64, highest: UInt64) {
        self.lowest = lowest
        self.highest = highest
    }

    /// Writes lowest, highest.
    public func encode(to writer: inout BCSWriter) {
        writer.write(lowest)
        writer.write(highest)
    }

    /// Reads lowest, highest; refuses an inverted range.
    public init(from reader: inout BCSReader) throws(CoreError) {
        lowest = try reader.readU64()
        highest = try reader.readU64()
        guard lowest <= highest else { throw CoreError(.invalidValue, "range \(lowest)...\(highest) is inverted") }
    }

    /// `lowest...highest`.
    public var description: String { "\(lowest)...\(highest)" }
}

/// What a node says about itself (DESIGN §9), signed by its key as ``SignedNodeInfo``.
public struct NodeInfo: Hashable, Sendable, BCSCodable, DomainDigestible {
    /// The node's key (proven by the signature).
    public var peerID: PeerID
    /// Where it can be dialled, `HOST:PORT` (at most ``maxAddresses`` of at most ``maxAddressBytes``).
    public var addresses: [String]
    /// When it signed this, in milliseconds since 1970.
    public var timestampMs: UInt64
    /// Whether others may advertise it.
    public var access: Access
    /// What it does.
    public var role: Role
    /// The checkpoint ranges whose blocks it holds (at most ``maxRanges``).
    public var holds: [HeldRange]
    /// The epochs whose snapshots it serves (at most ``maxSnapshotEpochs``).
    public var snapshotEpochs: [UInt64]

    /// The most addresses a record carries.
    public static let maxAddresses = 8
    /// The longest address, in UTF-8 bytes.
    public static let maxAddressBytes = 128
    /// The most ranges a record carries.
    public static let maxRanges = 8
    /// The most snapshot epochs a record carries.
    public static let maxSnapshotEpochs = 64

    /// The domain its digest (the signed message) is taken in: `NodeInfo::`.
    public static let domain = DomainPrefix("NodeInfo")

    /// Creates a record.
    public init(
        peerID: PeerID, addresses: [String], timestampMs: UInt64, access: Access = .public, role: Role = .full,
        holds: [HeldRange] = [], snapshotEpochs: [UInt64] = []
    ) {
        self.peerID = peerID
        self.addresses = addresses
        self.timestampMs = timestampMs
        self.access = access
        self.role = role
        self.holds = holds
        self.snapshotEpochs = snapshotEpochs
    }

    /// Writes the fields in order (tags of `access` and `role` as ULEB128).
    public func encode(to writer: inout BCSWriter) {
        writer.write(peerID)
        writer.writeLength(addresses.count)
        for a in addresses { writer.write(a) }
        writer.write(timestampMs)
        writer.writeULEB128(UInt64(access.rawValue))
        writer.writeULEB128(UInt64(role.rawValue))
        writer.write(holds)
        writer.write(snapshotEpochs)
    }

    /// Reads the fields in order; a count beyond the bounds is refused before anything is read.
    public init(from reader: inout BCSReader) throws(CoreError) {
        peerID = try reader.read(PeerID.self)
        let n = try reader.readLength(minElementSize: 1)
        guard n <= NodeInfo.maxAddresses else { throw CoreError(.lengthTooLarge, "\(n) addresses (at most \(NodeInfo.maxAddresses))") }
        addresses = []
        for _ in 0..<n {
            let a = try reader.readString()
            guard a.utf8.count <= NodeInfo.maxAddressBytes else {
                throw CoreError(.lengthTooLarge, "an address of \(a.utf8.count) bytes (at most \(NodeInfo.maxAddressBytes))")
            }
            addresses.append(a)
        }
        timestampMs = try reader.readU64()
        guard let a = Access(rawValue: UInt8(truncatingIfNeeded: try reader.readTag(count: 2, type: "Access"))),
              let r = Role(rawValue: UInt8(truncatingIfNeeded: try reader.readTag(count: 3, type: "Role")))
        else { throw CoreError(.unknownTag, "access or role") }
        access = a
        role = r
        let n2 = try reader.readLength(minElementSize: 16)
        guard n2 <= NodeInfo.maxRanges else { throw CoreError(.lengthTooLarge, "\(n2) ranges (at most \(NodeInfo.maxRanges))") }
        holds = []
        for _ in 0..<n2 { holds.append(try reader.read(HeldRange.self)) }
        let e = try reader.readLength(minElementSize: 8)
        guard e <= NodeInfo.maxSnapshotEpochs else {
            throw CoreError(.lengthTooLarge, "\(e) snapshot epochs (at most \(NodeInfo.maxSnapshotEpochs))")
        }
        snapshotEpochs = []
        for _ in 0..<e { snapshotEpochs.append(try reader.readU64()) }
    }

    /// The highest checkpoint it says it holds, if any: a claim, never a reason to prefer it.
    public var highestHeld: UInt64? { holds.map(\.highest).max() }

    /// The held ranges as `ClosedRange`s, inverted ones left out (a decoded record has none; one
    /// built in memory might).
    public var heldRanges: [ClosedRange<UInt64>] {
        holds.prefix(NodeInfo.maxRanges).compactMap { $0.lowest <= $0.highest ? $0.lowest...$0.highest : nil }
    }

    /// Splits `HOST:PORT` (IPv6 hosts in brackets); `nil` unless the port is 1...65535 and the host non-empty.
    public static func split(address: String) -> (host: String, port: Int)? {
        guard let colon = address.lastIndex(of: ":"), colon != address.startIndex,
              let port = Int(address[address.index(after: colon)...]), (1...65_535).contains(port)
        else { return nil }
        var host = String(address[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, !host.contains(where: { $0 == " " || $0 == "/" }) else { return nil }
        return (host, port)
    }
}

/// A ``NodeInfo`` with its node's Ed25519 signature over its digest.
public struct SignedNodeInfo: Hashable, Sendable, BCSCodable {
    /// The record.
    public var info: NodeInfo
    /// `info.peerID`'s signature over `digest(info)`.
    public var signature: Signature

    /// The largest encoded record accepted (the handshake's limit too).
    public static let maxBytes = 4_096
    /// How old a record may be before it is dropped: one day.
    public static let maxAgeMs: UInt64 = 86_400_000
    /// How far ahead of the local clock a record may be dated: 30 s.
    public static let maxSkewMs: UInt64 = 30_000

    /// Creates a signed record from its parts.
    public init(info: NodeInfo, signature: Signature) {
        self.info = info
        self.signature = signature
    }

    /// Signs `info` with `key` (whose public key must be `info.peerID`).
    public init(signing info: NodeInfo, with key: SigningKey) {
        precondition(key.publicKey == info.peerID, "a node signs only its own record")
        self.info = info
        self.signature = key.sign(info.digest.bytes)
    }

    /// Writes the record, then the signature.
    public func encode(to writer: inout BCSWriter) {
        writer.write(info)
        writer.write(signature)
    }

    /// Reads the record, then the signature.
    public init(from reader: inout BCSReader) throws(CoreError) {
        info = try reader.read(NodeInfo.self)
        signature = try reader.read(Signature.self)
    }

    /// Decodes and checks a received record: its size, bounds, addresses, signature and age.
    /// - Parameters:
    ///   - bytes: the encoded record (at most ``maxBytes``).
    ///   - nowMs: the local clock, milliseconds since 1970.
    /// - Throws: ``DiscoveryError``.
    public static func verified(_ bytes: [UInt8], nowMs: UInt64) throws(DiscoveryError) -> SignedNodeInfo {
        guard bytes.count <= maxBytes else {
            throw DiscoveryError(.malformed, "a record of \(bytes.count) bytes (at most \(maxBytes))")
        }
        let record: SignedNodeInfo
        do {
            record = try SignedNodeInfo(bcsBytes: bytes)
        } catch {
            throw DiscoveryError(.malformed, "\(error)")
        }
        try record.verify(nowMs: nowMs)
        return record
    }

    /// Checks a decoded record: bounds, addresses, ranges, signature and age (a timestamp of 0
    /// or near `UInt64.max` is stale or future, never an overflow).
    /// - Throws: ``DiscoveryError``.
    public func verify(nowMs: UInt64) throws(DiscoveryError) {
        try verifyContents()
        try SignedNodeInfo.checkAge(info, nowMs: nowMs)
    }

    /// Whether a record signed at `timestampMs` is neither stale nor future at `nowMs`.
    public static func isFresh(timestampMs: UInt64, nowMs: UInt64) -> Bool {
        timestampMs <= nowMs.saturatingAdd(maxSkewMs) && nowMs.saturatingSub(timestampMs) <= maxAgeMs
    }

    static func checkAge(_ info: NodeInfo, nowMs: UInt64) throws(DiscoveryError) {
        if info.timestampMs > nowMs.saturatingAdd(SignedNodeInfo.maxSkewMs) {
            throw DiscoveryError(.future, "the record of \(info.peerID.raw.short) is dated \(info.timestampMs.saturatingSub(nowMs)) ms ahead")
        }
        let age = nowMs.saturatingSub(info.timestampMs)
        if age > SignedNodeInfo.maxAgeMs {
            throw DiscoveryError(.stale, "the record of \(info.peerID.raw.short) is \(age / 1_000) s old")
        }
    }

    /// Checks everything but the age: size, bounds, addresses, ranges (none inverted), signature.
    /// (A stored table's records are checked so when loaded: a file is outside data too.)
    /// - Throws: ``DiscoveryError``.
    public func verifyContents() throws(DiscoveryError) {
        let size = bcsBytes.count
        guard size <= SignedNodeInfo.maxBytes else {
            throw DiscoveryError(.malformed, "a record of \(size) bytes (at most \(SignedNodeInfo.maxBytes))")
        }
        guard info.addresses.count <= NodeInfo.maxAddresses, info.holds.count <= NodeInfo.maxRanges,
              info.snapshotEpochs.count <= NodeInfo.maxSnapshotEpochs
        else { throw DiscoveryError(.malformed, "a record beyond its bounds") }
        for a in info.addresses {
            guard a.utf8.count <= NodeInfo.maxAddressBytes, NodeInfo.split(address: a) != nil else {
                throw DiscoveryError(.malformed, "address \(a.prefix(40)) is not HOST:PORT")
            }
        }
        for r in info.holds where r.lowest > r.highest {
            throw DiscoveryError(.malformed, "range \(r.lowest)...\(r.highest) is inverted")
        }
        guard info.peerID.isValidSignature(signature, for: info.digest.bytes) else {
            throw DiscoveryError(.badSignature, "the record of \(info.peerID.raw.short) is not signed by its key")
        }
    }
}

/// `getKnownPeers` answer: the answering node's own record, then up to ``maxPeers`` it knows.
public struct KnownPeers: Sendable, BCSCodable {
    /// The answering node's record.
    public var own: SignedNodeInfo
    /// Records of other nodes (each still to be verified by the receiver).
    public var peers: [SignedNodeInfo]

    /// The most records besides its own one answer carries.
    public static let maxPeers = 200

    /// Creates an answer.
    public init(own: SignedNodeInfo, peers: [SignedNodeInfo]) {
        self.own = own
        self.peers = peers
    }

    /// Writes own, then the others.
    public func encode(to writer: inout BCSWriter) {
        writer.write(own)
        writer.write(peers)
    }

    /// Reads own, then at most ``maxPeers`` others.
    public init(from reader: inout BCSReader) throws(CoreError) {
        own = try reader.read(SignedNodeInfo.self)
        let n = try reader.readLength(minElementSize: 32 + 1 + 8 + 2 + 1 + 1 + 64)
        guard n <= KnownPeers.maxPeers else { throw CoreError(.lengthTooLarge, "\(n) records (at most \(KnownPeers.maxPeers))") }
        peers = []
        peers.reserveCapacity(n)
        for _ in 0..<n { peers.append(try reader.read(SignedNodeInfo.self)) }
    }
}
