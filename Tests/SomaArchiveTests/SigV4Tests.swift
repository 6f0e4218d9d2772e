import Foundation
import SomaArchive
import Testing

/// The examples of Amazon S3's documentation of Signature Version 4 in the Authorization header
/// ("Examples: Signature Calculations in AWS Signature Version 4"): access key
/// AKIAIOSFODNN7EXAMPLE, bucket `examplebucket`, region us-east-1, 2013-05-24T00:00:00Z.
@Suite("SigV4: AWS's documented S3 examples")
struct SigV4Tests {
    let signer = SigV4Signer(
        credentials: S3Credentials(accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        region: "us-east-1")
    let date = Date(timeIntervalSince1970: 1_369_353_600)
    let host = ("host", "examplebucket.s3.amazonaws.com")

    func signature(_ headers: [(String, String)]) -> String? {
        headers.first { $0.0 == "authorization" }.flatMap { $0.1.components(separatedBy: "Signature=").last }
    }

    func signedHeaders(_ headers: [(String, String)]) -> String? {
        headers.first { $0.0 == "authorization" }
            .flatMap { $0.1.components(separatedBy: "SignedHeaders=").last?.components(separatedBy: ",").first }
    }

    @Test("GET Object with a range")
    func getObject() {
        let h = signer.sign(method: "GET", path: "/test.txt", headers: [host, ("Range", "bytes=0-9")], payloadHash: SigV4Signer.emptyPayloadHash, date: date)
        #expect(h.first { $0.0 == "authorization" }?.1
            == "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
        #expect(h.first { $0.0 == "x-amz-date" }?.1 == "20130524T000000Z")
    }

    @Test("PUT Object: a path to encode, a Date and a storage class header, a signed payload")
    func putObject() {
        let body = Data("Welcome to Amazon S3.".utf8)
        let hash = SigV4Signer.payloadHash(body)
        #expect(hash == "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072")
        let h = signer.sign(
            method: "PUT", path: "/test$file.text",
            headers: [host, ("Date", "Fri, 24 May 2013 00:00:00 GMT"), ("x-amz-storage-class", "REDUCED_REDUNDANCY")], payloadHash: hash, date: date)
        #expect(signedHeaders(h) == "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class")
        #expect(signature(h) == "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")
        #expect(SigV4Signer.encodePath("/test$file.text") == "/test%24file.text")
    }

    @Test("GET Bucket Lifecycle: a query parameter without a value")
    func lifecycle() {
        let h = signer.sign(method: "GET", path: "/", query: [("lifecycle", "")], headers: [host], payloadHash: SigV4Signer.emptyPayloadHash, date: date)
        #expect(signature(h) == "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543")
    }

    @Test("GET Bucket (list objects): query parameters sorted")
    func listObjects() {
        let h = signer.sign(
            method: "GET", path: "/", query: [("prefix", "J"), ("max-keys", "2")], headers: [host], payloadHash: SigV4Signer.emptyPayloadHash, date: date)
        #expect(signature(h) == "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")
    }

    @Test("credentials from the usual environment variables; a session token is signed")
    func environment() {
        #expect(S3Credentials.fromEnvironment([:]) == nil)
        #expect(S3Credentials.fromEnvironment(["AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": ""]) == nil)
        let c = S3Credentials.fromEnvironment(["AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b", "AWS_SESSION_TOKEN": "t"])
        #expect(c == S3Credentials(accessKeyID: "a", secretAccessKey: "b", sessionToken: "t"))
        let h = SigV4Signer(credentials: c!, region: "us-east-1").sign(method: "GET", path: "/", headers: [host], payloadHash: SigV4Signer.emptyPayloadHash, date: date)
        #expect(h.contains { $0 == ("x-amz-security-token", "t") } && signedHeaders(h) == "host;x-amz-content-sha256;x-amz-date;x-amz-security-token")
        #expect(SigV4Signer.encode("a b/c~", slash: true) == "a%20b%2Fc~" && SigV4Signer.encodePath("/a b/ü") == "/a%20b/%C3%BC")
    }
}
