/// The execution-order rules (DESIGN §5.4) over an in-memory view of the live object set.
///
/// A store-backed executor loads the live entries a checkpoint touches into a ``LiveObjectSet``
/// (or keeps the whole set in memory, as the devnet does), applies the checkpoint here, and
/// writes the changes back.
public struct LiveObjectSet: Sendable {
    /// The newest version and digest of every live object.
    public private(set) var objects: LiveTable

    /// What ``applyInPlace(_:changed:)`` read ahead (kept so that the reads are made).
    private var touched: UInt64 = 0

    /// A set holding `objects`.
    public init(_ objects: [ObjectID: VersionDigest] = [:]) {
        self.objects = LiveTable(objects)
    }

    /// A set holding `table`.
    public init(table: LiveTable) {
        self.objects = table
    }

    /// The number of live objects.
    public var count: Int { objects.count }

    /// Applies every entry of a checkpoint in order. For every change the input must equal the
    /// live version and digest (or the object must be absent for a creation), and written
    /// versions must exceed input versions. On error nothing of the checkpoint is applied.
    /// - Throws: ``CoreError/Code/effectsMismatch`` naming the checkpoint, entry and object.
    public mutating func apply(_ data: CheckpointData) throws(CoreError) {
        // Changes are staged per checkpoint (only the ids it touches) and merged at the end,
        // so a failure leaves the set as it was.
        var staged: [ObjectID: VersionDigest?] = [:]
        for (index, entry) in data.entries.enumerated() {
            for change in entry.effects.changes {
                let current: VersionDigest? = staged[change.id] ?? objects[change.id]
                staged[change.id] = .some(try Self.check(change, current: current, checkpoint: data.sequenceNumber, index: index))
            }
        }
        for (id, state) in staged { objects[id] = state }
    }

    /// ``apply(_:)`` without staging: each change is checked and applied to the set at once
    /// (one lookup of its id), and `changed` is told its id. The checks and the result are
    /// those of ``apply(_:)``; on error the set is left partly changed, so a caller that cannot
    /// discard it must use ``apply(_:)`` (a bulk catch-up drops its whole in-memory set).
    /// - Throws: ``CoreError/Code/effectsMismatch`` naming the checkpoint, entry and object.
    public mutating func applyInPlace(_ data: CheckpointData, changed: (ObjectID) -> Void) throws(CoreError) {
        // The slots of the checkpoint's changes first, all at once (a million-entry table
        // misses the cache on nearly every lookup); kept, so that the loads are made.
        var sink: UInt64 = 0
        for entry in data.entries {
            for change in entry.effects.changes { sink &+= objects.touch(change.id) }
        }
        touched &+= sink
        for (index, entry) in data.entries.enumerated() {
            for change in entry.effects.changes {
                // One lookup: checked and changed in its slot.
                try objects.update(change.id) { (state: inout VersionDigest?) throws(CoreError) in
                    state = try Self.check(change, current: state, checkpoint: data.sequenceNumber, index: index)
                }
                changed(change.id)
            }
        }
    }

    /// The §5.4 checks of one change against the object's `current` live state: the input must
    /// equal it (or the object must be absent for a creation), a written version must exceed
    /// the input's. Returns the object's state after the change (`nil`: deleted).
    static func check(_ change: ObjectChange, current: VersionDigest?, checkpoint: UInt64, index: Int) throws(CoreError) -> VersionDigest? {
        if let input = change.input {
            guard let current, current == input else {
                throw CoreError(.effectsMismatch,
                    "checkpoint \(checkpoint) entry \(index): object \(change.id.short) input v\(input.version) is not the live version\(current.map { " v\($0.version)" } ?? " (absent)")")
            }
        } else if current != nil {
            throw CoreError(.effectsMismatch,
                "checkpoint \(checkpoint) entry \(index): object \(change.id.short) created but already live")
        }
        switch change.output {
        case .written(let out):
            if let input = change.input, out.version <= input.version {
                throw CoreError(.effectsMismatch,
                    "checkpoint \(checkpoint) entry \(index): object \(change.id.short) version does not grow")
            }
            return out
        case .deleted:
            return nil
        }
    }

    /// The state root: the Merkle root over `bcs(ObjectRef)` of the live objects sorted by id.
    public func stateRoot() -> Digest {
        var stream = StreamingMerkleRoot()
        for (id, vd) in objects.sorted(by: { $0.key < $1.key }) {
            stream.append(leafHash: ObjectRef(id: id, version: vd.version, digest: vd.digest).leafHash)
        }
        return stream.finalize()
    }

    /// Checks the live set against a certified epoch end.
    /// - Throws: ``CoreError/Code/contentMismatch`` if the root or the object count differ.
    public func verify(endOfEpoch end: EndOfEpochData, at sequenceNumber: UInt64) throws(CoreError) {
        let root = stateRoot()
        guard root == end.stateRoot, UInt64(count) == end.liveObjectCount else {
            throw CoreError(.contentMismatch,
                "checkpoint \(sequenceNumber): state root \(root.short) over \(count) objects, certified \(end.stateRoot.short) over \(end.liveObjectCount)")
        }
    }
}
