import SomaCore

/// What one pruning pass removed.
public struct PruneReport: Sendable, Equatable {
    /// Epochs pruned in this pass.
    public var epochs: [UInt64] = []
    /// Checkpoints whose blocks were removed.
    public var checkpoints: UInt64 = 0
    /// Object versions removed.
    public var objectVersions: UInt64 = 0
    /// The new `lowestAvailable`.
    public var lowestAvailable: UInt64 = 0
}

extension NodeStore {
    /// Prunes a pruned-mode store: for every completed and executed epoch older than the last
    /// `retainEpochs`, removes its transaction index entries and the object versions its
    /// transactions superseded (inputs of its effects) and advances `lowestAvailable` past it,
    /// then deletes its history segments (blocks and part proofs). Summaries, committees and epoch records stay. An archive store
    /// is left alone.
    ///
    /// Each checkpoint's removals and the watermark advance are one write batch, so an
    /// interrupted pass resumes where it stopped.
    public func prune() async throws -> PruneReport {
        try await blocking { try self.pruneSync() }
    }

    /// The background pruner: prunes every `interval` until its task is cancelled (pruned
    /// stores only; returns at once for an archive store).
    public func runPruning(every interval: Duration = .seconds(1)) async throws {
        guard configuration.mode == .pruned else { return }
        while !Task.isCancelled {
            do {
                _ = try await prune()
            } catch is CancellationError where Task.isCancelled {
                // Cancelled between the check and the pass (the pool refuses work for a
                // cancelled task): that is the end asked for, not a failure.
                return
            }
            try? await Task.sleep(for: interval)
        }
    }

    func pruneSync() throws -> PruneReport {
        var report = PruneReport()
        guard configuration.mode == .pruned else {
            report.lowestAvailable = try watermarkSync(.lowestAvailable)?.seq ?? 0
            return report
        }
        let retain = max(1, configuration.retainEpochs)
        while true {
            // Decide under the writer lock, prune one epoch, repeat: commits interleave.
            let done: Bool = try writer.withLock { _ throws in
                guard let executed = try watermarkSync(.highestExecuted),
                      let lowest = try watermarkSync(.lowestAvailable),
                      let executedSummary = try summarySync(executed.seq)
                else { return true }
                let lowestSummary = try summarySync(lowest.seq)
                guard let lowestEpoch = lowestSummary?.summary.epoch else { return true }
                // The epoch holding highestExecuted is current even if just ended.
                let epoch = executedSummary.summary.epoch
                let currentEpoch = executedSummary.summary.endOfEpoch == nil || epoch == .max ? epoch : epoch + 1
                // An epoch that ends at the executed tip stays until a checkpoint follows it: the
                // store never prunes its newest checkpoint.
                // retain is configured (any UInt64): the sum is checked.
                let (keep, overflow) = lowestEpoch.addingReportingOverflow(retain)
                guard !overflow, keep <= currentEpoch,
                      let record = try epochSync(lowestEpoch), let last = record.lastCheckpoint, last < executed.seq
                else { return true }
                var seq = lowest.seq
                while seq <= last {
                    let batch = WriteBatch(for: database)
                    let groupEnd = last - seq > 15 ? seq + 15 : last  // seq <= last
                    for s in seq...groupEnd {
                        guard let data = try checkpointDataSync(s) else { continue }
                        for entry in data.entries {
                            batch.delete(cf.transactions, entry.transaction.digest.bytes)
                            for change in entry.effects.changes {
                                if let input = change.input {
                                    batch.delete(cf.objects, StoreKeys.object(change.id, version: input.version))
                                    report.objectVersions += 1
                                }
                            }
                        }
                        report.checkpoints += 1
                    }
                    let nextSeq = groupEnd + 1
                    guard let nextSummary = try summarySync(nextSeq) else {
                        throw StoreError(.inconsistent, "checkpoint \(nextSeq) after pruned epoch \(lowestEpoch) has no summary")
                    }
                    setWatermark(.lowestAvailable, WatermarkValue(seq: nextSeq, digest: nextSummary.digest), in: batch)
                    try database.write(batch, sync: configuration.syncWrites)
                    held.withLock { $0.lowest = nextSeq }
                    seq = nextSeq
                }
                // The blocks go with whole segments (one per epoch), after the watermark: a
                // crash in between leaves a segment below lowestAvailable, deleted on open.
                try segments.prune(below: seq)
                report.epochs.append(lowestEpoch)
                return false
            }
            if done { break }
        }
        report.lowestAvailable = try watermarkSync(.lowestAvailable)?.seq ?? 0
        return report
    }
}
