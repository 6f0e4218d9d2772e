import Foundation
import SomaCore
import SomaNode

/// Leaf hashes of an honest tree (leaf i = H(0x00 ‖ le64(i))), computed once.
let honestLeaves: [Digest] = (0..<1_100).map { Hashing.leafHash(le(UInt64($0))) }

/// Every Merkle verifier (RFC 9162 inclusion, consistency, subtree): input `[mode] ‖ …`.
/// Modes 0–2 feed fuzzed sizes, indexes, roots and proofs to the verifiers (no trap; a
/// random proof must not verify). Modes 3–5 build an honest tree of fuzzed size and check
/// that an honest proof verifies and that one flipped byte or a wrong position does not.
let merkleTarget = FuzzTarget(
    name: "merkle",
    summary: "Merkle inclusion/consistency/subtree verifiers: fuzzed sizes, indexes, proofs; honest proofs verify, altered ones fail",
    seeds: {
        [
            [0] + le(UInt64(5)) + le(UInt64(11)) + [4] + [UInt8](repeating: 1, count: 32 * 6),
            [1] + le(UInt64(3)) + le(UInt64(7)) + [3] + [UInt8](repeating: 2, count: 32 * 5),
            [2] + le(UInt64(1)) + le(UInt64(16)) + le(UInt64(40)) + [16, 2] + [UInt8](repeating: 3, count: 32 * 19),
            [3] + le(UInt16(1_000)) + le(UInt16(517)) + [9], [4] + le(UInt16(300)) + le(UInt16(77)) + [5],
            [5] + le(UInt16(1_099)) + le(UInt16(3)) + [6, 2],
        ]
    },
    run: { input in
        var r = FuzzInput(input)
        let mode = r.u8() % 6
        switch mode {
        case 0:
            let index = r.u64(), size = r.u64()
            let proof = r.digests(Int(r.u8() % 70))
            let leaf = r.digest(), root = r.digest()
            let computed = Merkle.rootFromInclusionProof(leafHash: leaf, index: index, treeSize: size, proof: proof)
            let verified = (try? Merkle.verifyInclusion(leafHash: leaf, index: index, treeSize: size, proof: proof, root: root)) != nil
            if verified != (computed == root) { fail("verifyInclusion disagrees with rootFromInclusionProof") }
            // Only the one-leaf tree verifies without a preimage: its root is the leaf itself.
            if verified, !(proof.isEmpty && size == 1 && index == 0 && leaf == root) {
                fail("a fuzzed inclusion proof verified")
            }
        case 1:
            let old = r.u64(), new = r.u64()
            let proof = r.digests(Int(r.u8() % 70))
            let oldRoot = r.digest(), newRoot = r.digest()
            if (try? Merkle.verifyConsistency(oldSize: old, newSize: new, oldRoot: oldRoot, newRoot: newRoot, proof: proof)) != nil,
               !(old == new && oldRoot == newRoot && proof.isEmpty) {
                fail("a fuzzed consistency proof from \(old) to \(new) verified")
            }
        case 2:
            let chunk = r.u64(), chunkSize = r.u64(), size = r.u64()
            let leaves = r.digests(Int(r.u8() % 40))
            let proof = r.digests(Int(r.u8() % 70))
            let root = r.digest()
            // Only a one-leaf tree whose root is that leaf verifies without a preimage.
            if (try? Merkle.verifySubtree(chunkLeafHashes: leaves, chunk: chunk, chunkSize: chunkSize, treeSize: size,
                                          proof: proof, root: root)) != nil,
               !(proof.isEmpty && size == 1 && leaves == [root]) {
                fail("a fuzzed subtree proof verified")
            }
        default:
            let n = 1 + Int(r.u16()) % honestLeaves.count
            let leaves = Array(honestLeaves[0..<n])
            let root = Merkle.root(leafHashes: leaves)
            let i = Int(r.u16()) % n
            let flip = Int(r.u8())
            func flipped(_ p: [Digest]) -> [Digest]? {
                guard !p.isEmpty else { return nil }
                var bytes = p.flatMap(\.bytes)
                bytes[flip % bytes.count] ^= 0x01 << (flip % 8)
                return stride(from: 0, to: bytes.count, by: 32).compactMap { Digest(bytes: bytes[$0..<($0 + 32)]) }
            }
            if mode == 3 {
                guard let proof = try? Merkle.inclusionProof(index: i, leafHashes: leaves),
                      (try? Merkle.verifyInclusion(leafHash: leaves[i], index: UInt64(i), treeSize: UInt64(n), proof: proof, root: root)) != nil
                else { fail("the honest inclusion proof of leaf \(i) of \(n) does not verify") }
                if let bad = flipped(proof),
                   (try? Merkle.verifyInclusion(leafHash: leaves[i], index: UInt64(i), treeSize: UInt64(n), proof: bad, root: root)) != nil {
                    fail("a flipped inclusion proof of leaf \(i) of \(n) verifies")
                }
                let other = (i + 1 + flip) % n
                if other != i, leaves[other] != leaves[i],
                   (try? Merkle.verifyInclusion(leafHash: leaves[other], index: UInt64(i), treeSize: UInt64(n), proof: proof, root: root)) != nil {
                    fail("leaf \(other) verifies at position \(i)")
                }
            } else if mode == 4 {
                let m = 1 + i
                let oldRoot = Merkle.root(leafHashes: leaves[0..<m])
                guard let proof = try? Merkle.consistencyProof(oldSize: m, leafHashes: leaves),
                      (try? Merkle.verifyConsistency(oldSize: UInt64(m), newSize: UInt64(n), oldRoot: oldRoot, newRoot: root, proof: proof)) != nil
                else { fail("the honest consistency proof \(m) → \(n) does not verify") }
                if let bad = flipped(proof),
                   (try? Merkle.verifyConsistency(oldSize: UInt64(m), newSize: UInt64(n), oldRoot: oldRoot, newRoot: root, proof: bad)) != nil {
                    fail("a flipped consistency proof \(m) → \(n) verifies")
                }
            } else {
                let k = 1 << Int(r.u8() % 8)
                let chunks = (n - 1) / k + 1
                let c = i % chunks
                let chunkLeaves = Array(leaves[(c * k)..<min((c + 1) * k, n)])
                guard let proof = try? Merkle.subtreeProof(chunk: c, chunkSize: k, leafHashes: leaves),
                      (try? Merkle.verifySubtree(chunkLeafHashes: chunkLeaves, chunk: UInt64(c), chunkSize: UInt64(k),
                                                 treeSize: UInt64(n), proof: proof, root: root)) != nil
                else { fail("the honest subtree proof of chunk \(c) (size \(k)) of \(n) does not verify") }
                if let bad = flipped(proof),
                   (try? Merkle.verifySubtree(chunkLeafHashes: chunkLeaves, chunk: UInt64(c), chunkSize: UInt64(k),
                                              treeSize: UInt64(n), proof: bad, root: root)) != nil {
                    fail("a flipped subtree proof of chunk \(c) verifies")
                }
            }
        }
    }
)

/// Block verification against the fixture's certified summaries: input `[pick] ‖ part u64 ‖
/// entryCount u64 ‖ proofCount u8 ‖ proof ‖ bcs(CheckpointData)`. `BlockVerifier.verify` and
/// `verifyPart` must not trap; contents that verify must be the certified contents.
let blockProofTarget = FuzzTarget(
    name: "block-proof",
    summary: "BlockVerifier.verify and verifyPart (part proofs) of decoded CheckpointData against certified summaries",
    seeds: {
        let cps = Fixture.shared.checkpoints
        return [3, 10, 29].filter { $0 < cps.count }.map { k in
            let entries = UInt64(cps[k].data.entries.count)
            return [UInt8(k)] + le(UInt64(0)) + le(entries) + [0] + cps[k].data.bcsBytes
        }
    },
    run: { input in
        let cps = Fixture.shared.checkpoints
        var r = FuzzInput(input)
        let pick = Int(r.u8()) % cps.count
        let part = r.u64(), entryCount = r.u64()
        let proof = r.digests(Int(r.u8() % 24))
        guard let data = try? CheckpointData(bcsBytes: r.rest()) else { return }
        let certified = cps[pick]
        let summary = certified.certified.summary
        if (try? BlockVerifier.verify(data, summary: summary, entryCount: entryCount % 2 == 0 ? nil : entryCount)) != nil,
           data != certified.data {
            fail("contents other than checkpoint \(summary.sequenceNumber)'s verify against its summary")
        }
        if (try? BlockVerifier.verifyPart(data, part: part, proof: proof, summary: summary, entryCount: entryCount)) != nil,
           data != certified.data {
            fail("a part other than checkpoint \(summary.sequenceNumber)'s verifies against its summary")
        }
    }
)

/// The YAML configuration file: any text through `NodeConfigurationFile.parse` must parse or
/// throw ``NodeError``, never trap.
let configTarget = FuzzTarget(
    name: "config",
    summary: "NodeConfigurationFile.parse of arbitrary text (YAML over the defaults)",
    seeds: {
        [
            NodeConfigurationFile.defaultText(),
            "store:\n  mode: pruning\n  retainEpochs: 3\nnet:\n  listen: 0.0.0.0:9000\n  uploadBytesPerSecond: 1000\n",
            "discovery:\n  access: private\n  seeds: [\"a:1\", \"b:2\"]\n",
            "[1, 2, 3]\n", "net: {listen: ':0', uploadBytesPerSecondPerPeer: -1}\n",
        ].map { Array($0.utf8) }
    },
    run: { input in
        _ = try? NodeConfigurationFile.parse(String(decoding: input, as: UTF8.self), dataDirectory: "/nonexistent/soma-fuzz")
    }
)
