public import NIOCore

/// What a frame carries.
public enum FrameKind: UInt8, Sendable, CaseIterable {
    /// A request; the response carries the same request id.
    case request = 0
    /// A successful response.
    case response = 1
    /// An error response (payload: ``RPCError``).
    case error = 2
    /// A message that expects no response.
    case oneWay = 3
    /// One item of a streamed response.
    case streamItem = 4
    /// The end of a streamed response.
    case streamEnd = 5
}

/// The bits of a frame's flags byte (protocol version 3).
public enum FrameFlags {
    /// Bit 0: this frame is a fragment and more fragments of the same frame follow.
    public static let more: UInt8 = 0x01
    /// Bits 1–2: the frame's ``Priority`` (0, 1 or 2; 3 is invalid).
    public static let priorityMask: UInt8 = 0x06
    /// Where the priority starts.
    public static let priorityShift: UInt8 = 1
    /// Every defined bit; the others must be zero.
    public static let defined: UInt8 = 0x07
}

/// One frame of the protocol (DESIGN §8):
/// `u32 length ‖ u8 kind ‖ u8 flags ‖ u16 method ‖ u64 requestID ‖ payload`, big-endian header,
/// where `length` counts every byte after itself (12 + payload).
public struct Frame: Sendable, Equatable {
    /// Bytes of the header after the length field.
    public static let headerBytes = 12

    /// What the frame carries.
    public var kind: FrameKind
    /// ``FrameFlags``: the priority class, and `more` on every fragment but a frame's last
    /// (set by the sender's scheduler; a decoded frame is whole, its `more` bit clear).
    public var flags: UInt8
    /// The RPC method.
    public var method: UInt16
    /// The request id this frame belongs to.
    public var requestID: UInt64
    /// The BCS payload.
    public var payload: ByteBuffer

    /// Creates a frame.
    public init(kind: FrameKind, flags: UInt8 = 0, method: UInt16, requestID: UInt64, payload: ByteBuffer) {
        self.kind = kind
        self.flags = flags
        self.method = method
        self.requestID = requestID
        self.payload = payload
    }

    /// Writes the frame, header and payload, into `buffer`.
    public func write(into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt32(Frame.headerBytes + payload.readableBytes))
        buffer.writeInteger(kind.rawValue)
        buffer.writeInteger(flags)
        buffer.writeInteger(method)
        buffer.writeInteger(requestID)
        var p = payload
        buffer.writeBuffer(&p)
    }
}

/// Splits a byte stream into frames. The declared length is checked against the limit (and the
/// header's minimum) before a byte of the payload is buffered for it; the payload is a slice of
/// the read buffer, not a copy. The first ``handshakeFrames`` frames (a peer's hello and proof)
/// are held to ``handshakeFrameBytes``, a hello's largest size, and may not be fragments, so that
/// a peer that has not proven anything cannot make the node buffer a large frame.
///
/// Fragments (flag `more`, ``WriteScheduler``) are put back together: at most one partly
/// received frame per priority class, each fragment of the same kind, method and request id as
/// the first, the whole held to `maxFrameBytes` like an unfragmented frame (and all partial
/// frames of a connection together to twice that). Anything else closes the connection.
public struct FrameDecoder: ByteToMessageDecoder {
    /// Frames.
    public typealias InboundOut = Frame

    /// Frames of the handshake: the hello and the proof.
    public static let handshakeFrames = 2
    /// The largest frame (length field) accepted during the handshake: a header and the largest hello.
    public static let handshakeFrameBytes = Frame.headerBytes + Hello.maxEncodedBytes

    /// The largest frame accepted (length field value) after the handshake's frames; a
    /// fragmented frame's payloads together are held to the same bound.
    public let maxFrameBytes: Int
    private var decoded = 0
    /// The frame being reassembled in each priority class.
    private var partial: [Frame?] = [nil, nil, nil]
    private var partialBytes = 0

    /// A decoder with a frame-size limit.
    public init(maxFrameBytes: Int) {
        self.maxFrameBytes = maxFrameBytes
    }

    /// Decodes one frame if a whole one is buffered.
    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try next(&buffer) else { return .needMoreData }
        if let whole = try assemble(frame) {
            context.fireChannelRead(wrapInboundOut(whole))
        }
        return .continue
    }

    /// The next frame (or fragment) in `buffer`, checked, or `nil` when it is not all there.
    mutating func next(_ buffer: inout ByteBuffer) throws -> Frame? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        guard length >= UInt32(Frame.headerBytes) else {
            throw WireError(.malformedFrame, "frame length \(length) is shorter than its header")
        }
        let limit = decoded < FrameDecoder.handshakeFrames ? min(maxFrameBytes, FrameDecoder.handshakeFrameBytes) : maxFrameBytes
        guard Int(length) <= limit else {
            let during = decoded < FrameDecoder.handshakeFrames ? " during the handshake" : ""
            throw WireError(.frameTooLarge, "frame of \(length) bytes, the limit\(during) is \(limit)")
        }
        guard buffer.readableBytes >= 4 + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 4)
        guard let rawKind = buffer.readInteger(as: UInt8.self), let flags = buffer.readInteger(as: UInt8.self),
              let method = buffer.readInteger(as: UInt16.self), let requestID = buffer.readInteger(as: UInt64.self),
              let payload = buffer.readSlice(length: Int(length) - Frame.headerBytes)
        else { throw WireError(.malformedFrame, "frame shorter than its length") }
        let handshake = decoded < FrameDecoder.handshakeFrames
        if handshake { decoded += 1 }
        guard let kind = FrameKind(rawValue: rawKind) else {
            throw WireError(.malformedFrame, "unknown frame kind \(rawKind)")
        }
        guard flags & ~FrameFlags.defined == 0, flags & FrameFlags.priorityMask != FrameFlags.priorityMask else {
            throw WireError(.malformedFrame, "unknown frame flags \(flags)")
        }
        guard !handshake || flags & FrameFlags.more == 0 else {
            throw WireError(.malformedFrame, "a fragment during the handshake")
        }
        return Frame(kind: kind, flags: flags, method: method, requestID: requestID, payload: payload)
    }

    /// A whole frame: `frame` itself, or the frame its fragments make once the last arrives
    /// (`nil` before that).
    mutating func assemble(_ frame: Frame) throws -> Frame? {
        let priority = Int((frame.flags & FrameFlags.priorityMask) >> FrameFlags.priorityShift)
        let more = frame.flags & FrameFlags.more != 0
        guard var whole = partial[priority] else {
            guard more else { return frame }
            guard frame.payload.readableBytes > 0 else { throw WireError(.malformedFrame, "an empty fragment") }
            // The first fragment: its bytes are copied into a buffer of their own (the read
            // buffer moves on), which grows with the fragments that follow.
            guard partialBytes + frame.payload.readableBytes <= 2 * maxFrameBytes else {
                throw WireError(.frameTooLarge, "fragmented frames in progress hold more than \(2 * maxFrameBytes) bytes")
            }
            var first = frame
            var copy = ByteBuffer()
            copy.reserveCapacity(frame.payload.readableBytes * 2)
            var payload = frame.payload
            copy.writeBuffer(&payload)
            first.payload = copy
            first.flags &= ~FrameFlags.more
            partial[priority] = first
            partialBytes += first.payload.readableBytes
            return nil
        }
        guard frame.kind == whole.kind, frame.method == whole.method, frame.requestID == whole.requestID else {
            throw WireError(.malformedFrame, "a fragment of another frame (kind \(frame.kind.rawValue), method \(frame.method), request \(frame.requestID)) inside a fragmented frame of class \(priority)")
        }
        guard more == false || frame.payload.readableBytes > 0 else { throw WireError(.malformedFrame, "an empty fragment") }
        let size = frame.payload.readableBytes
        guard whole.payload.readableBytes + size <= maxFrameBytes - Frame.headerBytes else {
            throw WireError(.frameTooLarge, "a fragmented frame past \(maxFrameBytes) bytes")
        }
        guard partialBytes + size <= 2 * maxFrameBytes else {
            throw WireError(.frameTooLarge, "fragmented frames in progress hold more than \(2 * maxFrameBytes) bytes")
        }
        partial[priority] = nil
        var payload = frame.payload
        whole.payload.writeBuffer(&payload)
        if more {
            partial[priority] = whole
            partialBytes += size
            return nil
        }
        partialBytes -= whole.payload.readableBytes - size
        return whole
    }

    /// At the end of the stream, leftover bytes are a truncated frame.
    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        if buffer.readableBytes > 0 {
            throw WireError(.malformedFrame, "connection closed inside a frame (\(buffer.readableBytes) bytes left)")
        }
        return .needMoreData
    }
}

/// Writes frames: the 16-byte header, then the payload buffer as it is (no copy; the
/// channel writes both with one vectored write).
public final class FrameEncoder: ChannelOutboundHandler {
    /// Frames.
    public typealias OutboundIn = Frame
    /// Bytes.
    public typealias OutboundOut = ByteBuffer

    /// An encoder.
    public init() {}

    /// Writes one frame.
    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let frame = unwrapOutboundIn(data)
        var header = context.channel.allocator.buffer(capacity: 16)
        header.writeInteger(UInt32(Frame.headerBytes + frame.payload.readableBytes))
        header.writeInteger(frame.kind.rawValue)
        header.writeInteger(frame.flags)
        header.writeInteger(frame.method)
        header.writeInteger(frame.requestID)
        if frame.payload.readableBytes == 0 {
            context.write(wrapOutboundOut(header), promise: promise)
        } else {
            context.write(wrapOutboundOut(header), promise: nil)
            context.write(wrapOutboundOut(frame.payload), promise: promise)
        }
    }
}
