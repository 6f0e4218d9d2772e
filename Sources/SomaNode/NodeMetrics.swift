import CoreMetrics
public import Metrics
public import Prometheus
import SomaStore
import Synchronization

/// The swift-metrics backend of a `soma-node` process: Prometheus metrics in a registry (what
/// `/metrics` serves), each with the help text of ``MetricCatalog``. swift-prometheus's own
/// factory gives every metric an empty help text, which `promtool check metrics` refuses.
public struct NodeMetricsFactory: MetricsFactory {
    /// The registry written to.
    public let registry: PrometheusCollectorRegistry

    /// A factory writing to `registry`.
    public init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
    }

    /// Buckets of the duration histograms (timers): 1 ms to 60 s.
    static let durationBuckets: [Duration] = [.milliseconds(1), .milliseconds(5), .milliseconds(25), .milliseconds(100), .milliseconds(500), .seconds(2), .seconds(10), .seconds(60)]

    /// The metric `label` (already a full name: the unit is part of it) with its help text.
    static func descriptor(_ label: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: label, unitName: "", helpText: MetricCatalog.help(label))
    }

    public func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        registry.makeCounter(descriptor: Self.descriptor(label), labels: dimensions)
    }

    public func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        registry.makeCounter(descriptor: Self.descriptor(label), labels: dimensions)
    }

    public func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        guard aggregate else { return registry.makeGauge(descriptor: Self.descriptor(label), labels: dimensions) }
        return registry.makeValueHistogram(descriptor: Self.descriptor(label), labels: dimensions, buckets: [1, 10, 100, 1_000, 10_000, 100_000])
    }

    public func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
        registry.makeGauge(descriptor: Self.descriptor(label), labels: dimensions)
    }

    public func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        registry.makeDurationHistogram(descriptor: Self.descriptor(label), labels: dimensions, buckets: Self.durationBuckets)
    }

    public func destroyCounter(_ handler: any CounterHandler) {
        if let c = handler as? Prometheus.Counter { registry.unregisterCounter(c) }
    }

    public func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) {
        if let c = handler as? Prometheus.Counter { registry.unregisterCounter(c) }
    }

    public func destroyRecorder(_ handler: any RecorderHandler) {
        if let g = handler as? Prometheus.Gauge { registry.unregisterGauge(g) }
        if let h = handler as? ValueHistogram { registry.unregisterValueHistogram(h) }
    }

    public func destroyMeter(_ handler: any MeterHandler) {
        if let g = handler as? Prometheus.Gauge { registry.unregisterGauge(g) }
    }

    public func destroyTimer(_ handler: any TimerHandler) {
        if let h = handler as? DurationHistogram { registry.unregisterDurationHistogram(h) }
    }
}

/// Every metric the node exports, with its help text (docs/OPERATIONS.md lists them with the
/// alerts worth setting). A metric missing here is exported with the help text
/// ``undocumented``, which a test refuses.
public enum MetricCatalog {
    /// The help text of a metric missing from the catalog.
    public static let undocumented = "soma-node metric (undocumented)"

    /// The help text of `name`.
    public static func help(_ name: String) -> String { texts[name] ?? undocumented }

    static let texts: [String: String] = [
        // Node
        "soma_node_info": "Always 1; the labels name the version and the chain id.",
        "soma_node_phase": "1 for the node's current phase (starting, restoring, catching-up, following, serving, stopping), 0 for the others.",
        "soma_node_ready": "1 while the node is within http.readyWithin checkpoints of the best tip it knows of.",
        "soma_node_uptime_seconds": "Seconds since the node started.",
        // Sync
        "soma_sync_watermark": "The store's watermarks (highestVerified, highestSynced, highestExecuted, lowestAvailable), as checkpoint numbers.",
        "soma_sync_lag_checkpoints": "Checkpoints between highestSynced and the best tip known (a source's claim or highestVerified).",
        "soma_sync_peers_tip": "The highest checkpoint an unbanned source says it holds (a claim, checked when fetched).",
        "soma_sync_source_checkpoints_total": "Checkpoints a source delivered that were verified and stored, by source address.",
        "soma_sync_source_bytes_total": "Block bytes received from a source (used or not), by source address.",
        "soma_sync_source_failures_total": "Requests to a source that failed (timeouts, stalls, refusals, closed connections), by source address.",
        "soma_sync_hedges_total": "Block requests asked again of another source because the first straggled.",
        "soma_sync_bans_total": "Sources banned, by reason class (bad_data, false_claim, stall).",
        "soma_sync_sources": "Sync sources, by state (connected, usable, banned).",
        // Serving (SomaNet)
        "soma_serve_requests_total": "Peer requests received, by method.",
        "soma_serve_errors_total": "Peer requests answered with an error other than busy, by method.",
        "soma_serve_busy_total": "Peer requests answered busy (too many in flight), by method.",
        "soma_serve_bytes_total": "Bytes of answers and stream items written to peers (frame headers included).",
        "soma_serve_budget_waits_total": "Answers held back by the upload budgets (per peer or whole node).",
        // Network
        "soma_net_connections": "Open peer connections, by direction (inbound: handshake completed; outbound: discovery's).",
        "soma_net_handshake_failures_total": "Inbound connections closed before their handshake completed, by reason.",
        // Store
        "soma_store_bytes": "Bytes of live SST files, by RocksDB column family.",
        "soma_store_keys": "Estimated keys, by RocksDB column family.",
        "soma_store_segment_bytes": "Bytes of block frames in the history segments.",
        "soma_store_compactions_running": "RocksDB compactions running now.",
        "soma_store_compaction_pending": "1 while RocksDB owes a compaction.",
        "soma_store_write_stopped": "1 while RocksDB stops writes (a write stall).",
        "soma_store_write_delayed_rate_bytes": "The rate RocksDB slows writes to while delayed (bytes/s); 0 when not delayed.",
        "soma_store_write_stall_seconds_total": "Seconds (sampled each second) during which RocksDB delayed or stopped writes.",
        "soma_store_pruning_lag_checkpoints": "Checkpoints a pruned store still holds below what it is configured to keep (0 for an archive).",
        // HTTP API
        "soma_http_event_subscribers": "Clients subscribed to /v1/events (and in-process subscriptions).",
        // Discovery (SomaDiscovery)
        "soma_discovery_records_admitted_total": "Signed peer records admitted to the peer table.",
        "soma_discovery_records_refused_total": "Peer records refused by the table's limits (per introducer, per address group, full).",
        "soma_discovery_records_rejected_total": "Peer records rejected as invalid, by reason.",
        "soma_discovery_connections": "Outbound connections discovery keeps.",
        "soma_discovery_known_peers": "Peers the persistent table knows.",
        "soma_discovery_dials_total": "Dials to peers, by outcome.",
        "soma_discovery_feelers_total": "Feeler connections (reachability checks of table entries), by outcome.",
        "soma_discovery_exchanges_total": "Known-peer exchanges, by outcome.",
    ]
}

/// The node-level metrics the status sampler sets once a second, from what it observed.
final class NodeGauges: Sendable {
    let totals = Mutex<(checkpoints: [String: Int], bytes: [String: Int], failures: [String: Int], hedges: Int)>(([:], [:], [:], 0))

    init(version: String, chainID: String) {
        Gauge(label: "soma_node_info", dimensions: [("version", version), ("chain_id", chainID)]).record(1)
        // Exists (at zero) from the start: a rate over a series that appears late is empty.
        _ = Counter(label: "soma_sync_hedges_total")
    }

    func update(report: StatusReport, peers: [PeerStatus], families: [(family: String, keys: UInt64, bytes: UInt64)],
                engine: EngineStatistics?, inbound: Int?, outbound: Int?, subscribers: Int, pruningLag: UInt64) {
        for phase in NodePhase.allCases {
            Gauge(label: "soma_node_phase", dimensions: [("phase", phase.rawValue)]).record(phase == report.phase ? 1 : 0)
        }
        Gauge(label: "soma_node_ready").record(report.ready ? 1 : 0)
        Gauge(label: "soma_node_uptime_seconds").record(report.uptimeSeconds)
        let marks: [(String, UInt64?)] = [
            ("highestVerified", report.highestVerified), ("highestSynced", report.highestSynced),
            ("highestExecuted", report.highestExecuted), ("lowestAvailable", report.lowestAvailable),
        ]
        for (name, value) in marks {
            if let value { Gauge(label: "soma_sync_watermark", dimensions: [("watermark", name)]).record(Double(value)) }
        }
        Gauge(label: "soma_sync_lag_checkpoints").record(Double(report.lag))
        Gauge(label: "soma_sync_peers_tip").record(Double(report.peersTip))
        Gauge(label: "soma_sync_sources", dimensions: [("state", "connected")]).record(Double(report.peersConnected))
        Gauge(label: "soma_sync_sources", dimensions: [("state", "usable")]).record(Double(report.peersUsable))
        Gauge(label: "soma_sync_sources", dimensions: [("state", "banned")]).record(Double(report.peersBanned))
        // Counters from the pool's running totals: add what grew since the last look.
        totals.withLock { t in
            var hedges = 0
            for p in peers {
                let dims = [("source", p.address)]
                let dc = p.checkpoints - (t.checkpoints[p.address] ?? 0)
                if dc > 0 { Counter(label: "soma_sync_source_checkpoints_total", dimensions: dims).increment(by: dc) }
                let db = p.bytes - (t.bytes[p.address] ?? 0)
                if db > 0 { Counter(label: "soma_sync_source_bytes_total", dimensions: dims).increment(by: db) }
                let df = p.failures - (t.failures[p.address] ?? 0)
                if df > 0 { Counter(label: "soma_sync_source_failures_total", dimensions: dims).increment(by: df) }
                t.checkpoints[p.address] = max(p.checkpoints, t.checkpoints[p.address] ?? 0)
                t.bytes[p.address] = max(p.bytes, t.bytes[p.address] ?? 0)
                t.failures[p.address] = max(p.failures, t.failures[p.address] ?? 0)
                hedges += p.hedges
            }
            if hedges > t.hedges { Counter(label: "soma_sync_hedges_total").increment(by: hedges - t.hedges) }
            t.hedges = max(hedges, t.hedges)
        }
        for f in families {
            Gauge(label: "soma_store_bytes", dimensions: [("family", f.family)]).record(Double(f.bytes))
            Gauge(label: "soma_store_keys", dimensions: [("family", f.family)]).record(Double(f.keys))
        }
        Gauge(label: "soma_store_segment_bytes").record(Double(report.segmentBytes))
        if let engine {
            Gauge(label: "soma_store_compactions_running").record(Double(engine.runningCompactions))
            Gauge(label: "soma_store_compaction_pending").record(engine.compactionPending ? 1 : 0)
            Gauge(label: "soma_store_write_stopped").record(engine.writeStopped ? 1 : 0)
            Gauge(label: "soma_store_write_delayed_rate_bytes").record(Double(engine.delayedWriteRate))
            let stalled = Counter(label: "soma_store_write_stall_seconds_total")
            if engine.writeStopped || engine.delayedWriteRate > 0 { stalled.increment() }
        }
        Gauge(label: "soma_store_pruning_lag_checkpoints").record(Double(pruningLag))
        if let inbound { Gauge(label: "soma_net_connections", dimensions: [("direction", "inbound")]).record(Double(inbound)) }
        if let outbound { Gauge(label: "soma_net_connections", dimensions: [("direction", "outbound")]).record(Double(outbound)) }
        Gauge(label: "soma_http_event_subscribers").record(Double(subscribers))
    }

    /// A ban, by reason class.
    static func ban(reason: String) {
        let r = reason.lowercased()
        let kind = r.contains("stall") || r.contains("timed out") || r.contains("timeout") ? "stall"
            : r.contains("claim") ? "false_claim" : "bad_data"
        Counter(label: "soma_sync_bans_total", dimensions: [("reason", kind)]).increment()
    }
}
