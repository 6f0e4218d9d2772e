public import NIOCore
public import SomaCore
public import SomaNet
public import SomaStore

/// Who a source is, for bans and reports: a peer by its node key, an archive by its location.
/// A ban is kept by identity: every entry of the same source is banned with it.
public enum SourceID: Hashable, Sendable, CustomStringConvertible {
    /// A peer, by the node key its handshake proved.
    case peer(PeerID)
    /// An archive (DESIGN §11), by its location (`s3://BUCKET/PREFIX` or a folder).
    case archive(String)

    /// The peer id, for a peer.
    public var peerID: PeerID? {
        if case .peer(let id) = self { return id }
        return nil
    }

    public var description: String {
        switch self {
        case .peer(let id): return "\(id)"
        case .archive(let location): return location
        }
    }
}

/// What the sync scheduler asks of a source of checkpoints and snapshots (DESIGN §10): a peer
/// over the wire (``PeerClient``) or an archive in an object store or a folder. Every answer
/// is the source's claim until verified: summaries against the committees, blocks and chunks
/// against their certified digests. A source that cannot serve a request now throws
/// ``SourceFailure`` (counted against it, no ban), one that lacks what it advertised
/// `RPCError.notFound`, anything else counts as bad data.
public protocol SyncSource: AnyObject, Sendable {
    /// Who it is.
    var sourceID: SourceID { get }
    /// Whether it can be asked now (a peer: its connection is open).
    var isConnected: Bool { get }
    /// What it holds.
    func availability() async throws -> Availability
    /// The certified summaries ending epochs `epoch`, `epoch + 1`, …, at most `max`.
    func epochEndings(from epoch: UInt64, max: UInt32) async throws -> [CertifiedCheckpointSummary]
    /// `count` summaries from `seq`, each with its certificate when `allCertificates`.
    func summaries(from seq: UInt64, count: UInt32, allCertificates: Bool) async throws -> SummariesResponse
    /// The blocks of `count` checkpoints from `seq`, every part with its proof (a prefix when the
    /// source stops holding them).
    func blocks(from seq: UInt64, count: UInt32, timeout: TimeAmount?) async throws -> [BlockItem]
    /// The snapshot manifest of `epoch`.
    func snapshotManifest(epoch: UInt64) async throws -> SnapshotManifest
    /// Chunk `index` of `epoch`'s snapshot, with its subtree proof and the chunk count.
    func snapshotChunk(epoch: UInt64, index: UInt32, timeout: TimeAmount?) async throws -> ProvenFrame
    /// Lets go of it (a peer: closes the connection).
    func close() async
}

extension SyncSource {
    /// Every epoch ending from `epoch` a request holds.
    public func epochEndings(from epoch: UInt64) async throws -> [CertifiedCheckpointSummary] {
        try await epochEndings(from: epoch, max: EpochEndingsRequest.maxCount)
    }
}

/// A source could not answer now (a store that failed past its retries, a read that timed
/// out): counted against the source like a stall or a closed connection, without a ban for bad
/// data.
public struct SourceFailure: Error, CustomStringConvertible, Sendable {
    /// What failed.
    public var description: String
    /// Whether it was a timeout (two in a row pause the source).
    public var stalled: Bool

    /// A failure.
    public init(_ description: String, stalled: Bool) {
        self.description = description
        self.stalled = stalled
    }
}

extension PeerClient: SyncSource {
    /// The peer's node key.
    public var sourceID: SourceID { .peer(peerID) }
}

/// A store's own snapshots as a source of snapshot chunks (an older data directory of this
/// node, say): what a differential snapshot update reads locally instead of fetching (DESIGN
/// §10). It serves the snapshots the store holds, nothing else; every chunk is verified by the
/// restore against the manifest being restored, like any source's.
public final class StoreSnapshotSource: SyncSource {
    /// The store.
    public let store: NodeStore
    /// Its label (its path).
    public let sourceID: SourceID

    /// The snapshots of `store`, labelled `label`.
    public init(store: NodeStore, label: String) {
        self.store = store
        sourceID = .archive(label)
    }

    public var isConnected: Bool { true }

    public func availability() async throws -> Availability {
        Availability(lowestAvailable: 0, highestSynced: 0, highestVerified: 0, snapshotEpochs: Array(try await store.snapshotEpochs().suffix(Availability.maxSnapshotEpochs)))
    }

    public func epochEndings(from epoch: UInt64, max: UInt32) async throws -> [CertifiedCheckpointSummary] { [] }

    public func summaries(from seq: UInt64, count: UInt32, allCertificates: Bool) async throws -> SummariesResponse {
        throw RPCError.notFound("a store's snapshots serve no summaries")
    }

    public func blocks(from seq: UInt64, count: UInt32, timeout: TimeAmount?) async throws -> [BlockItem] {
        throw RPCError.notFound("a store's snapshots serve no blocks")
    }

    public func snapshotManifest(epoch: UInt64) async throws -> SnapshotManifest {
        guard let m = try await store.snapshotManifest(epoch: epoch) else { throw RPCError.notFound("no snapshot of epoch \(epoch)") }
        return m
    }

    public func snapshotChunk(epoch: UInt64, index: UInt32, timeout: TimeAmount?) async throws -> ProvenFrame {
        let manifest = try await snapshotManifest(epoch: epoch)
        guard Int(index) < manifest.chunkRoots.count, let frame = try await store.snapshotChunk(epoch: epoch, index: index) else {
            throw RPCError.notFound("no chunk \(index) of epoch \(epoch)'s snapshot")
        }
        return ProvenFrame(frame: frame, proof: try manifest.proof(chunk: Int(index)), count: UInt32(manifest.chunkRoots.count))
    }

    /// The store is the caller's to close.
    public func close() async {}
}
