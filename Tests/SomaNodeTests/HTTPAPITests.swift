import Foundation
import Logging
import SomaCore
import SomaDevnet
import SomaGossip
import SomaNode
import SomaStore
import SomaSync
import SomaTestSupport
import Testing

/// A data directory holding a generated chain, and a node built on it (no peer network) with
/// its HTTP API on a free loopback port, running until `stop()`.
final class APINode {
    let base: TempDir
    let node: Node
    let port: Int
    let genesis: Genesis
    let chain: [GeneratedCheckpoint]
    let running: Task<Void, any Error>

    /// A node holding the `committed` first checkpoints of a 4-epoch chain (`pruned`: a pruned
    /// store keeping its last epoch, pruned once before the node starts).
    init(_ name: String, committed: Int? = nil, pruned: Bool = false, eventBuffer: Int = 4_096,
         sources: (@Sendable () async -> [SourceOffer])? = nil) async throws {
        base = TempDir(name)
        let profile = DevnetProfile(name: "api", validators: 4, epochs: 4, checkpoints: 240, transactionsPerCheckpoint: 6, accounts: 24)
        let generator = ChainGenerator(profile: profile, seed: 14)
        chain = await generator.generateAll(parallelism: 2)
        genesis = generator.genesis
        let dir = base.path
        try Data(genesis.bcsBytes).write(to: URL(fileURLWithPath: dir + "/genesis.bcs"))
        _ = try NodeKey.create(at: dir + "/node.key")
        var config = NodeConfiguration(dataDirectory: dir)
        config.http.listen = "127.0.0.1:0"
        config.http.eventBuffer = eventBuffer
        config.serve = false
        // An operator's own topic (gossip.topics), of at most 8 bytes.
        config.gossipTopics = [GossipTopic(name: "ops.notes", priority: .bulk, maxMessageBytes: 8)]
        if pruned {
            config.store.mode = .pruned
            config.store.adoptStoredMode = false
            config.store.retainEpochs = 1
        }
        let store = try await NodeStore.open(path: config.databasePath, configuration: config.store)
        try await store.initialize(genesis: genesis)
        try await store.commit(chain[..<(committed ?? chain.count)].map(\.verified))
        try await store.finishSnapshotBuild()
        if pruned { _ = try await store.prune() }
        await store.close()
        var logger = Logger(label: "api-test")
        logger.logLevel = .warning
        node = try await NodeBuilder(configuration: config, logger: logger).buildForTesting(sources: sources)
        let node = self.node
        running = Task { try await node.run(signals: []) }
        var bound: Int? = nil
        for _ in 0..<200 where bound == nil {
            try await Task.sleep(for: .milliseconds(20))
            bound = node.boundHTTPPort
        }
        port = try #require(bound)
    }

    /// The generated checkpoint `seq` (the chain starts after the genesis's checkpoint 0).
    func checkpoint(_ seq: Int) -> GeneratedCheckpoint { chain[seq - 1] }

    /// The last checkpoint.
    var last: UInt64 { UInt64(chain.count) }

    func get(_ path: String, headers: [(String, String)] = []) async throws -> PlainHTTPClient.Answer {
        try await PlainHTTPClient.get(host: "127.0.0.1", port: port, path: path, headers: headers)
    }

    func post(_ path: String, _ body: String) async throws -> PlainHTTPClient.Answer {
        try await PlainHTTPClient.post(host: "127.0.0.1", port: port, path: path, json: Array(body.utf8))
    }

    func json(_ path: String) async throws -> [String: Any] {
        let a = try await get(path)
        return try #require(try JSONSerialization.jsonObject(with: Data(a.body)) as? [String: Any], "\(path): \(String(decoding: a.body, as: UTF8.self))")
    }

    func stop() async throws {
        await node.shutdown()
        try await running.value
        base.cleanup()
    }
}

@Suite("The HTTP API", .serialized)
struct HTTPAPITests {
    @Test("gossip over HTTP: a message published (a critical one with its report), votes signed elsewhere counted up to the certificate, which the certificates stream shows; refusals with their reasons")
    func gossip() async throws {
        let api = try await APINode("api-gossip")
        func code(_ a: PlainHTTPClient.Answer) -> String? {
            (try? JSONSerialization.jsonObject(with: Data(a.body)) as? [String: Any]).flatMap { ($0["error"] as? [String: Any])?["code"] as? String }
        }
        func body(_ a: PlainHTTPClient.Answer) throws -> [String: Any] {
            try #require(try JSONSerialization.jsonObject(with: Data(a.body)) as? [String: Any], "\(String(decoding: a.body, as: UTF8.self))")
        }
        let published = try await api.post("/v1/gossip/consensus.messages", #"{"payload": "0a0b0c"}"#)
        #expect(published.status == 202)
        let publishedID = try body(published)["id"] as? String
        #expect(publishedID == GossipItem.Message.id(topic: "consensus.messages", payload: [10, 11, 12]).hex)
        // A topic of the configuration file is carried like the relay's.
        #expect(try await api.post("/v1/gossip/ops.notes", #"{"payload": "0001020304050607"}"#).status == 202)
        #expect(api.node.gossip.router.topics.contains("ops.notes"))
        let critical = try await api.post("/v1/gossip/consensus.messages", #"{"payload": "0d", "critical": true}"#)
        let missing = try body(critical)["missing"] as? [String]
        #expect(critical.status == 200 && missing == [])
        for (path, text, status, expected) in [
            ("/v1/gossip/nope", #"{"payload": "00"}"#, 404, "not_found"),
            ("/v1/gossip/consensus.votes", #"{"payload": "00"}"#, 400, "bad_request"),
            ("/v1/gossip/consensus.messages", #"{"payload": "zz"}"#, 400, "bad_request"),
            ("/v1/gossip/consensus.messages", "not json", 400, "bad_request"),
            ("/v1/gossip/ops.notes", #"{"payload": "000102030405060708"}"#, 400, "bad_request"),
            ("/v1/consensus/votes", #"{"kind": "maybe", "epoch": 1, "round": 1, "digest": "00", "signer": "00", "signature": "00"}"#, 400, "bad_request"),
        ] {
            let a = try await api.post(path, text)
            #expect(a.status == status && code(a) == expected, "\(path) \(text): \(a.status) \(String(decoding: a.body, as: UTF8.self))")
        }
        // Votes of the newest committee's members, signed here as a consensus process would.
        let committee = try #require(api.node.gossip.committees.newest)
        func power(_ k: SigningKey) -> UInt64 { committee.members[committee.index(of: k.publicKey)!].votingPower }
        let keys = (0..<32).map { DevnetKeys.validator(seed: 14, index: $0) }.filter { committee.index(of: $0.publicKey) != nil }
            .sorted { power($0) > power($1) }
        #expect(keys.count == committee.members.count)
        var needed = 0
        var reached: UInt64 = 0
        while reached < Committee.quorum { reached += power(keys[needed]); needed += 1 }
        let statement = VoteStatement(kind: .vote, epoch: committee.epoch, round: 9, digest: Hashing.sha256([9]))
        func voteJSON(_ vote: Vote) -> String {
            #"{"kind": "vote", "epoch": \#(vote.statement.epoch), "round": 9, "digest": "\#(vote.statement.digest.hex)", "signer": "\#(vote.signer.raw.hex)", "signature": "\#(HexCoding.encode(vote.signature.bytes))"}"#
        }
        var forged = Vote(statement: statement, key: keys[0])
        forged.signature = keys[1].sign(statement.signingMessage)
        let refused = try await api.post("/v1/consensus/votes", voteJSON(forged))
        #expect(refused.status == 400 && String(decoding: refused.body, as: UTF8.self).contains("signature"))
        // The certificates stream, open before the quorum.
        let curl = try #require(tool("curl"))
        let stream = Process()
        stream.executableURL = URL(fileURLWithPath: curl)
        stream.arguments = ["-s", "-N", "--max-time", "4", "http://127.0.0.1:\(api.port)/v1/consensus/certificates"]
        let out = Pipe()
        stream.standardOutput = out
        try stream.run()
        try await Task.sleep(for: .milliseconds(500))
        var powers: [UInt64] = []
        for key in keys.prefix(needed) {
            let a = try await api.post("/v1/consensus/votes", voteJSON(Vote(statement: statement, key: key)))
            #expect(a.status == 202, "\(String(decoding: a.body, as: UTF8.self))")
            powers.append(UInt64(try body(a)["power"] as? Int ?? -1))
        }
        var sum: UInt64 = 0
        let expected = keys.prefix(needed).map { k -> UInt64 in
            sum += power(k)
            return sum
        }
        #expect(powers == expected && sum >= Committee.quorum && api.node.gossip.consensus.isCertified(statement), "\(powers)")
        stream.waitUntilExit()
        let events = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(events.contains("event: certificate") && events.contains(statement.digest.hex), "\(events)")
        try await api.stop()
    }

    @Test("every route answers what the store holds; a malformed id or number is 400, a missing one 404, a pruned one 410, each with a JSON code and a message")
    func routes() async throws {
        let api = try await APINode("api-routes")
        let last = api.last
        let tx = api.checkpoint(100).data.entries[2]
        let object = tx.outputObjects[0]
        func status(_ path: String) async throws -> (Int, String?) {
            let a = try await api.get(path)
            let code = (try? JSONSerialization.jsonObject(with: Data(a.body)) as? [String: Any]).flatMap { ($0["error"] as? [String: Any])?["code"] as? String }
            return (a.status, code)
        }
        let table: [(String, Int, String?)] = [
            ("/health", 200, nil), ("/health?ready", 200, nil), ("/v1/status", 200, nil), ("/v1/status/history", 200, nil),
            ("/v1/checkpoints/0", 200, nil), ("/v1/checkpoints/latest", 200, nil), ("/v1/checkpoints/\(last)", 200, nil),
            ("/v1/checkpoints/\(last + 1)", 404, "not_found"), ("/v1/checkpoints/18446744073709551615", 404, "not_found"),
            ("/v1/checkpoints/18446744073709551616", 400, "bad_request"), ("/v1/checkpoints/-1", 400, "bad_request"),
            ("/v1/checkpoints/+5", 400, "bad_request"), ("/v1/checkpoints/0x10", 400, "bad_request"), ("/v1/checkpoints/1e3", 400, "bad_request"),
            ("/v1/checkpoints/5/block", 200, nil), ("/v1/checkpoints/\(last + 1)/block", 404, "not_found"), ("/v1/checkpoints/x/block", 400, "bad_request"),
            ("/v1/transactions/\(tx.transaction.digest.hex)", 200, nil), ("/v1/transactions/0x\(tx.transaction.digest.hex)", 200, nil),
            ("/v1/transactions/\(String(repeating: "0", count: 64))", 404, "not_found"), ("/v1/transactions/abc", 400, "bad_request"),
            ("/v1/transactions/\(String(repeating: "g", count: 64))", 400, "bad_request"),
            ("/v1/transactions/\(tx.transaction.digest.hex)?proof=maybe", 400, "bad_request"),
            ("/v1/objects/\(object.id.hex)?version=\(object.version)", 200, nil), ("/v1/objects/\(object.id.hex)?version=\(object.version)&proof=false", 200, nil),
            ("/v1/objects/\(object.id.hex)?version=999999", 404, "not_found"), ("/v1/objects/\(object.id.hex)?version=v1", 400, "bad_request"),
            ("/v1/objects/\(String(repeating: "1", count: 64))", 404, "not_found"), ("/v1/objects/\(String(repeating: "1", count: 63))", 400, "bad_request"),
            ("/v1/objects/\(object.id.hex)?epoch=3&version=1", 400, "bad_request"), ("/v1/objects/\(object.id.hex)?epoch=99", 404, "not_found"),
            ("/v1/objects/\(object.id.hex)?epoch=0", 410, "pruned"),
            ("/v1/epochs", 200, nil), ("/v1/epochs/1", 200, nil), ("/v1/epochs/77", 404, "not_found"), ("/v1/epochs/one", 400, "bad_request"),
            ("/v1/peers", 200, nil), ("/metrics", 200, nil), ("/v1/events?after=x", 400, "bad_request"),
            ("/v1/nothing", 404, "not_found"),
        ]
        for (path, expected, code) in table {
            let (got, gotCode) = try await status(path)
            #expect(got == expected && gotCode == code, "\(path): \(got) \(gotCode ?? "-")")
        }
        // What the answers say.
        let status = try await api.json("/v1/status")
        #expect(status["highestSynced"] as? Int == Int(last) && status["chainId"] as? String == api.genesis.chainID.hex)
        #expect(status["phase"] as? String == "serving" && status["ready"] as? Bool == true)
        let cp = try await api.json("/v1/checkpoints/100")
        #expect(cp["digest"] as? String == api.checkpoint(100).certified.digest.hex)
        #expect(cp["bcs"] as? String == HexCoding.encode(api.checkpoint(100).certified.bcsBytes))
        #expect(cp["transactions"] as? Int == api.checkpoint(100).data.entries.count)
        let answer = try await api.json("/v1/transactions/\(tx.transaction.digest.hex)")
        let t = try #require(answer["transaction"] as? [String: Any])
        #expect(t["checkpoint"] as? Int == 100 && t["index"] as? Int == 2 && t["transactionBcs"] as? String == HexCoding.encode(tx.transaction.bcsBytes))
        let epochs = try await api.get("/v1/epochs")
        let list = try #require(try JSONSerialization.jsonObject(with: Data(epochs.body)) as? [[String: Any]])
        #expect(list.count >= 4 && list[0]["stateRoot"] as? String != nil)
        try await api.stop()
    }

    @Test("a pruned node answers 410 for blocks, transactions and object versions it no longer keeps, and says from where it keeps them")
    func pruned() async throws {
        let api = try await APINode("api-pruned", pruned: true)
        let lowest = try #require(try await api.node.store.watermark(.lowestAvailable)?.seq)
        #expect(lowest > 10)
        let old = api.checkpoint(5).data.entries[0]
        for path in ["/v1/checkpoints/5/block", "/v1/transactions/\(old.transaction.digest.hex)"] {
            let a = try await api.get(path)
            let text = String(decoding: a.body, as: UTF8.self)
            #expect(a.status == (path.contains("block") ? 410 : 404), "\(path): \(text)")
            #expect(text.contains("\(lowest)"), "\(path): \(text)")
        }
        // The summary itself stays.
        #expect(try await api.get("/v1/checkpoints/5").status == 200)
        try await api.stop()
    }

    @Test("a block comes as stored: lz4 decodes it to the checkpoint's contents; its ETag is the content digest; If-None-Match and single ranges work")
    func block() async throws {
        let api = try await APINode("api-block")
        let seq = 77
        let a = try await api.get("/v1/checkpoints/\(seq)/block")
        #expect(a.status == 200 && a.header("content-type") == "application/octet-stream")
        let frames = try await api.node.store.blockFrames(at: UInt64(seq))
        #expect(a.body == frames.flatMap { $0 })
        let etag = "\"\(api.checkpoint(seq).certified.summary.contentDigest.hex)\""
        #expect(a.header("etag") == etag)
        if let lz4 = tool("lz4") {
            let (s, out, _) = try run(lz4, ["-dc"], input: Data(a.body))
            #expect(s == 0)
            #expect(try CheckpointData(bcsBytes: Array(out)) == api.checkpoint(seq).data)
        }
        #expect(try await api.get("/v1/checkpoints/\(seq)/block", headers: [("If-None-Match", etag)]).status == 304)
        let part = try await api.get("/v1/checkpoints/\(seq)/block", headers: [("Range", "bytes=10-19")])
        #expect(part.status == 206 && part.body == Array(a.body[10...19]) && part.header("content-range") == "bytes 10-19/\(a.body.count)")
        let tail = try await api.get("/v1/checkpoints/\(seq)/block", headers: [("Range", "bytes=-7")])
        #expect(tail.status == 206 && tail.body == Array(a.body.suffix(7)))
        let open = try await api.get("/v1/checkpoints/\(seq)/block", headers: [("Range", "bytes=\(a.body.count - 3)-")])
        #expect(open.status == 206 && open.body == Array(a.body.suffix(3)))
        let beyond = try await api.get("/v1/checkpoints/\(seq)/block", headers: [("Range", "bytes=\(a.body.count)-")])
        #expect(beyond.status == 416 && beyond.header("content-range") == "bytes */\(a.body.count)")
        // Several ranges, or another validator in If-Range: the whole body.
        #expect(try await api.get("/v1/checkpoints/\(seq)/block", headers: [("Range", "bytes=0-1,4-5")]).status == 200)
        #expect(try await api.get("/v1/checkpoints/\(seq)/block", headers: [("Range", "bytes=0-1"), ("If-Range", "\"other\"")]).status == 200)
        try await api.stop()
    }

    @Test("proofs: a transaction, an object version and an object live at an epoch end verify against the genesis alone, and every flipped byte of a proof or of the bytes it covers is refused")
    func proofs() async throws {
        let api = try await APINode("api-proofs")
        let entry = api.checkpoint(150).data.entries[3]
        let object = entry.outputObjects[0]
        let txAnswer = try await api.get("/v1/transactions/\(entry.transaction.digest.hex)?epochs=true")
        let objAnswer = try await api.get("/v1/objects/\(object.id.hex)?version=\(object.version)&epochs=true")
        let ended = try await api.node.store.epochs().filter { $0.stateRoot != nil }.map(\.epoch)
        let snapshots = try await api.node.store.snapshotEpochs()
        let epoch = try #require(snapshots.last { ended.contains($0) })
        // An object live at that epoch's end: one from its snapshot.
        let chunk = try #require(try await api.node.store.snapshotChunk(epoch: epoch, index: 0))
        let manifest = try #require(try await api.node.store.snapshotManifest(epoch: epoch))
        let live = try manifest.verifyChunk(index: 0, frame: chunk, proof: try manifest.proof(chunk: 0), limit: 1 << 26).references[5]
        let liveAnswer = try await api.get("/v1/objects/\(live.id.hex)?epoch=\(epoch)&epochs=true")
        for a in [txAnswer, objAnswer, liveAnswer] {
            #expect(a.status == 200, "\(String(decoding: a.body, as: UTF8.self))")
            let verdict = try ProofCheck.verify(answer: a.body, genesis: api.genesis)
            #expect(!verdict.summary.isEmpty)
        }
        // Without the epoch chain, a later epoch's proof is refused unless the committee is given.
        let bare = try await api.get("/v1/transactions/\(entry.transaction.digest.hex)")
        #expect(throws: CoreError.self) { try ProofCheck.verify(answer: bare.body, genesis: api.genesis) }
        let epochOf150 = api.checkpoint(150).certified.summary.epoch
        let committee = try #require(try await api.node.store.committee(epoch: epochOf150))
        _ = try ProofCheck.verify(answer: bare.body, genesis: api.genesis, committee: committee)

        // Every flipped byte: of the entry proof's BCS, the transaction and the effects.
        let tx = try JSONDecoder().decode(TransactionAnswerJSON.self, from: Data(txAnswer.body))
        let proof = try #require(tx.proof).entryProof()
        let transaction = entry.transaction
        let effects = entry.effects
        _ = try ProofVerifier.verify(transaction: transaction, effects: effects, proof: proof, genesis: api.genesis.committee)
        let proofBytes = proof.bcsBytes
        var accepted: [Int] = []
        for i in proofBytes.indices {
            var b = proofBytes
            b[i] ^= 0xFF
            guard let p = try? EntryProof(bcsBytes: b) else { continue }
            if (try? ProofVerifier.verify(transaction: transaction, effects: effects, proof: p, genesis: api.genesis.committee)) != nil { accepted.append(i) }
        }
        #expect(accepted.isEmpty, "flipped proof bytes accepted at \(accepted.prefix(10))")
        for (name, bytes) in [("transaction", transaction.bcsBytes), ("effects", effects.bcsBytes)] {
            var acceptedAt: [Int] = []
            for i in bytes.indices {
                var b = bytes
                b[i] ^= 0xFF
                let ok: Bool
                if name == "transaction" {
                    guard let t = try? Transaction(bcsBytes: b) else { continue }
                    ok = (try? ProofVerifier.verify(transaction: t, effects: effects, proof: proof, genesis: api.genesis.committee)) != nil
                } else {
                    guard let e = try? TransactionEffects(bcsBytes: b) else { continue }
                    ok = (try? ProofVerifier.verify(transaction: transaction, effects: e, proof: proof, genesis: api.genesis.committee)) != nil
                }
                if ok { acceptedAt.append(i) }
            }
            #expect(acceptedAt.isEmpty, "flipped \(name) bytes accepted at \(acceptedAt.prefix(10))")
        }
        // Every flipped byte of the state proof and of the object it proves.
        let liveJSON = try JSONDecoder().decode(ObjectAnswerJSON.self, from: Data(liveAnswer.body))
        let liveObject = try Object(bcsBytes: try #require(HexCoding.decode(liveJSON.object.bcs)))
        let state = try #require(liveJSON.proof).stateProof()
        _ = try ProofVerifier.verify(reference: liveObject.reference, proof: state, genesis: api.genesis.committee)
        var stateAccepted: [Int] = []
        for i in state.bcsBytes.indices {
            var b = state.bcsBytes
            b[i] ^= 0xFF
            guard let s = try? StateProof(bcsBytes: b) else { continue }
            if (try? ProofVerifier.verify(reference: liveObject.reference, proof: s, genesis: api.genesis.committee)) != nil { stateAccepted.append(i) }
        }
        #expect(stateAccepted.isEmpty, "flipped state-proof bytes accepted at \(stateAccepted.prefix(10))")
        var objectAccepted: [Int] = []
        for i in liveObject.bcsBytes.indices {
            var b = liveObject.bcsBytes
            b[i] ^= 0xFF
            guard let o = try? Object(bcsBytes: b) else { continue }
            if (try? ProofVerifier.verify(reference: o.reference, proof: state, genesis: api.genesis.committee)) != nil { objectAccepted.append(i) }
        }
        #expect(objectAccepted.isEmpty, "flipped object bytes accepted at \(objectAccepted.prefix(10))")
        try await api.stop()
    }

    @Test("events: a subscriber resumes after its last event id (read back from the store, then live, epoch ends included, nothing twice); a subscriber that stops reading is dropped with a reason and the node goes on")
    func events() async throws {
        let api = try await APINode("api-events", committed: 100, eventBuffer: 16)
        let store = api.node.store
        // Resume after checkpoint 50: 51...100 are read back, then 101... live as they are stored.
        let last = api.last
        let resumed = api.node.events(after: EventPosition(seq: 50, epochSent: false))
        let reading = Task {
            var seen: [String] = []
            for await e in resumed {
                if let p = e.position { seen.append(p.description) }
                if e.position == EventPosition(seq: last, epochSent: false) { break }
            }
            return seen
        }
        let stalled = api.node.events(after: nil)
        try await store.commit(api.chain[100...].map(\.verified))
        let seen = await reading.value
        #expect(resumed.droppedReason == nil)
        let seqs = seen.filter { !$0.hasSuffix("e") }.compactMap { UInt64($0) }
        #expect(seqs == Array(51...last), "\(seen.prefix(5))…\(seen.suffix(5))")
        let epochEnds = api.chain.filter { $0.certified.summary.endOfEpoch != nil && $0.certified.summary.sequenceNumber > 50 }
            .map { "\($0.certified.summary.sequenceNumber)e" }
        #expect(seen.filter { $0.hasSuffix("e") } == epochEnds.filter { UInt64($0.dropLast())! < last })
        // The subscriber that never read fell more than 16 events behind: dropped.
        var it = stalled.makeAsyncIterator()
        var count = 0
        while await it.next() != nil { count += 1 }
        #expect(count <= 16)
        #expect(stalled.droppedReason?.contains("too slow") == true)
        // Over HTTP: Last-Event-ID resumes the same way.
        if let curl = tool("curl") {
            let (_, out, _) = try run(curl, ["-s", "-N", "--max-time", "2", "-H", "Last-Event-ID: 200", "http://127.0.0.1:\(api.port)/v1/events"])
            let ids = String(decoding: out, as: UTF8.self).split(separator: "\n").filter { $0.hasPrefix("id: ") }.map { String($0.dropFirst(4)) }
            #expect(ids.first == "201" && ids.contains("\(last)"), "\(ids)")
        }
        try await api.stop()
    }

    @Test("status and health follow the node: ready while within readyWithin of the best tip; a stop ends event streams")
    func health() async throws {
        let api = try await APINode("api-health")
        let health = try await api.json("/health")
        #expect(health["status"] as? String == "ok" && health["ready"] as? Bool == true)
        let history = try await api.json("/v1/status/history")
        #expect(history["samples"] is [Any])
        let events = api.node.events(after: nil)
        try await api.stop()
        var it = events.makeAsyncIterator()
        while await it.next() != nil {}
        #expect(events.droppedReason == "the node is stopping")
    }
}
