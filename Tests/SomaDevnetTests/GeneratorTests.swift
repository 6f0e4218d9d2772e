import SomaCore
import SomaDevnet
import Testing

@Suite("Devnet chain generator")
struct GeneratorTests {
    @Test("the same seed gives the same bytes; another seed gives other bytes; batching does not matter")
    func deterministic() async {
        let a = await Chain.make(.tiny, seed: 11)
        let b = await Chain.make(.tiny, seed: 11)
        let c = await Chain.make(.tiny, seed: 12)
        #expect(a.genesis.bcsBytes == b.genesis.bcsBytes)
        #expect(a.checkpoints.map(\.data.bcsBytes) == b.checkpoints.map(\.data.bcsBytes))
        #expect(a.checkpoints.map(\.certified.bcsBytes) == b.checkpoints.map(\.certified.bcsBytes))
        #expect(a.genesis.chainID != c.genesis.chainID)
        #expect(a.checkpoints.last!.certified.digest != c.checkpoints.last!.certified.digest)
        // One at a time, on this thread, gives the same chain as batches on two tasks.
        let single = ChainGenerator(profile: .tiny, seed: 11)
        var one: [GeneratedCheckpoint] = []
        while let cp = single.next() { one.append(cp) }
        #expect(one == a.checkpoints)
    }

    @Test("a tiny chain has the profile's shape: epochs, committee changes, transactions, objects")
    func shape() async throws {
        let profile = DevnetProfile.tiny
        let chain = await Chain.make(profile)
        #expect(chain.checkpoints.count == profile.checkpoints - 1)
        #expect(chain.committees.count == profile.epochs + 1)
        for (e, committee) in chain.committees.enumerated() {
            #expect(committee.epoch == UInt64(e))
            try committee.validate()
            #expect(committee.members.count == profile.validators)
        }
        // Every epoch change replaces a member and shifts voting power.
        for e in 1..<chain.committees.count {
            let before = Set(chain.committees[e - 1].members.map(\.name))
            let after = Set(chain.committees[e].members.map(\.name))
            #expect(before != after)
            #expect(before.intersection(after).count == profile.validators - 1)
        }
        let ends = chain.checkpoints.filter { $0.certified.summary.endOfEpoch != nil }
        #expect(ends.map(\.certified.summary.sequenceNumber) == (0..<profile.epochs).map { profile.lastCheckpoint(ofEpoch: $0) })
        #expect(ends.last?.certified.summary.sequenceNumber == UInt64(profile.checkpoints - 1))
        // The last state root is the generator's live set.
        #expect(ends.last?.certified.summary.endOfEpoch?.stateRoot == chain.generator.stateRoot())
        #expect(ends.last?.certified.summary.endOfEpoch?.liveObjectCount == UInt64(chain.generator.liveObjectCount))
        var created = 0, mutated = 0, deleted = 0, failed = 0
        for cp in chain.checkpoints {
            #expect(cp.data.entries.count == profile.transactionsPerCheckpoint)
            for entry in cp.data.entries {
                if case .failure = entry.effects.status { failed += 1 }
                for change in entry.effects.changes {
                    switch (change.input, change.output) {
                    case (nil, .written): created += 1
                    case (.some, .written): mutated += 1
                    case (.some, .deleted): deleted += 1
                    case (nil, .deleted): Issue.record("deleted an object that did not exist")
                    }
                }
                for object in entry.outputObjects where object.typeTag != "0x2::coin::Coin<0x2::soma::SOMA>" {
                    #expect(object.contents.count >= 64 && object.contents.count <= 4_096)
                }
            }
        }
        #expect(created > deleted)
        #expect(mutated > 0 && deleted > 0)
    }

    @Test("the state roots at every epoch end match a recomputation from the chain's own effects")
    func stateRootsFromEffects() async throws {
        let chain = await Chain.make(.tiny)
        // Replay the effects into a live set, as an executor would, and compare at each epoch end.
        var live: [ObjectID: ObjectRef] = [:]
        for cp in chain.all {
            for entry in cp.data.entries {
                for change in entry.effects.changes {
                    if let input = change.input {
                        #expect(live[change.id]?.version == input.version && live[change.id]?.digest == input.digest)
                    } else {
                        #expect(live[change.id] == nil)
                    }
                    switch change.output {
                    case .written(let out): live[change.id] = ObjectRef(id: change.id, version: out.version, digest: out.digest)
                    case .deleted: live[change.id] = nil
                    }
                }
            }
            if let end = cp.certified.summary.endOfEpoch {
                let root = Merkle.root(leafHashes: live.keys.sorted().map { live[$0]!.leafHash })
                #expect(root == end.stateRoot, "epoch \(cp.certified.summary.epoch)")
                #expect(UInt64(live.count) == end.liveObjectCount)
            }
        }
    }

    @Test("the demo profile generates 2,000 checkpoints that pass every verification rule")
    func demoVerifies() async throws {
        let profile = DevnetProfile.demo
        let generator = ChainGenerator(profile: profile, seed: 1)
        let genesis = generator.genesis
        try genesis.verify()
        var tip = VerifiedTip(summary: genesis.checkpoint.summary)
        var previous = genesis.checkpoint.summary
        var committees = [genesis.committee]
        var transactions = 0
        while !generator.isFinished {
            let batch = await generator.next(count: 100, parallelism: 2)
            // New epoch ends in this batch extend the verified epoch chain first.
            let ends = batch.map(\.certified).filter { $0.summary.endOfEpoch != nil }
            if !ends.isEmpty {
                let all = try ChainVerifier.verifyEpochChain(
                    genesis: genesis.committee, endOfEpochSummaries: generator.endOfEpochSummaries)
                #expect(all.count == committees.count + ends.count)
                committees = all
            }
            let known = committees
            tip = try ChainVerifier.verifySummaryBatch(
                SummaryBatch(lastCertifiedOf: batch.map(\.certified)), after: tip,
                committee: { $0 < known.count ? known[Int($0)] : nil })
            for cp in batch {
                let count = try ChainVerifier.entryCount(of: cp.certified.summary, previous: previous)
                try BlockVerifier.verify(cp.data, summary: cp.certified.summary, entryCount: count,
                                         verifyUserSignatures: cp.certified.summary.sequenceNumber % 50 == 0)
                previous = cp.certified.summary
                transactions += cp.data.entries.count
            }
        }
        #expect(tip.summary.sequenceNumber == 1_999)
        #expect(transactions == 1_999 * 20)
        #expect(committees.count == 4)
        #expect(tip.summary.endOfEpoch?.stateRoot == generator.stateRoot())
    }

    @Test("the bench profile has 100 validators and 100 transactions a checkpoint")
    func benchShape() async {
        let generator = ChainGenerator(profile: .bench, seed: 1)
        #expect(generator.genesis.committee.members.count == 100)
        let batch = await generator.next(count: 2, parallelism: 2)
        #expect(batch.map { $0.data.entries.count } == [100, 100])
        #expect(DevnetProfile.bench.lastCheckpoint(ofEpoch: 9) == 9_999)
    }
}

@Suite("Execution rules over the live object set")
struct ExecutionTests {
    @Test("applying the tiny chain in order reproduces every certified state root")
    func replay() async throws {
        let chain = await Chain.make(.tiny)
        var live = LiveObjectSet()
        for cp in chain.all {
            try live.apply(cp.data)
            if let end = cp.certified.summary.endOfEpoch {
                try live.verify(endOfEpoch: end, at: cp.certified.summary.sequenceNumber)
            }
        }
        #expect(live.stateRoot() == chain.generator.stateRoot())
    }

    @Test("applying in place (a bulk catch-up's in-memory set) gives the staged apply's set and roots, names every changed id, and rejects the same violations")
    func replayInPlace() async throws {
        let chain = await Chain.make(.tiny)
        var staged = LiveObjectSet()
        var inPlace = LiveObjectSet()
        for cp in chain.all {
            try staged.apply(cp.data)
            var changed = Set<ObjectID>()
            try inPlace.applyInPlace(cp.data) { changed.insert($0) }
            #expect(inPlace.objects == staged.objects)
            #expect(changed == Set(cp.data.entries.flatMap { $0.effects.changes.map(\.id) }))
            if let end = cp.certified.summary.endOfEpoch {
                try inPlace.verify(endOfEpoch: end, at: cp.certified.summary.sequenceNumber)
            }
        }
        var live = LiveObjectSet()
        try live.applyInPlace(chain.all[0].data) { _ in }
        try live.applyInPlace(chain.all[1].data) { _ in }
        // Checkpoint 1 again: its inputs are no longer live, its creations already are.
        expectCodes([.effectsMismatch]) { try live.applyInPlace(chain.all[1].data) { _ in } }
        // A change whose version does not grow.
        var data = chain.all[2].data
        let i = data.entries[0].effects.changes.firstIndex { $0.input != nil }!
        let input = data.entries[0].effects.changes[i].input!
        data.entries[0].effects.changes[i].output = .written(VersionDigest(version: input.version, digest: input.digest))
        var other = LiveObjectSet()
        try other.applyInPlace(chain.all[0].data) { _ in }
        try other.applyInPlace(chain.all[1].data) { _ in }
        expectCodes([.effectsMismatch]) { try other.applyInPlace(data) { _ in } }
    }

    @Test("out-of-order, repeated and stale effects are rejected and leave the set unchanged")
    func violations() async throws {
        let chain = await Chain.make(.tiny)
        var live = LiveObjectSet()
        try live.apply(chain.all[0].data)
        try live.apply(chain.all[1].data)
        let before = live.objects
        // Applying checkpoint 1 again: its inputs are no longer live, its creations already are.
        expectCodes([.effectsMismatch]) { try live.apply(chain.all[1].data) }
        // Skipping checkpoint 2 when 3 depends on it (some object of 3 was written by 2).
        var skipped = live
        var failedSomewhere = false
        for k in 3..<chain.all.count where failure({ try skipped.apply(chain.all[k].data) }) != nil {
            failedSomewhere = true
            break
        }
        #expect(failedSomewhere)
        #expect(live.objects == before)
        // A change whose version does not grow.
        var data = chain.all[2].data
        let i = data.entries[0].effects.changes.firstIndex { $0.input != nil }!
        let input = data.entries[0].effects.changes[i].input!
        data.entries[0].effects.changes[i].output = .written(VersionDigest(version: input.version, digest: input.digest))
        expectCodes([.effectsMismatch]) { try live.apply(data) }
        #expect(live.objects == before)
        // A wrong certified root.
        let end = chain.generator.endOfEpochSummaries[0].summary.endOfEpoch!
        expectCodes([.contentMismatch]) { try live.verify(endOfEpoch: end, at: 1) }
    }
}
