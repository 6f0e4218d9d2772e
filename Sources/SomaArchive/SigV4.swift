public import Foundation
import Crypto

/// Credentials of an S3-compatible object store.
public struct S3Credentials: Sendable, Equatable {
    /// The access key id.
    public var accessKeyID: String
    /// The secret access key.
    public var secretAccessKey: String
    /// A session token (temporary credentials), sent as `x-amz-security-token`.
    public var sessionToken: String?

    /// Credentials (unchecked).
    public init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
    }

    /// The usual environment variables: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and, if set,
    /// `AWS_SESSION_TOKEN`; nil unless both keys are set and not empty.
    public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> S3Credentials? {
        guard let id = environment["AWS_ACCESS_KEY_ID"], !id.isEmpty,
              let secret = environment["AWS_SECRET_ACCESS_KEY"], !secret.isEmpty else { return nil }
        let token = environment["AWS_SESSION_TOKEN"].flatMap { $0.isEmpty ? nil : $0 }
        return S3Credentials(accessKeyID: id, secretAccessKey: secret, sessionToken: token)
    }
}

/// AWS Signature Version 4 for requests to an S3-compatible store, with the signature in the
/// `Authorization` header (https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html):
/// a canonical request (method, URI-encoded path, sorted query, sorted lower-case headers, the
/// signed header names, the payload's SHA-256), a string to sign over its hash and the scope
/// `date/region/service/aws4_request`, and an HMAC-SHA256 key derived from the secret through
/// the date, region and service.
public struct SigV4Signer: Sendable {
    /// Whose request it is.
    public var credentials: S3Credentials
    /// The store's region (`us-east-1` where the store has none).
    public var region: String
    /// The service (`s3`).
    public var service: String

    /// SHA-256 of no bytes, hex: the payload hash of a request without a body.
    public static let emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    /// A signer.
    public init(credentials: S3Credentials, region: String, service: String = "s3") {
        self.credentials = credentials
        self.region = region
        self.service = service
    }

    /// The headers to add to a request so that it is signed: `x-amz-date`,
    /// `x-amz-content-sha256`, `x-amz-security-token` with a session token, and `authorization`.
    /// - Parameters:
    ///   - method: `GET`, `PUT`, …
    ///   - path: the path as the store sees it, not encoded (`/bucket/key`); each segment is
    ///     URI-encoded here, `/` kept.
    ///   - query: the query's parameters, not encoded (a parameter without a value: `""`).
    ///   - headers: the other headers to sign, `host` among them.
    ///   - payloadHash: the body's SHA-256, hex (``emptyPayloadHash`` without a body).
    ///   - date: the request's time.
    public func sign(
        method: String, path: String, query: [(String, String)] = [], headers: [(String, String)], payloadHash: String, date: Date
    ) -> [(String, String)] {
        let (amzDate, day) = Self.timestamps(date)
        var added = [("x-amz-date", amzDate), ("x-amz-content-sha256", payloadHash)]
        if let token = credentials.sessionToken { added.append(("x-amz-security-token", token)) }
        let signed = canonicalHeaders(headers + added)
        let canonical = [
            method, Self.encodePath(path), Self.canonicalQuery(query),
            signed.map { "\($0.0):\($0.1)\n" }.joined(), signed.map(\.0).joined(separator: ";"), payloadHash,
        ].joined(separator: "\n")
        let scope = "\(day)/\(region)/\(service)/aws4_request"
        let stringToSign = ["AWS4-HMAC-SHA256", amzDate, scope, Self.hex(SHA256.hash(data: Data(canonical.utf8)))].joined(separator: "\n")
        var key = SymmetricKey(data: Data("AWS4\(credentials.secretAccessKey)".utf8))
        for part in [day, region, service, "aws4_request"] {
            key = SymmetricKey(data: Data(HMAC<SHA256>.authenticationCode(for: Data(part.utf8), using: key)))
        }
        let signature = Self.hex(HMAC<SHA256>.authenticationCode(for: Data(stringToSign.utf8), using: key))
        let authorization = "AWS4-HMAC-SHA256 Credential=\(credentials.accessKeyID)/\(scope),SignedHeaders=\(signed.map(\.0).joined(separator: ";")),Signature=\(signature)"
        return added + [("authorization", authorization)]
    }

    /// Lower-case names, values trimmed with inner runs of spaces collapsed, sorted by name;
    /// repeated names joined with commas.
    func canonicalHeaders(_ headers: [(String, String)]) -> [(String, String)] {
        var merged: [String: [String]] = [:]
        for (name, value) in headers {
            let trimmed = value.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
            merged[name.lowercased(), default: []].append(trimmed)
        }
        return merged.keys.sorted().map { ($0, merged[$0]!.joined(separator: ",")) }
    }

    /// `x-amz-date` (`YYYYMMDD'T'HHMMSS'Z'`) and the scope's day (`YYYYMMDD`), in UTC.
    static func timestamps(_ date: Date) -> (String, String) {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        let c = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second], from: date)
        func two(_ v: Int?) -> String { v.map { $0 < 10 ? "0\($0)" : "\($0)" } ?? "00" }
        let day = "\(c.year ?? 1970)\(two(c.month))\(two(c.day))"
        return ("\(day)T\(two(c.hour))\(two(c.minute))\(two(c.second))Z", day)
    }

    /// Query parameters URI-encoded (`/` too) and sorted by name, then value: `a=1&b=`.
    static func canonicalQuery(_ query: [(String, String)]) -> String {
        let encoded: [(name: String, value: String)] = query.map { (encode($0.0, slash: true), encode($0.1, slash: true)) }
        let sorted = encoded.sorted { a, b in a.name == b.name ? a.value < b.value : a.name < b.name }
        return sorted.map { p -> String in p.name + "=" + p.value }.joined(separator: "&")
    }

    /// A path with each byte outside `A-Z a-z 0-9 - . _ ~ /` percent-encoded (S3 encodes once).
    public static func encodePath(_ path: String) -> String {
        let p = path.isEmpty ? "/" : path
        return encode(p, slash: false)
    }

    /// RFC 3986 encoding of everything but the unreserved characters (and `/` unless `slash`),
    /// upper-case hex.
    public static func encode(_ s: String, slash: Bool) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count)
        let digits = Array("0123456789ABCDEF".unicodeScalars)
        for b in s.utf8 {
            if unreserved(b) || (b == 0x2F && !slash) {
                out.unicodeScalars.append(Unicode.Scalar(b))
            } else {
                out.append("%")
                out.unicodeScalars.append(digits[Int(b >> 4)])
                out.unicodeScalars.append(digits[Int(b & 15)])
            }
        }
        return out
    }

    /// `A-Z a-z 0-9 - . _ ~`.
    static func unreserved(_ b: UInt8) -> Bool {
        switch b {
        case 0x41...0x5A, 0x61...0x7A, 0x30...0x39, 0x2D, 0x2E, 0x5F, 0x7E: true
        default: false
        }
    }

    /// Lower-case hex of a digest or MAC.
    static func hex(_ bytes: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".unicodeScalars)
        var out = ""
        for b in bytes {
            out.unicodeScalars.append(digits[Int(b >> 4)])
            out.unicodeScalars.append(digits[Int(b & 15)])
        }
        return out
    }

    /// SHA-256 of `bytes`, lower-case hex (a payload hash).
    public static func payloadHash(_ bytes: some DataProtocol) -> String { hex(SHA256.hash(data: bytes)) }
}
