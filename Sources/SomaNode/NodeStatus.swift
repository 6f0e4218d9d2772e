import Foundation
public import SomaCore
public import SomaStore
import Synchronization

/// What the node is doing, for `/v1/status`, the status page and `soma-node status`.
public enum NodePhase: String, Sendable, Codable, CaseIterable {
    /// Opened; the first look at the store and the peers has not happened yet.
    case starting
    /// Restoring an epoch's state snapshot (chunks from peers).
    case restoring
    /// More than `http.readyWithin` checkpoints behind the best tip it knows of.
    case catchingUp = "catching-up"
    /// Within `http.readyWithin` checkpoints of the best tip its sources report.
    case following
    /// No source: it serves what it holds (an archive that follows nobody, a devnet producer).
    case serving
    /// A graceful stop is under way.
    case stopping
}

/// One second of the node's progress (the status page draws its chart from these).
public struct StatusSample: Sendable, Codable, Equatable {
    /// Milliseconds since 1970.
    public var timeMs: UInt64
    /// `highestSynced` then.
    public var highestSynced: UInt64
    /// Checkpoints stored per second over the second before.
    public var checkpointsPerSecond: Double
    /// Block bytes received from sources per second over the second before.
    public var bytesPerSecond: Double
}

/// A source as the node sees it: its connection, what it says it holds, and what sync measured.
public struct PeerStatus: Sendable, Codable, Equatable {
    /// The address dialled or given (`HOST:PORT`).
    public var address: String
    /// Its peer id (Ed25519 public key, hex), proven in the handshake.
    public var peerId: String
    /// Whether the connection is up.
    public var connected: Bool
    /// The lowest and highest checkpoints it says it holds (claims, checked when fetched).
    public var lowest: UInt64?
    public var highest: UInt64?
    /// Checkpoints it delivered that were verified and stored.
    public var checkpoints: Int
    /// Block bytes received from it.
    public var bytes: Int
    /// Its share of the bytes received from all sources, 0...1.
    public var share: Double
    /// Its measured throughput (bytes/s, a moving average), the score sync picks sources by.
    public var throughput: Double?
    /// Requests to it that failed.
    public var failures: Int
    /// Hedged re-requests sent to it.
    public var hedges: Int
    /// Why it is banned, while it is.
    public var bannedReason: String?
    /// Seconds left of its ban.
    public var bannedSeconds: Double?
}

/// The node's status: watermarks, phase, rates, ETA, peers, store size (`/v1/status`).
public struct StatusReport: Sendable, Codable, Equatable {
    /// soma-node's version.
    public var version: String
    /// The chain id (digest of checkpoint 0), hex.
    public var chainId: String
    /// This node's peer id, hex.
    public var peerId: String
    /// `archive` or `pruned`.
    public var mode: String
    /// What it is doing.
    public var phase: NodePhase
    /// Whether it is within `readyWithin` checkpoints of the best tip it knows of.
    public var ready: Bool
    /// The store's watermarks (DESIGN §1); absent ones are omitted.
    public var highestVerified: UInt64?
    public var highestSynced: UInt64?
    public var highestExecuted: UInt64?
    public var lowestAvailable: UInt64?
    /// The epoch of `highestSynced`.
    public var epoch: UInt64
    /// The highest checkpoint an unbanned source says it holds (a claim, checked when fetched).
    public var peersTip: UInt64
    /// Checkpoints behind `max(peersTip, highestVerified)`.
    public var lag: UInt64
    /// Checkpoints stored per second, averaged over the last 10 s.
    public var checkpointsPerSecond: Double
    /// Block bytes received per second, averaged over the last 10 s.
    public var bytesPerSecond: Double
    /// Seconds until `lag` reaches 0 at the current rate (absent when not catching up).
    public var etaSeconds: Double?
    /// Sources connected, usable (connected, not banned) and banned.
    public var peersConnected: Int
    public var peersUsable: Int
    public var peersBanned: Int
    /// Bytes of the RocksDB index (all column families' files) and of the history segments.
    public var storeBytes: UInt64
    public var segmentBytes: UInt64
    /// Seconds since the node started.
    public var uptimeSeconds: Double
    /// Milliseconds since 1970 when this report was made.
    public var timeMs: UInt64
}

/// Collects the node's status once a second; readers take the last report (no store call on
/// a request). Thread-safe: one lock around small values.
public final class NodeStatus: Sendable {
    struct State {
        var report: StatusReport
        var samples: [StatusSample] = []
        var lastSynced: UInt64?
        var lastBytes: Int = 0
        var lastAt: ContinuousClock.Instant?
        var peers: [PeerStatus] = []
        var restoring = false
        var stopping = false
    }

    /// Samples kept for the chart: the last 10 minutes, one a second.
    public static let keptSamples = 600
    let state: Mutex<State>
    let started = ContinuousClock.now
    let readyWithin: UInt64

    /// A status for a node of `chainID` with `peerID`.
    public init(chainID: Digest, peerID: String, mode: StoreMode, readyWithin: UInt64) {
        self.readyWithin = readyWithin
        state = Mutex(State(report: StatusReport(
            version: NodeVersion.current, chainId: chainID.hex, peerId: peerID, mode: mode.rawValue, phase: .starting, ready: false,
            epoch: 0, peersTip: 0, lag: 0, checkpointsPerSecond: 0, bytesPerSecond: 0, peersConnected: 0, peersUsable: 0,
            peersBanned: 0, storeBytes: 0, segmentBytes: 0, uptimeSeconds: 0, timeMs: NodeStatus.nowMs())))
    }

    /// The last report.
    public var report: StatusReport { state.withLock { $0.report } }
    /// The samples of the last minutes, oldest first.
    public var samples: [StatusSample] { state.withLock { $0.samples } }
    /// The sources, as of the last sample.
    public var peers: [PeerStatus] { state.withLock { $0.peers } }

    /// Marks a snapshot restore under way (or ended).
    public func setRestoring(_ on: Bool) { state.withLock { $0.restoring = on } }
    /// Marks the graceful stop.
    public func setStopping() { state.withLock { $0.stopping = true; $0.report.phase = .stopping } }

    /// What one look at the node found.
    public struct Observation: Sendable {
        /// The store's watermarks.
        public var watermarks: [Watermark: WatermarkValue]
        /// The epoch of `highestSynced`.
        public var epoch: UInt64
        /// The sources.
        public var peers: [PeerStatus]
        /// Total block bytes received from sources so far (a counter).
        public var bytesReceived: Int
        /// Store and segment sizes.
        public var storeBytes: UInt64
        public var segmentBytes: UInt64
    }

    /// Takes one look in: updates the rates, the phase and the report.
    public func record(_ o: Observation) {
        let now = ContinuousClock.now
        let nowMs = NodeStatus.nowMs()
        state.withLock { s in
            let synced = o.watermarks[.highestSynced]?.seq ?? 0
            if let lastAt = s.lastAt, let lastSynced = s.lastSynced {
                let dt = NodeStatus.seconds(now - lastAt)
                if dt > 0 {
                    let cps = Double(synced >= lastSynced ? synced - lastSynced : 0) / dt
                    let bps = Double(max(0, o.bytesReceived - s.lastBytes)) / dt
                    s.samples.append(StatusSample(timeMs: nowMs, highestSynced: synced, checkpointsPerSecond: cps, bytesPerSecond: bps))
                    if s.samples.count > NodeStatus.keptSamples { s.samples.removeFirst(s.samples.count - NodeStatus.keptSamples) }
                }
            }
            s.lastAt = now
            s.lastSynced = synced
            s.lastBytes = o.bytesReceived
            s.peers = o.peers
            let recent = s.samples.suffix(10)
            let cps = recent.isEmpty ? 0 : recent.map(\.checkpointsPerSecond).reduce(0, +) / Double(recent.count)
            let bps = recent.isEmpty ? 0 : recent.map(\.bytesPerSecond).reduce(0, +) / Double(recent.count)
            let peersTip = o.peers.filter { $0.bannedReason == nil }.compactMap(\.highest).max() ?? 0
            let verified = o.watermarks[.highestVerified]?.seq ?? synced
            let best = max(peersTip, verified)
            let lag = best > synced ? best - synced : 0
            let usable = o.peers.filter { $0.connected && $0.bannedReason == nil }.count
            let phase: NodePhase
            if s.stopping {
                phase = .stopping
            } else if s.restoring {
                phase = .restoring
            } else if lag > readyWithin {
                phase = .catchingUp
            } else if usable == 0 {
                phase = .serving
            } else {
                phase = .following
            }
            var r = s.report
            r.phase = phase
            r.ready = !s.restoring && lag <= readyWithin
            r.highestVerified = o.watermarks[.highestVerified]?.seq
            r.highestSynced = o.watermarks[.highestSynced]?.seq
            r.highestExecuted = o.watermarks[.highestExecuted]?.seq
            r.lowestAvailable = o.watermarks[.lowestAvailable]?.seq
            r.epoch = o.epoch
            r.peersTip = peersTip
            r.lag = lag
            r.checkpointsPerSecond = cps
            r.bytesPerSecond = bps
            r.etaSeconds = phase == .catchingUp && cps > 0 ? Double(lag) / cps : nil
            r.peersConnected = o.peers.filter(\.connected).count
            r.peersUsable = usable
            r.peersBanned = o.peers.filter { $0.bannedReason != nil }.count
            r.storeBytes = o.storeBytes
            r.segmentBytes = o.segmentBytes
            r.uptimeSeconds = NodeStatus.seconds(now - started)
            r.timeMs = nowMs
            s.report = r
        }
    }

    /// Milliseconds since 1970 now.
    static func nowMs() -> UInt64 { UInt64(max(0, Date().timeIntervalSince1970 * 1_000)) }

    static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }
}

/// soma-node's version.
public enum NodeVersion {
    /// The version string `/v1/status` and `--version` print.
    public static let current = "0.14.0"
}
