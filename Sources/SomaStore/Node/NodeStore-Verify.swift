import SomaCore

/// What ``NodeStore/verifyAll(allCertificates:userSignatures:progress:)`` checked.
public struct StoreVerification: Sendable {
    /// Summaries verified (hash chain and batch certificates).
    public var summaries: UInt64 = 0
    /// Checkpoints whose blocks, transactions and objects were verified.
    public var checkpoints: UInt64 = 0
    /// Transactions verified.
    public var transactions: UInt64 = 0
    /// Epoch state roots recomputed and matched.
    public var stateRoots: [UInt64] = []
    /// Live objects compared with the replay.
    public var liveObjects: UInt64 = 0
    /// Whether execution was replayed from genesis (archive stores) or only checked at the tip.
    public var replayedFromGenesis = false
    /// A snapshot restore in progress (after a stop or a crash part-way): its epoch, the chunks
    /// written (each re-verified) and the chunks of the snapshot.
    public var restoreInProgress: (epoch: UInt64, written: Int, chunks: Int)?
}

extension NodeStore {
    /// Re-verifies the whole store and throws at the first fault, naming what and where: the
    /// genesis; the epoch chain; every summary (hash chain, one quorum check per batch of
    /// 1,000, or every certificate); every held block against its certified content digest,
    /// with the transaction index and every stored output object; then, when the store holds
    /// history from genesis, replays every checkpoint's effects, recomputes every epoch's state
    /// root and compares the final live set with the stored one.
    /// - Throws: ``StoreError`` with code `verificationFailed` (or the read error met).
    public func verifyAll(
        allCertificates: Bool = false, userSignatures: Bool = false,
        progress: (@Sendable (UInt64) -> Void)? = nil
    ) async throws -> StoreVerification {
        try await blocking {
            // A snapshot build running beside bulk commits is part of what is verified.
            try self.writer.withLock { _ throws in try self.waitForSnapshotBuild() }
            return try self.verifyAllSync(allCertificates: allCertificates, userSignatures: userSignatures, progress: progress)
        }
    }

    func fault(_ message: String) -> StoreError { StoreError(.verificationFailed, message) }

    /// The blocks of `seq`, or a fault that names the checkpoint.
    func verifiableFrames(_ seq: UInt64) throws(StoreError) -> [[UInt8]] {
        do throws(StoreError) {
            return try blockFramesSync(seq)
        } catch {
            throw fault("checkpoint \(seq): block unreadable (\(error.message))")
        }
    }

    /// A store part-way through a snapshot restore holds the restore's epoch chain, its manifest
    /// and the chunks written so far: the chain is verified again from the genesis committee,
    /// the manifest against the certified epoch end, every written chunk (as stored) against the
    /// certified state root, and every object of those chunks against the live set and the
    /// stored object versions; nothing else may be in the live set.
    func verifyRestoreInProgress(_ state: RestoreState, genesis: Genesis) throws -> StoreVerification {
        var report = StoreVerification()
        let manifest = state.manifest
        do throws(CoreError) {
            _ = try ChainVerifier.verifyEpochChain(genesis: genesis.committee, endOfEpochSummaries: state.epochEnds)
            try manifest.check(against: state.end.summary)
        } catch {
            throw StoreError(.verificationFailed, error, context: "the restore in progress")
        }
        report.summaries = UInt64(state.epochEnds.count)
        var objects: UInt64 = 0
        let framesKept = configuration.retainSnapshots > 0
        for index in state.done.sorted() {
            guard Int(index) < manifest.chunkRoots.count else { throw fault("restore: chunk \(index) is marked written but the snapshot has \(manifest.chunkRoots.count)") }
            guard framesKept else { continue }
            guard let frame = try database.get(cf.snapshotChunks, StoreKeys.chunk(manifest.epoch, index)) else {
                throw fault("restore: chunk \(index) of epoch \(manifest.epoch) is marked written but not stored")
            }
            let proof: [Digest]
            do throws(CoreError) { proof = try manifest.proof(chunk: Int(index)) } catch {
                throw StoreError(.verificationFailed, error, context: "restore: chunk \(index)")
            }
            let chunk = try manifest.verifyChunk(index: index, frame: frame, proof: proof, limit: 64 << 20)
            for (k, ref) in chunk.references.enumerated() {
                guard let live = try database.get(cf.liveObjects, ref.id.bytes), let vd = StoreKeys.readVersionDigest(live),
                      vd.version == ref.version, vd.digest == ref.digest
                else { throw fault("restore: object \(ref.id.hex) of chunk \(index) is not in the live set as certified") }
                guard let value = try database.get(cf.objects, StoreKeys.object(ref.id, version: ref.version)),
                      try objectEncoding(value, ref.id, ref.version) == chunk.encoding(k)
                else {
                    throw fault("restore: object \(ref.id.hex) v\(ref.version) of chunk \(index) is not stored as certified")
                }
            }
            objects += UInt64(chunk.count)
        }
        // Each live entry's object is stored with its certified digest; with the frames kept,
        // the live set holds exactly the written chunks' objects.
        var live: UInt64 = 0
        try database.withIterator(cf.liveObjects) { it in
            while it.isValid {
                let (id, vd) = try liveEntry(it)
                guard let value = try database.get(cf.objects, StoreKeys.object(id, version: vd.version)),
                      Hashing.sha256(domain: .object, try objectEncoding(value, id, vd.version)) == vd.digest
                else { throw fault("restore: live object \(id.hex) v\(vd.version) is missing or does not match its digest") }
                live += 1
                it.next()
            }
        }
        if framesKept && live != objects {
            throw fault("restore: the live set holds \(live) objects, the written chunks \(objects)")
        }
        report.liveObjects = live
        report.restoreInProgress = (manifest.epoch, state.done.count, manifest.chunkRoots.count)
        return report
    }

    func verifyAllSync(allCertificates: Bool, userSignatures: Bool, progress: (@Sendable (UInt64) -> Void)?) throws -> StoreVerification {
        var report = StoreVerification()
        guard let genesis = try genesisSync() else { throw fault("the store has no genesis") }
        do throws(CoreError) { try genesis.verify() } catch { throw StoreError(.verificationFailed, error, context: "genesis") }
        guard try chainIDSync() == genesis.chainID else { throw fault("the stored chain id is not the genesis's") }
        if let state = try restoreStateSync() {
            return try verifyRestoreInProgress(state, genesis: genesis)
        }
        let restored = try restoredEpochSync()
        guard let verified = try watermarkSync(.highestVerified), let synced = try watermarkSync(.highestSynced),
              let executed = try watermarkSync(.highestExecuted), let lowest = try watermarkSync(.lowestAvailable)
        else { throw fault("a watermark is missing") }
        // Read back from the store: checked before any `+ 1` (every loop below stops at
        // highestVerified, which must leave room for one more).
        guard verified.seq < UInt64.max, lowest.seq <= executed.seq + 1, executed.seq <= synced.seq, synced.seq <= verified.seq else {
            throw fault("watermarks out of order: lowestAvailable \(lowest.seq), highestExecuted \(executed.seq), highestSynced \(synced.seq), highestVerified \(verified.seq)")
        }

        // 1. The epoch chain, from the stored epoch ends.
        var ends: [CertifiedCheckpointSummary] = []
        for record in try epochsSync() {
            guard let last = record.lastCheckpoint else { continue }
            guard let s = try summarySync(last) else { throw fault("epoch \(record.epoch): end-of-epoch summary \(last) is missing") }
            ends.append(s)
        }
        // Summaries are verified (and stored) ahead of their blocks, across epoch ends whose
        // records do not exist yet: those ends extend the chain too.
        var next = try ends.last.map { try StoreKeys.successor($0.summary.sequenceNumber, "an epoch's last checkpoint") } ?? 0
        while next <= verified.seq {
            guard let s = try summarySync(next) else { break }
            if s.summary.endOfEpoch != nil { ends.append(s) }
            next += 1
        }
        let committees: [Committee]
        do throws(CoreError) {
            committees = try ChainVerifier.verifyEpochChain(genesis: genesis.committee, endOfEpochSummaries: ends)
        } catch {
            throw StoreError(.verificationFailed, error, context: "epoch chain")
        }
        for c in committees where try committeeSync(c.epoch) != c {
            throw fault("epoch \(c.epoch): the stored committee differs from the certified one")
        }

        // 2. Summaries, in batches, back to genesis (or to the end of the epoch a snapshot was
        //    restored from: that summary is certified by the epoch chain above).
        var tip: VerifiedTip? = nil
        var batch: [CertifiedCheckpointSummary] = []
        var seq: UInt64 = 0
        if let restored {
            guard let r = Int(exactly: restored), r < ends.count, ends[r].summary.sequenceNumber < UInt64.max else {
                throw fault("restored from epoch \(restored), whose end is not stored")
            }
            tip = VerifiedTip(summary: ends[r].summary)
            seq = ends[r].summary.sequenceNumber + 1
            report.summaries += 1
        }
        while seq <= verified.seq {
            guard let s = try summarySync(seq) else { throw fault("checkpoint \(seq): summary missing") }
            guard s.summary.sequenceNumber == seq else { throw fault("checkpoint \(seq): stored summary is of checkpoint \(s.summary.sequenceNumber)") }
            guard let bySeq = try database.get(cf.summaryByDigest, s.digest.bytes), StoreKeys.readU64(bySeq) == seq else {
                throw fault("checkpoint \(seq): digest index missing or wrong")
            }
            batch.append(s)
            if batch.count == 1_000 || seq == verified.seq {
                do throws(CoreError) {
                    tip = try ChainVerifier.verifySummaryBatch(
                        allCertificates ? SummaryBatch(certified: batch) : SummaryBatch(lastCertifiedOf: batch), after: tip,
                        verifyAllCertificates: allCertificates, committee: { Int(exactly: $0).flatMap { $0 < committees.count ? committees[$0] : nil } })
                } catch {
                    throw StoreError(.verificationFailed, error, context: "summaries \(batch[0].summary.sequenceNumber)...\(seq)")
                }
                report.summaries += UInt64(batch.count)
                batch.removeAll(keepingCapacity: true)
            }
            seq += 1
        }
        guard tip?.digest == verified.digest else { throw fault("highestVerified names a digest the chain does not have") }

        // 3. Blocks, transactions, objects; 4. execution replay (archive stores).
        let replay = lowest.seq == 0
        report.replayedFromGenesis = replay
        var live = LiveObjectSet()
        var previous: CheckpointSummary? = lowest.seq == 0 ? nil : try summarySync(lowest.seq - 1)?.summary
        seq = lowest.seq
        while seq <= synced.seq {
            guard let certified = try summarySync(seq) else { throw fault("checkpoint \(seq): summary missing") }
            let summary = certified.summary
            let frames = try verifiableFrames(seq)
            guard !frames.isEmpty else { throw fault("checkpoint \(seq): block missing") }
            var proofs: [[Digest]] = [[]]
            if frames.count > 1 {
                proofs = try (0..<frames.count).map { try partProofSync(seq, UInt32($0)) }
            }
            let checked: VerifiedCheckpoint
            do {
                let limit = configuration.maxBlockBytes
                checked = try CheckpointVerifier.verify(
                    blocks: frames, proofs: proofs, of: certified, previousTotal: previous?.networkTotalTransactions ?? 0,
                    verifyUserSignatures: userSignatures
                ) { frame in
                    do throws(StoreError) {
                        return try LZ4Frame.decompress(frame, limit: limit)
                    } catch {
                        throw fault("checkpoint \(seq): corrupt block (\(error.message))")
                    }
                }
            } catch let e as CoreError {
                throw StoreError(.verificationFailed, e, context: "checkpoint \(seq)")
            }
            let entries = checked.data.entries
            for (index, digest) in checked.transactionDigests.enumerated() {
                guard let location = try transactionLocationSync(digest), location.0 == seq, location.1 == UInt32(index) else {
                    throw fault("checkpoint \(seq): transaction \(digest.short) is not indexed at entry \(index)")
                }
            }
            try checked.forEachOutput { object, encoding, location in
                guard let stored = try database.get(cf.objects, StoreKeys.object(object.id, version: object.version)) else {
                    throw fault("checkpoint \(seq): object \(object.id.hex) v\(object.version) is missing")
                }
                // Stored as its encoding, or as a locator naming where this very checkpoint's
                // verified blocks hold it.
                let matches: Bool
                if let locator = StoreKeys.readObjectLocator(stored) {
                    matches = locator == ObjectLocator(seq: seq, part: location.part, offset: location.offset, length: UInt32(encoding.count))
                } else {
                    matches = stored.elementsEqual(encoding)
                }
                guard matches else {
                    throw fault("checkpoint \(seq): object \(object.id.hex) v\(object.version) is tampered (does not match its certified digest)")
                }
            }
            report.transactions += UInt64(entries.count)
            if replay && seq <= executed.seq {
                do throws(CoreError) {
                    try live.apply(CheckpointData(sequenceNumber: seq, entries: entries))
                    if let end = summary.endOfEpoch {
                        try live.verify(endOfEpoch: end, at: seq)
                        report.stateRoots.append(summary.epoch)
                    }
                } catch {
                    throw StoreError(.verificationFailed, error, context: "execution replay")
                }
            }
            report.checkpoints += 1
            previous = summary
            if seq % 500 == 0 { progress?(seq) }
            seq += 1
        }

        // 5. The stored live set against the replay (or its root at an epoch end).
        if replay {
            var count: UInt64 = 0
            try database.withIterator(cf.liveObjects) { it in
                while it.isValid {
                    let (id, vd) = try liveEntry(it)
                    guard live.objects[id] == vd else {
                        throw fault("live object \(id.hex): stored v\(vd.version), the replay gives \(live.objects[id].map { "v\($0.version)" } ?? "no such object")")
                    }
                    // A locator carried by the entry is the one `objects` stores for that version.
                    let carried: [UInt8]? = it.withValue { v in StoreKeys.liveLocator(raw: v).map { Array($0) } }
                    if let carried, try database.get(cf.objects, StoreKeys.object(id, version: vd.version)) != carried {
                        throw fault("live object \(id.hex) v\(vd.version): its entry's locator is not the one stored for that version")
                    }
                    count += 1
                    it.next()
                }
            }
            guard count == UInt64(live.count) else {
                throw fault("the stored live set has \(count) objects, the replay \(live.count)")
            }
            report.liveObjects = count
        } else if let s = try summarySync(executed.seq), let end = s.summary.endOfEpoch {
            let (root, count) = try stateRoot(overlay: LiveObjectSet(), touched: [])
            guard root == end.stateRoot, count == end.liveObjectCount else {
                throw fault("the stored live set's root \(root.short) is not epoch \(s.summary.epoch)'s certified \(end.stateRoot.short)")
            }
            report.stateRoots.append(s.summary.epoch)
            report.liveObjects = count
        }
        return report
    }
}
