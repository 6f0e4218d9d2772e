public import NIOCore
import SomaCore
public import SomaNet

/// A node's service: `getKnownPeers` from discovery, everything else from the history service
/// it wraps.
public struct NodeServing<History: HistoryServing>: HistoryServing {
    /// The history it serves.
    public let history: History
    /// The discovery whose table it answers from.
    public let discovery: Discovery

    /// Serves `history` and `discovery`'s table.
    public init(history: History, discovery: Discovery) {
        self.history = history
        self.discovery = discovery
    }

    /// `getKnownPeers` (no payload) answers this node's record and up to 200 others; the rest
    /// goes to the history service.
    public func handle(method: UInt16, payload: [UInt8]) async -> Result<ByteBuffer, RPCError> {
        guard method == Method.getKnownPeers.rawValue else { return await history.handle(method: method, payload: payload) }
        guard payload.isEmpty else { return .failure(.badRequest("getKnownPeers takes no payload")) }
        let answer = await discovery.knownPeers()
        return .success(ByteBuffer(bytes: BCS.encode(answer, capacity: 512 * (answer.peers.count + 1))))
    }

    /// From the history service.
    public func blockItem(seq: UInt64, part: UInt32) async -> Result<(ByteBuffer, UInt32)?, RPCError> {
        await history.blockItem(seq: seq, part: part)
    }
}
