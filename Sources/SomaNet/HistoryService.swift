public import NIOCore
import SomaCore
public import SomaStore

/// What a ``NetServer`` answers requests with. ``HistoryService`` serves a store; other
/// conformances wrap it (a node that also answers discovery, or a test peer that misbehaves).
public protocol HistoryServing: Sendable {
    /// Answers one request: the response payload, or the error to send.
    func handle(method: UInt16, payload: [UInt8]) async -> Result<ByteBuffer, RPCError>
    /// One `getBlocks` stream item (`bcs(BlockItem)`) of part `part` of checkpoint `seq`, and the
    /// checkpoint's part count; `nil` if not held.
    func blockItem(seq: UInt64, part: UInt32) async -> Result<(ByteBuffer, UInt32)?, RPCError>
}

/// Answers the history RPCs (DESIGN §8) from a ``NodeStore``. Every answer is bounded: at most
/// 100 epoch endings, 1,000 summaries, one block part or one snapshot chunk a request.
public struct HistoryService: HistoryServing {
    /// The store served.
    public let store: NodeStore

    /// Serves `store`.
    public init(store: NodeStore) {
        self.store = store
    }

    /// Answers one request: the response payload, or the error to send.
    public func handle(method rawMethod: UInt16, payload: [UInt8]) async -> Result<ByteBuffer, RPCError> {
        switch await answer(method: rawMethod, payload: payload) {
        case .success(.buffer(let b)): return .success(b)
        case .success(.bytes(let b)): return .success(ByteBuffer(bytes: b))
        case .failure(let e): return .failure(e)
        }
    }

    enum Payload {
        case bytes([UInt8])
        case buffer(ByteBuffer)
    }

    func answer(method rawMethod: UInt16, payload: [UInt8]) async -> Result<Payload, RPCError> {
        guard let method = Method(rawValue: rawMethod), method.rawValue >= Method.getKnownPeers.rawValue else {
            return .failure(.badRequest("unknown method \(rawMethod)"))
        }
        do {
            switch method {
            case .getAvailability:
                guard payload.isEmpty else { return .failure(.badRequest("getAvailability takes no payload")) }
                return .success(.bytes(try await availability().bcsBytes))
            case .getEpochEndings:
                return try await epochEndings(try EpochEndingsRequest(bcsBytes: payload)).map(Payload.bytes)
            case .getSummaries:
                return try await summaries(try SummariesRequest(bcsBytes: payload)).map(Payload.bytes)
            case .getBlock:
                return try await block(try BlockRequest(bcsBytes: payload)).map(Payload.buffer)
            case .getSnapshotManifest:
                let r = try SnapshotRequest(bcsBytes: payload)
                guard let m = try await store.snapshotManifest(epoch: r.epoch) else {
                    return .failure(.notFound("no snapshot of epoch \(r.epoch)"))
                }
                return .success(.bytes(m.bcsBytes))
            case .getSnapshotChunk:
                return try await chunk(try SnapshotRequest(bcsBytes: payload)).map(Payload.bytes)
            case .getTransactions:
                return try await transactions(try TransactionsRequest(bcsBytes: payload)).map(Payload.bytes)
            case .getObjects:
                return try await objects(try ObjectsRequest(bcsBytes: payload)).map(Payload.bytes)
            default:
                return .failure(.unavailable("method \(method) is not served by this node"))
            }
        } catch let e as CoreError {
            return .failure(.badRequest("payload: \(e)"))
        } catch {
            return .failure(.unavailable("store: \(error)"))
        }
    }

    /// `getTransactions`: each digest's entry with its proof, for a prefix of the digests.
    func transactions(_ r: TransactionsRequest) async throws -> Result<[UInt8], RPCError> {
        guard (1...TransactionsRequest.maxCount).contains(r.digests.count) else {
            return .failure(.badRequest("ask for 1...\(TransactionsRequest.maxCount) transactions, not \(r.digests.count)"))
        }
        var items: [[UInt8]?] = []
        var bytes = 0
        for d in r.digests where items.isEmpty || bytes < ProvenItems<EntryWithProof>.maxBytes {
            let item = try await entry(writing: d)?.bcsBytes
            bytes += item?.count ?? 1
            items.append(item)
        }
        return .success(ProvenItems<EntryWithProof>.encode(encodedItems: items))
    }

    /// `getObjects`: each version with the entry that wrote it, for a prefix of the queries.
    func objects(_ r: ObjectsRequest) async throws -> Result<[UInt8], RPCError> {
        guard (1...TransactionsRequest.maxCount).contains(r.objects.count) else {
            return .failure(.badRequest("ask for 1...\(TransactionsRequest.maxCount) objects, not \(r.objects.count)"))
        }
        var items: [[UInt8]?] = []
        var bytes = 0
        for q in r.objects where items.isEmpty || bytes < ProvenItems<ObjectWithProof>.maxBytes {
            var item: [UInt8]? = nil
            if let object = try await store.object(q.id, version: q.version), let writer = try await entry(writing: object.previousTransaction) {
                item = ObjectWithProof(object: object, writer: writer).bcsBytes
            }
            bytes += item?.count ?? 1
            items.append(item)
        }
        return .success(ProvenItems<ObjectWithProof>.encode(encodedItems: items))
    }

    /// The transaction `digest` with its effects and entry proof, if its block is held.
    func entry(writing digest: Digest) async throws -> EntryWithProof? {
        guard let (seq, index) = try await store.transactionLocation(digest),
              let (entry, proof) = try await store.entryProof(seq: seq, index: UInt64(index))
        else { return nil }
        return EntryWithProof(transaction: entry.transaction, effects: entry.effects, proof: proof)
    }

    func availability() async throws -> Availability {
        let marks = try await store.watermarks()
        return Availability(
            lowestAvailable: marks[.lowestAvailable]?.seq ?? 0, highestSynced: marks[.highestSynced]?.seq ?? 0,
            highestVerified: marks[.highestVerified]?.seq ?? 0,
            snapshotEpochs: Array(try await store.snapshotEpochs().suffix(Availability.maxSnapshotEpochs)))
    }

    func epochEndings(_ r: EpochEndingsRequest) async throws -> Result<[UInt8], RPCError> {
        guard r.max >= 1 else { return .failure(.badRequest("max must be at least 1")) }
        let limit = Int(min(r.max, EpochEndingsRequest.maxCount))
        var out: [CertifiedCheckpointSummary] = []
        for record in try await store.epochs() where record.epoch >= r.fromEpoch && out.count < limit {
            guard let last = record.lastCheckpoint, let s = try await store.summary(at: last) else { break }
            out.append(s)
        }
        var w = BCSWriter(capacity: out.count * 4_096)
        w.write(out)
        return .success(w.bytes)
    }

    func summaries(_ r: SummariesRequest) async throws -> Result<[UInt8], RPCError> {
        let wanted: ClosedRange<UInt64>
        do { wanted = try r.range() } catch { return .failure(error) }
        guard let verified = try await store.watermark(.highestVerified), wanted.lowerBound <= verified.seq else {
            return .failure(.notFound("summary \(r.from) is beyond this node's highest verified checkpoint"))
        }
        let last = min(verified.seq, wanted.upperBound)
        var summaries: [CheckpointSummary] = []
        var certificates: [QuorumCertificate?] = []
        for seq in wanted.lowerBound...last {
            guard let s = try await store.summary(at: seq) else { return .failure(.notFound("summary \(seq) is not held")) }
            summaries.append(s.summary)
            certificates.append(r.allCertificates || seq == last ? s.certificate : nil)
        }
        return .success(BCS.encode(SummariesResponse(summaries: summaries, certificates: certificates), capacity: summaries.count * 512))
    }

    /// One `getBlocks` stream item: `bcs(BlockItem)` of part `part` of checkpoint `seq`, and the
    /// checkpoint's part count; `nil` if not held. Streams fetch their items one at a time, so a
    /// stream holds one item in memory, whatever its length.
    public func blockItem(seq: UInt64, part: UInt32) async -> Result<(ByteBuffer, UInt32)?, RPCError> {
        do {
            guard let found = try await provenBlock(seq, part) else { return .success(nil) }
            var b = found.0
            let parts = found.1
            var item = ByteBufferAllocator().buffer(capacity: 12 + b.readableBytes)
            item.writeInteger(seq, endianness: .little)
            item.writeInteger(part, endianness: .little)
            item.writeBuffer(&b)
            return .success((item, parts))
        } catch {
            return .failure(.unavailable("store: \(error)"))
        }
    }

    /// The block answer is assembled in one buffer: the stored frame is copied once, from
    /// RocksDB's pinned value, and reaches the socket without another copy.
    func block(_ r: BlockRequest) async throws -> Result<ByteBuffer, RPCError> {
        guard let (payload, _) = try await provenBlock(r.seq, r.part) else {
            if r.part > 0, let first = try await store.encodedBlock(at: r.seq, part: 0) {
                return .failure(.badRequest("checkpoint \(r.seq) has \(first.parts) parts; part \(r.part) does not exist"))
            }
            return .failure(.notFound("block \(r.seq) is not held (pruned or not yet synced)"))
        }
        return .success(payload)
    }

    /// `bcs(ProvenFrame)` of one part, and the part count; `nil` if not held.
    func provenBlock(_ seq: UInt64, _ part: UInt32) async throws -> (ByteBuffer, UInt32)? {
        guard let found = try await store.encodedBlock(at: seq, part: part) else { return nil }
        var payload = found.payload
        let parts = found.parts
        let proof = parts > 1 ? try await store.partProof(at: seq, part: part) : []
        var tail = BCSWriter(capacity: 16 + proof.count * 32)
        tail.write(proof)
        tail.write(parts)
        payload.writeBytes(tail.bytes)
        return (payload, parts)
    }

    func chunk(_ r: SnapshotRequest) async throws -> Result<[UInt8], RPCError> {
        guard let manifest = try await store.snapshotManifest(epoch: r.epoch) else {
            return .failure(.notFound("no snapshot of epoch \(r.epoch)"))
        }
        // UInt32 against Int compares without conversion; an index below the count converts exactly.
        guard r.index < manifest.chunkRoots.count, let index = Int(exactly: r.index),
              let frame = try await store.snapshotChunk(epoch: r.epoch, index: r.index)
        else {
            return .failure(.badRequest("the snapshot of epoch \(r.epoch) has \(manifest.chunkRoots.count) chunks; chunk \(r.index) does not exist"))
        }
        guard let count = UInt32(exactly: manifest.chunkRoots.count) else {
            return .failure(.unavailable("the stored snapshot of epoch \(r.epoch) lists \(manifest.chunkRoots.count) chunks"))
        }
        let answer = ProvenFrame(frame: frame, proof: try manifest.proof(chunk: index), count: count)
        return .success(BCS.encode(answer, capacity: frame.count + 512))
    }
}
