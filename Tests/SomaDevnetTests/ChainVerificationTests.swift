import SomaCore
import SomaDevnet
import Testing

@Suite("Chain verification against generated chains")
struct ChainVerificationTests {
    @Test("the epoch chain, summary batches and blocks of a tiny chain verify")
    func tinyVerifies() async throws {
        let chain = await Chain.make(.tiny)
        try chain.genesis.verify()
        let committees = try ChainVerifier.verifyEpochChain(
            genesis: chain.genesis.committee, endOfEpochSummaries: chain.generator.endOfEpochSummaries)
        #expect(committees == chain.committees)
        #expect(committees.count == DevnetProfile.tiny.epochs + 1)
        let all = chain.all
        var tip: VerifiedTip? = nil
        for batch in stride(from: 0, to: all.count, by: 7).map({ Array(all[$0..<min($0 + 7, all.count)]) }) {
            tip = try ChainVerifier.verifySummaryBatch(
                SummaryBatch(lastCertifiedOf: batch.map(\.certified)), after: tip, committee: chain.committee)
        }
        #expect(tip?.summary.sequenceNumber == UInt64(DevnetProfile.tiny.checkpoints - 1))
        // Every certificate, checked individually, also verifies.
        _ = try ChainVerifier.verifySummaryBatch(
            SummaryBatch(certified: all.map(\.certified)), after: nil, verifyAllCertificates: true, committee: chain.committee)
        for (i, cp) in all.enumerated() {
            let count = try ChainVerifier.entryCount(of: cp.certified.summary, previous: i == 0 ? nil : all[i - 1].certified.summary)
            try BlockVerifier.verify(cp.data, summary: cp.certified.summary, entryCount: count, verifyUserSignatures: true)
        }
    }

    @Test("a batch must link to the verified tip, be contiguous and carry its last certificate")
    func batchRules() async throws {
        let chain = await Chain.make(.tiny)
        let all = chain.all.map(\.certified)
        let tip = try ChainVerifier.verifySummaryBatch(SummaryBatch(lastCertifiedOf: Array(all[0..<5])), after: nil, committee: chain.committee)
        // Skipping a checkpoint.
        expectCodes([.nonContiguous]) {
            _ = try ChainVerifier.verifySummaryBatch(SummaryBatch(lastCertifiedOf: Array(all[6..<9])), after: tip, committee: chain.committee)
        }
        // Not starting at 0 without a tip.
        expectCodes([.nonContiguous]) {
            _ = try ChainVerifier.verifySummaryBatch(SummaryBatch(lastCertifiedOf: Array(all[5..<9])), after: nil, committee: chain.committee)
        }
        // A reordered batch.
        expectCodes([.nonContiguous]) {
            _ = try ChainVerifier.verifySummaryBatch(
                SummaryBatch(lastCertifiedOf: [all[5], all[7], all[6]]), after: tip, committee: chain.committee)
        }
        // Missing the last certificate, or every certificate when all are required.
        var noCert = SummaryBatch(lastCertifiedOf: Array(all[5..<9]))
        noCert.certificates[3] = nil
        expectCodes([.missingCertificate]) { _ = try ChainVerifier.verifySummaryBatch(noCert, after: tip, committee: chain.committee) }
        expectCodes([.missingCertificate]) {
            _ = try ChainVerifier.verifySummaryBatch(SummaryBatch(lastCertifiedOf: Array(all[5..<9])), after: tip,
                                                     verifyAllCertificates: true, committee: chain.committee)
        }
        // The last summary's certificate swapped for another checkpoint's.
        var swapped = SummaryBatch(lastCertifiedOf: Array(all[5..<9]))
        swapped.certificates[3] = all[4].certificate
        expectCodes([.invalidSignature]) { _ = try ChainVerifier.verifySummaryBatch(swapped, after: tip, committee: chain.committee) }
        // Empty and mismatched batches.
        expectCodes([.invalidBatch]) {
            _ = try ChainVerifier.verifySummaryBatch(SummaryBatch(summaries: [], certificates: []), after: tip, committee: chain.committee)
        }
        // Without the committee of a later epoch the batch cannot be checked.
        expectCodes([.unknownCommittee]) {
            _ = try ChainVerifier.verifySummaryBatch(SummaryBatch(lastCertifiedOf: Array(all[5..<all.count])), after: tip,
                                                     committee: { $0 == 0 ? chain.committees[0] : nil })
        }
    }

    /// Expected errors for a flipped byte in each field of a summary that is not an epoch end,
    /// last in its batch. Offsets follow the field order of DESIGN §3.
    static func expectedSummaryCodes(offset: Int) -> Set<CoreError.Code> {
        let codec: Set<CoreError.Code> = [.truncated, .trailingBytes, .lengthTooLarge, .invalidOptionTag, .overlongULEB128,
                                          .nonCanonicalULEB128, .unknownTag, .invalidUTF8]
        switch offset {
        case 0..<8: return [.invalidEpochTransition]
        case 8..<16: return [.nonContiguous]
        case 16..<24: return [.invalidSignature, .invalidBatch]
        case 24..<56: return [.invalidSignature]
        case 56: return codec.union([.brokenHashChain])
        case 57..<89: return [.brokenHashChain]
        case 89..<97: return [.invalidSignature, .invalidBatch]
        case 97: return codec
        default: return [.invalidSignature]
        }
    }

    @Test("one flipped byte anywhere in a summary is rejected with the error of its field")
    func tamperedSummary() async throws {
        let chain = await Chain.make(.tiny)
        let all = chain.all.map(\.certified)
        let tip = try ChainVerifier.verifySummaryBatch(SummaryBatch(lastCertifiedOf: Array(all[0..<3])), after: nil, committee: chain.committee)
        let target = all[4]
        #expect(target.summary.endOfEpoch == nil)
        let bytes = target.summary.bcsBytes
        #expect(bytes.count == 106)
        for i in bytes.indices {
            expectCodes(Self.expectedSummaryCodes(offset: i), "summary byte \(i)") {
                let summary = try CheckpointSummary(bcsBytes: flipped(bytes, at: i))
                let batch = SummaryBatch(summaries: [all[3].summary, summary], certificates: [nil, target.certificate])
                _ = try ChainVerifier.verifySummaryBatch(batch, after: tip, committee: chain.committee)
            }
        }
        // A flipped byte in a summary inside a batch breaks the link to the next one.
        for i in stride(from: 0, to: bytes.count, by: 5) {
            expectCodes(Self.expectedSummaryCodes(offset: i).union([.brokenHashChain]), "inner summary byte \(i)") {
                let summary = try CheckpointSummary(bcsBytes: flipped(bytes, at: i))
                let batch = SummaryBatch(summaries: [all[3].summary, summary, all[5].summary], certificates: [nil, nil, all[5].certificate])
                _ = try ChainVerifier.verifySummaryBatch(batch, after: tip, committee: chain.committee)
            }
        }
    }

    @Test("one flipped byte anywhere in a certificate is rejected")
    func tamperedCertificate() async throws {
        let chain = await Chain.make(.tiny)
        let target = chain.checkpoints[3].certified
        let committee = chain.committees[Int(target.summary.epoch)]
        let bytes = target.certificate.bcsBytes
        let n = committee.members.count
        let bitmapLength = (n + 7) / 8
        for i in bytes.indices {
            let expected: Set<CoreError.Code>
            switch i {
            case 0..<8: expected = [.wrongEpoch]
            case 8: expected = [.truncated, .lengthTooLarge, .trailingBytes, .bitmapOutOfRange]
            case 9..<(9 + bitmapLength): expected = [.unknownSigner, .signatureCountMismatch, .insufficientVotingPower, .invalidSignature]
            case 9 + bitmapLength: expected = [.lengthTooLarge, .trailingBytes, .signatureCountMismatch]
            default: expected = [.invalidSignature]
            }
            expectCodes(expected, "certificate byte \(i)") {
                let cert = try QuorumCertificate(bcsBytes: flipped(bytes, at: i))
                try CertifiedCheckpointSummary(summary: target.summary, certificate: cert).verify(committee: committee)
            }
        }
    }

    @Test("one flipped byte in a block is rejected; user signatures are covered by the certificate")
    func tamperedBlock() async throws {
        let chain = await Chain.make(.tiny)
        let cp = chain.checkpoints[5]
        let bytes = cp.data.bcsBytes
        let summary = cp.certified.summary
        let allowed: Set<CoreError.Code> = [
            .contentMismatch, .effectsMismatch, .outputObjectMismatch, .truncated, .trailingBytes, .lengthTooLarge,
            .invalidOptionTag, .overlongULEB128, .nonCanonicalULEB128, .unknownTag, .invalidUTF8,
        ]
        var seen: Set<CoreError.Code> = []
        for i in bytes.indices {
            let error = failure {
                let data = try CheckpointData(bcsBytes: flipped(bytes, at: i))
                try BlockVerifier.verify(data, summary: summary, entryCount: UInt64(cp.data.entries.count))
            }
            guard let error else {
                Issue.record("block byte \(i) flipped and accepted")
                continue
            }
            #expect(allowed.contains(error.code), "block byte \(i): \(error)")
            seen.insert(error.code)
        }
        #expect(seen.contains(.contentMismatch))
        #expect(seen.contains(.outputObjectMismatch))
        // Missing and extra entries.
        var fewer = cp.data
        fewer.entries.removeLast()
        expectCodes([.contentMismatch]) { try BlockVerifier.verify(fewer, summary: summary, entryCount: UInt64(cp.data.entries.count)) }
        expectCodes([.contentMismatch]) { try BlockVerifier.verify(fewer, summary: summary) }
        // A block offered for another checkpoint.
        expectCodes([.contentMismatch]) { try BlockVerifier.verify(cp.data, summary: chain.checkpoints[6].certified.summary) }
        // Effects of another transaction, an output object dropped.
        var wrongEffects = cp.data
        wrongEffects.entries[0].effects = cp.data.entries[1].effects
        expectCodes([.effectsMismatch]) { try BlockVerifier.verify(wrongEffects, summary: summary) }
        var dropped = cp.data
        dropped.entries[0].outputObjects.removeLast()
        expectCodes([.outputObjectMismatch]) { try BlockVerifier.verify(dropped, summary: summary) }
    }

    @Test("a flipped byte in a leaf fails its inclusion proof against the content digest")
    func tamperedLeaf() async throws {
        let chain = await Chain.make(.tiny)
        let cp = chain.checkpoints[2]
        let leaves = cp.data.entries.map(\.leaf)
        let hashes = leaves.map(\.leafHash)
        let proof = try Merkle.inclusionProof(index: 1, leafHashes: hashes)
        let root = cp.certified.summary.contentDigest
        try Merkle.verifyInclusion(leafHash: hashes[1], index: 1, treeSize: UInt64(hashes.count), proof: proof, root: root)
        let bytes = leaves[1].bcsBytes
        for i in bytes.indices {
            let leaf = try ExecutionLeaf(bcsBytes: flipped(bytes, at: i))
            expectCodes([.invalidProof], "leaf byte \(i)") {
                try Merkle.verifyInclusion(leafHash: leaf.leafHash, index: 1, treeSize: UInt64(hashes.count), proof: proof, root: root)
            }
        }
    }

    @Test("a checkpoint of 2,500 entries verifies in three parts with subtree proofs; tampered parts and proofs fail")
    func parts() async throws {
        let profile = DevnetProfile(name: "wide", validators: 4, epochs: 1, checkpoints: 2, transactionsPerCheckpoint: 2_500, accounts: 50)
        let chain = await Chain.make(profile)
        let cp = chain.checkpoints[0]
        let summary = cp.certified.summary
        let count = try ChainVerifier.entryCount(of: summary, previous: chain.genesis.checkpoint.summary)
        #expect(count == 2_500)
        #expect(BlockVerifier.partCount(entryCount: count) == 3)
        let parts = BlockVerifier.parts(of: cp.data)
        #expect(parts.map(\.data.entries.count) == [1_024, 1_024, 452])
        for (p, part) in parts.enumerated() {
            try BlockVerifier.verifyPart(part.data, part: UInt64(p), proof: part.proof, summary: summary, entryCount: count)
        }
        // Three chunk roots: chunks 0 and 1 pair up, chunk 2 hangs from the root.
        #expect(parts.map(\.proof.count) == [2, 2, 1])
        // Wrong index, a part with an entry missing, a flipped proof byte, a wrong entry count.
        expectCodes([.contentMismatch]) {
            try BlockVerifier.verifyPart(parts[0].data, part: 1, proof: parts[0].proof, summary: summary, entryCount: count)
        }
        var short = parts[1].data
        short.entries.removeLast()
        expectCodes([.contentMismatch]) {
            try BlockVerifier.verifyPart(short, part: 1, proof: parts[1].proof, summary: summary, entryCount: count)
        }
        for k in 0..<parts[2].proof.count {
            for byte in stride(from: 0, to: 32, by: 7) {
                var proof = parts[2].proof
                proof[k] = Digest(bytes: flipped(proof[k].bytes, at: byte))!
                expectCodes([.contentMismatch], "proof \(k) byte \(byte)") {
                    try BlockVerifier.verifyPart(parts[2].data, part: 2, proof: proof, summary: summary, entryCount: count)
                }
            }
        }
        expectCodes([.contentMismatch]) {
            try BlockVerifier.verifyPart(parts[2].data, part: 2, proof: parts[2].proof, summary: summary, entryCount: count + 1)
        }
        // The whole block verifies too.
        try BlockVerifier.verify(cp.data, summary: summary, entryCount: count)
    }

    @Test("a forged epoch handover is rejected")
    func forgedHandover() async throws {
        let chain = await Chain.make(.tiny)
        let ends = chain.generator.endOfEpochSummaries
        let genesisCommittee = chain.genesis.committee
        // A committee of strangers, certified by themselves.
        let strangers = (0..<4).map { try! SigningKey(seed: [UInt8](repeating: UInt8(200 + $0), count: 32)) }
        let strangerMembers = strangers.map { Member(name: $0.publicKey, votingPower: 2_500, address: "evil") }.sorted { $0.name < $1.name }
        var forged = ends[0].summary
        forged.endOfEpoch?.nextCommittee = Committee(epoch: 1, members: strangerMembers)
        let selfSigned = CertifiedCheckpointSummary(
            summary: forged,
            certificate: QuorumCertificate.sign(forged.signingMessage, committee: Committee(epoch: 0, members: strangerMembers), keys: strangers))
        expectCodes([.bitmapOutOfRange, .invalidSignature, .insufficientVotingPower]) {
            _ = try ChainVerifier.verifyEpochChain(genesis: genesisCommittee, endOfEpochSummaries: [selfSigned] + ends.dropFirst())
        }
        // The genuine certificate over a summary whose next committee was swapped.
        expectCodes([.invalidSignature]) {
            _ = try ChainVerifier.verifyEpochChain(
                genesis: genesisCommittee,
                endOfEpochSummaries: [CertifiedCheckpointSummary(summary: forged, certificate: ends[0].certificate)])
        }
        // Skipping an epoch, or repeating one.
        expectCodes([.invalidEpochTransition]) {
            _ = try ChainVerifier.verifyEpochChain(genesis: genesisCommittee, endOfEpochSummaries: [ends[0], ends[2]])
        }
        expectCodes([.invalidEpochTransition]) {
            _ = try ChainVerifier.verifyEpochChain(genesis: genesisCommittee, endOfEpochSummaries: [ends[0], ends[0]])
        }
        // A summary that does not end its epoch offered as a handover.
        expectCodes([.invalidEpochTransition]) {
            _ = try ChainVerifier.verifyEpochChain(genesis: genesisCommittee, endOfEpochSummaries: [chain.checkpoints[1].certified])
        }
        // The real committee certifying a handover to a committee with the wrong epoch number.
        var wrongNumber = ends[0].summary
        wrongNumber.endOfEpoch?.nextCommittee.epoch = 5
        let epoch0Keys = chain.committees[0].members.map { m in
            (0..<20).lazy.map { DevnetKeys.validator(seed: 7, index: $0) }.first { $0.publicKey == m.name }!
        }
        let certified = CertifiedCheckpointSummary(
            summary: wrongNumber,
            certificate: QuorumCertificate.sign(wrongNumber.signingMessage, committee: chain.committees[0], keys: epoch0Keys))
        expectCodes([.invalidEpochTransition]) {
            _ = try ChainVerifier.verifyEpochChain(genesis: genesisCommittee, endOfEpochSummaries: [certified])
        }
        // In a summary batch, an epoch end naming a committee other than the verified one.
        let all = chain.all.map(\.certified)
        let endSeq = Int(ends[0].summary.sequenceNumber)
        var batch = SummaryBatch(lastCertifiedOf: Array(all[0...endSeq]))
        batch.summaries[endSeq] = forged
        batch.certificates[endSeq] = selfSigned.certificate
        expectCodes([.invalidEpochTransition]) {
            _ = try ChainVerifier.verifySummaryBatch(batch, after: nil, committee: chain.committee)
        }
        // The epoch after an end must be the next one.
        var stuck = all[endSeq + 1].summary
        stuck.epoch = ends[0].summary.epoch
        expectCodes([.invalidEpochTransition]) {
            _ = try ChainVerifier.verifySummaryBatch(
                SummaryBatch(summaries: Array(all[0...endSeq].map(\.summary)) + [stuck], certificates: Array(repeating: nil, count: endSeq + 1) + [all[endSeq + 1].certificate]),
                after: nil, committee: chain.committee)
        }
    }
}
