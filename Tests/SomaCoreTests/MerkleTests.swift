import SomaCore
import Testing

/// RFC 6962 / RFC 9162 test vectors (the Certificate Transparency reference tree).
@Suite("Merkle trees: RFC 6962 vectors and properties")
struct MerkleTests {
    static let leaves: [[UInt8]] = [
        "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f",
    ].map { HexCoding.decode($0)! }

    static let roots = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]

    static var leafHashes: [Digest] { leaves.map { Hashing.leafHash($0) } }

    @Test("roots of the reference tree, sizes 0 to 8", arguments: 0...8)
    func referenceRoots(size: Int) {
        #expect(Merkle.root(leaves: Array(Self.leaves.prefix(size))).hex == Self.roots[size])
        var stream = StreamingMerkleRoot()
        for leaf in Self.leaves.prefix(size) { stream.append(leaf: leaf) }
        #expect(stream.finalize().hex == Self.roots[size])
    }

    /// Published audit paths: (leaf index, tree size, path).
    static let inclusionVectors: [(Int, Int, [String])] = [
        (0, 1, []),
        (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
        (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
        (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
        (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    ]

    @Test("published inclusion proofs are produced and verify")
    func inclusionVectors() throws {
        for (index, size, path) in Self.inclusionVectors {
            let hashes = Array(Self.leafHashes.prefix(size))
            let proof = try Merkle.inclusionProof(index: index, leafHashes: hashes)
            #expect(proof.map(\.hex) == path, "leaf \(index) of \(size)")
            try Merkle.verifyInclusion(
                leafHash: hashes[index], index: UInt64(index), treeSize: UInt64(size), proof: proof.map { $0 },
                root: digest(Self.roots[size]))
        }
    }

    /// Published consistency proofs: (old size, new size, proof).
    static let consistencyVectors: [(Int, Int, [String])] = [
        (1, 1, []),
        (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
        (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
        (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    ]

    @Test("published consistency proofs are produced and verify")
    func consistencyVectors() throws {
        for (old, new, path) in Self.consistencyVectors {
            let hashes = Array(Self.leafHashes.prefix(new))
            let proof = try Merkle.consistencyProof(oldSize: old, leafHashes: hashes)
            #expect(proof.map(\.hex) == path, "\(old) to \(new)")
            try Merkle.verifyConsistency(
                oldSize: UInt64(old), newSize: UInt64(new), oldRoot: digest(Self.roots[old]),
                newRoot: digest(Self.roots[new]), proof: proof)
        }
    }

    static func syntheticLeaves(_ n: Int, salt: UInt8 = 0) -> [Digest] {
        (0..<n).map { i in Hashing.leafHash([salt, UInt8(i & 0xff), UInt8(i >> 8), UInt8(i >> 16)]) }
    }

    @Test("every inclusion proof verifies and every tampering is rejected, trees of 1 to 40")
    func inclusionProperties() throws {
        for n in 1...40 {
            let hashes = Self.syntheticLeaves(n)
            let root = Merkle.root(leafHashes: hashes)
            for i in 0..<n {
                let proof = try Merkle.inclusionProof(index: i, leafHashes: hashes)
                try Merkle.verifyInclusion(leafHash: hashes[i], index: UInt64(i), treeSize: UInt64(n), proof: proof, root: root)
                expectCode(.invalidProof) {
                    try Merkle.verifyInclusion(leafHash: hashes[(i + 1) % n] == hashes[i] ? .zero : hashes[(i + 1) % n],
                                               index: UInt64(i), treeSize: UInt64(n), proof: proof, root: root)
                }
                if n > 1 {
                    expectCode(.invalidProof) {
                        try Merkle.verifyInclusion(leafHash: hashes[i], index: UInt64((i + 1) % n), treeSize: UInt64(n), proof: proof, root: root)
                    }
                    for k in proof.indices {
                        var bad = proof
                        var bytes = bad[k].bytes
                        bytes[k % 32] ^= 0x01
                        bad[k] = Digest(bytes: bytes)!
                        expectCode(.invalidProof) {
                            try Merkle.verifyInclusion(leafHash: hashes[i], index: UInt64(i), treeSize: UInt64(n), proof: bad, root: root)
                        }
                    }
                    expectCode(.invalidProof) {
                        try Merkle.verifyInclusion(leafHash: hashes[i], index: UInt64(i), treeSize: UInt64(n), proof: proof.dropLast(), root: root)
                    }
                }
                expectCode(.invalidProof) {
                    try Merkle.verifyInclusion(leafHash: hashes[i], index: UInt64(i), treeSize: UInt64(n), proof: proof + [root], root: root)
                }
            }
        }
    }

    @Test("every consistency proof verifies and tampering is rejected, trees of 1 to 33")
    func consistencyProperties() throws {
        let all = Self.syntheticLeaves(33)
        for new in 1...33 {
            let hashes = Array(all.prefix(new))
            let newRoot = Merkle.root(leafHashes: hashes)
            for old in 1...new {
                let oldRoot = Merkle.root(leafHashes: hashes.prefix(old))
                let proof = try Merkle.consistencyProof(oldSize: old, leafHashes: hashes)
                try Merkle.verifyConsistency(oldSize: UInt64(old), newSize: UInt64(new), oldRoot: oldRoot, newRoot: newRoot, proof: proof)
                if old < new {
                    expectCode(.invalidProof) {
                        try Merkle.verifyConsistency(oldSize: UInt64(old), newSize: UInt64(new), oldRoot: newRoot, newRoot: newRoot, proof: proof)
                    }
                    for k in proof.indices {
                        var bad = proof
                        var bytes = bad[k].bytes
                        bytes[0] ^= 0x80
                        bad[k] = Digest(bytes: bytes)!
                        expectCode(.invalidProof) {
                            try Merkle.verifyConsistency(oldSize: UInt64(old), newSize: UInt64(new), oldRoot: oldRoot, newRoot: newRoot, proof: bad)
                        }
                    }
                }
            }
        }
        expectCode(.proofOutOfRange) { _ = try Merkle.consistencyProof(oldSize: 0, leafHashes: all) }
        expectCode(.proofOutOfRange) { _ = try Merkle.consistencyProof(oldSize: 34, leafHashes: all) }
    }

    @Test("subtree proofs for random tree sizes and chunk sizes verify; wrong chunks do not")
    func subtreeProperties() throws {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<60 {
            let n = Int.random(in: 1...3_000, using: &rng)
            let chunkSize = 1 << Int.random(in: 0...9, using: &rng)
            let hashes = Self.syntheticLeaves(n, salt: UInt8.random(in: 0...255, using: &rng))
            let root = Merkle.root(leafHashes: hashes)
            let chunks = Int(Merkle.chunkCount(treeSize: UInt64(n), chunkSize: UInt64(chunkSize)))
            let roots = Merkle.chunkRoots(leafHashes: hashes, chunkSize: chunkSize)
            #expect(Merkle.root(leafHashes: roots) == root, "n \(n) K \(chunkSize)")
            for _ in 0..<4 {
                let c = Int.random(in: 0..<chunks, using: &rng)
                let proof = try Merkle.subtreeProof(chunk: c, chunkSize: chunkSize, leafHashes: hashes)
                #expect(proof.count <= 1 + Int.bitWidth - chunks.leadingZeroBitCount)
                let part = Array(hashes[(c * chunkSize)..<min(n, (c + 1) * chunkSize)])
                try Merkle.verifySubtree(chunkLeafHashes: part, chunk: UInt64(c), chunkSize: UInt64(chunkSize),
                                         treeSize: UInt64(n), proof: proof, root: root)
                // A changed leaf, a dropped leaf, another chunk's index or a changed proof fail.
                var changed = part
                changed[changed.count / 2] = Hashing.leafHash([9, 9, 9])
                expectCode(.invalidProof) {
                    try Merkle.verifySubtree(chunkLeafHashes: changed, chunk: UInt64(c), chunkSize: UInt64(chunkSize),
                                             treeSize: UInt64(n), proof: proof, root: root)
                }
                expectCode(.invalidProof) {
                    try Merkle.verifySubtree(chunkLeafHashes: Array(part.dropLast()), chunk: UInt64(c), chunkSize: UInt64(chunkSize),
                                             treeSize: UInt64(n), proof: proof, root: root)
                }
                if chunks > 1 {
                    let other = (c + 1) % chunks
                    let otherPart = Array(hashes[(other * chunkSize)..<min(n, (other + 1) * chunkSize)])
                    if otherPart.count == part.count {
                        expectCode(.invalidProof) {
                            try Merkle.verifySubtree(chunkLeafHashes: otherPart, chunk: UInt64(c), chunkSize: UInt64(chunkSize),
                                                     treeSize: UInt64(n), proof: proof, root: root)
                        }
                    }
                    var badProof = proof
                    badProof[0] = Hashing.leafHash([1])
                    expectCode(.invalidProof) {
                        try Merkle.verifySubtree(chunkLeafHashes: part, chunk: UInt64(c), chunkSize: UInt64(chunkSize),
                                                 treeSize: UInt64(n), proof: badProof, root: root)
                    }
                }
            }
            expectCode(.proofOutOfRange) {
                try Merkle.verifySubtree(chunkLeafHashes: [], chunk: UInt64(chunks), chunkSize: UInt64(chunkSize),
                                         treeSize: UInt64(n), proof: [], root: root)
            }
        }
    }

    @Test("streaming, batch, packed and parallel roots agree for random sizes")
    func streamingEqualsBatch() async {
        var rng = SystemRandomNumberGenerator()
        for n in [0, 1, 2, 3, 5, 8, 13, 64, 100, 1_023, 1_024, 1_025] + (0..<10).map({ _ in Int.random(in: 1...5_000, using: &rng) }) {
            var packed: [UInt8] = []
            for i in 0..<n { packed += [UInt8(i & 0xff), UInt8((i >> 8) & 0xff), 7, UInt8(n & 0xff)] }
            let leaves = stride(from: 0, to: packed.count, by: 4).map { Array(packed[$0..<($0 + 4)]) }
            let batch = Merkle.root(leaves: leaves)
            var stream = StreamingMerkleRoot()
            for leaf in leaves { stream.append(leaf: leaf) }
            #expect(stream.finalize() == batch, "n \(n)")
            #expect(stream.count == UInt64(n))
            #expect(Merkle.root(packedLeaves: packed, leafSize: 4) == batch, "n \(n)")
            #expect(await Merkle.parallelRoot(packedLeaves: packed, leafSize: 4, parallelism: 3) == batch, "n \(n)")
        }
    }

    @Test("the split is the largest power of two below n")
    func split() {
        for (n, k) in [(2, 1), (3, 2), (4, 2), (5, 4), (8, 4), (9, 8), (1_000, 512), (1 << 40, 1 << 39)] {
            #expect(Merkle.split(n) == k)
        }
    }
}
