import Foundation
import SomaCore

// The JSON the HTTP API answers with (docs/API.md, docs/openapi.yaml). Digests, ids, keys,
// signatures and byte strings are lowercase hex; integers are JSON numbers (u64 values can pass
// 2^53: a client in a language whose numbers are doubles reads them with a big-integer parser,
// or takes the exact `bcs` field, which is also what proofs are checked against).

/// An error answer: `{"error": {"code": "...", "message": "..."}}`.
public struct APIErrorBody: Codable, Sendable, Equatable {
    /// The error.
    public var error: APIErrorDetail
}

/// The code (stable, for programs) and message (for people) of an error answer.
public struct APIErrorDetail: Codable, Sendable, Equatable {
    /// `bad_request`, `not_found`, `pruned`, `range_not_satisfiable`, `unavailable`, `internal`.
    public var code: String
    /// What failed and what to do.
    public var message: String
}

/// A committee member.
public struct MemberJSON: Codable, Sendable, Equatable {
    public var name: String
    public var votingPower: UInt64
    public var address: String
}

/// A committee.
public struct CommitteeJSON: Codable, Sendable, Equatable {
    public var epoch: UInt64
    public var members: [MemberJSON]

    init(_ c: Committee) {
        epoch = c.epoch
        members = c.members.map { MemberJSON(name: $0.name.raw.hex, votingPower: $0.votingPower, address: $0.address) }
    }
}

/// A checkpoint's certified summary with its certificate.
public struct CheckpointJSON: Codable, Sendable, Equatable {
    /// The summary's digest.
    public var digest: String
    public var sequenceNumber: UInt64
    public var epoch: UInt64
    public var networkTotalTransactions: UInt64
    /// Transactions in this checkpoint (`networkTotalTransactions` minus the previous one's).
    public var transactions: UInt64?
    public var contentDigest: String
    public var previousDigest: String?
    public var timestampMs: UInt64
    public var protocolVersion: UInt64
    public var endOfEpoch: EndOfEpochJSON?
    public var certificate: CertificateJSON
    /// Whether this node holds the checkpoint's block (`/v1/checkpoints/{seq}/block`).
    public var blockHeld: Bool
    /// BCS of the `CertifiedCheckpointSummary`, hex: the exact bytes a client verifies.
    public var bcs: String

    init(_ c: CertifiedCheckpointSummary, transactions: UInt64?, blockHeld: Bool) {
        let s = c.summary
        digest = c.digest.hex
        sequenceNumber = s.sequenceNumber
        epoch = s.epoch
        networkTotalTransactions = s.networkTotalTransactions
        self.transactions = transactions
        contentDigest = s.contentDigest.hex
        previousDigest = s.previousDigest?.hex
        timestampMs = s.timestampMs
        protocolVersion = s.protocolVersion
        endOfEpoch = s.endOfEpoch.map(EndOfEpochJSON.init)
        certificate = CertificateJSON(c.certificate)
        self.blockHeld = blockHeld
        bcs = HexCoding.encode(c.bcsBytes)
    }
}

/// What the last checkpoint of an epoch carries.
public struct EndOfEpochJSON: Codable, Sendable, Equatable {
    public var stateRoot: String
    public var liveObjectCount: UInt64
    public var nextCommittee: CommitteeJSON

    init(_ e: EndOfEpochData) {
        stateRoot = e.stateRoot.hex
        liveObjectCount = e.liveObjectCount
        nextCommittee = CommitteeJSON(e.nextCommittee)
    }
}

/// A quorum certificate.
public struct CertificateJSON: Codable, Sendable, Equatable {
    public var epoch: UInt64
    /// The signer bitmap (bit i = member i, least significant bit first), hex.
    public var signers: String
    public var signatures: [String]

    init(_ q: QuorumCertificate) {
        epoch = q.epoch
        signers = HexCoding.encode(q.signers)
        signatures = q.signatures.map { HexCoding.encode($0.bytes) }
    }
}

/// An object reference.
public struct ObjectRefJSON: Codable, Sendable, Equatable {
    public var id: String
    public var version: UInt64
    public var digest: String
}

/// An object version.
public struct ObjectJSON: Codable, Sendable, Equatable {
    public var id: String
    public var version: UInt64
    /// `digest(Object)`.
    public var digest: String
    /// `{"kind": "address", "address": hex}`, `{"kind": "shared", "initialVersion": n}` or `{"kind": "immutable"}`.
    public var owner: OwnerJSON
    public var typeTag: String
    public var contents: String
    public var previousTransaction: String
    /// BCS of the `Object`, hex.
    public var bcs: String

    init(_ o: Object) {
        id = o.id.hex
        version = o.version
        digest = o.digest.hex
        owner = OwnerJSON(o.owner)
        typeTag = o.typeTag
        contents = HexCoding.encode(o.contents)
        previousTransaction = o.previousTransaction.hex
        bcs = HexCoding.encode(o.bcsBytes)
    }
}

/// An object's owner.
public struct OwnerJSON: Codable, Sendable, Equatable {
    public var kind: String
    public var address: String?
    public var initialVersion: UInt64?

    init(_ o: Owner) {
        switch o {
        case .address(let a): kind = "address"; address = a.hex
        case .shared(let v): kind = "shared"; initialVersion = v
        case .immutable: kind = "immutable"
        }
    }
}

/// A transaction with its effects and output objects.
public struct TransactionJSON: Codable, Sendable, Equatable {
    /// The transaction digest (`digest(TransactionData)`).
    public var digest: String
    /// The checkpoint that holds it, and its index there.
    public var checkpoint: UInt64
    public var index: UInt32
    public var sender: String
    public var kind: UInt8
    public var inputs: [ObjectRefJSON]
    public var payload: String
    public var gasBudget: UInt64
    public var signatures: [UserSignatureJSON]
    public var effects: EffectsJSON
    public var outputObjects: [ObjectJSON]
    /// BCS of the `Transaction` (data and signatures) and of the `TransactionEffects`, hex.
    public var transactionBcs: String
    public var effectsBcs: String

    init(_ e: ExecutionData, checkpoint: UInt64, index: UInt32) {
        let d = e.transaction.data
        digest = e.transaction.digest.hex
        self.checkpoint = checkpoint
        self.index = index
        sender = d.sender.hex
        kind = d.kind
        inputs = d.inputs.map { ObjectRefJSON(id: $0.id.hex, version: $0.version, digest: $0.digest.hex) }
        payload = HexCoding.encode(d.payload)
        gasBudget = d.gasBudget
        signatures = e.transaction.signatures.map { UserSignatureJSON(publicKey: $0.publicKey.raw.hex, signature: HexCoding.encode($0.signature.bytes)) }
        effects = EffectsJSON(e.effects)
        outputObjects = e.outputObjects.map(ObjectJSON.init)
        transactionBcs = HexCoding.encode(e.transaction.bcsBytes)
        effectsBcs = HexCoding.encode(e.effects.bcsBytes)
    }
}

/// A user's signature of a transaction.
public struct UserSignatureJSON: Codable, Sendable, Equatable {
    public var publicKey: String
    public var signature: String
}

/// A transaction's effects.
public struct EffectsJSON: Codable, Sendable, Equatable {
    /// `digest(TransactionEffects)`.
    public var digest: String
    public var transactionDigest: String
    /// `success`, or `failure` with `failureCode`.
    public var status: String
    public var failureCode: UInt32?
    public var executedEpoch: UInt64
    public var gasUsed: UInt64
    public var changes: [ObjectChangeJSON]
    public var dependencies: [String]

    init(_ e: TransactionEffects) {
        digest = e.digest.hex
        transactionDigest = e.transactionDigest.hex
        switch e.status {
        case .success: status = "success"
        case .failure(let code): status = "failure"; failureCode = code
        }
        executedEpoch = e.executedEpoch
        gasUsed = e.gasUsed
        changes = e.changes.map(ObjectChangeJSON.init)
        dependencies = e.dependencies.map(\.hex)
    }
}

/// One object an effects changed.
public struct ObjectChangeJSON: Codable, Sendable, Equatable {
    public var id: String
    public var inputVersion: UInt64?
    public var inputDigest: String?
    /// `written` (with `outputVersion`, `outputDigest`) or `deleted`.
    public var output: String
    public var outputVersion: UInt64?
    public var outputDigest: String?

    init(_ c: ObjectChange) {
        id = c.id.hex
        inputVersion = c.input?.version
        inputDigest = c.input?.digest.hex
        switch c.output {
        case .written(let vd): output = "written"; outputVersion = vd.version; outputDigest = vd.digest.hex
        case .deleted: output = "deleted"
        }
    }
}

/// An epoch as the node holds it.
public struct EpochJSON: Codable, Sendable, Equatable {
    public var epoch: UInt64
    public var firstCheckpoint: UInt64
    /// Its last checkpoint, once it ended.
    public var lastCheckpoint: UInt64?
    /// The certified state root at its end, once it ended.
    public var stateRoot: String?
    public var liveObjectCount: UInt64?
    /// Whether this node holds the state snapshot of its end (served to peers in chunks).
    public var snapshotHeld: Bool
    /// Its committee, when the node holds it.
    public var committee: CommitteeJSON?
}

/// `/health`.
public struct HealthJSON: Codable, Sendable, Equatable {
    /// Always `ok` while the node answers.
    public var status: String
    /// Whether it is within `readyWithin` checkpoints of the best tip it knows of.
    public var ready: Bool
    public var phase: NodePhase
    public var highestSynced: UInt64?
    public var lag: UInt64
}

/// `/v1/status/history`.
public struct HistoryJSON: Codable, Sendable, Equatable {
    /// One sample a second, oldest first (the last 10 minutes at most).
    public var samples: [StatusSample]
}

/// `/v1/peers`.
public struct PeersJSON: Codable, Sendable, Equatable {
    /// The sources sync draws from.
    public var sources: [PeerStatus]
    /// Peers the persistent table knows (admitted signed records).
    public var known: Int
}

/// A proof carried by a read (docs/API.md, "Proofs"): every byte string is the hex of its BCS.
public struct ProofJSON: Codable, Sendable, Equatable {
    /// `entry`: the audit path of an `ExecutionLeaf` in `checkpoint`'s `contentDigest`;
    /// `state`: the audit path of `bcs(ObjectRef)` in the `stateRoot` of `checkpoint`, the
    /// last checkpoint of an epoch.
    public var kind: String
    /// The `CertifiedCheckpointSummary`.
    public var checkpoint: String
    /// `entry`: the `CheckpointSummary` before it (absent for checkpoint 0): its digest is the
    /// checkpoint's `previousDigest`, its `networkTotalTransactions` gives `leafCount`.
    public var previousSummary: String?
    /// The leaf's index and the number of leaves (the verifier recomputes the count).
    public var index: UInt64
    public var leafCount: UInt64
    /// The audit path, leaf first (RFC 9162 §2.1.3).
    public var path: [String]
    /// With `?epochs=true`: the certified last summaries of the epochs from the genesis's up to
    /// the checkpoint's, exclusive, so that a client holding only the genesis has the committee.
    public var epochEnds: [String]?
    /// Object versions: the `Transaction` that wrote the version and its `TransactionEffects`.
    public var transactionBcs: String?
    public var effectsBcs: String?
}

/// An object version, with its proof unless `?proof=false`.
public struct ObjectAnswerJSON: Codable, Sendable, Equatable {
    public var object: ObjectJSON
    /// `entry` for a version (the transaction that wrote it, in a certified checkpoint);
    /// `state` with `?epoch=E` (live at the end of epoch E, against its certified state root).
    public var proof: ProofJSON?
}

/// A transaction with its effects and output objects, and its proof unless `?proof=false`.
public struct TransactionAnswerJSON: Codable, Sendable, Equatable {
    public var transaction: TransactionJSON
    public var proof: ProofJSON?
}
