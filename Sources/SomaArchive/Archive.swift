import Foundation
public import SomaCore
public import SomaStore

/// A file an archive's manifest lists: its name, size and SHA-256.
public struct ArchiveFile: BCSCodable, Sendable, Equatable {
    /// The name within the archive (``ArchiveName``).
    public var name: String
    /// Its size in bytes.
    public var size: UInt64
    /// SHA-256 of its bytes.
    public var sha256: Digest

    /// An entry.
    public init(name: String, size: UInt64, sha256: Digest) {
        self.name = name
        self.size = size
        self.sha256 = sha256
    }

    /// The entry of `bytes` named `name`.
    public init(name: String, bytes: [UInt8]) {
        self.init(name: name, size: UInt64(bytes.count), sha256: Hashing.sha256(bytes))
    }

    /// Writes name, size, sha256.
    public func encode(to w: inout BCSWriter) {
        w.write(name)
        w.write(size)
        w.write(sha256)
    }

    /// Reads name (a valid archive name), size, sha256.
    public init(from r: inout BCSReader) throws(CoreError) {
        name = try r.readString()
        guard (try? ArchiveName.check(name)) != nil else { throw CoreError(.invalidValue, "archive file name \(name.debugDescription)") }
        size = try r.readU64()
        sha256 = try r.readDigest()
    }
}

/// One range of checkpoints of an archive: a closed history segment of the producer's store
/// (its data and index files as they are) and the certified summaries of its checkpoints.
public struct ArchiveRange: BCSCodable, Sendable, Equatable {
    /// Its first and last checkpoint.
    public var first: UInt64
    public var last: UInt64
    /// The segment's data (`segments/<first>.seg`) and index (`segments/<first>.idx`).
    public var data: ArchiveFile
    public var index: ArchiveFile
    /// `bcs(vector<CertifiedCheckpointSummary>)` of `first...last` (`summaries/<first>.bcs`).
    public var summaries: ArchiveFile
    /// The certified summary of `last`.
    public var end: CertifiedCheckpointSummary

    /// A range.
    public init(first: UInt64, last: UInt64, data: ArchiveFile, index: ArchiveFile, summaries: ArchiveFile, end: CertifiedCheckpointSummary) {
        self.first = first
        self.last = last
        self.data = data
        self.index = index
        self.summaries = summaries
        self.end = end
    }

    /// Writes first, last, data, index, summaries, end.
    public func encode(to w: inout BCSWriter) {
        w.write(first)
        w.write(last)
        w.write(data)
        w.write(index)
        w.write(summaries)
        w.write(end)
    }

    /// Reads a range (`first <= last`, `end` naming `last`).
    public init(from r: inout BCSReader) throws(CoreError) {
        first = try r.readU64()
        last = try r.readU64()
        data = try r.read(ArchiveFile.self)
        index = try r.read(ArchiveFile.self)
        summaries = try r.read(ArchiveFile.self)
        end = try r.read(CertifiedCheckpointSummary.self)
        guard first <= last, end.summary.sequenceNumber == last else {
            throw CoreError(.invalidValue, "archive range \(first)...\(last) ending with checkpoint \(end.summary.sequenceNumber)")
        }
    }

    /// The number of checkpoints (`UInt64.max` for the one range too long to count: 0...max,
    /// which only a lying manifest names).
    public var count: UInt64 { last - first == .max ? .max : last - first + 1 }

    /// Bytes of its three files (saturating: the sizes come from the manifest).
    public var bytes: UInt64 {
        [data.size, index.size, summaries.size].reduce(UInt64(0)) { total, size in
            let (sum, overflow) = total.addingReportingOverflow(size)
            return overflow ? .max : sum
        }
    }
}

/// An epoch's state snapshot in an archive (DESIGN §10, §11): its manifest (`bcs(SnapshotManifest)`,
/// `snapshots/<epoch>.bcs`), its chunks' LZ4 frames back to back as the store keeps them
/// (`snapshots/<epoch>.chunks`) and their index (`snapshots/<epoch>.idx`: the 24-byte records of a
/// segment index, the epoch as the checkpoint, the chunk index as the part).
public struct ArchiveSnapshot: BCSCodable, Sendable, Equatable {
    /// The epoch whose end's live set it holds.
    public var epoch: UInt64
    /// Its files.
    public var manifest: ArchiveFile
    public var data: ArchiveFile
    public var index: ArchiveFile

    /// A snapshot entry.
    public init(epoch: UInt64, manifest: ArchiveFile, data: ArchiveFile, index: ArchiveFile) {
        self.epoch = epoch
        self.manifest = manifest
        self.data = data
        self.index = index
    }

    /// Writes epoch, manifest, data, index.
    public func encode(to w: inout BCSWriter) {
        w.write(epoch)
        w.write(manifest)
        w.write(data)
        w.write(index)
    }

    /// Reads epoch, manifest, data, index.
    public init(from r: inout BCSReader) throws(CoreError) {
        epoch = try r.readU64()
        manifest = try r.read(ArchiveFile.self)
        data = try r.read(ArchiveFile.self)
        index = try r.read(ArchiveFile.self)
    }

    /// The base name of an epoch's files: `snapshots/<epoch, 20 digits>`.
    public static func baseName(_ epoch: UInt64) -> String { "snapshots/" + ArchiveExport.padded(epoch) }
}

/// What an archive holds (DESIGN §11): the genesis, the ranges in order, the certified summaries
/// ending its epochs, its snapshots, who made it and when, signed by the producer's node key. The signature names the producer; trust comes from the
/// certificates: a reader verifies every checkpoint from the genesis committee.
public struct ArchiveManifest: BCSCodable, Sendable, Equatable {
    /// The format's version.
    public static let version: UInt8 = 1
    /// The manifest's name in an archive.
    public static let fileName = "manifest.bcs"

    /// The chain (the genesis checkpoint's digest).
    public var chainID: Digest
    /// `genesis.bcs`: `bcs(Genesis)`.
    public var genesis: ArchiveFile
    /// The ranges, in order, each right after the previous one.
    public var ranges: [ArchiveRange]
    /// The certified summaries ending epochs 0, 1, … (the `k`-th ends epoch `k`), up to the last
    /// range: the epoch chain a reader verifies from the genesis committee before anything else.
    public var epochEnds: [CertifiedCheckpointSummary]
    /// The epochs' snapshots it holds, by epoch (ascending).
    public var snapshots: [ArchiveSnapshot]
    /// The producer's node key.
    public var producer: PublicKey
    /// When it was written (Unix milliseconds).
    public var createdMs: UInt64
    /// The producer's signature of ``signingMessage``.
    public var signature: Signature

    /// A manifest signed with `key`.
    public init(
        chainID: Digest, genesis: ArchiveFile, ranges: [ArchiveRange], epochEnds: [CertifiedCheckpointSummary] = [],
        snapshots: [ArchiveSnapshot] = [], key: SigningKey, createdMs: UInt64
    ) {
        self.chainID = chainID
        self.genesis = genesis
        self.ranges = ranges
        self.epochEnds = epochEnds
        self.snapshots = snapshots
        self.producer = key.publicKey
        self.createdMs = createdMs
        self.signature = Signature(bytes: [UInt8](repeating: 0, count: 64))!
        self.signature = key.sign(signingMessage)
    }

    /// `"SomaArchiveManifest::"` ‖ everything before the signature.
    public var signingMessage: [UInt8] {
        var w = BCSWriter(capacity: 256 + ranges.count * 512)
        encodeUnsigned(to: &w)
        return Array("SomaArchiveManifest::".utf8) + w.bytes
    }

    func encodeUnsigned(to w: inout BCSWriter) {
        w.write(Self.version)
        w.write(chainID)
        w.write(genesis)
        w.writeLength(ranges.count)
        for r in ranges { w.write(r) }
        w.writeLength(epochEnds.count)
        for e in epochEnds { w.write(e) }
        w.writeLength(snapshots.count)
        for s in snapshots { w.write(s) }
        w.write(producer)
        w.write(createdMs)
    }

    /// Writes version, chain id, genesis, ranges, producer, time, signature.
    public func encode(to w: inout BCSWriter) {
        encodeUnsigned(to: &w)
        w.write(signature)
    }

    /// Reads a manifest of this version with ranges in order (each right after the previous).
    public init(from r: inout BCSReader) throws(CoreError) {
        let v = try r.readU8()
        guard v == Self.version else { throw CoreError(.unknownTag, "archive manifest version \(v); this node reads version \(Self.version)") }
        chainID = try r.readDigest()
        genesis = try r.read(ArchiveFile.self)
        let count = try r.readLength(minElementSize: 100)
        var ranges: [ArchiveRange] = []
        for _ in 0..<count {
            let range = try r.read(ArchiveRange.self)
            if let previous = ranges.last, previous.last == UInt64.max || range.first != previous.last + 1 {
                throw CoreError(.invalidValue, "archive range \(range.first)...\(range.last) does not follow \(previous.first)...\(previous.last)")
            }
            ranges.append(range)
        }
        self.ranges = ranges
        let endCount = try r.readLength(minElementSize: 100)
        var ends: [CertifiedCheckpointSummary] = []
        for k in 0..<endCount {
            let end = try r.read(CertifiedCheckpointSummary.self)
            guard end.summary.endOfEpoch != nil, end.summary.epoch == UInt64(k),
                  ends.last.map({ $0.summary.sequenceNumber < end.summary.sequenceNumber }) ?? true
            else {
                throw CoreError(.invalidValue, "archive epoch end \(k) is checkpoint \(end.summary.sequenceNumber) of epoch \(end.summary.epoch)\(end.summary.endOfEpoch == nil ? ", which ends no epoch" : "") (epoch ends come in order, one an epoch from 0)")
            }
            ends.append(end)
        }
        epochEnds = ends
        let snapshotCount = try r.readLength(minElementSize: 8 + 3 * 41)
        var snapshots: [ArchiveSnapshot] = []
        for _ in 0..<snapshotCount {
            let snapshot = try r.read(ArchiveSnapshot.self)
            if let previous = snapshots.last, previous.epoch >= snapshot.epoch {
                throw CoreError(.invalidValue, "archive snapshot of epoch \(snapshot.epoch) listed after epoch \(previous.epoch)")
            }
            snapshots.append(snapshot)
        }
        self.snapshots = snapshots
        producer = try r.read(PublicKey.self)
        createdMs = try r.readU64()
        signature = try r.read(Signature.self)
    }

    /// Checks the producer's signature.
    /// - Throws: ``ArchiveError``.
    public func verifySignature() throws {
        guard producer.isValidSignature(signature, for: signingMessage) else {
            throw ArchiveError("the archive's manifest is not signed by the producer it names (\(producer))")
        }
    }
}

/// Reads an archive and checks what it reads: the manifest's signature, every file's size and
/// SHA-256 against the manifest, every segment's index, and that each range's summaries are its
/// checkpoints' in order and end with the certified summary the manifest names. What it returns
/// still needs the chain's verification (certificates from the genesis committee, blocks
/// against their summaries): a ``CheckpointImporter`` does it, as for any source.
public struct ArchiveReader: Sendable {
    /// Where the archive is.
    public let backend: any ArchiveBackend

    /// The largest manifest read.
    public static let maxManifestBytes = 64 << 20
    /// The largest file of a range read (a segment closes past 1 GiB; its last frames can
    /// reach past that by a frame).
    public static let maxFileBytes = (1 << 30) + (256 << 20)

    /// A reader of the archive in `backend`.
    public init(backend: any ArchiveBackend) {
        self.backend = backend
    }

    /// The manifest, its signature checked; nil when the archive has none (empty, or not an archive).
    public func manifest() async throws -> ArchiveManifest? {
        guard try await backend.size(ArchiveManifest.fileName) != nil else { return nil }
        let bytes = try await backend.read(ArchiveManifest.fileName, range: nil, limit: Self.maxManifestBytes)
        let manifest: ArchiveManifest
        do {
            manifest = try BCS.decode(ArchiveManifest.self, from: bytes)
        } catch {
            throw ArchiveError("\(backend)/\(ArchiveManifest.fileName): not an archive manifest: \(error)")
        }
        try manifest.verifySignature()
        return manifest
    }

    /// The manifest, its signature checked.
    /// - Throws: ``ArchiveError`` when there is none (not an archive), or as ``manifest()``.
    public func requiredManifest() async throws -> ArchiveManifest {
        guard let manifest = try await manifest() else { throw ArchiveError("\(backend): no \(ArchiveManifest.fileName): not an archive") }
        return manifest
    }

    /// A file's bytes, checked against its entry.
    /// - Throws: ``ArchiveError`` naming the file when it is missing, of another size, or
    ///   its SHA-256 differs.
    public func fetch(_ file: ArchiveFile) async throws -> [UInt8] {
        guard file.size <= UInt64(Self.maxFileBytes) else { throw ArchiveError("\(backend)/\(file.name): listed at \(file.size) bytes, more than an archive file holds") }
        guard let size = try await backend.size(file.name) else { throw ArchiveError("\(backend)/\(file.name): missing") }
        guard size == Int(file.size) else { throw ArchiveError("\(backend)/\(file.name): \(size) bytes, the manifest lists \(file.size)") }
        let bytes = try await backend.read(file.name, range: nil, limit: Int(file.size))
        guard bytes.count == Int(file.size), Hashing.sha256(bytes) == file.sha256 else {
            throw ArchiveError("\(backend)/\(file.name): its SHA-256 is not the manifest's (a corrupt or replaced file)")
        }
        return bytes
    }

    /// The genesis, checked against the manifest's chain.
    public func genesis(_ manifest: ArchiveManifest) async throws -> Genesis {
        let bytes = try await fetch(manifest.genesis)
        let genesis: Genesis
        do { genesis = try BCS.decode(Genesis.self, from: bytes) } catch { throw ArchiveError("\(backend)/\(manifest.genesis.name): not a genesis: \(error)") }
        guard genesis.chainID == manifest.chainID else { throw ArchiveError("\(backend)/\(manifest.genesis.name): the genesis of another chain than the manifest's") }
        return genesis
    }

    /// The checkpoints of `range`: each certified summary with its stored blocks and part proofs.
    public func records(_ range: ArchiveRange) async throws -> [ChainRecord] {
        let index = try await self.index(range)
        let data = try await fetch(range.data)
        let summaries = try await self.summaries(range)
        let checkpoints: [SegmentFile.Checkpoint]
        do {
            checkpoints = try index.checkpoints(0..<index.count, bytes: data[...], at: 0)
        } catch {
            throw ArchiveError("\(backend)/\(range.index.name): \(error)")
        }
        return zip(checkpoints, summaries).map { ChainRecord(certified: $1, frames: $0.frames, proofs: $0.proofs) }
    }

    /// The index of `range`'s segment, checked record by record against the data file's listed
    /// size: one record set per checkpoint of the range, in order, covering the data exactly.
    public func index(_ range: ArchiveRange) async throws -> SegmentIndex {
        let index = try await index(range.index, of: range.data)
        guard UInt64(index.count) == range.count, index.first == range.first else {
            throw ArchiveError("\(backend)/\(range.index.name): indexes \(index.count) checkpoints from \(index.first), the range is \(range.first)...\(range.last)")
        }
        return index
    }

    /// The index of a snapshot's chunks, checked: the `chunks` chunks of its epoch, covering
    /// the data file exactly.
    public func index(_ snapshot: ArchiveSnapshot, chunks: Int) async throws -> SegmentIndex {
        let index = try await index(snapshot.index, of: snapshot.data)
        guard index.count == 1, index.first == snapshot.epoch, index.frames(of: 0).count == chunks else {
            throw ArchiveError("\(backend)/\(snapshot.index.name): does not index the \(chunks) chunks of epoch \(snapshot.epoch)")
        }
        return index
    }

    /// The index file `index` of the data file `data` (both as the manifest lists them), read
    /// and checked record by record against the data file's listed size, covering it exactly.
    func index(_ index: ArchiveFile, of data: ArchiveFile) async throws -> SegmentIndex {
        guard data.size <= UInt64(Self.maxFileBytes) else {
            throw ArchiveError("\(backend)/\(data.name): listed at \(data.size) bytes, more than an archive file holds")
        }
        let bytes = try await fetch(index)
        let parsed: SegmentIndex
        do {
            parsed = try SegmentIndex(bytes, dataSize: data.size)
        } catch {
            throw ArchiveError("\(backend)/\(index.name): \(error)")
        }
        guard parsed.dataEnd == data.size else {
            throw ArchiveError("\(backend)/\(index.name): covers \(parsed.dataEnd) bytes of a data file of \(data.size)")
        }
        return parsed
    }

    /// The certified summaries of `range`, checked: one per checkpoint, in order, the last the
    /// one the manifest names. (Their certificates are the chain's to verify.)
    public func summaries(_ range: ArchiveRange) async throws -> [CertifiedCheckpointSummary] {
        let bytes = try await fetch(range.summaries)
        let summaries: [CertifiedCheckpointSummary]
        do {
            summaries = try BCS.read(from: bytes[...]) { (r: inout BCSReader) throws(CoreError) in try r.readVector(CertifiedCheckpointSummary.self, minElementSize: 100) }
        } catch {
            throw ArchiveError("\(backend)/\(range.summaries.name): not a list of certified summaries: \(error)")
        }
        guard UInt64(summaries.count) == range.count else {
            throw ArchiveError("\(backend)/\(range.summaries.name): \(summaries.count) summaries for checkpoints \(range.first)...\(range.last)")
        }
        for (i, certified) in summaries.enumerated() where certified.summary.sequenceNumber != range.first + UInt64(i) {
            throw ArchiveError("\(backend)/\(range.summaries.name): position \(i) holds the summary of checkpoint \(certified.summary.sequenceNumber), not \(range.first + UInt64(i))")
        }
        guard summaries.last == range.end else {
            throw ArchiveError("\(backend): range \(range.first)...\(range.last) does not end with the certified summary its manifest names")
        }
        return summaries
    }
}

extension ArchiveReader {
    /// What ``verifySnapshots(_:genesis:)`` checked of one snapshot.
    public struct VerifiedSnapshot: Sendable {
        /// The epoch, its live objects and chunks.
        public var epoch: UInt64
        public var objects: UInt64
        public var chunks: Int
        /// The certified state root every chunk was proven against.
        public var stateRoot: Digest
    }

    /// Verifies the manifest's epoch ends as a chain from the genesis committee, then each
    /// snapshot: its manifest against its epoch's certified end (state root, object count, chunk
    /// roots), its index against its data file, and every chunk on its own against the certified
    /// state root (decompressed within `limit`).
    /// - Throws: ``ArchiveError`` naming the file or chunk at fault; the chain's errors.
    public func verifySnapshots(_ manifest: ArchiveManifest, genesis: Genesis, limit: Int = 256 << 20) async throws -> [VerifiedSnapshot] {
        _ = try ChainVerifier.verifyEpochChain(genesis: genesis.committee, endOfEpochSummaries: manifest.epochEnds)
        var out: [VerifiedSnapshot] = []
        for entry in manifest.snapshots {
            guard let e = Int(exactly: entry.epoch), e < manifest.epochEnds.count else {
                throw ArchiveError("\(backend): a snapshot of epoch \(entry.epoch), whose end the archive does not list")
            }
            let snapshot: SnapshotManifest
            do {
                snapshot = try SnapshotManifest(bcsBytes: try await fetch(entry.manifest))
                try snapshot.check(against: manifest.epochEnds[e].summary)
            } catch let error as ArchiveError {
                throw error
            } catch {
                throw ArchiveError("\(backend)/\(entry.manifest.name): \(error)")
            }
            let index = try await self.index(entry, chunks: snapshot.chunkRoots.count)
            let data = try await fetch(entry.data)
            for k in snapshot.chunkRoots.indices {
                let from = Int(index.offsets[k]), length = Int(index.lengths[k])
                do {
                    _ = try snapshot.verifyChunk(index: UInt32(k), frame: Array(data[from..<(from + length)]), proof: try snapshot.proof(chunk: k), limit: limit)
                } catch {
                    throw ArchiveError("\(backend)/\(entry.data.name): chunk \(k): \(error)")
                }
            }
            out.append(VerifiedSnapshot(epoch: entry.epoch, objects: snapshot.objectCount, chunks: snapshot.chunkRoots.count, stateRoot: snapshot.stateRoot))
        }
        return out
    }
}

/// Writes a store's closed history to an archive (DESIGN §11): the genesis, then for each closed
/// segment in the range its data and index files as they are and its checkpoints' certified
/// summaries, then the manifest, replaced whole after each range. A range the manifest already
/// lists is not written again, so an interrupted export resumes where it stopped; files are
/// written before the manifest names them, so a reader never finds a listed file missing.
public enum ArchiveExport {
    /// What an export did.
    public struct Report: Sendable {
        /// Ranges written now, and already there.
        public var written: [ArchiveRange]
        public var kept: Int
        /// Snapshots written now.
        public var snapshots: [ArchiveSnapshot]
        /// Bytes written.
        public var bytes: UInt64
        /// The manifest.
        public var manifest: ArchiveManifest
    }

    /// Exports the closed segments of `store` whose checkpoints lie within `from...until`
    /// (whole segments) to `backend`, and with `snapshots` the store's epoch snapshots the
    /// archive lacks, signing the manifest with `key`.
    /// - Throws: ``ArchiveError`` when the archive holds another chain, or its last range is not
    ///   followed by the first one to write (a gap).
    public static func run(
        store: NodeStore, to backend: any ArchiveBackend, key: SigningKey, from: UInt64 = 0, until: UInt64 = .max, snapshots withSnapshots: Bool = true,
        progress: @Sendable (ArchiveRange) -> Void = { _ in }
    ) async throws -> Report {
        guard let genesis = try await store.genesis() else { throw ArchiveError("the store has no genesis") }
        let reader = ArchiveReader(backend: backend)
        let existing = try await reader.manifest()
        if let existing, existing.chainID != genesis.chainID {
            throw ArchiveError("\(backend) holds another chain (\(existing.chainID.hex.prefix(16))…), not this store's (\(genesis.chainID.hex.prefix(16))…)")
        }
        var bytesWritten: UInt64 = 0
        let genesisBytes = genesis.bcsBytes
        let genesisFile = ArchiveFile(name: "genesis.bcs", bytes: genesisBytes)
        if try await backend.size(genesisFile.name) != genesisBytes.count || existing?.genesis != genesisFile {
            try await backend.write(genesisFile.name, bytes: genesisBytes)
            bytesWritten += UInt64(genesisBytes.count)
        }
        var ranges = existing?.ranges ?? []
        var snapshots = existing?.snapshots ?? []
        var written: [ArchiveRange] = []
        var writtenSnapshots: [ArchiveSnapshot] = []
        let ends = try await epochEnds(store)
        func sign() -> ArchiveManifest {
            ArchiveManifest(
                chainID: genesis.chainID, genesis: genesisFile, ranges: ranges, epochEnds: ends.count >= (existing?.epochEnds.count ?? 0) ? ends : existing?.epochEnds ?? [],
                snapshots: snapshots, key: key, createdMs: now())
        }
        for segment in store.segments.closedSegments() where segment.first >= from && segment.last <= until {
            if let last = ranges.last {
                if segment.last <= last.last { continue }
                guard last.last < .max, segment.first == last.last + 1 else {
                    throw ArchiveError("\(backend) ends at checkpoint \(last.last); the store's next closed segment starts at \(segment.first)")
                }
            }
            let name = padded(segment.first)
            // The segment's data is read in pieces (it may be over 1 GiB): hashed, then written.
            let data = try ClosedFile(segment.data)
            let dataFile = ArchiveFile(name: "segments/\(name).seg", size: UInt64(data.size), sha256: try data.sha256())
            let index = try ClosedFile(segment.index).read(0, nil)
            var summaries: [CertifiedCheckpointSummary] = []
            for seq in segment.first...segment.last {
                guard let s = try await store.summary(at: seq) else { throw ArchiveError("the store lacks the summary of checkpoint \(seq)") }
                summaries.append(s)
            }
            var w = BCSWriter(capacity: summaries.count * 256)
            w.writeLength(summaries.count)
            for s in summaries { w.write(s) }
            let summaryBytes = w.bytes
            let range = ArchiveRange(
                first: segment.first, last: segment.last, data: dataFile,
                index: ArchiveFile(name: "segments/\(name).idx", bytes: index), summaries: ArchiveFile(name: "summaries/\(name).bcs", bytes: summaryBytes),
                end: summaries[summaries.count - 1])
            try await backend.write(range.data.name, size: data.size) { offset, length in try data.read(offset, length) }
            try await backend.write(range.index.name, bytes: index)
            try await backend.write(range.summaries.name, bytes: summaryBytes)
            ranges.append(range)
            try await backend.write(ArchiveManifest.fileName, bytes: sign().bcsBytes)
            bytesWritten += UInt64(data.size + index.count + summaryBytes.count)
            written.append(range)
            progress(range)
        }
        // The store's snapshots the archive lacks (it keeps those it has).
        for epoch in try await (withSnapshots ? store.snapshotEpochs() : []) where !snapshots.contains(where: { $0.epoch == epoch }) {
            guard let (snapshot, bytes) = try await writeSnapshot(epoch, of: store, to: backend) else { continue }
            snapshots.append(snapshot)
            snapshots.sort { $0.epoch < $1.epoch }
            try await backend.write(ArchiveManifest.fileName, bytes: sign().bcsBytes)
            bytesWritten += bytes
            writtenSnapshots.append(snapshot)
        }
        let manifest: ArchiveManifest
        if let existing, written.isEmpty, writtenSnapshots.isEmpty, existing.genesis == genesisFile, existing.epochEnds.count >= ends.count {
            manifest = existing
        } else {
            manifest = sign()
            try await backend.write(ArchiveManifest.fileName, bytes: manifest.bcsBytes)
        }
        return Report(written: written, kept: ranges.count - written.count, snapshots: writtenSnapshots, bytes: bytesWritten, manifest: manifest)
    }

    /// The certified summaries ending the store's epochs 0, 1, … (up to the first it lacks).
    static func epochEnds(_ store: NodeStore) async throws -> [CertifiedCheckpointSummary] {
        var out: [CertifiedCheckpointSummary] = []
        for record in try await store.epochs() {
            guard record.epoch == UInt64(out.count), let last = record.lastCheckpoint, let s = try await store.summary(at: last), s.summary.endOfEpoch != nil else { break }
            out.append(s)
        }
        return out
    }

    /// Writes the store's snapshot of `epoch` (its manifest, chunks back to back and their
    /// index); nil when the store no longer holds it whole (pruned meanwhile). The chunks are
    /// read twice, never all at once: once for their sizes and the file's SHA-256, once as
    /// the pieces the backend writes.
    static func writeSnapshot(_ epoch: UInt64, of store: NodeStore, to backend: any ArchiveBackend) async throws -> (ArchiveSnapshot, UInt64)? {
        guard let manifest = try await store.snapshotManifest(epoch: epoch) else { return nil }
        // offsets[k]: where chunk k starts in the data file; the last, the file's size.
        var offsets: [Int] = [0]
        offsets.reserveCapacity(manifest.chunkRoots.count + 1)
        var index: [UInt8] = []
        index.reserveCapacity(manifest.chunkRoots.count * HistorySegments.indexRecordBytes)
        var hasher = SHA256Hasher()
        for k in manifest.chunkRoots.indices {
            guard let frame = try await store.snapshotChunk(epoch: epoch, index: UInt32(k)) else { return nil }
            let at = offsets[k]
            guard at + frame.count <= ArchiveReader.maxFileBytes else {
                throw ArchiveError("the snapshot of epoch \(epoch) is larger than an archive file holds (\(ArchiveReader.maxFileBytes) bytes)")
            }
            for (value, width) in [(epoch, 8), (UInt64(k), 4), (UInt64(frame.count), 4), (UInt64(at), 8)] {
                for b in 0..<width { index.append(UInt8(truncatingIfNeeded: value >> (8 * UInt64(b)))) }
            }
            hasher.update(frame)
            offsets.append(at + frame.count)
        }
        let size = offsets[offsets.count - 1]
        let base = ArchiveSnapshot.baseName(epoch)
        let manifestBytes = manifest.bcsBytes
        let snapshot = ArchiveSnapshot(
            epoch: epoch, manifest: ArchiveFile(name: base + ".bcs", bytes: manifestBytes),
            data: ArchiveFile(name: base + ".chunks", size: UInt64(size), sha256: hasher.finalize()),
            index: ArchiveFile(name: base + ".idx", bytes: index))
        let chunkOffsets = offsets
        try await backend.write(snapshot.data.name, size: size) { offset, length in
            // The chunks the piece overlaps, from the last one starting at or before `offset`.
            var k = 0
            var end = chunkOffsets.count - 1
            while end - k > 1 {
                let mid = (k + end) / 2
                if chunkOffsets[mid] <= offset { k = mid } else { end = mid }
            }
            var piece: [UInt8] = []
            piece.reserveCapacity(length)
            while piece.count < length && k + 1 < chunkOffsets.count {
                let frame = try await store.snapshotChunk(epoch: epoch, index: UInt32(k))
                guard let frame, frame.count == chunkOffsets[k + 1] - chunkOffsets[k] else {
                    throw ArchiveError("chunk \(k) of the snapshot of epoch \(epoch) changed or was pruned during the export")
                }
                let from = offset + piece.count - chunkOffsets[k]
                piece += frame[from..<min(frame.count, from + length - piece.count)]
                k += 1
            }
            return piece
        }
        try await backend.write(snapshot.index.name, bytes: index)
        try await backend.write(snapshot.manifest.name, bytes: manifestBytes)
        return (snapshot, UInt64(size + index.count + manifestBytes.count))
    }

    /// `n` in 20 decimal digits (file names sort in order).
    static func padded(_ n: UInt64) -> String { String(repeating: "0", count: max(0, 20 - "\(n)".count)) + "\(n)" }

    static func now() -> UInt64 { UInt64(max(0, Date().timeIntervalSince1970 * 1_000)) }

}

/// A closed file of the store (a history segment's data or index) read by ranges, through a
/// descriptor held open: closed segments do not change, and one that pruning removes meanwhile
/// stays readable until the export is done with it.
final class ClosedFile: Sendable {
    let path: String
    let size: Int
    private let fd: Int32

    /// Opens `path`.
    /// - Throws: ``ArchiveError`` when it cannot be read, or is larger than an archive file holds.
    init(_ path: String) throws {
        self.path = path
        fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ArchiveError("\(path): cannot read the segment file (\(String(cString: strerror(errno))))") }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_size >= 0, info.st_size <= off_t(ArchiveReader.maxFileBytes) else {
            close(fd)
            throw ArchiveError("\(path): not a segment file an archive holds (at most \(ArchiveReader.maxFileBytes) bytes)")
        }
        size = Int(info.st_size)
    }

    deinit { close(fd) }

    /// `length` bytes from `offset` (nil: to the end).
    func read(_ offset: Int, _ length: Int?) throws -> [UInt8] {
        let length = length ?? (size - offset)
        guard offset >= 0, length >= 0, offset <= size, length <= size - offset else {
            throw ArchiveError("\(path): \(length) bytes at \(offset) of a file of \(size)")
        }
        let bytes = [UInt8](unsafeUninitializedCapacity: length) { buffer, count in
            count = 0
            while count < length {
                let n = pread(fd, buffer.baseAddress! + count, length - count, off_t(offset + count))
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { break }
                count += n
            }
        }
        guard bytes.count == length else { throw ArchiveError("\(path): \(bytes.count) bytes read of \(length) at \(offset)") }
        return bytes
    }

    /// SHA-256 of the whole file, read a piece at a time.
    func sha256() throws -> Digest {
        var hasher = SHA256Hasher()
        var offset = 0
        while offset < size {
            let length = min(ArchivePieces.pieceBytes, size - offset)
            hasher.update(try read(offset, length))
            offset += length
        }
        return hasher.finalize()
    }
}
