import SomaCore
import Testing

// The example types of the BCS specification (the `bcs` crate's README and tests).
private struct MyStruct: BCSCodable, Equatable {
    var boolean: Bool
    var bytes: [UInt8]
    var label: String
    func encode(to w: inout BCSWriter) {
        w.write(boolean)
        w.writeBytes(bytes)
        w.write(label)
    }
    init(boolean: Bool, bytes: [UInt8], label: String) {
        self.boolean = boolean
        self.bytes = bytes
        self.label = label
    }
    init(from r: inout BCSReader) throws(CoreError) {
        boolean = try r.readBool()
        bytes = try r.readBytes()
        label = try r.readString()
    }
}

private struct Wrapper: BCSCodable, Equatable {
    var inner: MyStruct
    var name: String
    func encode(to w: inout BCSWriter) {
        w.write(inner)
        w.write(name)
    }
    init(inner: MyStruct, name: String) {
        self.inner = inner
        self.name = name
    }
    init(from r: inout BCSReader) throws(CoreError) {
        inner = try r.read(MyStruct.self)
        name = try r.readString()
    }
}

private enum E: BCSCodable, Equatable {
    case variant0(UInt16)
    case variant1(UInt8)
    case variant2(String)
    func encode(to w: inout BCSWriter) {
        switch self {
        case .variant0(let v): w.writeULEB128(0); w.write(v)
        case .variant1(let v): w.writeULEB128(1); w.write(v)
        case .variant2(let v): w.writeULEB128(2); w.write(v)
        }
    }
    init(from r: inout BCSReader) throws(CoreError) {
        switch try r.readTag(count: 3, type: "E") {
        case 0: self = .variant0(try r.readU16())
        case 1: self = .variant1(try r.readU8())
        default: self = .variant2(try r.readString())
        }
    }
}

/// `Service { ip: [u8; 4], port: Vec<u16>, connection_max: Option<u32>, enabled: bool }`.
private struct Service: BCSCodable, Equatable {
    var ip: [UInt8]
    var ports: [UInt16]
    var connectionMax: UInt32?
    var enabled: Bool
    func encode(to w: inout BCSWriter) {
        w.writeRaw(ip)
        w.writeLength(ports.count)
        for p in ports { w.write(p) }
        if let c = connectionMax { w.write(UInt8(1)); w.write(c) } else { w.write(UInt8(0)) }
        w.write(enabled)
    }
    init(ip: [UInt8], ports: [UInt16], connectionMax: UInt32?, enabled: Bool) {
        self.ip = ip
        self.ports = ports
        self.connectionMax = connectionMax
        self.enabled = enabled
    }
    init(from r: inout BCSReader) throws(CoreError) {
        ip = try r.readRaw(count: 4)
        let n = try r.readLength(minElementSize: 2)
        ports = []
        for _ in 0..<n { ports.append(try r.readU16()) }
        connectionMax = try r.readOptionTag() ? try r.readU32() : nil
        enabled = try r.readBool()
    }
}

private func encoded(_ body: (inout BCSWriter) -> Void) -> [UInt8] {
    var w = BCSWriter()
    body(&w)
    return w.bytes
}

@Suite("BCS: specification vectors and strict decoding")
struct BCSTests {
    static let ulebVectors: [(UInt64, [UInt8])] = [
        (0, [0x00]), (1, [0x01]), (127, [0x7f]), (128, [0x80, 0x01]), (9_487, [0x8f, 0x4a]),
        (16_383, [0xff, 0x7f]), (16_384, [0x80, 0x80, 0x01]), (2_097_152, [0x80, 0x80, 0x80, 0x01]),
        (268_435_456, [0x80, 0x80, 0x80, 0x80, 0x01]), (UInt64(UInt32.max), [0xff, 0xff, 0xff, 0xff, 0x0f]),
        (UInt64.max, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
    ]

    @Test("ULEB128 values of the specification", arguments: BCSTests.ulebVectors)
    func uleb128(value: UInt64, bytes: [UInt8]) throws {
        #expect(encoded { $0.writeULEB128(value) } == bytes)
        let back = try BCS.read(from: bytes[...]) { (r: inout BCSReader) throws(CoreError) in try r.readULEB128() }
        #expect(back == value)
    }

    @Test("integers, bool, option, sequences and strings of the specification")
    func primitives() throws {
        #expect(encoded { $0.write(true) } == [1])
        #expect(encoded { $0.write(false) } == [0])
        #expect(encoded { $0.write(UInt16(4660)) } == [0x34, 0x12])
        #expect(encoded { $0.write(UInt32(305_419_896)) } == [0x78, 0x56, 0x34, 0x12])
        #expect(encoded { $0.write(UInt64(0x1234_5678_90ab_cdef)) } == [0xef, 0xcd, 0xab, 0x90, 0x78, 0x56, 0x34, 0x12])
        // Option<u8>: Some(8) and None.
        #expect(encoded { $0.write(UInt8(1)); $0.write(UInt8(8)) } == [1, 8])
        // Vec<u16> [1, 2] and the length of a vector of 9,487 units.
        #expect(encoded { $0.writeLength(2); $0.write(UInt16(1)); $0.write(UInt16(2)) } == [2, 1, 0, 2, 0])
        #expect(encoded { $0.writeLength(9_487) } == [0x8f, 0x4a])
        // The specification's UTF-8 string.
        let s = "çå∞≠¢õß∂ƒ∫"
        let expected: [UInt8] = [24, 0xc3, 0xa7, 0xc3, 0xa5, 0xe2, 0x88, 0x9e, 0xe2, 0x89, 0xa0, 0xc2, 0xa2, 0xc3, 0xb5,
                                 0xc3, 0x9f, 0xe2, 0x88, 0x82, 0xc6, 0x92, 0xe2, 0x88, 0xab]
        #expect(encoded { $0.write(s) } == expected)
        #expect(try BCS.read(from: expected[...]) { (r: inout BCSReader) throws(CoreError) in try r.readString() } == s)
        // A Digest and a u64 through the public protocol.
        let d = Digest(bytes: (0..<32).map { UInt8($0) })!
        #expect(d.bcsBytes == (0..<32).map { UInt8($0) })
        #expect(try Digest(bcsBytes: d.bcsBytes) == d)
        #expect(UInt64(7).bcsBytes == [7, 0, 0, 0, 0, 0, 0, 0])
    }

    @Test("structs, enums and the service example of the specification")
    func composites() throws {
        let s = MyStruct(boolean: true, bytes: [0xC0, 0xDE], label: "a")
        #expect(s.bcsBytes == [1, 2, 0xC0, 0xDE, 1, UInt8(ascii: "a")])
        let w = Wrapper(inner: s, name: "b")
        #expect(w.bcsBytes == [1, 2, 0xC0, 0xDE, 1, UInt8(ascii: "a"), 1, UInt8(ascii: "b")])
        #expect(try Wrapper(bcsBytes: w.bcsBytes) == w)
        #expect(E.variant0(8000).bcsBytes == [0, 0x40, 0x1F])
        #expect(E.variant1(255).bcsBytes == [1, 0xFF])
        #expect(E.variant2("e").bcsBytes == [2, 1, UInt8(ascii: "e")])
        for e in [E.variant0(8000), .variant1(255), .variant2("e")] { #expect(try E(bcsBytes: e.bcsBytes) == e) }
        let service = Service(ip: [192, 168, 1, 1], ports: [8001, 8002, 8003], connectionMax: 5000, enabled: false)
        let bytes: [UInt8] = [0xc0, 0xa8, 0x01, 0x01, 0x03, 0x41, 0x1f, 0x42, 0x1f, 0x43, 0x1f, 0x01, 0x88, 0x13, 0x00, 0x00, 0x00]
        #expect(service.bcsBytes == bytes)
        #expect(try Service(bcsBytes: bytes) == service)
    }

    @Test("rejects truncated input at every cut")
    func truncated() {
        let w = Wrapper(inner: MyStruct(boolean: true, bytes: [1, 2, 3], label: "hello"), name: "world").bcsBytes
        for cut in 0..<w.count {
            expectCode([0, 1, 5, 11].contains(cut) ? .truncated : .lengthTooLarge, "cut at \(cut)") {
                _ = try Wrapper(bcsBytes: Array(w.prefix(cut)))
            }
        }
    }

    @Test("rejects trailing bytes")
    func trailing() {
        let bytes = MyStruct(boolean: false, bytes: [], label: "").bcsBytes + [0]
        expectCode(.trailingBytes) { _ = try MyStruct(bcsBytes: bytes) }
    }

    static let badULEBVectors: [([UInt8], CoreError.Code)] = [
        ([0x80, 0x00], .nonCanonicalULEB128),
        ([0x81, 0x80, 0x00], .nonCanonicalULEB128),
        ([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02], .overlongULEB128),
        ([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01], .overlongULEB128),
        ([0x80, 0x80], .truncated),
    ]

    @Test("rejects over-long and non-canonical ULEB128", arguments: BCSTests.badULEBVectors)
    func badULEB(bytes: [UInt8], code: CoreError.Code) {
        expectCode(code) { _ = try BCS.read(from: bytes[...]) { (r: inout BCSReader) throws(CoreError) in try r.readULEB128() } }
    }

    @Test("enum tags beyond u32 are over-long")
    func tagBeyondU32() {
        expectCode(.overlongULEB128) { _ = try E(bcsBytes: [0x80, 0x80, 0x80, 0x80, 0x10]) }
    }

    @Test("a length prefix of 2^60 is rejected before anything is allocated")
    func hugeLength() {
        var w = BCSWriter()
        w.writeULEB128(1 << 60)
        let prefix = w.bytes
        expectCode(.lengthTooLarge) { _ = try BCS.read(from: (prefix + [1, 2, 3])[...]) { (r: inout BCSReader) throws(CoreError) in try r.readBytes() } }
        expectCode(.lengthTooLarge) { _ = try CheckpointData(bcsBytes: [0, 0, 0, 0, 0, 0, 0, 0] + prefix) }
        expectCode(.lengthTooLarge) { _ = try Object(bcsBytes: [UInt8](repeating: 0, count: 40) + [2] + prefix + [0]) }
        // A length the input could back in count but not in element size.
        expectCode(.lengthTooLarge) {
            _ = try BCS.read(from: ([40] + [UInt8](repeating: 0, count: 40))[...]) { (r: inout BCSReader) throws(CoreError) in
                try r.readVector(Digest.self, minElementSize: 32)
            }
        }
        // Just beyond the BCS maximum (2^31 - 1).
        var w2 = BCSWriter()
        w2.writeULEB128(1 << 31)
        expectCode(.lengthTooLarge) { _ = try BCS.read(from: w2.bytes[...]) { (r: inout BCSReader) throws(CoreError) in try r.readBytes() } }
    }

    @Test("rejects unknown enum tags of every chain enum")
    func unknownTags() throws {
        expectCode(.unknownTag) { _ = try E(bcsBytes: [3, 0]) }
        expectCode(.unknownTag) { _ = try Owner(bcsBytes: [3]) }
        expectCode(.unknownTag) { _ = try ObjectOutput(bcsBytes: [2]) }
        expectCode(.unknownTag) { _ = try ExecutionStatus(bcsBytes: [2, 0, 0, 0, 0]) }
        #expect(try Owner(bcsBytes: [2]) == .immutable)
        #expect(try Owner(bcsBytes: [1, 5, 0, 0, 0, 0, 0, 0, 0]) == .shared(initialVersion: 5))
    }

    @Test("rejects Option tags other than 0 and 1, and bools other than 0 and 1")
    func optionAndBool() {
        let change = ObjectChange(id: .zero, input: nil, output: .deleted).bcsBytes
        var bad = change
        bad[32] = 2
        expectCode(.invalidOptionTag) { _ = try ObjectChange(bcsBytes: bad) }
        expectCode(.invalidBool) { _ = try MyStruct(bcsBytes: [2, 0, 0]) }
    }

    @Test("rejects invalid UTF-8", arguments: [[UInt8(0xff)], [0xc3], [0xed, 0xa0, 0x80], [0xc0, 0xaf]])
    func invalidUTF8(bytes: [UInt8]) {
        expectCode(.invalidUTF8) { _ = try MyStruct(bcsBytes: [1, 0, UInt8(bytes.count)] + bytes) }
    }

    @Test("writer and reader agree on every chain type")
    func chainRoundTrips() throws {
        let key = try SigningKey(seed: [UInt8](repeating: 7, count: 32))
        let object = Object(id: Hashing.sha256([1]), version: 3, owner: .shared(initialVersion: 2), typeTag: "0x2::x::Y",
                            contents: [1, 2, 3], previousTransaction: Hashing.sha256([2]))
        let data = TransactionData(sender: key.publicKey.address, kind: 1, inputs: [object.reference], payload: [9], gasBudget: 5)
        let tx = Transaction.signed(data, by: key)
        let effects = TransactionEffects(
            transactionDigest: tx.digest, status: .failure(code: 4), executedEpoch: 1, gasUsed: 2,
            changes: [ObjectChange(id: object.id, input: VersionDigest(version: 3, digest: object.digest), output: .deleted)],
            dependencies: [Hashing.sha256([3])])
        let entry = ExecutionData(transaction: tx, effects: effects, outputObjects: [object])
        let checkpoint = CheckpointData(sequenceNumber: 9, entries: [entry, entry])
        #expect(try CheckpointData(bcsBytes: checkpoint.bcsBytes) == checkpoint)
        let committee = Committee(epoch: 1, members: [Member(name: key.publicKey, votingPower: 10_000, address: "a:1")])
        let summary = CheckpointSummary(
            epoch: 1, sequenceNumber: 9, networkTotalTransactions: 20, contentDigest: .zero, previousDigest: Hashing.sha256([4]),
            timestampMs: 5, endOfEpoch: EndOfEpochData(nextCommittee: committee, stateRoot: .zero, liveObjectCount: 3),
            protocolVersion: 1)
        let cert = QuorumCertificate.sign(summary.signingMessage, committee: committee, keys: [key])
        let certified = CertifiedCheckpointSummary(summary: summary, certificate: cert)
        #expect(try CertifiedCheckpointSummary(bcsBytes: certified.bcsBytes) == certified)
        #expect(object.reference.bcsBytes.count == ObjectRef.encodedSize)
        #expect(object.reference.leafHash == Hashing.leafHash(object.reference.bcsBytes))
        #expect(entry.leaf.leafHash == Hashing.leafHash(entry.leaf.bcsBytes))
        #expect(Hashing.sha256(domain: .object, object.bcsBytes) == object.digest)
        #expect(Hashing.sha256(Array("Object::".utf8) + object.bcsBytes) == object.digest)
    }
}
