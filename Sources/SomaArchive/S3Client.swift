public import AsyncHTTPClient
public import Foundation
public import Logging
public import NIOCore
import NIOHTTP1

/// An object of a store: its key, size and entity tag.
public struct ObjectInfo: Sendable, Equatable {
    /// The key (within the bucket).
    public var key: String
    /// Its size in bytes.
    public var size: Int
    /// Its entity tag (quotes removed).
    public var etag: String

    /// An entry.
    public init(key: String, size: Int, etag: String) {
        self.key = key
        self.size = size
        self.etag = etag
    }
}

/// A request an S3-compatible store refused or failed, with what it said.
public struct S3Error: Error, CustomStringConvertible, Sendable {
    /// The HTTP status (0: the request did not get an answer).
    public var status: Int
    /// The store's error code (`NoSuchKey`, `AccessDenied`, …) or a short cause.
    public var code: String
    /// What failed, with the store's message.
    public var message: String

    /// An error.
    public init(status: Int, code: String, message: String) {
        self.status = status
        self.code = code
        self.message = message
    }

    /// `status code: message`.
    public var description: String { status == 0 ? "\(code): \(message)" : "\(status) \(code): \(message)" }

    /// Worth another try: the store was busy or failed, or the connection did.
    var retryable: Bool { status == 0 || status == 429 || status >= 500 }
}

/// A client of one bucket of an S3-compatible object store (AWS S3, SeaweedFS, MinIO, …):
/// path-style addresses (`ENDPOINT/BUCKET/KEY`), every request signed with SigV4 (its payload's
/// SHA-256 signed too), retried with exponential back-off and jitter when the store answers
/// 429 or 5xx or the connection fails; answers read within stated limits.
public final class S3Client: Sendable {
    /// `http(s)://host[:port]`.
    public let endpoint: URL
    /// The bucket.
    public let bucket: String
    let signer: SigV4Signer
    let http: HTTPClient
    /// Attempts of a request that keeps failing in a retryable way.
    public let attempts: Int
    /// How long one request may take.
    public let timeout: TimeAmount
    let logger: Logger

    /// The most bytes of an answer that is not an object's body (a listing, an error).
    public static let maxDocumentBytes = 16 << 20

    /// The HTTP client of archives, process-wide: a connection that cannot be made fails at
    /// once (within 10 s), so that ``S3Client``'s own retries back off and give up in bounded
    /// time (the pool's default waits out the whole request timeout); redirects are not
    /// followed (a signed request goes to the endpoint it was signed for).
    public static let http: HTTPClient = {
        var configuration = HTTPClient.Configuration(redirectConfiguration: .disallow, timeout: .init(connect: .seconds(10), read: .seconds(60)))
        configuration.connectionPool.retryConnectionEstablishment = false
        return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
    }()

    /// A client of `bucket` at `endpoint` (`http://127.0.0.1:8333`).
    /// - Throws: ``S3Error`` for an endpoint that is not an http(s) URL with a host, or a
    ///   bucket name S3 would refuse (3...63 characters of `a-z 0-9 . -`).
    public init(
        endpoint: String, bucket: String, region: String, credentials: S3Credentials, http: HTTPClient = S3Client.http,
        attempts: Int = 5, timeout: TimeAmount = .seconds(60), logger: Logger = Logger(label: "soma.s3")
    ) throws {
        guard let url = URL(string: endpoint), let scheme = url.scheme, ["http", "https"].contains(scheme), url.host != nil,
              url.path.isEmpty || url.path == "/", url.query == nil
        else { throw S3Error(status: 0, code: "InvalidEndpoint", message: "\(endpoint): not an http(s)://HOST[:PORT] address") }
        guard (3...63).contains(bucket.utf8.count),
              bucket.utf8.allSatisfy({ (0x61...0x7A).contains($0) || (0x30...0x39).contains($0) || $0 == 0x2E || $0 == 0x2D })
        else { throw S3Error(status: 0, code: "InvalidBucketName", message: "\(bucket): a bucket name is 3...63 characters of a-z, 0-9, '.' and '-'") }
        self.endpoint = url
        self.bucket = bucket
        self.signer = SigV4Signer(credentials: credentials, region: region)
        self.http = http
        self.attempts = max(1, attempts)
        self.timeout = timeout
        self.logger = logger
    }

    /// `host[:port]` as the Host header names it.
    var hostHeader: String {
        let host = endpoint.host ?? ""
        let bracketed = host.contains(":") ? "[\(host)]" : host
        return endpoint.port.map { "\(bracketed):\($0)" } ?? bracketed
    }

    // MARK: Objects

    /// Stores `bytes` under `key` in one request (at most 5 GiB; ``putMultipart(_:size:partSize:parallel:part:)`` beyond).
    public func put(_ key: String, bytes: [UInt8]) async throws {
        _ = try await send("PUT", key: key, body: bytes, expect: [200])
    }

    /// The object's bytes, or those of `range` (an empty range reads nothing), at most `limit`.
    /// - Throws: ``S3Error`` `NoSuchKey` (404) when there is no such object; `TooLarge` when
    ///   it (or the part asked for) is over `limit`; `ShortRead` when the store sends fewer bytes
    ///   than the range.
    public func get(_ key: String, range: Range<Int>? = nil, limit: Int) async throws -> [UInt8] {
        if let range, range.isEmpty { return [] }
        var headers: [(String, String)] = []
        if let range {
            guard range.lowerBound >= 0, range.count <= limit else {
                throw S3Error(status: 0, code: "TooLarge", message: "\(key): \(range.count) bytes asked, at most \(limit)")
            }
            headers.append(("range", "bytes=\(range.lowerBound)-\(range.upperBound - 1)"))
        }
        let answer = try await send("GET", key: key, headers: headers, expect: range == nil ? [200] : [206, 200], limit: limit)
        guard let range else { return answer.body }
        if answer.status == 200 {
            // A store that ignored the range sent the whole object: keep the part asked for.
            guard answer.body.count >= range.upperBound else {
                throw S3Error(status: 200, code: "ShortRead", message: "\(key): \(answer.body.count) bytes, the range ends at \(range.upperBound)")
            }
            return Array(answer.body[range])
        }
        guard answer.body.count == range.count else {
            throw S3Error(status: answer.status, code: "ShortRead", message: "\(key): \(answer.body.count) bytes for a range of \(range.count)")
        }
        return answer.body
    }

    /// The object's size and entity tag, nil when there is none.
    public func head(_ key: String) async throws -> ObjectInfo? {
        do {
            let answer = try await send("HEAD", key: key, expect: [200])
            guard let length = answer.headers.first(name: "content-length").flatMap(Int.init), length >= 0 else {
                throw S3Error(status: answer.status, code: "BadAnswer", message: "\(key): HEAD without a content length")
            }
            return ObjectInfo(key: key, size: length, etag: Self.unquote(answer.headers.first(name: "etag") ?? ""))
        } catch let e as S3Error where e.status == 404 {
            return nil
        }
    }

    /// Removes the object (nothing when there is none).
    public func delete(_ key: String) async throws {
        _ = try await send("DELETE", key: key, expect: [204, 200])
    }

    /// Every object whose key starts with `prefix`, in key order (ListObjectsV2, 1,000 a page,
    /// at most `limit` in all).
    public func list(prefix: String, limit: Int = 1_000_000) async throws -> [ObjectInfo] {
        var out: [ObjectInfo] = []
        var token: String? = nil
        repeat {
            var query = [("list-type", "2"), ("prefix", prefix)]
            if let token { query.append(("continuation-token", token)) }
            let answer = try await send("GET", key: nil, query: query, expect: [200], limit: Self.maxDocumentBytes)
            let xml = String(decoding: answer.body, as: UTF8.self)
            for entry in XMLText.elements("Contents", in: xml) {
                guard let key = XMLText.elements("Key", in: entry).first, let size = XMLText.elements("Size", in: entry).first.flatMap(Int.init), size >= 0 else {
                    throw S3Error(status: 200, code: "BadAnswer", message: "a listing entry without a key or size")
                }
                out.append(ObjectInfo(key: key, size: size, etag: Self.unquote(XMLText.elements("ETag", in: entry).first ?? "")))
                guard out.count <= limit else { throw S3Error(status: 200, code: "TooLarge", message: "more than \(limit) objects under \(prefix)") }
            }
            let truncated = XMLText.elements("IsTruncated", in: xml).first == "true"
            let next = XMLText.elements("NextContinuationToken", in: xml).first
            guard !truncated || (next != nil && next != token) else {
                throw S3Error(status: 200, code: "BadAnswer", message: "a truncated listing without a new continuation token")
            }
            token = truncated ? next : nil
        } while token != nil
        return out
    }

    /// Creates the bucket (nothing when it exists and is this client's).
    public func createBucket() async throws {
        do {
            _ = try await send("PUT", key: nil, expect: [200])
        } catch let e as S3Error where e.code == "BucketAlreadyOwnedByYou" || e.code == "BucketAlreadyExists" {
        }
    }

    // MARK: Multipart upload

    /// Stores an object of `size` bytes under `key` in parts of `partSize` bytes (5 MiB at
    /// least, as S3 asks of every part but the last; at most 10,000 parts), `parallel` at a
    /// time: `part(offset, length)` gives each part's bytes. On failure the upload is aborted,
    /// so no parts are left behind.
    public func putMultipart(
        _ key: String, size: Int, partSize: Int = 8 << 20, parallel: Int = 4, part: @escaping @Sendable (Int, Int) async throws -> [UInt8]
    ) async throws {
        guard size >= 0, partSize >= 5 << 20, (size + partSize - 1) / partSize <= 10_000 else {
            throw S3Error(status: 0, code: "InvalidArgument", message: "\(key): \(size) bytes in parts of \(partSize) (5 MiB at least, 10,000 parts at most)")
        }
        let created = try await send("POST", key: key, query: [("uploads", "")], expect: [200], limit: Self.maxDocumentBytes)
        guard let uploadID = XMLText.elements("UploadId", in: String(decoding: created.body, as: UTF8.self)).first, !uploadID.isEmpty else {
            throw S3Error(status: created.status, code: "BadAnswer", message: "\(key): a multipart upload without an UploadId")
        }
        let count = max(1, (size + partSize - 1) / partSize)
        do {
            var etags = [String](repeating: "", count: count)
            try await withThrowingTaskGroup(of: (Int, String).self) { group in
                var next = 0
                func start() {
                    let n = next
                    next += 1
                    group.addTask {
                        let offset = n * partSize
                        let bytes = try await part(offset, min(partSize, size - offset))
                        guard bytes.count == min(partSize, size - offset) else {
                            throw S3Error(status: 0, code: "ShortRead", message: "\(key): part \(n + 1) gave \(bytes.count) bytes")
                        }
                        let answer = try await self.send(
                            "PUT", key: key, query: [("partNumber", "\(n + 1)"), ("uploadId", uploadID)], body: bytes, expect: [200])
                        guard let etag = answer.headers.first(name: "etag"), !etag.isEmpty else {
                            throw S3Error(status: answer.status, code: "BadAnswer", message: "\(key): part \(n + 1) stored without an ETag")
                        }
                        return (n, etag)
                    }
                }
                for _ in 0..<min(max(1, parallel), count) { start() }
                while let (n, etag) = try await group.next() {
                    etags[n] = etag
                    if next < count { start() }
                }
            }
            var xml = "<CompleteMultipartUpload>"
            for (i, etag) in etags.enumerated() {
                xml += "<Part><PartNumber>\(i + 1)</PartNumber><ETag>\(XMLText.escape(etag))</ETag></Part>"
            }
            xml += "</CompleteMultipartUpload>"
            let done = try await send("POST", key: key, query: [("uploadId", uploadID)], body: Array(xml.utf8), expect: [200], limit: Self.maxDocumentBytes)
            // S3 may answer 200 and say in the body that completing failed.
            let text = String(decoding: done.body, as: UTF8.self)
            if let code = XMLText.elements("Code", in: text).first {
                throw S3Error(status: 200, code: code, message: "\(key): completing the upload: \(XMLText.elements("Message", in: text).first ?? "")")
            }
        } catch {
            _ = try? await send("DELETE", key: key, query: [("uploadId", uploadID)], expect: [204, 200], attemptsOverride: 2)
            throw error
        }
    }

    // MARK: Requests

    struct Answer {
        var status: Int
        var headers: HTTPHeaders
        var body: [UInt8]
    }

    /// Sends one signed request (retried while the failure is retryable); a status outside
    /// `expect` is an ``S3Error`` with the store's code and message.
    func send(
        _ method: String, key: String?, query: [(String, String)] = [], headers: [(String, String)] = [], body: [UInt8] = [],
        expect: Set<Int>, limit: Int = maxDocumentBytes, attemptsOverride: Int? = nil
    ) async throws -> Answer {
        let path = "/" + bucket + (key.map { "/" + $0 } ?? "")
        let payloadHash = body.isEmpty ? SigV4Signer.emptyPayloadHash : SigV4Signer.payloadHash(body)
        let queryString = SigV4Signer.canonicalQuery(query)
        let url = endpoint.absoluteString.trimmingSuffix("/") + SigV4Signer.encodePath(path) + (queryString.isEmpty ? "" : "?" + queryString)
        var failure: S3Error? = nil
        let tries = attemptsOverride ?? attempts
        for attempt in 0..<tries {
            if attempt > 0 {
                // 100 ms, 200 ms, 400 ms, … up to 5 s, each with up to half again of jitter.
                let base = min(5_000, 100 << min(attempt - 1, 6))
                try await Task.sleep(for: .milliseconds(base + Int.random(in: 0...(base / 2))))
            }
            var request = HTTPClientRequest(url: url)
            request.method = HTTPMethod(rawValue: method)
            let all = headers + [("host", hostHeader)]
            let signed = signer.sign(method: method, path: path, query: query, headers: all, payloadHash: payloadHash, date: Date())
            for (name, value) in all + signed { request.headers.replaceOrAdd(name: name, value: value) }
            if !body.isEmpty || method == "PUT" || method == "POST" {
                request.headers.replaceOrAdd(name: "content-length", value: "\(body.count)")
                request.body = .bytes(ByteBuffer(bytes: body))
            }
            do {
                let response = try await http.execute(request, timeout: timeout)
                let status = Int(response.status.code)
                let length = response.headers.first(name: "content-length").flatMap(Int.init)
                if let length, length > limit, method != "HEAD" {
                    throw S3Error(status: status, code: "TooLarge", message: "\(key ?? bucket): an answer of \(length) bytes, at most \(limit) read")
                }
                // The body's parts copied once into an array of the announced length (which a
                // store may not exceed: the limit holds either way).
                var bytes: [UInt8] = []
                if method != "HEAD" {
                    if let length, length >= 0 { bytes.reserveCapacity(length) }
                    for try await part in response.body {
                        guard part.readableBytes <= limit - bytes.count else {
                            throw S3Error(status: status, code: "TooLarge", message: "\(key ?? bucket): an answer over \(limit) bytes")
                        }
                        part.withUnsafeReadableBytes { bytes.append(contentsOf: $0) }
                    }
                }
                if expect.contains(status) { return Answer(status: status, headers: response.headers, body: bytes) }
                let text = String(decoding: bytes.prefix(64 << 10), as: UTF8.self)
                let code = XMLText.elements("Code", in: text).first ?? (status == 404 ? "NoSuchKey" : "HTTP\(status)")
                let message = XMLText.elements("Message", in: text).first ?? ""
                let error = S3Error(status: status, code: code, message: "\(method) \(key ?? bucket): \(message)")
                guard error.retryable else { throw error }
                failure = error
            } catch let e as S3Error {
                guard e.retryable, e.code != "TooLarge" else { throw e }
                failure = e
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                failure = S3Error(status: 0, code: "ConnectionFailed", message: "\(method) \(url): \(error)")
            }
            logger.debug("retrying an S3 request", metadata: ["attempt": "\(attempt + 1)", "error": "\(failure!)"])
        }
        throw failure ?? S3Error(status: 0, code: "Failed", message: "\(method) \(url)")
    }

    static func unquote(_ s: String) -> String {
        s.count >= 2 && s.hasPrefix("\"") && s.hasSuffix("\"") ? String(s.dropFirst().dropLast()) : s
    }
}

extension String {
    func trimmingSuffix(_ suffix: String) -> String { hasSuffix(suffix) ? String(dropLast(suffix.count)) : self }
}

/// Just enough XML for S3's answers: the text of each element of a name (not nested in one of
/// the same name), entities decoded. Never traps on malformed input: what does not match is
/// skipped.
enum XMLText {
    static func elements(_ name: String, in xml: String) -> [String] {
        var out: [String] = []
        let open = "<\(name)>", close = "</\(name)>"
        var rest = xml[...]
        while let start = rest.range(of: open) {
            let after = rest[start.upperBound...]
            guard let end = after.range(of: close) else { break }
            out.append(unescape(String(after[..<end.lowerBound])))
            rest = after[end.upperBound...]
        }
        return out
    }

    static func unescape(_ s: String) -> String {
        guard s.contains("&") else { return s }
        return s.replacingOccurrences(of: "&quot;", with: "\"").replacingOccurrences(of: "&apos;", with: "'")
            .replacingOccurrences(of: "&lt;", with: "<").replacingOccurrences(of: "&gt;", with: ">")
            .replacingOccurrences(of: "&#34;", with: "\"").replacingOccurrences(of: "&amp;", with: "&")
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }
}
