import Logging
public import SomaCore
public import SomaGossip
import SomaNet
public import SomaStore
import Synchronization

/// The committees of the verified epoch chain, as the consensus relay needs them: synchronously,
/// from memory (the store is read once a second by ``NodeGossip/refresh(from:)``).
public final class CommitteeBook: Sendable {
    private let committees = Mutex<[UInt64: Committee]>([:])

    /// An empty book.
    public init() {}

    /// The committee of `epoch`, if the verified chain names it.
    public func committee(_ epoch: UInt64) -> Committee? { committees.withLock { $0[epoch] } }

    /// The newest committee known.
    public var newest: Committee? { committees.withLock { c in c.keys.max().flatMap { c[$0] } } }

    func insert(_ committee: Committee) { committees.withLock { $0[committee.epoch] = committee } }

    var epochs: Set<UInt64> { committees.withLock { Set($0.keys) } }
}

/// The node's message propagation (DESIGN §12): a ``GossipRouter`` over every connection the
/// node holds (those discovery dials and those peers open to it; the newest connection of a peer
/// carries its gossip), the ``ConsensusRelay`` on it, and the committees of the verified epoch
/// chain the relay checks votes against.
public final class NodeGossip: Sendable {
    /// The router.
    public let router: GossipRouter
    /// The consensus relay (votes into certificates).
    public let consensus: ConsensusRelay
    /// One link per connected peer.
    public let links: GossipLinks
    /// The committees the relay checks against.
    public let committees: CommitteeBook
    /// Where connections queue the frames they receive (handled off the event loops).
    let intake: GossipIntake

    init(key: SigningKey, configuration: GossipConfiguration = GossipConfiguration(), topics: [GossipTopic] = [], logger: Logger) {
        let router = GossipRouter(localID: key.publicKey, configuration: configuration, logger: logger)
        for t in topics { router.register(topic: t.name, options: t.options) }
        let book = CommitteeBook()
        self.router = router
        self.links = GossipLinks(router: router)
        self.committees = book
        self.intake = GossipIntake(router: router)
        self.consensus = ConsensusRelay(router: router) { book.committee($0) }
    }

    /// What connections hand over: gossip frames, queued for the router.
    var inbox: GossipInbox { intake.inbox }

    /// Reads the committees the store's verified epoch chain names (the genesis committee, and
    /// each ended epoch's next one) that the book lacks; consensus topics go first to the peers
    /// whose node key is a member of the newest committee.
    func refresh(from store: NodeStore) async {
        let known = committees.epochs
        let ended = (try? await store.epochs()) ?? []
        let last = ended.map(\.epoch).max().map { $0 + 1 } ?? 0
        var added = false
        for epoch in 0...last where !known.contains(epoch) {
            if let c = try? await store.committee(epoch: epoch) {
                committees.insert(c)
                added = true
            }
        }
        if added, let newest = committees.newest {
            consensus.setCommitteePeers(Set(newest.members.map(\.name)))
        }
    }

    /// Runs the router's timers and keeps the committees current, until cancelled; then ends
    /// the subscribers' streams.
    func run(store: NodeStore) async {
        defer {
            router.finishSubscribers()
            consensus.finishSubscribers()
        }
        await withTaskGroup(of: Void.self) { tasks in
            tasks.addTask { [router] in await router.run() }
            tasks.addTask { [intake] in await intake.run() }
            tasks.addTask { [self] in
                while !Task.isCancelled {
                    await refresh(from: store)
                    try? await Task.sleep(for: .seconds(1))
                }
            }
        }
    }
}
