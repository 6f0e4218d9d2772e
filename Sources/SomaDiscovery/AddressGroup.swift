public import SomaCore

/// The network group of an address for discovery (DESIGN §9, as Bitcoin Core's netgroups;
/// coarser than SomaNet's `NetworkGroup` of connection caps, /24 and /48): addresses one
/// operator can easily hold many of share a group, so bounds per group keep one operator from
/// filling the peer table or every outbound slot.
///
/// - IPv4: the /16 (`1.2.0.0/16`); an IPv4-mapped IPv6 address (`::ffff:1.2.3.4`) is its IPv4.
/// - IPv6: the /32.
/// - A host name: its last two labels, lowercased (`a.b.example.com` is `example.com`), since
///   one operator can mint any number of names under its domain.
/// - ``unknown``: an address that does not parse, or none (an inbound connection whose remote
///   address the transport did not give): all of them share one group.
public enum AddressGroup: Hashable, Sendable, Comparable, CustomStringConvertible, BCSCodable {
    /// The first two octets of an IPv4 address.
    case ipv4(UInt16)
    /// The first 32 bits of an IPv6 address.
    case ipv6(UInt32)
    /// The last two labels of a host name (at most 128 bytes).
    case name(String)
    /// No usable address.
    case unknown

    /// The group of `host` (an IP literal or a name, IPv6 with or without brackets).
    public init(host: String) {
        var h = Substring(host)
        if h.hasPrefix("[") && h.hasSuffix("]") { h = h.dropFirst().dropLast() }
        if let zone = h.firstIndex(of: "%") { h = h[..<zone] }
        if let v4 = AddressGroup.parseIPv4(h) {
            self = .ipv4(UInt16(v4[0]) << 8 | UInt16(v4[1]))
        } else if let v6 = AddressGroup.parseIPv6(h) {
            if v6[0...4].allSatisfy({ $0 == 0 }) && v6[5] == 0xFFFF {
                self = .ipv4(v6[6])
            } else {
                self = .ipv6(UInt32(v6[0]) << 16 | UInt32(v6[1]))
            }
        } else {
            let name = h.lowercased().split(separator: ".", omittingEmptySubsequences: true)
            guard !name.isEmpty, h.utf8.count <= NodeInfo.maxAddressBytes else {
                self = .unknown
                return
            }
            self = .name(name.suffix(2).joined(separator: "."))
        }
    }

    /// The group of an advertised `HOST:PORT` address (``unknown`` if it does not parse).
    public init(address: String) {
        guard let (host, _) = NodeInfo.split(address: address) else {
            self = .unknown
            return
        }
        self.init(host: host)
    }

    /// The group of the address an inbound connection came from, as the transport describes it:
    /// `HOST:PORT`, `[V6]:PORT`, a bare IP, or SwiftNIO's `[IPv4]name/1.2.3.4:PORT`
    /// (`nil` or anything else: ``unknown``).
    public init(remoteAddress: String?) {
        guard let remote = remoteAddress, !remote.isEmpty, remote.utf8.count <= 256 else {
            self = .unknown
            return
        }
        var s = Substring(remote)
        for tag in ["[IPv4]", "[IPv6]"] where s.hasPrefix(tag) { s = s.dropFirst(tag.count) }
        if let slash = s.lastIndex(of: "/") { s = s[s.index(after: slash)...] }
        if AddressGroup.parseIPv4(s) != nil || AddressGroup.parseIPv6(s) != nil {
            self.init(host: String(s))
            return
        }
        // HOST:PORT, where an IPv6 host may come without brackets (`::1:8080`).
        guard let colon = s.lastIndex(of: ":"), colon != s.startIndex,
              s[s.index(after: colon)...].allSatisfy({ (c: Character) in c.isNumber })
        else {
            self = .unknown
            return
        }
        let host = String(s[..<colon])
        self.init(host: host)
    }

    /// The groups of a record's addresses (distinct; at most ``NodeInfo/maxAddresses``).
    public static func groups(of info: NodeInfo) -> Set<AddressGroup> {
        Set(info.addresses.prefix(NodeInfo.maxAddresses).map { AddressGroup(address: $0) })
    }

    /// `1.2.0.0/16`, `2001:db8::/32`, `example.com`, `unknown`.
    public var description: String {
        switch self {
        case .ipv4(let p): "\(p >> 8).\(p & 0xFF).0.0/16"
        case .ipv6(let p): "\(String(p >> 16, radix: 16)):\(String(p & 0xFFFF, radix: 16))::/32"
        case .name(let n): n
        case .unknown: "unknown"
        }
    }

    /// Orders by kind, then value (for stable listings).
    public static func < (a: AddressGroup, b: AddressGroup) -> Bool {
        switch (a, b) {
        case (.ipv4(let x), .ipv4(let y)): x < y
        case (.ipv6(let x), .ipv6(let y)): x < y
        case (.name(let x), .name(let y)): x < y
        default: a.rank < b.rank
        }
    }

    private var rank: Int {
        switch self {
        case .ipv4: 0
        case .ipv6: 1
        case .name: 2
        case .unknown: 3
        }
    }

    /// Writes a tag (ipv4 0, ipv6 1, name 2, unknown 3), then the value.
    public func encode(to writer: inout BCSWriter) {
        switch self {
        case .ipv4(let p):
            writer.writeULEB128(0)
            writer.write(p)
        case .ipv6(let p):
            writer.writeULEB128(1)
            writer.write(p)
        case .name(let n):
            writer.writeULEB128(2)
            writer.write(n)
        case .unknown:
            writer.writeULEB128(3)
        }
    }

    /// Reads what ``encode(to:)`` wrote; a name longer than 128 bytes is refused.
    public init(from reader: inout BCSReader) throws(CoreError) {
        switch try reader.readTag(count: 4, type: "AddressGroup") {
        case 0: self = .ipv4(try reader.readU16())
        case 1: self = .ipv6(try reader.readU32())
        case 2:
            let n = try reader.readString()
            guard n.utf8.count <= NodeInfo.maxAddressBytes else {
                throw CoreError(.lengthTooLarge, "a network group name of \(n.utf8.count) bytes")
            }
            self = .name(n)
        default: self = .unknown
        }
    }

    /// The four octets of a dotted IPv4 literal, or `nil`.
    static func parseIPv4(_ s: Substring) -> [UInt8]? {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var out: [UInt8] = []
        for p in parts {
            guard (1...3).contains(p.utf8.count), p.allSatisfy({ $0.isASCII && $0.isNumber }), let v = UInt8(p) else { return nil }
            out.append(v)
        }
        return out
    }

    /// The eight 16-bit groups of an IPv6 literal (`::` compression and a trailing dotted IPv4
    /// allowed), or `nil`.
    static func parseIPv6(_ s: Substring) -> [UInt16]? {
        guard s.contains(":"), s.utf8.count <= 45 else { return nil }
        func groups(_ part: Substring, allowV4: Bool) -> [UInt16]? {
            guard !part.isEmpty else { return [] }
            let fields = part.split(separator: ":", omittingEmptySubsequences: false)
            var out: [UInt16] = []
            for (i, f) in fields.enumerated() {
                if allowV4 && i == fields.count - 1 && f.contains(".") {
                    guard let v4 = parseIPv4(f) else { return nil }
                    out.append(UInt16(v4[0]) << 8 | UInt16(v4[1]))
                    out.append(UInt16(v4[2]) << 8 | UInt16(v4[3]))
                } else {
                    guard (1...4).contains(f.utf8.count), f.allSatisfy(\.isHexDigit), let v = UInt16(f, radix: 16) else { return nil }
                    out.append(v)
                }
            }
            return out
        }
        let halves = s.split(separator: "::", omittingEmptySubsequences: false)
        switch halves.count {
        case 1:
            guard let g = groups(s, allowV4: true), g.count == 8 else { return nil }
            return g
        case 2:
            guard let head = groups(halves[0], allowV4: false),
                  let tail = groups(halves[1], allowV4: true), head.count + tail.count <= 7
            else { return nil }
            return head + Array(repeating: 0, count: 8 - head.count - tail.count) + tail
        default:
            return nil
        }
    }
}
