import AsyncHTTPClient
import Foundation
import SomaArchive
import SomaTestSupport
import Testing

/// The S3 client against a real S3-compatible server (SeaweedFS on 127.0.0.1, started and
/// stopped here), with `aws s3` (awscli) reading what it writes and writing what it reads.
@Suite("S3 client against SeaweedFS", .serialized)
struct S3ClientTests {
    static func client(_ s3: SeaweedFS, bucket: String = "soma-archive", secret: String? = nil, endpoint: String? = nil, attempts: Int = 5) throws -> S3Client {
        try S3Client(
            endpoint: endpoint ?? s3.endpoint, bucket: bucket, region: "us-east-1",
            credentials: S3Credentials(accessKeyID: s3.accessKey, secretAccessKey: secret ?? s3.secretKey), attempts: attempts)
    }

    @Test("objects: put, head, get whole and by range, list by prefix (keys that need encoding), delete; a missing key is NoSuchKey; a wrong secret is refused at once; a big object goes in parts; aws s3 reads ours and we read its")
    func roundTrips() async throws {
        let s3 = try await SeaweedFS.start()
        defer { s3.stop() }
        let client = try Self.client(s3)
        try await client.createBucket()
        try await client.createBucket()  // again: nothing
        let bytes = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 8) }
        let keys = ["a/segment-0001.lz4", "a/b c/ü$+file=1.bin", "b/other"]
        for k in keys { try await client.put(k, bytes: bytes) }
        #expect(try await client.head(keys[1]) == ObjectInfo(key: keys[1], size: bytes.count, etag: try #require(await client.head(keys[1])).etag))
        #expect(try await client.head("a/none") == nil)
        #expect(try await client.get(keys[1], limit: 1 << 20) == bytes)
        #expect(try await client.get(keys[0], range: 1_000..<1_010, limit: 1 << 20) == Array(bytes[1_000..<1_010]))
        #expect(try await client.get(keys[0], range: 5..<5, limit: 1).isEmpty)
        let listed = try await client.list(prefix: "a/")
        #expect(listed.map(\.key) == [keys[1], keys[0]].sorted() && listed.allSatisfy { $0.size == bytes.count })
        // Limits hold: an object larger than the reader allows is refused, not read.
        await #expect(throws: S3Error.self) { try await client.get(keys[0], limit: 1_000) }
        try await client.delete(keys[2])
        do {
            _ = try await client.get(keys[2], limit: 1 << 20)
            Issue.record("a deleted object was read")
        } catch let e as S3Error {
            #expect(e.status == 404 && e.code == "NoSuchKey", "\(e)")
        }
        // A wrong secret: the store refuses the signature, and a refusal is not retried.
        let start = Date()
        do {
            _ = try await Self.client(s3, secret: "not-the-secret").get(keys[0], limit: 1 << 20)
            Issue.record("a request signed with the wrong secret was answered")
        } catch let e as S3Error {
            #expect(e.status == 403, "\(e)")
        }
        #expect(Date().timeIntervalSince(start) < 5)

        // 12 MiB in parts of 5 MiB, 2 at a time.
        let big = (0..<(12 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 16) }
        try await client.putMultipart("big/object", size: big.count, partSize: 5 << 20, parallel: 2) { offset, length in
            Array(big[offset..<(offset + length)])
        }
        #expect(try await client.head("big/object")?.size == big.count)
        #expect(try await client.get("big/object", limit: 16 << 20) == big)
        #expect(try await client.get("big/object", range: (5 << 20) - 3..<(5 << 20) + 3, limit: 16) == Array(big[(5 << 20) - 3..<(5 << 20) + 3]))
        // A part source that fails: the upload is aborted and no object appears.
        await #expect(throws: S3Error.self) {
            try await client.putMultipart("big/failed", size: big.count, partSize: 5 << 20) { offset, length in
                guard offset == 0 else { throw S3Error(status: 0, code: "Test", message: "the source broke") }
                return Array(big[offset..<(offset + length)])
            }
        }
        #expect(try await client.head("big/failed") == nil)

        // awscli reads what we wrote, and we read what it writes.
        let aws = try #require(SeaweedFS.awsCLI, "awscli is not installed: tools/test installs it in .venv")
        let copy = s3.directory.file("copy.bin")
        let (status, _, err) = try run(aws, ["--endpoint-url", s3.endpoint, "s3", "cp", "s3://soma-archive/\(keys[1])", copy], environment: s3.awsEnvironment)
        #expect(status == 0, "\(err)")
        #expect(FileManager.default.contents(atPath: copy).map { Array($0) } == bytes)
        let theirs = s3.directory.file("theirs.bin")
        try Data(big.prefix(3_000_000)).write(to: URL(fileURLWithPath: theirs))
        let (up, _, upErr) = try run(aws, ["--endpoint-url", s3.endpoint, "s3", "cp", theirs, "s3://soma-archive/from-aws/theirs.bin"], environment: s3.awsEnvironment)
        #expect(up == 0, "\(upErr)")
        #expect(try await client.get("from-aws/theirs.bin", limit: 4 << 20) == Array(big.prefix(3_000_000)))
        let (ls, out, _) = try run(aws, ["--endpoint-url", s3.endpoint, "s3", "ls", "--recursive", "s3://soma-archive/big/"], environment: s3.awsEnvironment)
        #expect(ls == 0 && String(decoding: out, as: UTF8.self).contains("\(big.count) big/object"))
    }

    @Test("an endpoint nobody answers: retried with back-off, then a clear error; bad endpoints and bucket names are refused")
    func unreachable() async throws {
        let creds = S3Credentials(accessKeyID: "a", secretAccessKey: "b")
        let port = SeaweedFS.freePorts(1)[0]
        let client = try S3Client(endpoint: "http://127.0.0.1:\(port)", bucket: "soma-archive", region: "us-east-1", credentials: creds, attempts: 3)
        let start = Date()
        do {
            try await client.put("k", bytes: [1])
            Issue.record("a put to nobody succeeded")
        } catch let e as S3Error {
            #expect(e.status == 0 && e.code == "ConnectionFailed", "\(e)")
        }
        // Two back-offs (100-150 ms, then 200-300 ms), and no attempt waits out the request timeout.
        let elapsed = Date().timeIntervalSince(start)
        #expect(elapsed >= 0.3 && elapsed < 30, "\(elapsed) s")
        #expect(throws: S3Error.self) { try S3Client(endpoint: "ftp://x", bucket: "soma-archive", region: "us-east-1", credentials: creds) }
        #expect(throws: S3Error.self) { try S3Client(endpoint: "http://x/path", bucket: "soma-archive", region: "us-east-1", credentials: creds) }
        #expect(throws: S3Error.self) { try S3Client(endpoint: "http://x", bucket: "No_Such", region: "us-east-1", credentials: creds) }
        #expect(throws: S3Error.self) { try S3Client(endpoint: "http://x", bucket: "ab", region: "us-east-1", credentials: creds) }
    }
}
