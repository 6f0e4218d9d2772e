import Foundation
import SomaArchive
import SomaTestSupport
import Testing

@Suite("Archive backends: a folder and a bucket", .serialized)
struct BackendTests {
    /// What every backend does the same way.
    static func exercise(_ backend: any ArchiveBackend) async throws {
        let bytes = (0..<70_000).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        try await backend.write("segments/000001.lz4", bytes: bytes)
        try await backend.write("segments/000002.lz4", bytes: [1, 2, 3])
        try await backend.write("manifest.bcs", bytes: [9])
        try await backend.write("manifest.bcs", bytes: [9, 9])  // replaced whole
        #expect(try await backend.read("segments/000001.lz4", range: nil, limit: 1 << 20) == bytes)
        #expect(try await backend.read("segments/000001.lz4", range: 100..<164, limit: 64) == Array(bytes[100..<164]))
        #expect(try await backend.read("manifest.bcs", range: nil, limit: 10) == [9, 9])
        #expect(try await backend.size("segments/000002.lz4") == 3)
        #expect(try await backend.size("segments/000003.lz4") == nil)
        #expect(try await backend.list(prefix: "segments/").map(\.key) == ["segments/000001.lz4", "segments/000002.lz4"])
        #expect(try await backend.list(prefix: "").map(\.key) == ["manifest.bcs", "segments/000001.lz4", "segments/000002.lz4"])
        #expect(try await backend.list(prefix: "segments/").map(\.size) == [bytes.count, 3])
        await #expect(throws: (any Error).self) { try await backend.read("segments/000001.lz4", range: nil, limit: 1_000) }
        await #expect(throws: (any Error).self) { try await backend.read("segments/000009.lz4", range: nil, limit: 1_000) }
        try await backend.remove("segments/000002.lz4")
        try await backend.remove("segments/000002.lz4")
        #expect(try await backend.size("segments/000002.lz4") == nil)
        // Written piece by piece: in pieces of 8 MiB, in parts past 16 MiB in a bucket.
        let big = [UInt8](unsafeUninitializedCapacity: (17 << 20) + 5) { buffer, count in
            for i in 0..<buffer.count { buffer[i] = UInt8(truncatingIfNeeded: i &* 31 &+ i >> 13) }
            count = buffer.count
        }
        try await backend.write("segments/000003.lz4", size: big.count) { offset, length in Array(big[offset..<(offset + length)]) }
        #expect(try await backend.read("segments/000003.lz4", range: nil, limit: big.count) == big)
        try await backend.write("segments/000003.lz4", size: 3) { offset, length in Array(big[offset..<(offset + length)]) }
        #expect(try await backend.read("segments/000003.lz4", range: nil, limit: 10) == Array(big[0..<3]))
        // A piece of another length than asked: an error naming the file, and nothing stored.
        for size in [3 << 20, (17 << 20) + 5] {
            await #expect { try await backend.write("segments/000004.lz4", size: size) { _, length in [UInt8](repeating: 7, count: length - 1) } } throws: {
                "\($0)".contains("segments/000004.lz4")
            }
            #expect(try await backend.size("segments/000004.lz4") == nil)
        }
        try await backend.remove("segments/000003.lz4")
        // Names that could leave the archive, or that it does not use, are refused before any I/O.
        for bad in ["../escape", "/absolute", "a//b", "a/./b", "a/../b", "", "sp ace", "new\nline", String(repeating: "a", count: 513)] {
            await #expect(throws: ArchiveError.self, "\(bad.debugDescription)") { try await backend.write(bad, bytes: [1]) }
            await #expect(throws: ArchiveError.self, "\(bad.debugDescription)") { _ = try await backend.read(bad, range: nil, limit: 10) }
        }
    }

    @Test("a folder: whole and ranged reads, sizes, listings, atomic replacement, names that would escape refused")
    func folder() async throws {
        let dir = TempDir("archive-folder")
        defer { dir.cleanup() }
        let backend = try FolderBackend(root: dir.file("archive"))
        try await Self.exercise(backend)
        // No temporary file is left beside the archive's files.
        let all = try FileManager.default.subpathsOfDirectory(atPath: dir.file("archive"))
        #expect(!all.contains { $0.hasSuffix(".tmp") }, "\(all)")
        #expect(!FileManager.default.fileExists(atPath: dir.file("escape")))
    }

    @Test("a bucket prefix in SeaweedFS: the same, with the files under the prefix only")
    func bucket() async throws {
        let s3 = try await SeaweedFS.start()
        defer { s3.stop() }
        let environment = [
            "AWS_ENDPOINT_URL": s3.endpoint, "AWS_ACCESS_KEY_ID": s3.accessKey, "AWS_SECRET_ACCESS_KEY": s3.secretKey,
        ]
        let location = try ArchiveLocation("s3://soma-archive/chains/devnet")
        #expect(location == .s3(bucket: "soma-archive", prefix: "chains/devnet"))
        let backend = try location.backend(environment: environment)
        #expect(backend.description == "s3://soma-archive/chains/devnet/")
        try await (backend as! S3Backend).client.createBucket()
        try await Self.exercise(backend)
        let all = try await (backend as! S3Backend).client.list(prefix: "")
        #expect(all.allSatisfy { $0.key.hasPrefix("chains/devnet/") }, "\(all.map(\.key))")
        // Without an endpoint or keys: a clear error naming what to set.
        #expect(throws: ArchiveError.self) { try location.backend(environment: [:]) }
        #expect(throws: ArchiveError.self) { try location.backend(environment: ["AWS_ENDPOINT_URL": s3.endpoint]) }
        #expect(throws: ArchiveError.self) { try ArchiveLocation("s3:///prefix") }
        #expect(throws: ArchiveError.self) { try ArchiveLocation("https://example.com/x") }
        #expect(try ArchiveLocation("/var/archive") == .folder("/var/archive"))
    }
}
