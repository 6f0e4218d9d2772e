import Foundation
import SomaCore
import SomaStore
import SomaTestSupport
import Testing

@Suite("LZ4 frames: round trips, limits, corruption and interoperability with the lz4 tool")
struct LZ4Tests {
    static func sample(_ n: Int) -> [UInt8] {
        (0..<n).map { i in i % 7 == 0 ? UInt8(truncatingIfNeeded: i &* 31) : UInt8(i % 13) }
    }

    @Test("round trips of many sizes; the frame declares its size and a checksum", arguments: [0, 1, 100, 65_536, 300_000, 2_000_000])
    func roundTrip(size: Int) throws {
        let data = Self.sample(size)
        let frame = LZ4Frame.compress(data)
        #expect(Array(frame.prefix(4)) == [0x04, 0x22, 0x4d, 0x18])
        if size > 0 { #expect(try LZ4Frame.declaredContentSize(of: frame) == UInt64(size)) }
        #expect(try LZ4Frame.decompress(frame, limit: size) == data)
    }

    @Test("XXH32 gives xxHash's published values (seed 0), which liblz4 writes as a frame's content checksum")
    func xxh32Vectors() {
        // The same values come out of liblz4's own XXH32 (the checksum of a frame it writes).
        let vectors: [(String, UInt32)] = [
            ("", 0x02CC_5D05), ("a", 0x550D_7456), ("abc", 0x32D1_53FF),
            ("Nobody inspects the spammish repetition", 0xE229_3B2F),
        ]
        for (text, value) in vectors { #expect(XXH32.hash(Array(text.utf8)) == value, "\(text)") }
        // Every length from 0 to 40 through the lanes and both tails: the frame written with it
        // decodes, so its header checksum and content checksum are liblz4's.
        for n in 0...40 {
            let data = Self.sample(n)
            let frame = LZ4Frame.compress(data)
            #expect(Array(frame.suffix(4)) == withUnsafeBytes(of: XXH32.hash(data).littleEndian) { Array($0) })
            #expect((try? LZ4Frame.decompress(frame, limit: n)) == data, "\(n) bytes")
        }
    }

    @Test("a declared size beyond the limit is refused before decoding")
    func limit() {
        let frame = LZ4Frame.compress(Self.sample(10_000))
        expectStoreCode(.frameTooLarge) { _ = try LZ4Frame.decompress(frame, limit: 9_999) }
        // A forged header declaring 4 GiB is refused without allocating it.
        var forged = frame
        // Content size is the 8 bytes after the FLG and BD bytes (offset 6); rewrite it and the
        // header checksum stays wrong, so either error is a refusal.
        forged.replaceSubrange(6..<14, with: withUnsafeBytes(of: UInt64(1 << 32).littleEndian) { Array($0) })
        do throws(StoreError) {
            _ = try LZ4Frame.decompress(forged, limit: 1 << 20)
            Issue.record("forged size accepted")
        } catch {
            #expect(error.code == .frameTooLarge || error.code == .corruptFrame)
        }
    }

    @Test("corrupt, truncated and padded frames are refused, never crash")
    func corruption() {
        let data = Self.sample(50_000)
        let frame = LZ4Frame.compress(data)
        for cut in [0, 3, 7, 15, frame.count / 2, frame.count - 4, frame.count - 1] {
            expectStoreCode(.corruptFrame, "cut at \(cut)") { _ = try LZ4Frame.decompress(Array(frame.prefix(cut)), limit: 1 << 20) }
        }
        expectStoreCode(.corruptFrame) { _ = try LZ4Frame.decompress(frame + [0], limit: 1 << 20) }
        var rejected = 0
        for i in stride(from: 0, to: frame.count, by: max(1, frame.count / 300)) {
            var bad = frame
            bad[i] ^= 0x10
            if (try? LZ4Frame.decompress(bad, limit: 1 << 20)) != data { rejected += 1 }
            else { Issue.record("flipped byte \(i) decoded to the original") }
        }
        #expect(rejected > 0)
        expectStoreCode(.corruptFrame) { _ = try LZ4Frame.decompress(Array(repeating: 0xAB, count: 100), limit: 1 << 20) }
    }

    @Test("frames written by soma-node are read by `lz4 -d`; frames written by `lz4` are read by soma-node")
    func interop() throws {
        guard let lz4 = tool("lz4") else {
            Issue.record("the lz4 tool is not installed (tools/test installs it)")
            return
        }
        let dir = TempDir("lz4")
        defer { dir.cleanup() }
        let data = Self.sample(1_234_567)
        // soma-node → lz4.
        let ours = dir.file("ours.lz4")
        try Data(LZ4Frame.compress(data)).write(to: URL(fileURLWithPath: ours))
        let (status, decoded, err) = try run(lz4, ["-d", "-c", ours])
        #expect(status == 0, "lz4 -d: \(err)")
        #expect(Array(decoded) == data)
        // lz4 → soma-node, with the content size (as soma-node writes) and without.
        let plain = dir.file("plain.bin")
        try Data(data).write(to: URL(fileURLWithPath: plain))
        for flags in [["--content-size"], [], ["-9", "--content-size", "-BD"], ["-B4"], ["-BX", "--content-size"]] {
            let (s, frame, e) = try run(lz4, flags + ["-c", plain])
            #expect(s == 0, "lz4 \(flags): \(e)")
            #expect(try LZ4Frame.decompress(Array(frame), limit: data.count) == data, "lz4 \(flags)")
            if flags.contains("--content-size") {
                #expect(try LZ4Frame.declaredContentSize(of: Array(frame)) == UInt64(data.count))
            } else {
                #expect(try LZ4Frame.declaredContentSize(of: Array(frame)) == nil)
                // Without a declared size the limit still holds, while decoding.
                expectStoreCode(.frameTooLarge) { _ = try LZ4Frame.decompress(Array(frame), limit: data.count - 1) }
            }
        }
    }
}
