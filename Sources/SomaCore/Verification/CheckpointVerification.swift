#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A checkpoint whose contents the transaction verifier (``CheckpointVerifier``) checked against
/// its certified summary, with its blocks: ready to store, execute and serve (DESIGN §5.3).
///
/// Only ``CheckpointVerifier`` makes one: there is no other initializer, so holding a
/// `VerifiedCheckpoint` means its contents match the summary's content digest entry by entry
/// (and part by part, with each part's subtree proof). The summary itself is verified by
/// ``ChainVerifier`` (a quorum of the epoch's committee, chained by digest) before its contents
/// are checked against it.
public struct VerifiedCheckpoint: Sendable {
    /// The certified summary.
    public let certified: CertifiedCheckpointSummary
    /// The contents (all parts' entries, in order).
    public let data: CheckpointData
    /// The blocks as received or built: one LZ4 frame of `bcs(CheckpointData)` per part.
    public let frames: [[UInt8]]
    /// Each part's subtree proof (one empty proof for a single-part checkpoint).
    public let proofs: [[Digest]]
    /// The decompressed size of the blocks (the raw checkpoint data).
    public let rawBytes: Int
    /// Each entry's transaction digest, in order (computed once, by the verification).
    public let transactionDigests: [Digest]
    /// Each block decompressed (`bcs(CheckpointData)` of each part): the bytes every output
    /// object's encoding lies in.
    public let decompressedParts: [[UInt8]]
    /// Where the encoding of every output object lies in those bytes, in entry order then
    /// output order: the bytes whose digests the verification checked against the effects. An
    /// archive stores this instead of a second copy of the bytes (DESIGN §6.1).
    public let objectLocations: [ObjectLocation]
    /// The length of each of those encodings (same order).
    let objectLengths: [UInt32]

    /// The bytes of the blocks.
    public var storedBytes: Int { frames.reduce(0) { $0 + $1.count } }

    /// `bcs(Object)` of output object `k` (entry order then output order), as the block holds it.
    public func objectEncoding(_ k: Int) -> ArraySlice<UInt8> {
        let location = objectLocations[k]
        let start = Int(location.offset)
        // Recorded by the verification inside the part's bytes.
        return decompressedParts[Int(location.part)][start..<start + Int(objectLengths[k])]
    }

    /// Calls `body` with every output object, its encoding and where the encoding lies in the
    /// blocks, in entry order then output order (the verification recorded exactly one location
    /// per output object, in this order).
    public func forEachOutput(_ body: (Object, ArraySlice<UInt8>, ObjectLocation) throws -> Void) rethrows {
        var k = 0
        for entry in data.entries {
            for object in entry.outputObjects {
                try body(object, objectEncoding(k), objectLocations[k])
                k += 1
            }
        }
    }

    /// ``forEachOutput(_:)`` without copying the objects or slicing their bytes: each output
    /// object's place `k` (for ``objectEncoding(_:)``), id, version, location and encoded
    /// length, in the same order. What an index of object versions needs, at no reference
    /// counting per object.
    public func forEachOutputPlace(_ body: (_ k: Int, _ id: ObjectID, _ version: UInt64, _ location: ObjectLocation, _ length: UInt32) throws -> Void) rethrows {
        var k = 0
        for e in data.entries.indices {
            for o in data.entries[e].outputObjects.indices {
                try body(k, data.entries[e].outputObjects[o].id, data.entries[e].outputObjects[o].version, objectLocations[k], objectLengths[k])
                k += 1
            }
        }
    }

    fileprivate init(
        certified: CertifiedCheckpointSummary, data: CheckpointData, frames: [[UInt8]], proofs: [[Digest]], rawBytes: Int,
        transactionDigests: [Digest], decompressedParts: [[UInt8]], objectLocations: [ObjectLocation], objectLengths: [UInt32]
    ) {
        self.certified = certified
        self.data = data
        self.frames = frames
        self.proofs = proofs
        self.rawBytes = rawBytes
        self.transactionDigests = transactionDigests
        self.decompressedParts = decompressedParts
        self.objectLocations = objectLocations
        self.objectLengths = objectLengths
    }
}

/// Where an output object's encoding lies in its checkpoint's blocks: the part, and the byte
/// offset in that part's decompressed block, `bcs(CheckpointData)` (the length is the
/// encoding's). The bytes there are exactly the encoding whose digest the effects certify.
public struct ObjectLocation: Sendable, Hashable {
    /// The part (block) of the checkpoint.
    public let part: UInt32
    /// The offset in the part's decompressed bytes.
    public let offset: UInt32

    /// A location (read back from a store: check it against the block before use).
    public init(part: UInt32, offset: UInt32) {
        self.part = part
        self.offset = offset
    }
}

/// The transaction verifier of checkpoint contents (DESIGN §2, §5.3): every check of blocks and
/// contents from outside (a peer, an archive, a chain file) is made here, and a
/// ``VerifiedCheckpoint`` comes out of nothing else.
///
/// Decompression and compression are the caller's (SomaCore does no I/O and links no codec):
/// they are passed in and applied here to exactly the bytes that are checked and kept.
public enum CheckpointVerifier {
    /// Verifies blocks as received against their certified summary.
    /// - Parameters:
    ///   - frames: one LZ4 frame per part, as received (kept as they are).
    ///   - proofs: each part's subtree proof (ignored for a single part).
    ///   - certified: the summary, already verified by ``ChainVerifier``.
    ///   - previousTotal: the previous checkpoint's `networkTotalTransactions` (the entry count
    ///     is the difference, checked here).
    ///   - verifyUserSignatures: also re-check every user signature.
    ///   - decompress: the frame's bytes, bounded by the caller's limit.
    /// - Throws: ``CoreError`` (`contentMismatch`, `effectsMismatch`, `outputObjectMismatch`,
    ///   `invalidSignature`, codec errors), or what `decompress` throws.
    public static func verify(
        blocks frames: [[UInt8]], proofs: [[Digest]], of certified: CertifiedCheckpointSummary, previousTotal: UInt64,
        verifyUserSignatures: Bool = false, decompress: ([UInt8]) throws -> [UInt8]
    ) throws -> VerifiedCheckpoint {
        let summary = certified.summary
        let seq = summary.sequenceNumber
        let entryCount = try entryCount(of: summary, previousTotal: previousTotal)
        guard UInt64(frames.count) == BlockVerifier.partCount(entryCount: entryCount), proofs.count == frames.count else {
            throw CoreError(.contentMismatch, "checkpoint \(seq): \(frames.count) parts (with \(proofs.count) proofs) for \(entryCount) entries")
        }
        var collected = Collected(entryCount: entryCount)
        var entries: [ExecutionData] = []
        var raw = 0
        var parts: [[UInt8]] = []
        var lengths: [UInt32] = []
        for (part, frame) in frames.enumerated() {
            let bytes = try decompress(frame)
            parts.append(bytes)
            raw += bytes.count
            let (data, spans) = try CheckpointData.decodeRecordingSpans(bytes)
            guard data.sequenceNumber == seq else {
                throw CoreError(.contentMismatch, "checkpoint \(seq) part \(part): the block is of checkpoint \(data.sequenceNumber)")
            }
            let hashes = try collected.leafHashes(of: data, verifyUserSignatures: verifyUserSignatures, block: (bytes, spans))
            // Each output object lies where the decoder read it.
            guard bytes.count <= Int(UInt32.max), let p = UInt32(exactly: part) else {
                throw CoreError(.contentMismatch, "checkpoint \(seq) part \(part): a block of \(bytes.count) bytes is too large to locate objects in")
            }
            collected.locations += spans.objects.map { ObjectLocation(part: p, offset: UInt32($0.lowerBound)) }
            lengths += spans.objects.map { UInt32($0.count) }
            if frames.count == 1 {
                try BlockVerifier.checkRoot(hashes, of: data, summary: summary, entryCount: entryCount)
            } else {
                try BlockVerifier.checkPart(hashes, of: data, part: UInt64(part), proof: proofs[part], summary: summary, entryCount: entryCount)
            }
            if frames.count == 1 { entries = data.entries } else { entries += data.entries }
        }
        return VerifiedCheckpoint(
            certified: certified, data: CheckpointData(sequenceNumber: seq, entries: entries), frames: frames, proofs: proofs,
            rawBytes: raw, transactionDigests: collected.digests, decompressedParts: parts, objectLocations: collected.locations,
            objectLengths: lengths)
    }

    /// Verifies contents without blocks (built locally, or read from a chain file that holds
    /// contents) against their certified summary, then builds the blocks with `compress`: from
    /// then on the same bytes are stored, served and archived.
    /// - Parameters: as ``verify(blocks:proofs:of:previousTotal:verifyUserSignatures:decompress:)``;
    ///   `compress` makes one LZ4 frame of the bytes given.
    public static func verify(
        contents data: CheckpointData, of certified: CertifiedCheckpointSummary, previousTotal: UInt64,
        verifyUserSignatures: Bool = false, compress: ([UInt8]) -> [UInt8]
    ) throws(CoreError) -> VerifiedCheckpoint {
        let summary = certified.summary
        let entryCount = try entryCount(of: summary, previousTotal: previousTotal)
        var collected = Collected(entryCount: entryCount)
        let hashes = try collected.leafHashes(of: data, verifyUserSignatures: verifyUserSignatures)
        try BlockVerifier.checkRoot(hashes, of: data, summary: summary, entryCount: entryCount)
        let parts = BlockVerifier.parts(of: data, leafHashes: hashes)
        var raw = 0
        var frames: [[UInt8]] = []
        var decompressed: [[UInt8]] = []
        // The encodings were collected in entry order: each part takes its entries' outputs.
        let encodings = collected.encodings
        var first = 0
        for (p, part) in parts.enumerated() {
            let bytes = BCS.encode(part.data, capacity: 1 << 16)
            raw += bytes.count
            decompressed.append(bytes)
            let count = part.data.entries.reduce(0) { $0 + $1.outputObjects.count }
            guard first + count <= encodings.count else {
                throw CoreError(.outputObjectMismatch, "checkpoint \(summary.sequenceNumber): \(first + count) output objects, \(encodings.count) verified")
            }
            try Collected.locate(encodings[first..<first + count], in: bytes, part: p, checkpoint: summary.sequenceNumber, into: &collected.locations)
            first += count
            frames.append(compress(bytes))
        }
        return VerifiedCheckpoint(
            certified: certified, data: data, frames: frames, proofs: parts.count > 1 ? parts.map(\.proof) : [[]], rawBytes: raw,
            transactionDigests: collected.digests, decompressedParts: decompressed, objectLocations: collected.locations,
            objectLengths: encodings.map { UInt32($0.count) })
    }

    /// The number of parts (blocks) the summary's checkpoint has after a checkpoint whose total
    /// was `previousTotal`: what a stream of its blocks must announce.
    public static func partCount(of summary: CheckpointSummary, previousTotal: UInt64) throws(CoreError) -> UInt64 {
        BlockVerifier.partCount(entryCount: try entryCount(of: summary, previousTotal: previousTotal))
    }

    /// The entry count a summary certifies after a checkpoint whose total was `previousTotal`.
    static func entryCount(of summary: CheckpointSummary, previousTotal: UInt64) throws(CoreError) -> UInt64 {
        let (count, underflow) = summary.networkTotalTransactions.subtractingReportingOverflow(previousTotal)
        guard !underflow else {
            throw CoreError(.contentMismatch,
                "checkpoint \(summary.sequenceNumber): certified total \(summary.networkTotalTransactions) below the previous \(previousTotal)")
        }
        return count
    }

    /// What the verification computes once and keeps: transaction digests, object encodings
    /// and where each encoding lies in the blocks.
    struct Collected {
        var digests: [Digest] = []
        var encodings: [[UInt8]] = []
        var locations: [ObjectLocation] = []

        init(entryCount: UInt64) {
            // A hint only: the count is certified but can be anything; the arrays grow as needed.
            digests.reserveCapacity(Int(min(entryCount, 1 << 16)))
        }

        mutating func leafHashes(
            of data: CheckpointData, verifyUserSignatures: Bool, block: (bytes: [UInt8], spans: BlockSpans)? = nil
        ) throws(CoreError) -> [Digest] {
            try BlockVerifier.leafHashes(
                of: data, verifyUserSignatures: verifyUserSignatures, digests: &digests, encodings: &encodings, block: block)
        }

        /// Finds each encoding in `bytes`, in order, each at or after the end of the one
        /// before. The decoder accepts canonical BCS only, so an object decoded from the block
        /// re-encodes to the very bytes it was read from, in order: the search always finds it,
        /// at its own place or at an earlier copy of the same bytes (as good: the bytes are
        /// what count), scanning the block about once. Not finding one means the block holds
        /// an object in a form other than its certified encoding.
        static func locate(
            _ encodings: ArraySlice<[UInt8]>, in bytes: [UInt8], part: Int, checkpoint: UInt64, into locations: inout [ObjectLocation]
        ) throws(CoreError) {
            guard !encodings.isEmpty else { return }
            guard bytes.count <= Int(UInt32.max), let p = UInt32(exactly: part) else {
                throw CoreError(.contentMismatch, "checkpoint \(checkpoint) part \(part): a block of \(bytes.count) bytes is too large to locate objects in")
            }
            var cursor = 0
            for encoding in encodings {
                guard let found = find(encoding, in: bytes, from: cursor) else {
                    throw CoreError(.outputObjectMismatch,
                        "checkpoint \(checkpoint) part \(part): an output object's certified encoding is not in the block")
                }
                // found + count <= bytes.count <= UInt32.max.
                locations.append(ObjectLocation(part: p, offset: UInt32(found)))
                cursor = found + encoding.count
            }
        }

        /// The first offset at or after `from` where `needle` lies in `haystack`.
        static func find(_ needle: [UInt8], in haystack: [UInt8], from: Int) -> Int? {
            let m = needle.count
            guard m > 0, from >= 0, haystack.count >= m, from <= haystack.count - m else { return nil }
            return haystack.withUnsafeBytes { h -> Int? in
                needle.withUnsafeBytes { n -> Int? in
                    let base = h.baseAddress!
                    var i = from
                    let last = h.count - m
                    while i <= last {
                        // The next place the first byte occurs, then the whole needle there.
                        guard let hit = memchr(base + i, Int32(n[0]), last - i + 1) else { return nil }
                        let at = base.distance(to: UnsafeRawPointer(hit))
                        if memcmp(base + at, n.baseAddress!, m) == 0 { return at }
                        i = at + 1
                    }
                    return nil
                }
            }
        }
    }
}
