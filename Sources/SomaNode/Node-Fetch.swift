public import SomaCore
public import SomaNet
import SomaStore
import SomaSync

/// A transaction a peer sent, verified: its entry proof leads to a checkpoint certified by the
/// committee this node holds for its epoch.
public struct FetchedTransaction: Sendable, Hashable {
    /// The transaction and its effects.
    public var transaction: Transaction
    public var effects: TransactionEffects
    /// The certified checkpoint that holds it, and its index there.
    public var checkpoint: CertifiedCheckpointSummary
    public var index: UInt64
}

/// An object version a peer sent, verified through the transaction that wrote it.
public struct FetchedObject: Sendable, Hashable {
    /// The object.
    public var object: Object
    /// The transaction that wrote this version.
    public var writtenBy: FetchedTransaction
}

extension Node {
    /// Asks this node's sources for the transactions `digests` (the seed's state-sync
    /// workflow: a node or validator that misses a few asks its peers for just those) and
    /// returns those that some source answered with a proof that holds: the transaction is the
    /// one asked for, its entry proof leads to a checkpoint certified by the committee this node
    /// holds for that epoch, and that checkpoint is the one this node holds at that height, if
    /// it holds one. A source whose answer fails is not asked again in this call. A digest no
    /// source holds is absent from the result.
    /// - Throws: only when there is no source at all.
    public func fetchTransactions(_ digests: [Digest]) async throws -> [Digest: FetchedTransaction] {
        var remaining = Array(Set(digests))
        var out: [Digest: FetchedTransaction] = [:]
        let clients = try await sourceClients()
        for client in clients where !remaining.isEmpty && client.isConnected {
            var notHeld: [Digest] = []
            asking: while !remaining.isEmpty {
                let batch = Array(remaining.prefix(TransactionsRequest.maxCount))
                guard let items = try? await client.transactions(batch) else { break asking }
                for (i, item) in items.enumerated() {
                    guard let item else { notHeld.append(batch[i]); continue }
                    guard let fetched = try? await verified(item, for: batch[i]) else { break asking }
                    out[batch[i]] = fetched
                }
                remaining.removeFirst(items.count)
            }
            remaining += notHeld
        }
        return out
    }

    /// Asks this node's sources for object versions (a nil version: the one the source holds as
    /// live, proven to exist, not proven to be live) and returns those answered with a proof that
    /// holds: the object is the one asked for, the transaction that wrote it is proven as in
    /// ``fetchTransactions(_:)``, and its effects write this version with this digest.
    public func fetchObjects(_ queries: [ObjectQuery]) async throws -> [ObjectQuery: FetchedObject] {
        var remaining = Array(Set(queries))
        var out: [ObjectQuery: FetchedObject] = [:]
        let clients = try await sourceClients()
        for client in clients where !remaining.isEmpty && client.isConnected {
            var notHeld: [ObjectQuery] = []
            asking: while !remaining.isEmpty {
                let batch = Array(remaining.prefix(TransactionsRequest.maxCount))
                guard let items = try? await client.objects(batch) else { break asking }
                for (i, item) in items.enumerated() {
                    guard let item else { notHeld.append(batch[i]); continue }
                    let q = batch[i]
                    guard item.object.id == q.id, q.version == nil || item.object.version == q.version,
                          let writer = try? await verified(item.writer, for: item.object.previousTransaction),
                          (try? ProofVerifier.verifyWritten(object: item.object, by: writer.transaction.digest, effects: writer.effects)) != nil
                    else { break asking }
                    out[q] = FetchedObject(object: item.object, writtenBy: writer)
                }
                remaining.removeFirst(items.count)
            }
            remaining += notHeld
        }
        return out
    }

    /// The connected sources: discovery's connections, or those a test node was given.
    func sourceClients() async throws -> [PeerClient] {
        let clients = await sources().map(\.client).filter(\.isConnected)
        guard !clients.isEmpty else { throw NodeError("no source is connected to ask: this node has no peers yet") }
        return clients
    }

    /// Checks one answered entry against what this node holds.
    func verified(_ item: EntryWithProof, for digest: Digest) async throws -> FetchedTransaction {
        guard item.transaction.digest == digest else {
            throw CoreError(.invalidProof, "asked for transaction \(digest.short), answered \(item.transaction.digest.short)")
        }
        let summary = item.proof.checkpoint.summary
        guard let committee = try await store.committee(epoch: summary.epoch) else {
            throw CoreError(.unknownCommittee, "the committee of epoch \(summary.epoch) is not known here yet")
        }
        let entry = try ProofVerifier.verify(
            transaction: item.transaction, effects: item.effects, proof: item.proof, genesis: genesis.committee, committee: committee)
        if let held = try await store.summary(at: summary.sequenceNumber), held.digest != item.proof.checkpoint.digest {
            throw CoreError(.brokenHashChain, "checkpoint \(summary.sequenceNumber) of the proof is not the one this node holds")
        }
        return FetchedTransaction(transaction: item.transaction, effects: item.effects, checkpoint: entry.checkpoint, index: entry.index)
    }
}
