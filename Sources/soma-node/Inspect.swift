import ArgumentParser
import Foundation
import SomaCore
import SomaStore

/// Options that name a node's data directory.
struct DataOptions: ParsableArguments {
    @Option(help: "The node's data directory (holding genesis.bcs and db/).")
    var data: String

    /// Opens the store in its own mode; `readOnly` works beside a running node.
    func openStore(readOnly: Bool = false) async throws -> NodeStore {
        try await Self.openStore(at: data, readOnly: readOnly)
    }

    /// Opens the store of the data directory `data` in its own mode.
    static func openStore(at data: String, readOnly: Bool) async throws -> NodeStore {
        let dir = DataDirectory(root: data)
        guard FileManager.default.fileExists(atPath: dir.database) else {
            throw CLIError("no store at \(dir.database): give --data the directory of a node (one that `soma-node sync`, `import` or `devnet generate` wrote)")
        }
        var config = StoreConfiguration()
        config.retainSnapshots = 0
        config.adoptStoredMode = true
        config.database.readOnly = readOnly
        return try await NodeStore.open(path: dir.database, configuration: config)
    }
}

struct Inspect: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show what a store holds: watermarks and epochs, or one checkpoint, transaction or object.")

    @OptionGroup var dataOptions: DataOptions
    @Option(help: "Show checkpoint N.")
    var checkpoint: UInt64?
    @Option(help: "Show the transaction with this digest (hex).")
    var transaction: String?
    @Option(help: "Show the object with this id (hex); the live version unless --version.")
    var object: String?
    @Option(help: "The object version to show.")
    var version: UInt64?
    @Flag(help: "Print JSON.")
    var json = false

    func validate() throws {
        if let transaction, Digest(hex: transaction) == nil { throw ValidationError("--transaction takes 64 hex characters") }
        if let object, Digest(hex: object) == nil { throw ValidationError("--object takes 64 hex characters") }
        if version != nil && object == nil { throw ValidationError("--version goes with --object") }
    }

    func run() async throws {
        let store = try await dataOptions.openStore(readOnly: true)
        let result: [String: Any]
        do {
            if let checkpoint {
                result = try await describeCheckpoint(store, checkpoint)
            } else if let transaction, let digest = Digest(hex: transaction) {
                result = try await describeTransaction(store, digest)
            } else if let object, let id = Digest(hex: object) {
                result = try await describeObject(store, id)
            } else {
                result = try await describeStore(store)
            }
        } catch {
            await store.close()
            throw error
        }
        await store.close()
        try emit(result)
    }

    func emit(_ value: [String: Any]) throws {
        if json {
            let data = try JSONSerialization.data(withJSONObject: value, options: [.prettyPrinted, .sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else if checkpoint != nil {
            printCheckpoint(value)
        } else if transaction != nil {
            printTransaction(value)
        } else if object != nil {
            printObject(value)
        } else {
            printStore(value)
        }
    }

    /// `label  value` lines, the labels padded to one column.
    func rows(_ items: [(String, Any?)], indent: String = "  ") {
        let width = items.map(\.0.count).max() ?? 0
        for (label, value) in items {
            guard let value else { continue }
            print("\(indent)\(label.padding(toLength: width, withPad: " ", startingAt: 0))  \(value)")
        }
    }

    func printStore(_ v: [String: Any]) {
        print("store (\(v["mode"] ?? "?")), chain \(v["chainID"] ?? "?")")
        print("watermarks")
        let marks = v["watermarks"] as? [String: Any] ?? [:]
        rows(["highestVerified", "highestSynced", "highestExecuted", "lowestAvailable"].map { name in
            let m = marks[name] as? [String: Any]
            return (name, m.map { "\($0["seq"] ?? "?")  (summary \($0["digest"] ?? "?"))" } ?? "not set")
        })
        if let note = v["liveSet"] { rows([("live set", note)]) }
        print("epochs")
        for e in v["epochs"] as? [[String: Any]] ?? [] {
            let range = "checkpoints \(e["firstCheckpoint"] ?? "?")–\(e["lastCheckpoint"].map { "\($0)" } ?? "(running)")"
            let root = e["stateRoot"].map { ", state root \($0), \(e["liveObjects"] ?? "?") live objects" } ?? ""
            print("  epoch \(e["epoch"] ?? "?"): \(range)\(root)")
        }
        let snapshots = (v["snapshotEpochs"] as? [Any] ?? []).map { "\($0)" }
        print("snapshots held: \(snapshots.isEmpty ? "none" : "epochs " + snapshots.joined(separator: ", "))")
        print("column families (RocksDB estimates)")
        let families = (v["columnFamilies"] as? [String: Any] ?? [:]).sorted { $0.key < $1.key }
        rows(families.map { name, f in
            let f = f as? [String: Any] ?? [:]
            return (name, "~\(f["estimatedKeys"] ?? 0) keys, \(f["sstBytes"] ?? 0) bytes of SST files")
        })
    }

    func printCheckpoint(_ v: [String: Any]) {
        print("checkpoint \(v["sequenceNumber"] ?? "?") (epoch \(v["epoch"] ?? "?"))")
        let parts = v["blockPartBytes"] as? [Int] ?? []
        let txs = v["transactions"] as? [String]
        rows([
            ("digest", v["digest"]), ("content digest", v["contentDigest"]), ("previous digest", v["previousDigest"]),
            ("transactions", "\(txs.map { "\($0.count)" } ?? "?") in this checkpoint, \(v["networkTotalTransactions"] ?? "?") on the chain up to it"),
            ("timestamp", "\(v["timestampMs"] ?? "?") ms since 1970"), ("protocol version", v["protocolVersion"]),
            ("certificate", "\(v["signers"] ?? "?") signatures"),
            ("block", parts.isEmpty ? "not held (pruned or not yet synced)" : "\(parts.count) part\(parts.count == 1 ? "" : "s") of \(parts.map(String.init).joined(separator: " + ")) bytes (LZ4 frames)"),
        ])
        if let end = v["endOfEpoch"] as? [String: Any] {
            print("end of epoch")
            rows([("state root", end["stateRoot"]), ("live objects", end["liveObjects"]), ("next committee", "\(end["nextCommitteeMembers"] ?? "?") members")])
        }
        if let txs, !txs.isEmpty {
            print("transactions")
            for (i, t) in txs.enumerated() { print("  \(i): \(t)") }
        }
    }

    func printTransaction(_ v: [String: Any]) {
        print("transaction \(v["digest"] ?? "?")")
        rows([("checkpoint", v["checkpoint"]), ("sender", v["sender"]), ("status", v["status"]),
              ("gas used", v["gasUsed"]), ("executed in epoch", v["executedEpoch"])])
        print("object changes")
        for c in v["changes"] as? [[String: Any]] ?? [] {
            print("  \(c["id"] ?? "?"): \(c["input"].map { "\($0) → " } ?? "created, ")\(c["output"] ?? "?")")
        }
    }

    func printObject(_ v: [String: Any]) {
        print("object \(v["id"] ?? "?") version \(v["version"] ?? "?")")
        rows([("digest", v["digest"]), ("owner", v["owner"]), ("type", v["type"]), ("contents", "\(v["contentBytes"] ?? "?") bytes"),
              ("written by", v["previousTransaction"]), ("live version", v["liveVersion"]), ("live set", v["liveSet"])])
    }

    func describeStore(_ store: NodeStore) async throws -> [String: Any] {
        var marks: [String: Any] = [:]
        for (w, v) in try await store.watermarks() { marks[w.rawValue] = ["seq": v.seq, "digest": v.digest.hex] }
        let epochs: [[String: Any]] = try await store.epochs().map { r in
            var e: [String: Any] = ["epoch": r.epoch, "firstCheckpoint": r.firstCheckpoint]
            if let l = r.lastCheckpoint { e["lastCheckpoint"] = l }
            if let s = r.stateRoot { e["stateRoot"] = s.hex }
            if let c = r.liveObjectCount { e["liveObjects"] = c }
            return e
        }
        var families: [String: Any] = [:]
        for s in try await store.statistics() { families[s.family] = ["estimatedKeys": s.keys, "sstBytes": s.bytes] }
        var out: [String: Any] = [
            "chainID": try await store.chainID()?.hex ?? "none",
            "mode": store.configuration.mode.rawValue,
            "watermarks": marks,
            "epochs": epochs,
            "snapshotEpochs": try await store.snapshotEpochs(),
            "columnFamilies": families,
        ]
        if let pending = try await store.pendingLiveEntries() { out["liveSet"] = Self.pendingNote(pending) }
        return out
    }

    /// What a read-only look says when a crash left a live write-back committed but not ingested.
    static func pendingNote(_ file: String) -> String {
        "behind highestExecuted: the write-back in \(file) is committed but not yet ingested (a crash came between); the next read-write open (run, sync, verify) finishes it"
    }

    func describeCheckpoint(_ store: NodeStore, _ seq: UInt64) async throws -> [String: Any] {
        guard let certified = try await store.summary(at: seq) else { throw CLIError("checkpoint \(seq) is not in the store") }
        let s = certified.summary
        var out: [String: Any] = [
            "sequenceNumber": s.sequenceNumber, "epoch": s.epoch, "digest": certified.digest.hex,
            "contentDigest": s.contentDigest.hex, "previousDigest": s.previousDigest?.hex ?? "none",
            "networkTotalTransactions": s.networkTotalTransactions, "timestampMs": s.timestampMs,
            "protocolVersion": s.protocolVersion, "signers": certified.certificate.signatures.count,
        ]
        if let end = s.endOfEpoch {
            out["endOfEpoch"] = ["stateRoot": end.stateRoot.hex, "liveObjects": end.liveObjectCount,
                                 "nextCommitteeMembers": end.nextCommittee.members.count]
        }
        let frames = try await store.blockFrames(at: seq)
        out["blockPartBytes"] = frames.map(\.count)
        if let data = try await store.checkpointData(at: seq) {
            out["transactions"] = data.entries.map { $0.transaction.digest.hex }
        } else {
            out["transactions"] = "not held (pruned or not yet synced)"
        }
        return out
    }

    func describeTransaction(_ store: NodeStore, _ digest: Digest) async throws -> [String: Any] {
        guard let (seq, entry) = try await store.transaction(digest) else { throw CLIError("transaction \(digest.hex) is not in the store") }
        let status: String
        switch entry.effects.status {
        case .success: status = "success"
        case .failure(let code): status = "failure(\(code))"
        }
        return [
            "digest": digest.hex, "checkpoint": seq, "sender": entry.transaction.data.sender.hex,
            "status": status, "gasUsed": entry.effects.gasUsed, "executedEpoch": entry.effects.executedEpoch,
            "changes": entry.effects.changes.map { c -> [String: Any] in
                var d: [String: Any] = ["id": c.id.hex]
                if let i = c.input { d["input"] = "v\(i.version)" }
                switch c.output {
                case .written(let o): d["output"] = "v\(o.version)"
                case .deleted: d["output"] = "deleted"
                }
                return d
            },
        ]
    }

    func describeObject(_ store: NodeStore, _ id: Digest) async throws -> [String: Any] {
        guard let o = try await store.object(id, version: version) else {
            throw CLIError("object \(id.hex)\(version.map { " v\($0)" } ?? "") is not in the store")
        }
        let owner: String
        switch o.owner {
        case .address(let a): owner = "address \(a.hex)"
        case .shared(let v): owner = "shared since v\(v)"
        case .immutable: owner = "immutable"
        }
        var out: [String: Any] = [
            "id": o.id.hex, "version": o.version, "digest": o.digest.hex, "owner": owner, "type": o.typeTag,
            "contentBytes": o.contents.count, "previousTransaction": o.previousTransaction.hex,
        ]
        if let live = try await store.liveVersion(id) { out["liveVersion"] = live.version } else { out["liveVersion"] = "none (deleted)" }
        if let pending = try await store.pendingLiveEntries() { out["liveSet"] = Self.pendingNote(pending) }
        return out
    }
}

struct Verify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Re-verify every stored checkpoint and recompute every epoch's state root; report the first fault.",
        discussion: """
            Exits 0 when everything verifies and 1 at the first fault, which it names (what, \
            where). With --json, standard output carries one JSON document: {"ok": true, ...what \
            was verified} or {"ok": false, "error": ...}; progress lines go to standard error.
            """)

    @OptionGroup var dataOptions: DataOptions
    @Flag(help: "Check every certificate, not one per batch of summaries.")
    var allCertificates = false
    @Flag(help: "Also re-check every user signature.")
    var userSignatures = false
    @Flag(help: "Print the verdict as one JSON document (progress goes to standard error).")
    var json = false

    func run() async throws {
        let start = ContinuousClock.now
        let console = Console(json: json)
        let store: NodeStore
        do {
            store = try await dataOptions.openStore()
        } catch let e as StoreError where e.code != .busy {
            // A store that cannot open consistent (history lost under its watermarks) fails the
            // verification with the open's reason.
            try fail(e, start: start, console: console)
        }
        do {
            let r = try await store.verifyAll(allCertificates: allCertificates, userSignatures: userSignatures) { seq in
                console.say("  verified up to checkpoint \(seq)")
            }
            await store.close()
            let secs = elapsed(since: start)
            var document: [String: Any] = [
                "ok": true, "seconds": jsonSeconds(secs), "summaries": r.summaries, "checkpoints": r.checkpoints,
                "transactions": r.transactions, "stateRootEpochs": r.stateRoots, "liveObjects": r.liveObjects,
                "replayedFromGenesis": r.replayedFromGenesis, "restoreInProgress": NSNull(),
            ]
            if let restore = r.restoreInProgress {
                console.say("verify: OK in \(format(secs)) s: a snapshot restore of epoch \(restore.epoch) is in progress, \(restore.written) of \(restore.chunks) chunks written, each verified against the certified state root; \(r.summaries) epoch ends verified from the genesis, \(r.liveObjects) live objects stored as certified (finish it with soma-node sync --snapshot)")
                document["restoreInProgress"] = ["epoch": restore.epoch, "chunksWritten": restore.written, "chunks": restore.chunks]
            } else {
                console.say("verify: OK in \(format(secs)) s: \(r.summaries) summaries, \(r.checkpoints) checkpoints, \(r.transactions) transactions, state roots of epochs \(r.stateRoots.map(String.init).joined(separator: ", ")), \(r.liveObjects) live objects \(r.replayedFromGenesis ? "matching a replay from genesis" : "matching the last epoch's root")")
            }
            if json { try console.emit(document) }
        } catch let e as StoreError {
            await store.close()
            try fail(e, start: start, console: console)
        }
    }

    /// Reports the fault found and exits with status 1.
    func fail(_ e: StoreError, start: ContinuousClock.Instant, console: Console) throws -> Never {
        console.say("verify: FAILED: \(e.message)")
        if json { try console.emit(["ok": false, "error": e.message, "code": e.code.rawValue, "seconds": jsonSeconds(elapsed(since: start))]) }
        throw ExitCode(1)
    }
}
