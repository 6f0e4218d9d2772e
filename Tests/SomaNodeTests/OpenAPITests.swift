import Foundation
import SomaCore
import SomaDevnet
import SomaNode
import SomaTestSupport
import SomaGossip
import Testing
import Yams

/// docs/openapi.yaml, as plain values.
func openAPIDocument() throws -> [String: Any] {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    let text = try String(contentsOf: root.appendingPathComponent("docs/openapi.yaml"), encoding: .utf8)
    return try #require(try Yams.load(yaml: text) as? [String: Any])
}

/// A JSON value that keeps booleans and numbers apart (Foundation's JSONSerialization on Linux
/// hands 0 and 1 back as values that also pass `is Bool`).
enum JSONValue: Decodable {
    case null, bool(Bool), number(Double), string(String), array([JSONValue]), object([String: JSONValue])

    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let n = try? c.decode(Double.self) { self = .number(n) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }

    /// As the checker's plain values: booleans as `Bool`, numbers as `Double` wrapped in `JSONNumber`.
    var plain: Any {
        switch self {
        case .null: return NSNull()
        case .bool(let b): return b
        case .number(let n): return JSONNumber(value: n)
        case .string(let s): return s
        case .array(let a): return a.map(\.plain)
        case .object(let o): return o.mapValues(\.plain)
        }
    }
}

/// A JSON number (never a boolean).
struct JSONNumber: CustomStringConvertible {
    let value: Double
    var description: String { value.rounded() == value && abs(value) < 1e15 ? String(Int64(value)) : "\(value)" }
}

/// Checks JSON values against the schemas of an OpenAPI 3.1 document: the subset it uses
/// (`$ref`, `type`, `required`, `properties`, `additionalProperties: false`, `items`, `enum`,
/// `pattern`, `minimum`, `maximum`). Returns what does not match, with the path to it.
struct SchemaChecker {
    let document: [String: Any]

    func check(_ value: Any, against schema: [String: Any], at path: String = "$") -> [String] {
        if let ref = schema["$ref"] as? String {
            guard let resolved = resolve(ref) else { return ["\(path): unresolved \(ref)"] }
            return check(value, against: resolved, at: path)
        }
        var errors: [String] = []
        if let allowed = schema["enum"] as? [Any], !allowed.contains(where: { "\($0)" == "\(value)" }) {
            errors.append("\(path): \(value) is not one of \(allowed)")
        }
        switch schema["type"] as? String {
        case "object":
            guard let object = value as? [String: Any] else { return ["\(path): expected an object, got \(type(of: value))"] }
            let properties = schema["properties"] as? [String: Any] ?? [:]
            for key in schema["required"] as? [String] ?? [] where object[key] == nil {
                errors.append("\(path): missing required \(key)")
            }
            for (key, v) in object {
                if let p = properties[key] as? [String: Any] {
                    errors += check(v, against: p, at: "\(path).\(key)")
                } else if schema["additionalProperties"] as? Bool == false {
                    errors.append("\(path): \(key) is not in the schema")
                }
            }
        case "array":
            guard let array = value as? [Any] else { return ["\(path): expected an array"] }
            if let items = schema["items"] as? [String: Any] {
                for (i, v) in array.enumerated() { errors += check(v, against: items, at: "\(path)[\(i)]") }
            }
        case "string":
            guard let s = value as? String else { return ["\(path): expected a string, got \(value)"] }
            if let pattern = schema["pattern"] as? String, s.range(of: pattern, options: .regularExpression) == nil {
                errors.append("\(path): '\(s.prefix(40))' does not match \(pattern)")
            }
        case "boolean":
            if !(value is Bool) { errors.append("\(path): expected a boolean") }
        case "integer", "number":
            guard let n = (value as? JSONNumber)?.value else { return ["\(path): expected a number, got \(value)"] }
            if schema["type"] as? String == "integer", n.rounded() != n { errors.append("\(path): \(n) is not an integer") }
            if let min = (schema["minimum"] as? NSNumber)?.doubleValue, n < min { errors.append("\(path): \(n) < \(min)") }
            if let max = (schema["maximum"] as? NSNumber)?.doubleValue, n > max { errors.append("\(path): \(n) > \(max)") }
        default:
            break
        }
        return errors
    }

    func resolve(_ ref: String) -> [String: Any]? {
        guard ref.hasPrefix("#/") else { return nil }
        var node: Any = document
        for part in ref.dropFirst(2).split(separator: "/") {
            guard let next = (node as? [String: Any])?[String(part)] else { return nil }
            node = next
        }
        return node as? [String: Any]
    }

    /// The path template of the document that `path` (no query) matches.
    func template(for path: String) -> String? {
        let paths = (document["paths"] as? [String: Any] ?? [:]).keys
        let segments = path.split(separator: "/", omittingEmptySubsequences: false)
        return paths.first { t in
            let ts = t.split(separator: "/", omittingEmptySubsequences: false)
            return ts.count == segments.count && zip(ts, segments).allSatisfy { $0.hasPrefix("{") || $0 == $1 }
        }
    }

    /// The operation's request body schema (JSON), resolved.
    func requestSchema(_ template: String, method: String) -> [String: Any]? {
        guard let op = ((document["paths"] as? [String: Any])?[template] as? [String: Any])?[method] as? [String: Any],
              let body = op["requestBody"] as? [String: Any], let content = body["content"] as? [String: Any],
              let json = content["application/json"] as? [String: Any]
        else { return nil }
        return json["schema"] as? [String: Any]
    }

    /// The operation's answer for `status`, resolved.
    func response(_ template: String, status: Int, method: String = "get") -> [String: Any]? {
        guard let op = ((document["paths"] as? [String: Any])?[template] as? [String: Any])?[method] as? [String: Any],
              let responses = op["responses"] as? [String: Any], var r = responses["\(status)"] as? [String: Any]
        else { return nil }
        if let ref = r["$ref"] as? String { r = resolve(ref) ?? [:] }
        return r
    }
}

@Suite("docs/openapi.yaml matches the server", .serialized)
struct OpenAPITests {
    @Test("the checker refuses what breaks a schema (a missing field, an extra one, a wrong type, a bad pattern)")
    func checkerCatches() throws {
        let checker = SchemaChecker(document: try openAPIDocument())
        let health = try #require(checker.resolve("#/components/schemas/Health"))
        func value(_ json: String) throws -> Any { try JSONDecoder().decode(JSONValue.self, from: Data(json.utf8)).plain }
        #expect(checker.check(try value(#"{"status": "ok", "ready": true, "phase": "following", "lag": 0}"#), against: health).isEmpty)
        #expect(!checker.check(try value(#"{"status": "ok", "ready": true, "phase": "following"}"#), against: health).isEmpty)
        #expect(!checker.check(try value(#"{"status": "ok", "ready": true, "phase": "following", "lag": 0, "extra": 1}"#), against: health).isEmpty)
        #expect(!checker.check(try value(#"{"status": "ok", "ready": 1, "phase": "following", "lag": 0}"#), against: health).isEmpty)
        #expect(!checker.check(try value(#"{"status": "ok", "ready": true, "phase": "following", "lag": false}"#), against: health).isEmpty)
        #expect(!checker.check(try value(#"{"status": "ok", "ready": true, "phase": "sleeping", "lag": 0}"#), against: health).isEmpty)
        #expect(!checker.check(try value(#"{"status": "ok", "ready": true, "phase": "following", "lag": -1}"#), against: health).isEmpty)
        let digest = try #require(checker.resolve("#/components/schemas/Digest"))
        #expect(!checker.check("ABC", against: digest).isEmpty)
    }

    @Test("every route's answers (good, malformed, missing, pruned) are documented, with a body that matches its schema; every documented path is exercised")
    func everyRoute() async throws {
        let document = try openAPIDocument()
        let checker = SchemaChecker(document: document)
        let api = try await APINode("openapi")
        let entry = api.checkpoint(120).data.entries[1]
        let object = entry.outputObjects[0]
        let epochs = try await api.node.store.snapshotEpochs()
        let epoch = try #require(epochs.last)
        let manifest = try #require(try await api.node.store.snapshotManifest(epoch: epoch))
        let chunk = try #require(try await api.node.store.snapshotChunk(epoch: epoch, index: 0))
        let live = try manifest.verifyChunk(index: 0, frame: chunk, proof: try manifest.proof(chunk: 0), limit: 1 << 26).references[0]
        let requests: [(String, [(String, String)])] = [
            ("/", []), ("/health", []), ("/health?ready", []), ("/v1/status", []), ("/v1/status/history", []),
            ("/v1/checkpoints/0", []), ("/v1/checkpoints/latest", []), ("/v1/checkpoints/99999", []), ("/v1/checkpoints/x", []),
            ("/v1/checkpoints/120/block", []), ("/v1/checkpoints/120/block", [("Range", "bytes=0-9")]),
            ("/v1/checkpoints/120/block", [("Range", "bytes=999999999-")]), ("/v1/checkpoints/99999/block", []),
            ("/v1/transactions/\(entry.transaction.digest.hex)", []), ("/v1/transactions/\(entry.transaction.digest.hex)?epochs=true", []),
            ("/v1/transactions/\(entry.transaction.digest.hex)?proof=false", []), ("/v1/transactions/\(String(repeating: "a", count: 64))", []),
            ("/v1/transactions/zz", []),
            ("/v1/objects/\(object.id.hex)", []), ("/v1/objects/\(object.id.hex)?version=\(object.version)&epochs=true", []),
            ("/v1/objects/\(live.id.hex)?epoch=\(epoch)", []), ("/v1/objects/\(object.id.hex)?epoch=0", []),
            ("/v1/objects/\(object.id.hex)?version=x", []), ("/v1/objects/\(String(repeating: "b", count: 64))", []),
            ("/v1/epochs", []), ("/v1/epochs/1", []), ("/v1/epochs/99", []), ("/v1/epochs/x", []),
            ("/v1/peers", []), ("/metrics", []), ("/v1/events?after=nope", []),
        ]
        var exercised = Set<String>()
        var problems: [String] = []
        for (path, headers) in requests {
            let answer = try await api.get(path, headers: headers)
            let bare = String(path.split(separator: "?", maxSplits: 1)[0])
            guard let template = checker.template(for: bare) else { problems.append("\(path): no path in the document"); continue }
            exercised.insert(template)
            guard let response = checker.response(template, status: answer.status) else {
                problems.append("\(path): status \(answer.status) is not documented")
                continue
            }
            let type = answer.header("content-type")?.split(separator: ";").first.map(String.init) ?? ""
            let content = response["content"] as? [String: Any] ?? [:]
            if answer.status != 304, !content.isEmpty, content[type] == nil {
                problems.append("\(path): content type \(type) is not documented for \(answer.status)")
            }
            if type == "application/json", let schema = (content[type] as? [String: Any])?["schema"] as? [String: Any] {
                let body = try JSONDecoder().decode(JSONValue.self, from: Data(answer.body)).plain
                problems += checker.check(body, against: schema, at: path)
            }
        }
        // The posts: each body as documented, each answer as documented.
        let committee = try #require(api.node.gossip.committees.newest)
        let key = try #require((0..<32).map { DevnetKeys.validator(seed: 14, index: $0) }.first { committee.index(of: $0.publicKey) != nil })
        let vote = Vote(statement: VoteStatement(kind: .vote, epoch: committee.epoch, round: 3, digest: Hashing.sha256([3])), key: key)
        let voteBody = #"{"kind": "vote", "epoch": \#(committee.epoch), "round": 3, "digest": "\#(vote.statement.digest.hex)", "signer": "\#(key.publicKey.raw.hex)", "signature": "\#(HexCoding.encode(vote.signature.bytes))"}"#
        let posts: [(String, String)] = [
            ("/v1/gossip/consensus.messages", #"{"payload": "0102"}"#), ("/v1/gossip/consensus.messages", #"{"payload": "03", "critical": true}"#),
            ("/v1/gossip/nothing", #"{"payload": "04"}"#), ("/v1/gossip/consensus.messages", #"{"payload": "x"}"#),
            ("/v1/consensus/votes", voteBody), ("/v1/consensus/votes", #"{"kind": "vote"}"#),
        ]
        for (path, text) in posts {
            let answer = try await api.post(path, text)
            guard let template = checker.template(for: path) else { problems.append("POST \(path): no path in the document"); continue }
            exercised.insert(template)
            if answer.status < 300, let schema = checker.requestSchema(template, method: "post") {
                problems += checker.check(try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8)).plain, against: schema, at: "POST \(path) body")
            }
            guard let response = checker.response(template, status: answer.status, method: "post") else {
                problems.append("POST \(path): status \(answer.status) is not documented")
                continue
            }
            let content = response["content"] as? [String: Any] ?? [:]
            if let schema = (content["application/json"] as? [String: Any])?["schema"] as? [String: Any] {
                problems += checker.check(try JSONDecoder().decode(JSONValue.self, from: Data(answer.body)).plain, against: schema, at: "POST \(path)")
            }
        }
        // The event streams: a 200 of text/event-stream each.
        if let curl = tool("curl") {
            for path in ["/v1/events", "/v1/gossip/consensus.messages/events", "/v1/consensus/certificates"] {
                let (_, out, _) = try run(curl, ["-s", "-N", "--max-time", "3", "-D", "-", "http://127.0.0.1:\(api.port)\(path)"])
                #expect(String(decoding: out, as: UTF8.self).lowercased().contains("content-type: text/event-stream"), "\(path)")
                if let t = checker.template(for: path) { exercised.insert(t) }
            }
            let missing = try await api.get("/v1/gossip/nothing/events")
            #expect(missing.status == 404 && checker.response("/v1/gossip/{topic}/events", status: 404) != nil)
        }
        let documented = Set((document["paths"] as? [String: Any] ?? [:]).keys)
        #expect(problems.isEmpty, "\(problems.joined(separator: "\n"))")
        #expect(documented == exercised, "documented but not exercised: \(documented.subtracting(exercised)); exercised but not documented: \(exercised.subtracting(documented))")
        try await api.stop()
    }
}
