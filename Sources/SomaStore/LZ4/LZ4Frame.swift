import CLZ4

/// Standard LZ4 frames (lz4frame.h), the format of soma-node's blocks and archive files:
/// content size and content checksum set, so `lz4 -d` reads them and a reader knows the exact
/// size before it allocates.
public enum LZ4Frame {
    /// Compresses `input` into one frame with its content size and content checksum.
    /// - Parameter level: 0 is LZ4's fast default; up to 12 for the high-compression mode.
    ///
    /// liblz4 writes the frame without its content checksum, which is then added with
    /// ``XXH32`` (liblz4's own is several times slower here): the descriptor's flag set, its
    /// header checksum computed again, the checksum after the end mark. The same bytes as
    /// liblz4 would write with the checksum on.
    public static func compress(_ input: [UInt8], level: Int32 = 0) -> [UInt8] {
        var prefs = LZ4F_preferences_t()
        prefs.frameInfo.contentSize = UInt64(input.count)
        prefs.frameInfo.contentChecksumFlag = LZ4F_contentChecksumEnabled
        prefs.frameInfo.blockSizeID = LZ4F_max256KB
        prefs.frameInfo.blockMode = LZ4F_blockLinked
        prefs.compressionLevel = level
        let bound = LZ4F_compressFrameBound(input.count, &prefs)
        prefs.frameInfo.contentChecksumFlag = LZ4F_noContentChecksum
        return [UInt8](unsafeUninitializedCapacity: bound) { out, written in
            let n = input.withUnsafeBytes { src in
                LZ4F_compressFrame(out.baseAddress, bound, src.baseAddress, input.count, &prefs)
            }
            // Compressing into a buffer of LZ4F_compressFrameBound bytes (with room for the
            // checksum) cannot fail.
            precondition(LZ4F_isError(n) == 0 && n + 4 <= bound, "LZ4F_compressFrame failed: \(String(cString: LZ4F_getErrorName(n)))")
            // The descriptor after the magic number: FLG, BD, the content size if FLG's C.Size
            // (an empty input declares none), a dictionary id if DictID (never here), then HC.
            out[4] |= flagContentChecksum
            let hc = 6 + (out[4] & 0x08 != 0 ? 8 : 0) + (out[4] & 0x01 != 0 ? 4 : 0)
            out[hc] = headerChecksum(UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: out[4..<hc])))
            let checksum = input.withUnsafeBytes { XXH32.hash($0) }.littleEndian
            withUnsafeBytes(of: checksum) { UnsafeMutableRawBufferPointer(UnsafeMutableBufferPointer(rebasing: out[n..<(n + 4)])).copyMemory(from: $0) }
            written = n + 4
        }
    }

    /// FLG's content-checksum bit (C.Checksum).
    static let flagContentChecksum: UInt8 = 0x04

    /// A frame descriptor's header checksum: the second byte of the XXH32 of its bytes from
    /// FLG up to the checksum.
    static func headerChecksum(_ descriptor: UnsafeRawBufferPointer) -> UInt8 {
        UInt8(truncatingIfNeeded: XXH32.hash(descriptor) >> 8)
    }

    /// The content size a frame declares, or `nil` if it declares none.
    /// - Throws: ``StoreError/Code/corruptFrame`` for a malformed header.
    public static func declaredContentSize(of frame: [UInt8]) throws(StoreError) -> UInt64? {
        let context = try makeContext()
        defer { LZ4F_freeDecompressionContext(context) }
        var info = LZ4F_frameInfo_t()
        var consumed = frame.count
        let r = frame.withUnsafeBytes { LZ4F_getFrameInfo(context, &info, $0.baseAddress, &consumed) }
        guard LZ4F_isError(r) == 0 else {
            throw StoreError(.corruptFrame, "LZ4 frame header: \(String(cString: LZ4F_getErrorName(r)))")
        }
        return info.contentSize == 0 ? nil : info.contentSize
    }

    /// Decompresses exactly one frame holding at most `limit` bytes.
    ///
    /// A frame that declares its content size must declare at most `limit` (checked before
    /// anything is allocated) and produce exactly that many bytes; a frame without one is
    /// decoded in steps and refused as soon as it exceeds `limit`. The content checksum, when
    /// present, is verified (with ``XXH32``; liblz4 checks block checksums, if a frame has
    /// them). Bytes after the frame are refused. `checksum: false` leaves the content checksum
    /// unread: only for the node's own frames whose bytes are checked another way after.
    /// - Throws: ``StoreError/Code/frameTooLarge`` or ``StoreError/Code/corruptFrame``.
    public static func decompress(_ frame: [UInt8], limit: Int, checksum: Bool = true) throws(StoreError) -> [UInt8] {
        let context = try makeContext()
        defer { LZ4F_freeDecompressionContext(context) }
        let result: Result<[UInt8], StoreError> = frame.withUnsafeBytes { src in
            do throws(StoreError) {
                return .success(try decode(src, context: context, limit: limit, checksum: checksum))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    /// ``decompress(_:limit:)`` of a frame in memory the caller owns.
    public static func decompress(_ frame: UnsafeRawBufferPointer, limit: Int, checksum: Bool = true) throws(StoreError) -> [UInt8] {
        let context = try makeContext()
        defer { LZ4F_freeDecompressionContext(context) }
        return try decode(frame, context: context, limit: limit, checksum: checksum)
    }

    private static func errorName(_ code: Int) -> String { String(cString: LZ4F_getErrorName(code)) }

    private static func decode(_ src: UnsafeRawBufferPointer, context: OpaquePointer, limit: Int, checksum: Bool) throws(StoreError) -> [UInt8] {
        guard let base = src.baseAddress, !src.isEmpty else { throw StoreError(.corruptFrame, "empty LZ4 frame") }
        var info = LZ4F_frameInfo_t()
        var offset = src.count
        var hint = LZ4F_getFrameInfo(context, &info, base, &offset)
        guard LZ4F_isError(hint) == 0 else { throw StoreError(.corruptFrame, "LZ4 frame header: \(errorName(hint))") }
        let declared = info.contentSize
        // The content checksum is checked below with XXH32: liblz4 only reads it. Block
        // checksums (which this node never writes) are left to liblz4.
        let ownChecksum = info.blockChecksumFlag == LZ4F_noBlockChecksum
        var options = LZ4F_decompressOptions_t()
        options.skipChecksums = ownChecksum ? 1 : 0
        guard declared <= UInt64(limit) else {
            throw StoreError(.frameTooLarge, "LZ4 frame declares \(declared) bytes, the limit is \(limit)")
        }
        // With a declared size, decode straight into an exact buffer; without, in steps that
        // stop as soon as the output would pass the limit.
        let capacity = declared > 0 ? Int(declared) : limit
        var out = [UInt8]()
        out.reserveCapacity(declared > 0 ? Int(declared) : min(limit, 1 << 20))
        var scratch = [UInt8](repeating: 0, count: declared > 0 ? 0 : min(capacity + 1, 256 << 10))
        var produced = 0
        var failure: StoreError? = nil
        if declared > 0 {
            out = [UInt8](unsafeUninitializedCapacity: capacity) { buffer, initialized in
                while hint != 0 {
                    var dstSize = capacity - produced
                    var srcSize = src.count - offset
                    hint = LZ4F_decompress(context, buffer.baseAddress! + produced, &dstSize, base + offset, &srcSize, &options)
                    if LZ4F_isError(hint) != 0 {
                        failure = StoreError(.corruptFrame, "LZ4 frame at byte \(offset): \(errorName(hint))")
                        break
                    }
                    offset += srcSize
                    produced += dstSize
                    if hint != 0 && srcSize == 0 && dstSize == 0 {
                        failure = StoreError(.corruptFrame, produced == capacity
                            ? "LZ4 frame holds more than the \(declared) bytes it declares"
                            : "LZ4 frame is truncated after \(offset) bytes")
                        break
                    }
                }
                initialized = produced
            }
        } else {
            while hint != 0 {
                var dstSize = scratch.count
                var srcSize = src.count - offset
                hint = scratch.withUnsafeMutableBytes { dst in
                    LZ4F_decompress(context, dst.baseAddress, &dstSize, base + offset, &srcSize, &options)
                }
                guard LZ4F_isError(hint) == 0 else {
                    throw StoreError(.corruptFrame, "LZ4 frame at byte \(offset): \(errorName(hint))")
                }
                offset += srcSize
                produced += dstSize
                guard produced <= limit else {
                    throw StoreError(.frameTooLarge, "LZ4 frame holds more than the limit of \(limit) bytes")
                }
                out.append(contentsOf: scratch[0..<dstSize])
                if hint != 0 && srcSize == 0 && dstSize == 0 {
                    throw StoreError(.corruptFrame, "LZ4 frame is truncated after \(offset) bytes")
                }
            }
        }
        if let failure { throw failure }
        if declared > 0 && UInt64(produced) != declared {
            throw StoreError(.corruptFrame, "LZ4 frame holds \(produced) bytes, it declares \(declared)")
        }
        guard offset == src.count else {
            throw StoreError(.corruptFrame, "\(src.count - offset) bytes after the LZ4 frame")
        }
        if checksum && ownChecksum && info.contentChecksumFlag == LZ4F_contentChecksumEnabled {
            // The frame ends with the content checksum (after the end mark, which liblz4 read).
            guard src.count >= 4 else { throw StoreError(.corruptFrame, "LZ4 frame is truncated before its content checksum") }
            let stored = UInt32(littleEndian: src.loadUnaligned(fromByteOffset: src.count - 4, as: UInt32.self))
            guard out.withUnsafeBytes({ XXH32.hash($0) }) == stored else {
                throw StoreError(.corruptFrame, "LZ4 frame at byte \(src.count - 4): ERROR_contentChecksum_invalid")
            }
        }
        return out
    }

    private static func makeContext() throws(StoreError) -> OpaquePointer {
        var context: OpaquePointer? = nil
        let r = LZ4F_createDecompressionContext(&context, UInt32(LZ4F_VERSION))
        guard LZ4F_isError(r) == 0, let context else {
            throw StoreError(.corruptFrame, "cannot create an LZ4 decompression context")
        }
        return context
    }
}
