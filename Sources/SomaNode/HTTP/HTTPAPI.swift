import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import SomaCore
import SomaStore

/// The node's HTTP API on Hummingbird (DESIGN §13, docs/API.md): health, status, checkpoints,
/// blocks, transactions, objects, epochs, peers, events, Prometheus metrics and the status
/// page. Reads come from the store and the status the node samples once a second; no request
/// writes anything. Errors are JSON with a code: a malformed id or number 400, missing 404,
/// pruned 410.
struct HTTPAPI: Service, CustomStringConvertible {
    let node: Node
    let host: String
    let port: Int

    var description: String { "HTTP API" }

    func run() async throws {
        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: APIErrorMiddleware())
        APIRoutes(node: node).register(on: router)
        let node = self.node
        let host = self.host
        let app = Application(
            router: router,
            configuration: ApplicationConfiguration(address: .hostname(host, port: port), serverName: "soma-node/\(NodeVersion.current)"),
            onServerRunning: { channel in
                let bound = channel.localAddress?.port ?? 0
                node.httpPort.withLock { $0 = bound }
                node.logger.info("serving the HTTP API", metadata: ["http.address": "\(host):\(bound)"])
                node.onListening(.http, host, bound)
            },
            eventLoopGroupProvider: .shared(node.group), logger: node.logger)
        do {
            try await app.run()
        } catch {
            guard node.boundHTTPPort != nil else {
                throw NodeError.listen("the HTTP API", "\(host):\(port)", error, fix: "set http.listen in the configuration or --http HOST:PORT (port 0: any free port)")
            }
            throw NodeError("the HTTP API failed: \(error)")
        }
    }
}

/// An answer other than 200, as JSON `{"error": {"code", "message"}}`.
struct APIError: Error {
    let status: HTTPResponse.Status
    let code: String
    let message: String
    var headers: HTTPFields = [:]

    static func badRequest(_ message: String) -> APIError { APIError(status: .badRequest, code: "bad_request", message: message) }
    static func notFound(_ message: String) -> APIError { APIError(status: .notFound, code: "not_found", message: message) }
    static func pruned(_ message: String) -> APIError { APIError(status: .gone, code: "pruned", message: message) }
    static func unavailable(_ message: String) -> APIError { APIError(status: .serviceUnavailable, code: "unavailable", message: message) }

    var response: Response {
        var headers = self.headers
        headers[.contentType] = "application/json"
        headers[.cacheControl] = "no-store"
        let body = APIErrorBody(error: APIErrorDetail(code: code, message: message))
        return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: JSON.encode(body))))
    }
}

/// Turns every error into a JSON answer: ours keep their status, the router's (no route,
/// wrong method) theirs, anything else is a 500 whose message names the failure.
struct APIErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as APIError {
            return error.response
        } catch let error as HTTPError {
            let code: String
            switch error.status {
            case .notFound: code = "not_found"
            case .badRequest: code = "bad_request"
            default: code = "http_\(error.status.code)"
            }
            let message = error.status == .notFound
                ? "no route \(request.method) \(request.uri.path): see docs/API.md (GET /v1/status, /v1/checkpoints/{seq}, ...)"
                : (error.body ?? error.status.reasonPhrase)
            return APIError(status: error.status, code: code, message: message).response
        } catch {
            context.logger.error("request failed", metadata: ["http.path": "\(request.uri.path)", "error": "\(error)"])
            return APIError(status: .internalServerError, code: "internal", message: "\(error)").response
        }
    }
}

/// JSON encoding with sorted keys (stable answers).
enum JSON {
    static func encode<T: Encodable>(_ value: T) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Our models hold strings, integers, doubles and booleans only: encoding cannot fail.
        return (try? Array(encoder.encode(value))) ?? Array("{}".utf8)
    }

    static func response<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok, cache: String = "no-store") -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        headers[.cacheControl] = cache
        return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: encode(value))))
    }
}

/// Parsing of path and query values from a client: strict, every failure a 400 naming the value.
enum APIInput {
    /// A checkpoint number (decimal, at most 20 digits, fits in u64) or `latest`.
    static func sequence(_ text: String?, latest: () async throws -> UInt64) async throws -> UInt64 {
        guard let text else { throw APIError.badRequest("a checkpoint number is missing") }
        if text == "latest" { return try await latest() }
        return try number(text, name: "checkpoint number")
    }

    /// A decimal u64 (no sign, no leading `+`, at most 20 digits).
    static func number(_ text: String, name: String) throws -> UInt64 {
        guard !text.isEmpty, text.utf8.count <= 20, text.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }), let v = UInt64(text) else {
            throw APIError.badRequest("'\(text.prefix(40))' is not a valid \(name): expected a decimal number from 0 to \(UInt64.max)")
        }
        return v
    }

    /// `true` or `false` (also `1`/`0`).
    static func flag(_ text: String, name: String) throws -> Bool {
        switch text {
        case "true", "1", "": return true
        case "false", "0": return false
        default: throw APIError.badRequest("'\(text.prefix(40))' is not a valid value of \(name): expected true or false")
        }
    }

    /// A 32-byte digest or id: 64 hex digits, optionally after `0x`.
    static func digest(_ text: String?, name: String) throws -> Digest {
        guard var t = text else { throw APIError.badRequest("the \(name) is missing") }
        if t.hasPrefix("0x") { t.removeFirst(2) }
        guard t.utf8.count == 64, let bytes = HexCoding.decode(t), let d = Digest(bytes: bytes) else {
            throw APIError.badRequest("'\(String(text?.prefix(80) ?? ""))' is not a valid \(name): expected 64 hexadecimal digits")
        }
        return d
    }
}
