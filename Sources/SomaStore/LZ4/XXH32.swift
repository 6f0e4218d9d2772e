/// XXH32 (xxHash, 32 bits), the checksum of LZ4 frames: the content checksum over a frame's
/// decompressed bytes and the header checksum over its descriptor (LZ4 frame format §
/// "Frame descriptor" and "Content checksum").
///
/// Why our own: Debian's liblz4 computes it at about 1.6 GB/s on the machines this node is
/// measured on (its loop is vectorized for SSE2, which has no 32-bit multiply), so checking the
/// content checksum cost ten times as much as decompressing. This scalar loop, four lanes of
/// multiply and rotate, runs at memory speed (BENCHMARKS.md). Checked against xxHash's published
/// values and against frames the `lz4` tool writes and reads (LZ4FrameTests).
public enum XXH32 {
    static let p1: UInt32 = 2_654_435_761
    static let p2: UInt32 = 2_246_822_519
    static let p3: UInt32 = 3_266_489_917
    static let p4: UInt32 = 668_265_263
    static let p5: UInt32 = 374_761_393

    @inline(__always)
    static func round(_ acc: UInt32, _ lane: UInt32) -> UInt32 {
        let a = acc &+ lane &* p2
        return ((a << 13) | (a >> 19)) &* p1
    }

    @inline(__always)
    static func rotl(_ x: UInt32, _ r: UInt32) -> UInt32 { (x << r) | (x >> (32 - r)) }

    /// The XXH32 of `bytes` with `seed`.
    public static func hash(_ bytes: UnsafeRawBufferPointer, seed: UInt32 = 0) -> UInt32 {
        let n = bytes.count
        var i = 0
        var h: UInt32
        if n >= 16, let base = bytes.baseAddress {
            var v1 = seed &+ p1 &+ p2
            var v2 = seed &+ p2
            var v3 = seed
            var v4 = seed &- p1
            let last = n - 16
            while i <= last {
                v1 = round(v1, UInt32(littleEndian: base.loadUnaligned(fromByteOffset: i, as: UInt32.self)))
                v2 = round(v2, UInt32(littleEndian: base.loadUnaligned(fromByteOffset: i + 4, as: UInt32.self)))
                v3 = round(v3, UInt32(littleEndian: base.loadUnaligned(fromByteOffset: i + 8, as: UInt32.self)))
                v4 = round(v4, UInt32(littleEndian: base.loadUnaligned(fromByteOffset: i + 12, as: UInt32.self)))
                i += 16
            }
            h = rotl(v1, 1) &+ rotl(v2, 7) &+ rotl(v3, 12) &+ rotl(v4, 18)
        } else {
            h = seed &+ p5
        }
        // The length modulo 2^32, as the reference does.
        h = h &+ UInt32(truncatingIfNeeded: n)
        while i + 4 <= n {
            h = h &+ UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: i, as: UInt32.self)) &* p3
            h = rotl(h, 17) &* p4
            i += 4
        }
        while i < n {
            h = h &+ UInt32(bytes[i]) &* p5
            h = rotl(h, 11) &* p1
            i += 1
        }
        h ^= h >> 15
        h = h &* p2
        h ^= h >> 13
        h = h &* p3
        h ^= h >> 16
        return h
    }

    /// The XXH32 of `bytes` with `seed`.
    public static func hash(_ bytes: [UInt8], seed: UInt32 = 0) -> UInt32 {
        bytes.withUnsafeBytes { hash($0, seed: seed) }
    }
}
