/// RFC 9162 (Certificate Transparency v2) Merkle trees over SHA-256.
///
/// Leaf hash `H(0x00 ‖ d)`, node hash `H(0x01 ‖ l ‖ r)`, a tree of n leaves splits at the
/// largest power of two below n, the empty tree hashes to `H("")`. Functions here take leaf
/// *hashes*; ``Hashing/leafHash(_:)`` makes them from leaf data.
public enum Merkle {
    /// The root of the empty tree: `SHA256("")`.
    public static let emptyRoot = Hashing.sha256([UInt8]())

    /// The largest power of two strictly below `n` (n ≥ 2).
    @inlinable
    public static func split(_ n: Int) -> Int {
        precondition(n >= 2)
        return 1 << (Int.bitWidth - 1 - (n - 1).leadingZeroBitCount)
    }

    /// The root over `leafHashes`.
    public static func root(leafHashes: some Collection<Digest>) -> Digest {
        var level = Array(leafHashes)
        return rootInPlace(&level)
    }

    /// The root over the leaf hashes of `leaves`.
    public static func root(leaves: [[UInt8]]) -> Digest {
        var level = leaves.map { Hashing.leafHash($0) }
        return rootInPlace(&level)
    }

    /// Reduces `level` in place, pairing neighbours level by level; an odd last node moves up
    /// unchanged, which yields exactly the RFC 9162 tree.
    static func rootInPlace(_ level: inout [Digest]) -> Digest {
        var count = level.count
        if count == 0 { return emptyRoot }
        while count > 1 {
            var write = 0
            var read = 0
            while read + 1 < count {
                level[write] = Hashing.nodeHash(level[read], level[read + 1])
                write += 1
                read += 2
            }
            if read < count {
                level[write] = level[read]
                write += 1
            }
            count = write
        }
        return level[0]
    }

    /// The root over leaves stored back to back in `packed`, each `leafSize` bytes.
    public static func root(packedLeaves packed: [UInt8], leafSize: Int) -> Digest {
        precondition(leafSize > 0 && packed.count % leafSize == 0, "packed leaves must be whole")
        return packed.withUnsafeBytes { raw in
            rootOfPacked(raw, leafSize: leafSize, range: 0..<(raw.count / leafSize))
        }
    }

    static func rootOfPacked(_ raw: UnsafeRawBufferPointer, leafSize: Int, range: Range<Int>) -> Digest {
        var stream = StreamingMerkleRoot()
        for i in range {
            let leaf = UnsafeRawBufferPointer(rebasing: raw[(i * leafSize)..<((i + 1) * leafSize)])
            stream.append(leafHash: Hashing.leafHash(raw: leaf))
        }
        return stream.finalize()
    }

    /// The root over packed leaves, computing power-of-two subtrees concurrently on
    /// `parallelism` tasks, then combining their roots.
    public static func parallelRoot(packedLeaves packed: [UInt8], leafSize: Int, parallelism: Int) async -> Digest {
        precondition(leafSize > 0 && packed.count % leafSize == 0, "packed leaves must be whole")
        let n = packed.count / leafSize
        let tasks = max(1, parallelism) * 4
        guard n >= 2 * tasks, tasks > 1 else { return root(packedLeaves: packed, leafSize: leafSize) }
        // Chunks of a power-of-two size are whole subtrees; the tree over their roots is the
        // tree over the leaves (see `subtreeProof`).
        var chunk = 1
        while chunk * tasks < n { chunk <<= 1 }
        let chunkCount = (n + chunk - 1) / chunk
        let chunkSize = chunk
        let roots = await withTaskGroup(of: (Int, Digest).self) { group in
            var next = 0
            var roots = [Digest](repeating: .zero, count: chunkCount)
            func add(_ index: Int) {
                group.addTask {
                    let lo = index * chunkSize
                    let hi = min(n, lo + chunkSize)
                    let r = packed.withUnsafeBytes { rootOfPacked($0, leafSize: leafSize, range: lo..<hi) }
                    return (index, r)
                }
            }
            while next < min(chunkCount, max(1, parallelism)) {
                add(next)
                next += 1
            }
            for await (index, r) in group {
                roots[index] = r
                if next < chunkCount {
                    add(next)
                    next += 1
                }
            }
            return roots
        }
        return root(leafHashes: roots)
    }

    // MARK: Inclusion proofs

    /// The audit path of leaf `index` in the tree over `leafHashes` (RFC 9162 §2.1.3.1).
    /// - Throws: ``CoreError/Code/proofOutOfRange`` if `index` is not a leaf.
    public static func inclusionProof(index: Int, leafHashes: [Digest]) throws(CoreError) -> [Digest] {
        guard index >= 0, index < leafHashes.count else {
            throw CoreError(.proofOutOfRange, "leaf \(index) is outside a tree of \(leafHashes.count)")
        }
        var path: [Digest] = []
        path.reserveCapacity(Int.bitWidth - leafHashes.count.leadingZeroBitCount)
        var lo = 0
        var hi = leafHashes.count
        var m = index
        // Collect siblings from the root down, then reverse (the path lists them leaf first).
        while hi - lo > 1 {
            let k = split(hi - lo)
            if m < k {
                path.append(root(leafHashes: leafHashes[(lo + k)..<hi]))
                hi = lo + k
            } else {
                path.append(root(leafHashes: leafHashes[lo..<(lo + k)]))
                lo += k
                m -= k
            }
        }
        return path.reversed()
    }

    /// The root that an inclusion proof leads to, or `nil` if the proof has the wrong shape
    /// for `index` in a tree of `treeSize` (RFC 9162 §2.1.3.2).
    public static func rootFromInclusionProof(
        leafHash: Digest, index: UInt64, treeSize: UInt64, proof: [Digest]
    ) -> Digest? {
        guard index < treeSize else { return nil }
        var fn = index
        var sn = treeSize - 1
        var r = leafHash
        for p in proof {
            if sn == 0 { return nil }
            if fn & 1 == 1 || fn == sn {
                r = Hashing.nodeHash(p, r)
                if fn & 1 == 0 {
                    while fn & 1 == 0 && fn != 0 {
                        fn >>= 1
                        sn >>= 1
                    }
                }
            } else {
                r = Hashing.nodeHash(r, p)
            }
            fn >>= 1
            sn >>= 1
        }
        return sn == 0 ? r : nil
    }

    /// Verifies that `leafHash` is leaf `index` of the tree of `treeSize` leaves with `root`.
    /// - Throws: ``CoreError/Code/invalidProof``.
    public static func verifyInclusion(
        leafHash: Digest, index: UInt64, treeSize: UInt64, proof: [Digest], root: Digest
    ) throws(CoreError) {
        guard let computed = rootFromInclusionProof(leafHash: leafHash, index: index, treeSize: treeSize, proof: proof),
              computed == root
        else {
            throw CoreError(.invalidProof, "inclusion proof of leaf \(index) in a tree of \(treeSize) does not match the root")
        }
    }

    // MARK: Consistency proofs

    /// The proof that the tree of the first `oldSize` leaves is a prefix of the tree over all
    /// `leafHashes` (RFC 9162 §2.1.4.1).
    /// - Throws: ``CoreError/Code/proofOutOfRange`` unless `0 < oldSize <= leafHashes.count`.
    public static func consistencyProof(oldSize: Int, leafHashes: [Digest]) throws(CoreError) -> [Digest] {
        guard oldSize > 0, oldSize <= leafHashes.count else {
            throw CoreError(.proofOutOfRange, "old size \(oldSize) for a tree of \(leafHashes.count)")
        }
        var path: [Digest] = []
        var lo = 0
        var hi = leafHashes.count
        var m = oldSize
        var complete = true
        while true {
            if m == hi - lo {
                if !complete { path.append(root(leafHashes: leafHashes[lo..<hi])) }
                break
            }
            let k = split(hi - lo)
            if m <= k {
                path.append(root(leafHashes: leafHashes[(lo + k)..<hi]))
                hi = lo + k
            } else {
                path.append(root(leafHashes: leafHashes[lo..<(lo + k)]))
                lo += k
                m -= k
                complete = false
            }
        }
        return path.reversed()
    }

    /// Verifies a consistency proof between two tree heads (RFC 9162 §2.1.4.2).
    /// - Throws: ``CoreError/Code/invalidProof`` (or `proofOutOfRange` for impossible sizes).
    public static func verifyConsistency(
        oldSize: UInt64, newSize: UInt64, oldRoot: Digest, newRoot: Digest, proof: [Digest]
    ) throws(CoreError) {
        guard oldSize > 0, oldSize <= newSize else {
            throw CoreError(.proofOutOfRange, "consistency from \(oldSize) to \(newSize)")
        }
        let bad = CoreError(.invalidProof, "consistency proof from \(oldSize) to \(newSize) does not match the roots")
        if oldSize == newSize {
            guard proof.isEmpty, oldRoot == newRoot else { throw bad }
            return
        }
        guard !proof.isEmpty else { throw bad }
        var path = proof
        if oldSize & (oldSize - 1) == 0 { path.insert(oldRoot, at: 0) }
        var fn = oldSize - 1
        var sn = newSize - 1
        while fn & 1 == 1 {
            fn >>= 1
            sn >>= 1
        }
        var fr = path[0]
        var sr = path[0]
        for c in path.dropFirst() {
            if sn == 0 { throw bad }
            if fn & 1 == 1 || fn == sn {
                fr = Hashing.nodeHash(c, fr)
                sr = Hashing.nodeHash(c, sr)
                if fn & 1 == 0 {
                    while fn & 1 == 0 && fn != 0 {
                        fn >>= 1
                        sn >>= 1
                    }
                }
            } else {
                sr = Hashing.nodeHash(sr, c)
            }
            fn >>= 1
            sn >>= 1
        }
        guard fr == oldRoot, sr == newRoot, sn == 0 else { throw bad }
    }

    // MARK: Subtree (chunk) proofs

    /// The roots of consecutive chunks of `chunkSize` leaves (the last may be shorter).
    public static func chunkRoots(leafHashes: [Digest], chunkSize: Int) -> [Digest] {
        precondition(chunkSize > 0 && chunkSize & (chunkSize - 1) == 0, "chunk size must be a power of two")
        return stride(from: 0, to: leafHashes.count, by: chunkSize).map {
            root(leafHashes: leafHashes[$0..<min($0 + chunkSize, leafHashes.count)])
        }
    }

    /// The number of chunks of `chunkSize` in a tree of `treeSize` leaves.
    @inlinable
    public static func chunkCount(treeSize: UInt64, chunkSize: UInt64) -> UInt64 {
        treeSize == 0 ? 0 : (treeSize - 1) / chunkSize + 1
    }

    /// The proof that chunk `chunk` (leaves `[chunk·K, min((chunk+1)·K, n))`, K a power of two)
    /// is a node of the tree over `leafHashes`.
    ///
    /// Such a chunk is always one node of the RFC 9162 tree, and the tree over the chunks'
    /// roots has the same shape as the tree over the leaves above chunk level, so the proof is
    /// the inclusion proof of the chunk's root among the chunk roots: about log2(n/K) hashes.
    public static func subtreeProof(chunk: Int, chunkSize: Int, leafHashes: [Digest]) throws(CoreError) -> [Digest] {
        try subtreeProof(chunk: chunk, chunkRoots: chunkRoots(leafHashes: leafHashes, chunkSize: chunkSize))
    }

    /// The proof for chunk `chunk`, given every chunk's root.
    public static func subtreeProof(chunk: Int, chunkRoots: [Digest]) throws(CoreError) -> [Digest] {
        try inclusionProof(index: chunk, leafHashes: chunkRoots)
    }

    /// Verifies that `chunkLeafHashes` are exactly chunk `chunk` of a tree of `treeSize` leaves
    /// with `root`, using a proof from ``subtreeProof(chunk:chunkSize:leafHashes:)``.
    /// - Throws: ``CoreError/Code/invalidProof`` on a wrong leaf count, proof or root.
    public static func verifySubtree(
        chunkLeafHashes: [Digest], chunk: UInt64, chunkSize: UInt64, treeSize: UInt64, proof: [Digest], root: Digest
    ) throws(CoreError) {
        guard chunkSize > 0, chunkSize & (chunkSize - 1) == 0 else {
            throw CoreError(.proofOutOfRange, "chunk size \(chunkSize) is not a power of two")
        }
        let chunks = chunkCount(treeSize: treeSize, chunkSize: chunkSize)
        guard chunk < chunks else {
            throw CoreError(.proofOutOfRange, "chunk \(chunk) is outside a tree of \(treeSize) leaves in chunks of \(chunkSize)")
        }
        let expected = min(chunkSize, treeSize - chunk * chunkSize)
        guard UInt64(chunkLeafHashes.count) == expected else {
            throw CoreError(.invalidProof, "chunk \(chunk) has \(chunkLeafHashes.count) leaves, expected \(expected)")
        }
        let chunkRoot = Merkle.root(leafHashes: chunkLeafHashes)
        guard let computed = rootFromInclusionProof(leafHash: chunkRoot, index: chunk, treeSize: chunks, proof: proof),
              computed == root
        else {
            throw CoreError(.invalidProof, "subtree proof of chunk \(chunk) does not match the root")
        }
    }
}

/// Computes an RFC 9162 root from leaves that arrive in order, in O(log n) memory.
public struct StreamingMerkleRoot: Sendable {
    // Perfect subtrees, heights strictly decreasing from bottom to top.
    private var stack: [(hash: Digest, height: Int)] = []
    /// Leaves appended so far.
    public private(set) var count: UInt64 = 0

    /// An empty accumulator.
    public init() {
        stack.reserveCapacity(64)
    }

    /// Appends a leaf by its data.
    public mutating func append(leaf data: [UInt8]) {
        append(leafHash: Hashing.leafHash(data))
    }

    /// Appends a leaf by its leaf hash.
    public mutating func append(leafHash: Digest) {
        var node = leafHash
        var height = 0
        while let top = stack.last, top.height == height {
            stack.removeLast()
            node = Hashing.nodeHash(top.hash, node)
            height += 1
        }
        stack.append((node, height))
        count += 1
    }

    /// The root of the leaves appended so far.
    public func finalize() -> Digest {
        guard var acc = stack.last?.hash else { return Merkle.emptyRoot }
        for entry in stack.dropLast().reversed() {
            acc = Hashing.nodeHash(entry.hash, acc)
        }
        return acc
    }
}
