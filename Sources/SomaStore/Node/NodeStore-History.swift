public import SomaCore

/// The part proofs of a multi-part checkpoint, stored after its blocks in the history segment
/// as one LZ4 skippable frame (which `lz4 -dc` skips): magic `0x184D2A5A` (u32 LE), the length
/// of what follows (u32 LE), then `bcs(vector<vector<Digest>>)`, one proof per part.
enum PartProofFrame {
    static let magic: UInt32 = 0x184D_2A5A

    static func encode(_ proofs: [[Digest]]) -> [UInt8] {
        var w = BCSWriter(capacity: 16 + proofs.reduce(0) { $0 + 8 + 32 * $1.count })
        w.writeLength(proofs.count)
        for p in proofs { w.write(p) }
        let body = w.bytes
        var out: [UInt8] = []
        out.reserveCapacity(8 + body.count)
        withUnsafeBytes(of: magic.littleEndian) { out += $0 }
        withUnsafeBytes(of: UInt32(body.count).littleEndian) { out += $0 }
        return out + body
    }

    /// Decodes a proofs frame of a checkpoint of `parts` parts.
    static func decode(_ frame: [UInt8], parts: Int, seq: UInt64) throws(StoreError) -> [[Digest]] {
        func le32(_ i: Int) -> UInt32 { (0..<4).reduce(UInt32(0)) { $0 | UInt32(frame[i + $1]) << (8 * $1) } }
        guard frame.count >= 8, le32(0) == magic, Int(le32(4)) == frame.count - 8 else { throw StoreError(.badValue, "checkpoint \(seq): the part proofs frame is malformed") }
        do {
            let proofs = try BCS.read(from: frame[8...]) { (r: inout BCSReader) throws(CoreError) in
                // Each proof is at least its own length byte.
                let count = try r.readLength(minElementSize: 1)
                var out: [[Digest]] = []
                out.reserveCapacity(count)
                for _ in 0..<count { out.append(try r.readVector(Digest.self, minElementSize: 32)) }
                return out
            }
            guard proofs.count == parts else {
                throw StoreError(.badValue, "checkpoint \(seq): \(proofs.count) part proofs for \(parts) parts")
            }
            return proofs
        } catch let e as StoreError {
            throw e
        } catch {
            throw StoreError(.badValue, "checkpoint \(seq): the part proofs frame does not decode (\(error))")
        }
    }
}

extension NodeStore {
    static let layoutKey = Array("layout".utf8)
    /// The layout of this version: blocks in history segments (older stores have no key).
    static let layout = Array("segments-1".utf8)

    /// The frames a checkpoint keeps in its segment: its blocks, then (multi-part only) the
    /// part proofs frame.
    static func segmentFrames(_ cp: VerifiedCheckpoint) -> [[UInt8]] {
        cp.frames.count > 1 ? cp.frames + [PartProofFrame.encode(cp.proofs)] : cp.frames
    }

    /// Appends checkpoints' frames to the segments (synced: data, then index), sealing the
    /// segment after each epoch end. Called before the batch that advances `highestSynced`.
    func appendHistory<C: Collection<VerifiedCheckpoint>>(_ checkpoints: C) throws(StoreError) {
        var run: [(seq: UInt64, frames: [[UInt8]])] = []
        run.reserveCapacity(checkpoints.count)
        for cp in checkpoints {
            run.append((cp.certified.summary.sequenceNumber, Self.segmentFrames(cp)))
            if cp.certified.summary.endOfEpoch != nil {
                try segments.append(run)
                run.removeAll(keepingCapacity: true)
                try segments.seal()
            }
        }
        if !run.isEmpty { try segments.append(run) }
    }

    /// After a failed append or batch: frames ahead of the committed `highestSynced` go, so
    /// the next commit can append them again.
    func dropHistory(after synced: WatermarkValue?) {
        if let synced { try? segments.truncate(after: synced.seq) } else { try? segments.removeAll() }
    }

    /// Makes the segments and the watermarks agree on open (DESIGN §6.1): frames a crash left
    /// ahead of `highestSynced` are cut, whole segments below `lowestAvailable` deleted; a store
    /// of the old layout (blocks inside RocksDB) has them moved into segments first. Segments
    /// that end before `highestSynced` lower it when nothing past their end is executed, and
    /// are otherwise refused with the checkpoint that is missing.
    func reconcileHistory() throws {
        let readOnly = configuration.database.readOnly
        guard try chainIDSync() != nil else {
            // Nothing committed: a segment left by an initialisation that crashed goes.
            if !readOnly { try segments.removeAll() }
            return
        }
        switch try database.get(cf.meta, Self.layoutKey) {
        case nil:
            guard !readOnly else {
                throw StoreError(.invalidArgument, "the store at \(database.path) keeps its blocks inside RocksDB (the layout before history segments): open it once read-write, e.g. with soma-node verify, to move them into segments")
            }
            try migrateToSegments()
        case Self.layout?:
            break
        case let other?:
            throw StoreError(.invalidArgument, "the store at \(database.path) has layout \"\(String(decoding: other, as: UTF8.self))\", which this soma-node does not know: use the soma-node that wrote it")
        }
        guard let synced = try watermarkSync(.highestSynced), let lowest = try watermarkSync(.lowestAvailable) else {
            throw StoreError(.inconsistent, "the store at \(database.path) has a genesis but no highestSynced or lowestAvailable")
        }
        if !readOnly {
            if let last = segments.lastSeq, last > synced.seq { try segments.truncate(after: synced.seq) }
            if let last = segments.lastSeq, last < lowest.seq { try segments.removeAll() } else { try segments.prune(below: lowest.seq) }
        }
        var visible: UInt64? = synced.seq
        if lowest.seq <= synced.seq {
            let first = segments.firstSeq, last = segments.lastSeq
            if let first, first > lowest.seq {
                throw StoreError(.inconsistent, "checkpoint \(lowest.seq): block missing from the history segments (they start at checkpoint \(first)): the segment files in \(segments.directory) were lost or damaged; move the store aside and sync again")
            }
            if last.map({ $0 < synced.seq }) ?? true {
                let executed = try watermarkSync(.highestExecuted)
                let missing = last.map { $0 &+ 1 } ?? lowest.seq
                if readOnly {
                    // A writer may be appending right now: read what is there.
                    visible = last
                } else if let last, last >= lowest.seq, let executed, executed.seq <= last, let summary = try summarySync(last) {
                    // Certified frames lost after their batch (a disk that lied about a sync):
                    // highestSynced comes back to what is held; a sync fetches the rest again.
                    visible = last
                    let batch = WriteBatch(for: database)
                    setWatermark(.highestSynced, WatermarkValue(seq: last, digest: summary.digest), in: batch)
                    try database.write(batch, sync: true)
                } else {
                    throw StoreError(.inconsistent, "checkpoint \(missing): block missing from the history segments (they end at \(last.map { "checkpoint \($0)" } ?? "nothing"), highestSynced is \(synced.seq)): the segment files in \(segments.directory) were lost or damaged; move the store aside and sync again")
                }
            }
        }
        held.withLock { $0 = HeldRange(lowest: lowest.seq, synced: visible) }
    }

    /// Moves the blocks and part proofs of a store of the old layout out of RocksDB into
    /// segments, then (one batch) deletes them there and records the layout. A crash part-way
    /// starts the move again from an empty segment directory.
    func migrateToSegments() throws {
        try segments.removeAll()
        guard let synced = try watermarkSync(.highestSynced), let lowest = try watermarkSync(.lowestAvailable) else {
            throw StoreError(.inconsistent, "the store at \(database.path) has a genesis but no highestSynced or lowestAvailable")
        }
        guard synced.seq < UInt64.max else { throw StoreError(.badValue, "highestSynced is \(synced.seq)") }
        var run: [(seq: UInt64, frames: [[UInt8]])] = []
        var seq = lowest.seq
        while seq <= synced.seq {
            var frames = try database.scan(cf.blocks, from: StoreKeys.block(seq, part: 0), to: StoreKeys.seq(seq + 1)).map(\.value)
            guard !frames.isEmpty else {
                throw StoreError(.inconsistent, "checkpoint \(seq) is below highestSynced but its block is not stored")
            }
            if frames.count > 1 {
                var proofs: [[Digest]] = []
                for part in 0..<frames.count {
                    guard let bytes = try database.get(cf.partProofs, StoreKeys.block(seq, part: UInt32(part))) else {
                        throw StoreError(.inconsistent, "checkpoint \(seq) part \(part): part proof missing")
                    }
                    do {
                        proofs.append(try BCS.read(from: bytes[...]) { (r: inout BCSReader) throws(CoreError) in try r.readVector(Digest.self, minElementSize: 32) })
                    } catch {
                        throw StoreError(.badValue, error, context: "part proof \(seq)/\(part)")
                    }
                }
                frames.append(PartProofFrame.encode(proofs))
            }
            run.append((seq, frames))
            let endsEpoch = try summarySync(seq)?.summary.endOfEpoch != nil
            if endsEpoch || run.count == 256 || seq == synced.seq {
                try segments.append(run)
                run.removeAll(keepingCapacity: true)
                if endsEpoch { try segments.seal() }
            }
            seq += 1
        }
        let batch = WriteBatch(for: database)
        let all = [UInt8](repeating: 0xFF, count: 16)
        batch.deleteRange(cf.blocks, from: [], to: all)
        batch.deleteRange(cf.partProofs, from: [], to: all)
        batch.put(cf.meta, Self.layoutKey, Self.layout)
        try database.write(batch, sync: true)
    }

    /// The number of block parts held for checkpoint `seq` (0: not held).
    func blockPartCountSync(_ seq: UInt64) throws(StoreError) -> UInt32 {
        guard held.withLock({ $0.contains(seq) }) else { return 0 }
        let n = segments.partCount(seq)
        // One block, or two or more and their proofs frame.
        guard n != 2, let parts = UInt32(exactly: n > 1 ? n - 1 : n) else {
            throw StoreError(.badValue, "checkpoint \(seq) has \(n) frames in its segment")
        }
        return parts
    }

    /// The stored LZ4 block frames of checkpoint `seq`, one per part (empty: not held).
    func blockFramesSync(_ seq: UInt64) throws(StoreError) -> [[UInt8]] {
        let parts = try blockPartCountSync(seq)
        var frames: [[UInt8]] = []
        frames.reserveCapacity(Int(parts))
        for part in 0..<parts {
            guard let f = try segments.frame(seq, part: part) else {
                throw StoreError(.inconsistent, "checkpoint \(seq) part \(part) went from its segment")
            }
            frames.append(f)
        }
        return frames
    }

    /// The part proof of part `part` of checkpoint `seq` (empty for single-part checkpoints).
    public func partProof(at seq: UInt64, part: UInt32) async throws -> [Digest] {
        try await blocking { try self.partProofSync(seq, part) }
    }

    func partProofSync(_ seq: UInt64, _ part: UInt32) throws(StoreError) -> [Digest] {
        let parts = try blockPartCountSync(seq)
        guard parts > 1, part < parts else { return [] }
        guard let frame = try segments.frame(seq, part: parts) else {
            throw StoreError(.inconsistent, "checkpoint \(seq): the part proofs went from its segment")
        }
        return try PartProofFrame.decode(frame, parts: Int(parts), seq: seq)[Int(part)]
    }
}

extension NodeStore {
    /// The encoding of an object version from what `objects` stores of it: the value itself,
    /// or the bytes its locator names in a held block (archive stores, DESIGN §6.1). A locator
    /// is read back from the store: its range is checked against the decompressed block.
    func objectEncoding(_ value: [UInt8], _ id: ObjectID, _ version: UInt64) throws(StoreError) -> [UInt8] {
        guard let locator = StoreKeys.readObjectLocator(value) else { return value }
        let bytes = try heldBlock(locator.seq, part: locator.part, for: "object \(id.short) v\(version)")
        let start = Int(locator.offset)
        let (end, overflow) = start.addingReportingOverflow(Int(locator.length))
        guard !overflow, end <= bytes.count else {
            throw StoreError(.badValue, "object \(id.short) v\(version): its locator runs past the end of checkpoint \(locator.seq) part \(locator.part)")
        }
        return Array(bytes[start..<end])
    }

    /// The decompressed block of a held checkpoint part that a locator names; `what` (the
    /// object, or the build) opens the error when it is not held.
    func heldBlock(_ seq: UInt64, part: UInt32, for what: @autoclosure () -> String) throws(StoreError) -> [UInt8] {
        guard held.withLock({ $0.contains(seq) }), let frame = try segments.frame(seq, part: part) else {
            throw StoreError(.inconsistent, "\(what()) lies in checkpoint \(seq) part \(part), whose block is not held")
        }
        return try LZ4Frame.decompress(frame, limit: configuration.maxBlockBytes)
    }

    /// ``heldBlock(_:part:for:)`` read through `reader` (bulk reads in file order);
    /// `checksum: false` for a caller that checks every byte it takes another way.
    func heldBlock(
        _ seq: UInt64, part: UInt32, through reader: inout HistorySegments.FrameReader, checksum: Bool = true, for what: @autoclosure () -> String
    ) throws(StoreError) -> [UInt8] {
        guard held.withLock({ $0.contains(seq) }), let frame = try reader.read(seq, part: part, in: segments) else {
            throw StoreError(.inconsistent, "\(what()) lies in checkpoint \(seq) part \(part), whose block is not held")
        }
        return try LZ4Frame.decompress(frame, limit: configuration.maxBlockBytes, checksum: checksum)
    }
}
