import NIOCore
import NIOHTTP1
import NIOPosix

/// A minimal HTTP/1.1 client for `soma-node status` and tests: one request on a new
/// connection, the whole answer read into memory (bounded).
public enum PlainHTTPClient {
    /// An answer.
    public struct Answer: Sendable {
        /// The status code.
        public var status: Int
        /// The headers (names lowercased).
        public var headers: [(String, String)]
        /// The body.
        public var body: [UInt8]

        /// The first header named `name` (case-insensitive).
        public func header(_ name: String) -> String? {
            let n = name.lowercased()
            return headers.first { $0.0 == n }?.1
        }
    }

    /// GETs `path` from `host:port`.
    /// - Parameters:
    ///   - headers: extra request headers.
    ///   - maxBytes: the largest body accepted.
    /// - Throws: a connection error, or ``NodeError`` for an answer over `maxBytes` or cut short.
    public static func get(
        host: String, port: Int, path: String, headers: [(String, String)] = [], maxBytes: Int = 64 << 20,
        timeout: Duration = .seconds(10)
    ) async throws -> Answer {
        try await send(.GET, host: host, port: port, path: path, headers: headers, maxBytes: maxBytes, timeout: timeout)
    }

    /// POSTs `body` (JSON) to `path` on `host:port`; the same bounds as ``get(host:port:path:headers:maxBytes:timeout:)``.
    public static func post(
        host: String, port: Int, path: String, json body: [UInt8], maxBytes: Int = 64 << 20, timeout: Duration = .seconds(15)
    ) async throws -> Answer {
        try await send(.POST, host: host, port: port, path: path, headers: [("Content-Type", "application/json")], body: body,
                       maxBytes: maxBytes, timeout: timeout)
    }

    static func send(
        _ method: HTTPMethod, host: String, port: Int, path: String, headers: [(String, String)], body: [UInt8]? = nil, maxBytes: Int,
        timeout: Duration
    ) async throws -> Answer {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(5))
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(wrappingChannelSynchronously: channel)
                }
            }
        return try await withThrowingTaskGroup(of: Answer?.self) { group in
            group.addTask {
                try await channel.executeThenClose { inbound, outbound in
                    var head = HTTPHeaders()
                    head.add(name: "Host", value: host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)")
                    head.add(name: "Connection", value: "close")
                    for (n, v) in headers { head.add(name: n, value: v) }
                    if let body { head.add(name: "Content-Length", value: "\(body.count)") }
                    try await outbound.write(.head(HTTPRequestHead(version: .http1_1, method: method, uri: path, headers: head)))
                    if let body { try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body)))) }
                    try await outbound.write(.end(nil))
                    var answer = Answer(status: 0, headers: [], body: [])
                    for try await part in inbound {
                        switch part {
                        case .head(let h):
                            answer.status = Int(h.status.code)
                            answer.headers = h.headers.map { ($0.name.lowercased(), $0.value) }
                        case .body(let b):
                            guard answer.body.count + b.readableBytes <= maxBytes else {
                                throw NodeError("the answer from \(host):\(port)\(path) is over \(maxBytes) bytes")
                            }
                            answer.body += b.readableBytesView
                        case .end:
                            return answer
                        }
                    }
                    throw NodeError("\(host):\(port) closed the connection before the answer to \(path) ended")
                }
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let answer = first else {
                throw NodeError("no answer from \(host):\(port)\(path) within \(timeout)")
            }
            return answer
        }
    }
}
