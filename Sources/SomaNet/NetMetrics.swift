import Metrics

/// The peer server's metrics (swift-metrics: the process's backend, `/metrics` of the node's
/// HTTP API, exports them): requests, errors and `busy` answers by method, bytes sent, waits
/// for the upload budgets, handshakes that failed by reason.
final class NetMetrics: Sendable {
    /// One set per process (the counters are the backend's; handles are cached here).
    static let shared = NetMetrics()

    struct PerMethod: Sendable {
        let requests: Counter
        let errors: Counter
        let busy: Counter
    }

    let methods: [UInt16: PerMethod]
    let other: PerMethod
    let bytesOut = Counter(label: "soma_serve_bytes_total")
    let budgetWaits = Counter(label: "soma_serve_budget_waits_total")

    init() {
        func set(_ name: String) -> PerMethod {
            PerMethod(
                requests: Counter(label: "soma_serve_requests_total", dimensions: [("method", name)]),
                errors: Counter(label: "soma_serve_errors_total", dimensions: [("method", name)]),
                busy: Counter(label: "soma_serve_busy_total", dimensions: [("method", name)]))
        }
        var m: [UInt16: PerMethod] = [:]
        for method in Method.allCases where method.rawValue >= Method.getKnownPeers.rawValue {
            m[method.rawValue] = set("\(method)")
        }
        methods = m
        other = set("unknown")
    }

    /// The counters of `method` (an unknown method number counts as `unknown`).
    func of(_ method: UInt16) -> PerMethod { methods[method] ?? other }

    /// A connection that failed before its handshake completed.
    func handshakeFailed(_ error: any Error) {
        let reason: String
        if let e = error as? WireError {
            reason = e.code.rawValue
        } else if "\(error)".contains("SSL") || "\(error)".contains("TLS") || "\(error)".contains("BoringSSL") {
            reason = "tlsFailed"
        } else {
            reason = "other"
        }
        Counter(label: "soma_net_handshake_failures_total", dimensions: [("reason", reason)]).increment()
    }
}
