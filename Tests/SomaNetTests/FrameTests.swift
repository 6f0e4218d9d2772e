import NIOCore
import NIOEmbedded
import SomaCore
import SomaNet
import Testing

@Suite("Frames: layout, limits before allocation, malformed input")
struct FrameTests {
    static func channel(max: Int = 1 << 20) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameBytes: max)))
        try channel.pipeline.syncOperations.addHandler(FrameEncoder())
        return channel
    }

    static func bytes(_ frame: Frame) -> [UInt8] {
        var b = ByteBuffer()
        frame.write(into: &b)
        return Array(b.readableBytesView)
    }

    @Test("the header layout is u32 length, u8 kind, u8 flags, u16 method, u64 request id, big-endian")
    func layout() {
        let frame = Frame(kind: .response, method: 0x0102, requestID: 0x0304_0506_0708_090a, payload: ByteBuffer(bytes: [0xAA, 0xBB]))
        #expect(Self.bytes(frame) == [0, 0, 0, 14, 1, 0, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0xAA, 0xBB])
    }

    @Test("frames round-trip whole, and byte by byte")
    func roundTrip() throws {
        let channel = try Self.channel()
        let frames = (0..<5).map { i in
            Frame(kind: FrameKind.allCases[i % 6], method: UInt16(16 + i), requestID: UInt64(i), payload: ByteBuffer(bytes: Array(repeating: UInt8(i), count: i * 100)))
        }
        var all: [UInt8] = []
        for f in frames { all += Self.bytes(f) }
        for b in all { try channel.writeInbound(ByteBuffer(bytes: [b])) }
        for f in frames { #expect(try channel.readInbound(as: Frame.self) == f) }
        #expect(try channel.readInbound(as: Frame.self) == nil)
        try channel.writeOutbound(frames[3])
        // The header and the payload leave as two buffers (one vectored write), unchanged.
        var written: [UInt8] = []
        while let b = try channel.readOutbound(as: ByteBuffer.self) { written += Array(b.readableBytesView) }
        #expect(written == Self.bytes(frames[3]))
        _ = try channel.finish()
    }

    @Test("a declared length over the limit, e.g. 4 GiB, is refused from the 4 length bytes alone")
    func tooLarge() throws {
        for declared in [UInt32.max, UInt32(1 << 20) + 1] {
            let channel = try Self.channel()
            // Past the handshake's two frames, the configured limit holds.
            for _ in 0..<2 { try channel.writeInbound(ByteBuffer(bytes: Self.bytes(Frame(kind: .oneWay, method: 0, requestID: 0, payload: ByteBuffer())))) }
            _ = try channel.readInbound(as: Frame.self)
            _ = try channel.readInbound(as: Frame.self)
            #expect(throws: WireError(.frameTooLarge, "frame of \(declared) bytes, the limit is \(1 << 20)")) {
                var b = ByteBuffer()
                b.writeInteger(declared)
                try channel.writeInbound(b)
            }
            _ = try? channel.finish()
        }
    }

    @Test("the first two frames (hello and proof) are held to a hello's largest size, 4,214 bytes")
    func handshakeLimit() throws {
        let channel = try Self.channel()
        let hello = Frame(kind: .oneWay, method: 0, requestID: 0, payload: ByteBuffer(bytes: [UInt8](repeating: 1, count: Hello.maxEncodedBytes)))
        try channel.writeInbound(ByteBuffer(bytes: Self.bytes(hello)))
        #expect(try channel.readInbound(as: Frame.self) == hello)
        #expect(throws: WireError(.frameTooLarge, "frame of 4215 bytes, the limit during the handshake is 4214")) {
            var b = ByteBuffer()
            b.writeInteger(UInt32(4_215))
            try channel.writeInbound(b)
        }
        _ = try? channel.finish()
    }

    @Test("short lengths, unknown kinds, unknown flags and truncated frames are malformed")
    func malformed() throws {
        let cases: [[UInt8]] = [
            [0, 0, 0, 11] + Array(repeating: 0, count: 11),
            [0, 0, 0, 12, 9, 0, 0, 0] + Array(repeating: 0, count: 8),
            [0, 0, 0, 12, 0, 1, 0, 0] + Array(repeating: 0, count: 8),
        ]
        for bytes in cases {
            let channel = try Self.channel()
            do {
                try channel.writeInbound(ByteBuffer(bytes: bytes))
                Issue.record("accepted \(bytes)")
            } catch let e as WireError {
                #expect(e.code == .malformedFrame)
            }
            _ = try? channel.finish()
        }
        let channel = try Self.channel()
        try channel.writeInbound(ByteBuffer(bytes: [0, 0, 0, 20, 0, 0]))
        #expect(try channel.readInbound(as: Frame.self) == nil)
        do {
            _ = try channel.finish()
            Issue.record("a truncated frame at the end of the stream was accepted")
        } catch let e as WireError {
            #expect(e.code == .malformedFrame)
        }
    }
}
