public import SomaCore
public import SomaStore

/// Something that grows the node's own chain while it runs (a local devnet's producer): it
/// commits new checkpoints to the store and hands each committed tip to `publish`, which pushes
/// it to every connected peer (`pushCheckpoint`), as a validator's checkpoints are gossiped.
public protocol CheckpointProducer: Sendable {
    /// Produces until the chain is complete or the task is cancelled.
    func run(store: NodeStore, publish: @escaping @Sendable (CertifiedCheckpointSummary) -> Void) async throws
}
