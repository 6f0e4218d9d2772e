import NIOCore
import NIOEmbedded
@testable import SomaNet
import Testing

/// A link that takes the bytes written to it and completes each write only when the test says
/// so (a slow wire): what the scheduler has outstanding stays visible.
final class HeldLink: ChannelOutboundHandler {
    typealias OutboundIn = ByteBuffer
    var held: [(ByteBuffer, EventLoopPromise<Void>?)] = []
    var bytes: [UInt8] = []

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let buffer = unwrapOutboundIn(data)
        bytes += buffer.readableBytesView
        held.append((buffer, promise))
    }

    func flush(context: ChannelHandlerContext) {}

    /// Completes every write held so far.
    func release() {
        let now = held
        held = []
        for (_, p) in now { p?.succeed(()) }
    }

    /// The frames (fragments) written so far, parsed from the bytes.
    func frames() -> [Frame] {
        var buffer = ByteBuffer(bytes: bytes)
        var out: [Frame] = []
        while let length = buffer.readInteger(as: UInt32.self) {
            let kind = FrameKind(rawValue: buffer.readInteger(as: UInt8.self)!)!
            let flags = buffer.readInteger(as: UInt8.self)!
            let method = buffer.readInteger(as: UInt16.self)!
            let id = buffer.readInteger(as: UInt64.self)!
            let payload = buffer.readSlice(length: Int(length) - Frame.headerBytes)!
            out.append(Frame(kind: kind, flags: flags, method: method, requestID: id, payload: payload))
        }
        return out
    }
}

@Suite("The write scheduler: priority classes, fragments, reassembly")
struct SchedulerTests {
    static func sender(_ scheduling: WriteScheduling = WriteScheduling()) throws -> (EmbeddedChannel, HeldLink) {
        let channel = EmbeddedChannel()
        let link = HeldLink()
        try channel.pipeline.syncOperations.addHandler(link)
        try channel.pipeline.syncOperations.addHandler(FrameEncoder())
        try channel.pipeline.syncOperations.addHandler(WriteScheduler(scheduling: scheduling))
        return (channel, link)
    }

    /// A decoder past the handshake's two frames.
    static func receiver(max: Int = 1 << 20) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameBytes: max)))
        for _ in 0..<2 {
            try channel.writeInbound(ByteBuffer(bytes: bytes(Frame(kind: .oneWay, method: 0, requestID: 0, payload: ByteBuffer()))))
            _ = try channel.readInbound(as: Frame.self)
        }
        return channel
    }

    static func bytes(_ frame: Frame) -> [UInt8] {
        var b = ByteBuffer()
        frame.write(into: &b)
        return Array(b.readableBytesView)
    }

    static func block(_ id: UInt64, _ size: Int) -> Frame {
        Frame(kind: .response, method: Method.getBlock.rawValue, requestID: id, payload: ByteBuffer(bytes: (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(id)) }))
    }

    static func vote(_ n: UInt8) -> Frame {
        Frame(kind: .oneWay, method: Method.gossip.rawValue, requestID: 0, payload: ByteBuffer(bytes: [Priority.consensus.rawValue, n, n, n]))
    }

    @Test("the classes: gossip by its first byte, answers of bulk methods bulk, requests and the rest checkpoints")
    func classes() {
        #expect(Priority.of(Self.vote(1)) == .consensus)
        #expect(Priority.of(Frame(kind: .oneWay, method: Method.gossip.rawValue, requestID: 0, payload: ByteBuffer(bytes: [2]))) == .bulk)
        #expect(Priority.of(Frame(kind: .oneWay, method: Method.gossip.rawValue, requestID: 0, payload: ByteBuffer(bytes: [9]))) == .checkpoints)
        #expect(Priority.of(Self.block(1, 10)) == .bulk)
        #expect(Priority.of(Frame(kind: .streamItem, method: Method.getBlocks.rawValue, requestID: 3, payload: ByteBuffer())) == .bulk)
        #expect(Priority.of(Frame(kind: .streamEnd, method: Method.getBlocks.rawValue, requestID: 3, payload: ByteBuffer())) == .bulk)
        #expect(Priority.of(Frame(kind: .request, method: Method.getBlocks.rawValue, requestID: 3, payload: ByteBuffer())) == .checkpoints)
        #expect(Priority.of(Frame(kind: .oneWay, method: Method.pushCheckpoint.rawValue, requestID: 0, payload: ByteBuffer())) == .checkpoints)
        #expect(Priority.of(Frame(kind: .response, method: Method.getAvailability.rawValue, requestID: 3, payload: ByteBuffer())) == .checkpoints)
    }

    @Test("a large frame leaves as fragments of at most 64 KiB, flagged with its class and `more` but the last; the decoder puts it back together, also byte by byte")
    func fragments() throws {
        let (channel, link) = try Self.sender()
        let frame = Self.block(5, 200_000)
        let written = channel.eventLoop.makePromise(of: Void.self)
        channel.writeAndFlush(frame, promise: written)
        var done = false
        written.futureResult.whenSuccess { done = true }
        for _ in 0..<10 { link.release() }
        #expect(done)
        let parts = link.frames()
        #expect(parts.map { $0.payload.readableBytes } == [65_536, 65_536, 65_536, 3_392])
        #expect(parts.map(\.flags) == [0x05, 0x05, 0x05, 0x04])
        #expect(parts.allSatisfy { $0.kind == .response && $0.method == Method.getBlock.rawValue && $0.requestID == 5 })
        for chunked in [false, true] {
            let receiver = try Self.receiver()
            if chunked {
                for b in link.bytes { try receiver.writeInbound(ByteBuffer(bytes: [b])) }
            } else {
                try receiver.writeInbound(ByteBuffer(bytes: link.bytes))
            }
            let whole = try #require(try receiver.readInbound(as: Frame.self))
            #expect(whole.payload == frame.payload && whole.flags == 0x04 && whole.requestID == 5)
            #expect(try receiver.readInbound(as: Frame.self) == nil)
        }
    }

    @Test("an urgent frame written behind a 1 MiB answer waits for one fragment, not the answer; its promise and the answer's complete when each was written")
    func urgentOvertakes() throws {
        let (channel, link) = try Self.sender()
        let big = channel.eventLoop.makePromise(of: Void.self)
        var bigDone = false
        big.futureResult.whenSuccess { bigDone = true }
        channel.writeAndFlush(Self.block(1, 1 << 20), promise: big)
        // One fragment is outstanding: nothing more until the wire takes it.
        #expect(link.frames().count == 1)
        let vote = channel.eventLoop.makePromise(of: Void.self)
        var voteDone = false
        vote.futureResult.whenSuccess { voteDone = true }
        channel.writeAndFlush(Self.vote(7), promise: vote)
        #expect(link.frames().count == 1 && !voteDone)
        link.release()
        let order = link.frames()
        #expect(order.count >= 2 && order[1].method == Method.gossip.rawValue && order[1].flags == 0x00)
        for _ in 0..<40 { link.release() }
        #expect(voteDone && bigDone)
        #expect(link.frames().count == 17)
        // The receiver gets the vote first, then the whole answer.
        let receiver = try Self.receiver(max: 2 << 20)
        try receiver.writeInbound(ByteBuffer(bytes: link.bytes))
        #expect(try receiver.readInbound(as: Frame.self)?.method == Method.gossip.rawValue)
        #expect(try receiver.readInbound(as: Frame.self)?.payload.readableBytes == 1 << 20)
    }

    @Test("bulk is never starved: one bulk fragment after every 8 urgent frames while both wait")
    func quota() throws {
        let (channel, link) = try Self.sender()
        channel.write(Self.block(1, 256 << 10), promise: nil)
        for i in 0..<24 { channel.write(Self.vote(UInt8(i)), promise: nil) }
        channel.flush()
        for _ in 0..<60 { link.release() }
        let classes = link.frames().map { $0.flags >> 1 }
        // Strict priority: the votes first, but each 9th write is a bulk fragment.
        #expect(classes.prefix(9) == [0, 0, 0, 0, 0, 0, 0, 0, 2])
        #expect(classes.filter { $0 == 2 }.count == 4 && classes.filter { $0 == 0 }.count == 24)
    }

    @Test("first in, first out when prioritizing is off: whole frames, in order (the bench's baseline)")
    func fifo() throws {
        var scheduling = WriteScheduling()
        scheduling.prioritize = false
        let (channel, link) = try Self.sender(scheduling)
        channel.write(Self.block(1, 300_000), promise: nil)
        channel.write(Self.vote(1), promise: nil)
        channel.flush()
        for _ in 0..<4 { link.release() }
        let frames = link.frames()
        #expect(frames.map { $0.payload.readableBytes } == [300_000, 4] && frames.allSatisfy { $0.flags == 0x02 })
    }

    @Test("frames still queued when the connection closes fail their promises")
    func closeFailsQueued() throws {
        let (channel, link) = try Self.sender()
        let big = channel.eventLoop.makePromise(of: Void.self)
        var failed = false
        big.futureResult.whenFailure { _ in failed = true }
        channel.writeAndFlush(Self.block(1, 1 << 20), promise: big)
        #expect(link.frames().count == 1)
        _ = try? channel.finish()
        #expect(failed)
    }

    @Test("the decoder refuses a fragment during the handshake, a fragment of another frame, an empty fragment, a reassembly past the limit, class 3 and unknown flag bits; it accepts interleaved classes")
    func refusals() throws {
        func frame(_ flags: UInt8, id: UInt64 = 1, method: UInt16 = 20, size: Int = 100) -> [UInt8] {
            Self.bytes(Frame(kind: .response, flags: flags, method: method, requestID: id, payload: ByteBuffer(bytes: [UInt8](repeating: 1, count: size))))
        }
        func refused(_ stream: [UInt8], handshake: Bool = false, max: Int = 1 << 20, _ why: String) throws {
            let channel = handshake ? EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder(maxFrameBytes: max))) : try Self.receiver(max: max)
            do {
                try channel.writeInbound(ByteBuffer(bytes: stream))
                Issue.record("accepted: \(why)")
            } catch let e as WireError {
                #expect(e.code == .malformedFrame || e.code == .frameTooLarge, "\(why): \(e)")
            }
            _ = try? channel.finish()
        }
        try refused(frame(0x05), handshake: true, "a fragment during the handshake")
        try refused(frame(0x05, id: 1) + frame(0x04, id: 2), "a fragment of another request in the same class")
        try refused(frame(0x05, id: 1) + frame(0x04, method: 25), "a fragment of another method in the same class")
        try refused(frame(0x05, size: 0), "an empty first fragment")
        try refused(frame(0x05) + frame(0x05, size: 0), "an empty middle fragment")
        try refused(frame(0x06), "class 3")
        try refused(frame(0x08), "an unknown flag bit")
        try refused((0..<12).flatMap { _ in frame(0x05, size: 100_000) }, "a reassembly past the 1 MiB limit")
        // Classes interleave: a consensus frame inside a bulk frame's fragments.
        let channel = try Self.receiver()
        try channel.writeInbound(ByteBuffer(bytes: frame(0x05, id: 9) + frame(0x00, id: 0, method: 24, size: 3) + frame(0x04, id: 9)))
        #expect(try channel.readInbound(as: Frame.self)?.method == 24)
        #expect(try channel.readInbound(as: Frame.self)?.payload.readableBytes == 200)
        _ = try channel.finish()
    }
}
