import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import SomaCore
import SomaStore

/// The routes of the HTTP API (docs/API.md); each reads the store or the node's status.
struct APIRoutes: Sendable {
    let node: Node
    var store: NodeStore { node.store }

    func register(on router: Router<BasicRequestContext>) {
        router.get("/health") { request, _ in try await health(request) }
        router.get("/v1/status") { _, _ in JSON.response(node.status.report) }
        router.get("/v1/status/history") { _, _ in JSON.response(HistoryJSON(samples: node.status.samples)) }
        router.get("/v1/checkpoints/:seq") { _, context in try await checkpoint(context.parameters.get("seq")) }
        router.get("/v1/checkpoints/:seq/block") { request, context in try await block(request, context.parameters.get("seq")) }
        router.get("/v1/transactions/:digest") { request, context in try await transaction(request, context.parameters.get("digest")) }
        router.get("/v1/objects/:id") { request, context in try await object(request, context.parameters.get("id")) }
        router.get("/v1/epochs") { _, _ in try await epochs() }
        router.get("/v1/epochs/:epoch") { _, context in try await epoch(context.parameters.get("epoch")) }
        router.get("/v1/peers") { _, _ in await peers() }
        router.get("/v1/events") { request, _ in try events(request) }
        router.get("/metrics") { _, _ in metrics() }
        registerGossip(on: router)
        router.get("/") { _, _ in
            var headers = HTTPFields()
            headers[.contentType] = "text/html; charset=utf-8"
            headers[.cacheControl] = "no-store"
            headers[.contentSecurityPolicy] = "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'"
            return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: StatusPage.html)))
        }
    }

    // MARK: Node

    func health(_ request: Request) async throws -> Response {
        let r = node.status.report
        let body = HealthJSON(status: "ok", ready: r.ready, phase: r.phase, highestSynced: r.highestSynced, lag: r.lag)
        // `?ready` asks for readiness: 503 while the node is not within readyWithin of the tip.
        let askedReady = request.uri.queryParameters["ready"] != nil
        return JSON.response(body, status: askedReady && !r.ready ? .serviceUnavailable : .ok)
    }

    func peers() async -> Response {
        let known = await node.discovery?.table.count ?? 0
        return JSON.response(PeersJSON(sources: node.status.peers, known: known))
    }

    func metrics() -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
        headers[.cacheControl] = "no-store"
        let text = node.metrics?.emitToBuffer() ?? []
        return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: text)))
    }

    // MARK: Checkpoints

    /// The watermarks, or a 503 while the store cannot be read.
    func watermarks() async throws -> [Watermark: WatermarkValue] {
        do {
            return try await store.watermarks()
        } catch {
            throw APIError.unavailable("the store cannot be read: \(error)")
        }
    }

    func latest() async throws -> UInt64 {
        guard let seq = try await watermarks()[.highestSynced]?.seq else { throw APIError.notFound("the store holds no checkpoint yet") }
        return seq
    }

    func checkpoint(_ text: String?) async throws -> Response {
        let seq = try await APIInput.sequence(text, latest: latest)
        let marks = try await watermarks()
        guard let certified = try await store.summary(at: seq) else {
            let verified = marks[.highestVerified]?.seq ?? 0
            throw APIError.notFound("checkpoint \(seq) is not held: this node has verified summaries up to \(verified)")
        }
        var transactions: UInt64? = certified.summary.networkTotalTransactions
        if seq > 0 {
            let previous = try await store.summary(at: seq - 1)?.summary.networkTotalTransactions
            transactions = previous.map { certified.summary.networkTotalTransactions &- $0 }
        }
        let held = blockHeld(seq, marks)
        return JSON.response(CheckpointJSON(certified, transactions: transactions, blockHeld: held), cache: "public, max-age=3600")
    }

    func blockHeld(_ seq: UInt64, _ marks: [Watermark: WatermarkValue]) -> Bool {
        guard let synced = marks[.highestSynced]?.seq else { return false }
        return seq <= synced && seq >= (marks[.lowestAvailable]?.seq ?? 0)
    }

    /// The stored LZ4 frames of a checkpoint, concatenated (each a complete frame: `lz4 -d`
    /// decodes the whole), with a strong ETag (the content digest; the stored bytes of a
    /// checkpoint never change on a node) and single byte ranges (RFC 9110 §14).
    func block(_ request: Request, _ text: String?) async throws -> Response {
        let seq = try await APIInput.sequence(text, latest: latest)
        let marks = try await watermarks()
        let lowest = marks[.lowestAvailable]?.seq ?? 0
        guard let certified = try await store.summary(at: seq) else {
            throw APIError.notFound("checkpoint \(seq) is not held: this node has verified summaries up to \(marks[.highestVerified]?.seq ?? 0)")
        }
        if seq < lowest {
            throw APIError.pruned("the block of checkpoint \(seq) was pruned: this node keeps blocks from checkpoint \(lowest); ask an archive node")
        }
        let frames = try await store.blockFrames(at: seq)
        guard !frames.isEmpty else {
            throw APIError.notFound("the block of checkpoint \(seq) is not held yet: this node has blocks up to \(marks[.highestSynced]?.seq ?? 0)")
        }
        let etag = "\"\(certified.summary.contentDigest.hex)\""
        var headers = HTTPFields()
        headers[.eTag] = etag
        headers[.acceptRanges] = "bytes"
        headers[.cacheControl] = "public, max-age=31536000, immutable"
        headers[HTTPField.Name("X-Soma-Part-Lengths")!] = frames.map { "\($0.count)" }.joined(separator: ",")
        if let match = request.headers[.ifNoneMatch], match.split(separator: ",").contains(where: { $0.trimmingCharacters(in: .whitespaces) == etag || $0.trimmingCharacters(in: .whitespaces) == "*" }) {
            return Response(status: .notModified, headers: headers)
        }
        let total = frames.reduce(0) { $0 + $1.count }
        var range: ClosedRange<Int>? = nil
        if let header = request.headers[.range] {
            // If-Range with another validator: the whole body.
            let ifRange = request.headers[.ifRange]
            if ifRange == nil || ifRange == etag {
                switch ByteRange.parse(header, length: total) {
                case .whole: break
                case .range(let r): range = r
                case .unsatisfiable:
                    var h = headers
                    h[.contentRange] = "bytes */\(total)"
                    throw APIError(status: .rangeNotSatisfiable, code: "range_not_satisfiable",
                                   message: "the range '\(header.prefix(80))' is outside the block's \(total) bytes", headers: h)
                }
            }
        }
        headers[.contentType] = "application/octet-stream"
        var buffer = ByteBuffer()
        buffer.reserveCapacity(range?.count ?? total)
        if let range {
            var offset = 0
            for f in frames {
                let lo = max(range.lowerBound, offset), hi = min(range.upperBound, offset + f.count - 1)
                if lo <= hi { buffer.writeBytes(f[(lo - offset)...(hi - offset)]) }
                offset += f.count
            }
            headers[.contentRange] = "bytes \(range.lowerBound)-\(range.upperBound)/\(total)"
            return Response(status: .partialContent, headers: headers, body: ResponseBody(byteBuffer: buffer))
        }
        for f in frames { buffer.writeBytes(f) }
        return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: buffer))
    }

    // MARK: Transactions and objects

    /// What a read asks of its proof: none (`?proof=false`), and the epoch chain (`?epochs=true`).
    struct ProofOptions {
        var wanted = true
        var epochs = false

        init(_ request: Request) throws {
            let q = request.uri.queryParameters
            if let p = q["proof"] { wanted = try APIInput.flag(String(p), name: "proof") }
            if let e = q["epochs"] { epochs = try APIInput.flag(String(e), name: "epochs") }
        }
    }

    func transaction(_ request: Request, _ text: String?) async throws -> Response {
        let digest = try APIInput.digest(text, name: "transaction digest")
        let options = try ProofOptions(request)
        guard let (seq, index) = try await store.transactionLocation(digest) else {
            throw APIError.notFound("no transaction \(digest.hex) is held\(try await prunedNote())")
        }
        guard let (entry, proof) = try await entryProof(seq: seq, index: UInt64(index), options: options) else {
            throw APIError.pruned("transaction \(digest.hex) is in checkpoint \(seq), whose block is no longer held\(try await prunedNote())")
        }
        return JSON.response(
            TransactionAnswerJSON(transaction: TransactionJSON(entry, checkpoint: seq, index: index), proof: proof),
            cache: "public, max-age=3600")
    }

    /// Entry `index` of checkpoint `seq` and, if asked, its proof; `nil` if the block is not held.
    func entryProof(seq: UInt64, index: UInt64, options: ProofOptions) async throws -> (ExecutionData, ProofJSON?)? {
        guard options.wanted else {
            return try await store.provableEntry(seq: seq, index: index, withPath: false).map { ($0.entry, nil) }
        }
        guard let (entry, proof) = try await store.entryProof(seq: seq, index: index, epochChain: options.epochs) else { return nil }
        let before = proof.previous?.networkTotalTransactions ?? 0
        let total = proof.checkpoint.summary.networkTotalTransactions
        return (entry, ProofJSON(
            kind: "entry", checkpoint: HexCoding.encode(proof.checkpoint.bcsBytes), previousSummary: proof.previous.map { HexCoding.encode($0.bcsBytes) },
            index: index, leafCount: total >= before ? total - before : 0, path: proof.path.map(\.hex),
            epochEnds: options.epochs ? proof.epochEnds.map { HexCoding.encode($0.bcsBytes) } : nil))
    }

    /// For a pruned store: which history it keeps.
    func prunedNote() async throws -> String {
        guard store.configuration.mode == .pruned else { return "" }
        let lowest = try await watermarks()[.lowestAvailable]?.seq ?? 0
        return " (this node is pruned: it keeps transactions and object versions from checkpoint \(lowest); ask an archive node for older ones)"
    }

    func object(_ request: Request, _ text: String?) async throws -> Response {
        let id = try APIInput.digest(text, name: "object id")
        let options = try ProofOptions(request)
        let q = request.uri.queryParameters
        if let e = q["epoch"] {
            guard q["version"] == nil else { throw APIError.badRequest("ask for either ?version=V or ?epoch=E, not both") }
            return try await liveObject(id, epoch: try APIInput.number(String(e), name: "epoch"), options: options)
        }
        let object: Object
        if let v = q["version"] {
            let version = try APIInput.number(String(v), name: "object version")
            guard let found = try await store.object(id, version: version) else {
                if store.configuration.mode == .pruned, let live = try await store.liveVersion(id), live.version > version {
                    throw APIError.pruned("version \(version) of object \(id.hex) is not held\(try await prunedNote())")
                }
                throw APIError.notFound("object \(id.hex) has no version \(version) here")
            }
            object = found
        } else {
            guard let found = try await store.object(id) else {
                throw APIError.notFound("no live object \(id.hex): it never existed, was deleted, or is not synced yet")
            }
            object = found
        }
        guard options.wanted else { return JSON.response(ObjectAnswerJSON(object: ObjectJSON(object), proof: nil)) }
        // The version's proof: the transaction that wrote it, in its certified checkpoint.
        guard let (seq, index) = try await store.transactionLocation(object.previousTransaction),
              let (entry, proof) = try await entryProof(seq: seq, index: UInt64(index), options: options), var proof
        else {
            throw APIError.pruned("object \(id.hex) v\(object.version) is held, but the transaction that wrote it (\(object.previousTransaction.hex)) is not, so it cannot be proven\(try await prunedNote()); ask with ?proof=false for the object alone")
        }
        proof.transactionBcs = HexCoding.encode(entry.transaction.bcsBytes)
        proof.effectsBcs = HexCoding.encode(entry.effects.bcsBytes)
        return JSON.response(ObjectAnswerJSON(object: ObjectJSON(object), proof: proof), cache: q["version"] == nil ? "no-store" : "public, max-age=3600")
    }

    /// An object as it was live at the end of `epoch`, with its proof against the epoch's
    /// certified state root (from the snapshot of that epoch the node holds).
    func liveObject(_ id: ObjectID, epoch: UInt64, options: ProofOptions) async throws -> Response {
        let records = try await store.epochs()
        guard let record = records.first(where: { $0.epoch == epoch }), let last = record.lastCheckpoint else {
            throw APIError.notFound("epoch \(epoch) has not ended here: a state root exists only at an epoch's end")
        }
        let held = try await store.snapshotEpochs()
        guard held.contains(epoch) else {
            throw APIError.pruned("this node no longer holds (or never built) epoch \(epoch)'s snapshot; it holds \(held.isEmpty ? "none" : held.map(String.init).joined(separator: ", "))")
        }
        guard let live = try await store.provableLiveObject(epoch: epoch, id: id) else {
            throw APIError.notFound("object \(id.hex) was not live at the end of epoch \(epoch)")
        }
        guard options.wanted else { return JSON.response(ObjectAnswerJSON(object: ObjectJSON(live.object), proof: nil)) }
        guard let end = try await store.summary(at: last), let count = end.summary.endOfEpoch?.liveObjectCount else {
            throw APIError.unavailable("epoch \(epoch)'s last summary went missing from the store")
        }
        let proof = ProofJSON(
            kind: "state", checkpoint: HexCoding.encode(end.bcsBytes), previousSummary: nil, index: live.index, leafCount: count,
            path: live.path.map(\.hex),
            epochEnds: options.epochs ? try await store.epochEnds(before: epoch).map { HexCoding.encode($0.bcsBytes) } : nil)
        return JSON.response(ObjectAnswerJSON(object: ObjectJSON(live.object), proof: proof), cache: "public, max-age=3600")
    }

    // MARK: Epochs

    func epochs() async throws -> Response {
        let records = try await store.epochs()
        let snapshots = Set(try await store.snapshotEpochs())
        let out = records.map { r in
            EpochJSON(
                epoch: r.epoch, firstCheckpoint: r.firstCheckpoint, lastCheckpoint: r.lastCheckpoint, stateRoot: r.stateRoot?.hex,
                liveObjectCount: r.liveObjectCount, snapshotHeld: snapshots.contains(r.epoch), committee: nil)
        }
        return JSON.response(out)
    }

    func epoch(_ text: String?) async throws -> Response {
        let epoch = try APIInput.number(text ?? "", name: "epoch")
        guard let r = try await store.epochs().first(where: { $0.epoch == epoch }) else {
            throw APIError.notFound("epoch \(epoch) is not known here yet")
        }
        let committee = try await store.committee(epoch: epoch).map(CommitteeJSON.init)
        let snapshot = try await store.snapshotEpochs().contains(epoch)
        return JSON.response(EpochJSON(
            epoch: r.epoch, firstCheckpoint: r.firstCheckpoint, lastCheckpoint: r.lastCheckpoint, stateRoot: r.stateRoot?.hex,
            liveObjectCount: r.liveObjectCount, snapshotHeld: snapshot, committee: committee))
    }
}

/// A `Range` header's single byte range (RFC 9110 §14.1.2).
enum ByteRange: Equatable {
    /// Not a range this server applies (several ranges, another unit, malformed): the whole body.
    case whole
    /// Bytes `lower...upper` of the body.
    case range(ClosedRange<Int>)
    /// A well-formed range that starts past the end (416).
    case unsatisfiable

    static func parse(_ header: String, length: Int) -> ByteRange {
        let h = header.trimmingCharacters(in: .whitespaces)
        guard h.hasPrefix("bytes="), !h.contains(",") else { return .whole }
        let spec = h.dropFirst(6)
        guard let dash = spec.firstIndex(of: "-") else { return .whole }
        let first = spec[..<dash], last = spec[spec.index(after: dash)...]
        func value(_ s: Substring) -> Int? {
            guard !s.isEmpty, s.count <= 18, s.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
            return Int(s)
        }
        if first.isEmpty {
            // The last N bytes.
            guard let n = value(last) else { return .whole }
            guard n > 0, length > 0 else { return .unsatisfiable }
            return .range(max(0, length - n)...(length - 1))
        }
        guard let a = value(first) else { return .whole }
        let b: Int
        if last.isEmpty {
            b = length - 1
        } else {
            guard let v = value(last), v >= a else { return .whole }
            b = min(v, length - 1)
        }
        guard a < length else { return .unsatisfiable }
        return .range(a...b)
    }
}
