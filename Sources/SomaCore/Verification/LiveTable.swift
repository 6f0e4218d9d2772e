#if canImport(Glibc)
import Glibc
#endif

/// A hash table from object ids to their live version and digest: the live object set held in
/// memory (about 1.24 M entries on the bench chain, several million on a longer one).
///
/// Open addressing with linear probing over a power-of-two number of slots, at most 3/4 full;
/// a removal shifts the entries after it back (no tombstones). Each slot has a control byte
/// (empty, or 7 bits of the hash) in a small array of its own, and its id and state side by
/// side, so a lookup touches about one cache line of the large array where `Dictionary`
/// touches three (its bitmap, key and value arrays) and hashes its key through `Hasher`.
/// Ids are SHA-256 outputs: their first 8 bytes, mixed with a seed drawn per table, spread
/// them (crafting ids that collide would take preimages).
public struct LiveTable: Sendable, Equatable, Sequence {
    /// One slot's entry.
    struct Entry: Sendable {
        var id: ObjectID
        var state: VersionDigest
        init(id: ObjectID, state: VersionDigest) {
            self.id = id
            self.state = state
        }
    }

    /// 0: empty; otherwise `0x80 | 7 bits of the hash`.
    var control: [UInt8]
    var entries: [Entry]
    var mask: Int
    var shift: UInt64
    var seed: UInt64
    /// The number of entries.
    public private(set) var count: Int

    /// An empty table with room for `minimumCapacity` entries before it grows; `seed` fixes
    /// the hash's seed (tests that must repeat a layout), drawn at random by default.
    public init(minimumCapacity: Int = 0, seed fixedSeed: UInt64? = nil) {
        var slots = 16
        while slots / 4 * 3 < minimumCapacity && slots < (1 << 40) { slots <<= 1 }
        control = [UInt8](repeating: 0, count: slots)
        entries = [Entry](unsafeUninitializedCapacity: slots) { buffer, initialized in
            if let base = buffer.baseAddress { Self.adviseHugePages(UnsafeMutableRawPointer(base), bytes: slots * MemoryLayout<Entry>.stride) }
            buffer.initialize(repeating: Entry(id: .zero, state: VersionDigest(version: 0, digest: .zero)))
            initialized = slots
        }
        mask = slots - 1
        shift = UInt64(64 - slots.trailingZeroBitCount)
        seed = fixedSeed ?? UInt64.random(in: .min ... .max)
        count = 0
    }

    /// A table holding the entries of `dictionary`.
    public init(_ dictionary: [ObjectID: VersionDigest]) {
        self.init(minimumCapacity: dictionary.count)
        for (id, state) in dictionary { self[id] = state }
    }

    /// Asks the kernel for huge pages (2 MiB) under the whole 2 MiB pages of a large allocation
    /// (from 64 MiB) not yet touched: a lookup in a table of hundreds of megabytes otherwise
    /// misses the TLB as well as the cache. Only a hint (transparent huge pages in `madvise`
    /// mode: Debian's default); the table is filled whole at once, so it costs no memory.
    static func adviseHugePages(_ base: UnsafeMutableRawPointer, bytes: Int) {
        #if canImport(Glibc)
        // From 64 MiB: an allocation this large is a mapping of its own (glibc's mmap threshold
        // is at most 32 MiB; jemalloc's large extents are page runs), so the advice covers
        // this table's pages only.
        let huge = 2 << 20
        guard bytes >= 32 * huge else { return }
        let start = (Int(bitPattern: base) + huge - 1) & ~(huge - 1)
        let end = (Int(bitPattern: base) + bytes) & ~(huge - 1)
        guard end > start, let p = UnsafeMutableRawPointer(bitPattern: start) else { return }
        _ = madvise(p, end - start, MADV_HUGEPAGE)
        #endif
    }

    /// Entries the table holds before it grows.
    public var capacity: Int { control.count / 4 * 3 }

    /// Whether the table is empty.
    public var isEmpty: Bool { count == 0 }

    func hash(_ id: ObjectID) -> UInt64 { (id.w0 ^ seed) &* 0x9E37_79B9_7F4A_7C15 }

    /// The control byte of hash `h`: the 8 bits below the slot's, the top one set.
    func tag(_ h: UInt64) -> UInt8 { UInt8(truncatingIfNeeded: h >> (shift - 8)) | 0x80 }

    /// Loads the home slot of `id` (its control byte and entry) and returns something of it:
    /// called for a batch of ids before looking them up, the loads of the batch overlap (the
    /// core does not wait on one to start the next), so the lookups find their slots in cache.
    func touch(_ id: ObjectID) -> UInt64 {
        let i = Int(truncatingIfNeeded: hash(id) >> shift)
        return control.withUnsafeBufferPointer { c in entries.withUnsafeBufferPointer { e in UInt64(c[i]) &+ e[i].state.version } }
    }

    /// The slot of `id` (`found`), or the empty slot where it would go.
    func find(_ id: ObjectID) -> (slot: Int, found: Bool) {
        let h = hash(id)
        let tag = tag(h)
        var i = Int(truncatingIfNeeded: h >> shift)
        return control.withUnsafeBufferPointer { c in
            entries.withUnsafeBufferPointer { e in
                while true {
                    let t = c[i]
                    if t == 0 { return (i, false) }
                    if t == tag && e[i].id == id { return (i, true) }
                    i = (i + 1) & mask
                }
            }
        }
    }

    /// The live version and digest of `id`; setting `nil` removes it.
    public subscript(id: ObjectID) -> VersionDigest? {
        get {
            let (slot, found) = find(id)
            return found ? entries[slot].state : nil
        }
        set {
            update(id) { $0 = newValue }
        }
    }

    /// Calls `body` with the state of `id` (`nil`: absent) and stores what it leaves there
    /// (`nil`: removed), with one lookup. Nothing changes if `body` throws.
    public mutating func update<E: Error>(_ id: ObjectID, _ body: (inout VersionDigest?) throws(E) -> Void) throws(E) {
        var (slot, found) = find(id)
        var state: VersionDigest? = found ? entries[slot].state : nil
        try body(&state)
        switch (found, state) {
        case (true, let state?):
            entries[slot].state = state
        case (true, nil):
            remove(at: slot)
        case (false, let state?):
            if count + 1 > capacity {
                grow()
                slot = find(id).slot
            }
            control[slot] = tag(hash(id))
            entries[slot] = Entry(id: id, state: state)
            count += 1
        case (false, nil):
            break
        }
    }

    /// Empties `slot` and moves back the entries after it that belong before it.
    mutating func remove(at slot: Int) {
        var hole = slot
        var i = (slot + 1) & mask
        while control[i] != 0 {
            let home = Int(truncatingIfNeeded: hash(entries[i].id) >> shift)
            // The entry at i may fill the hole if its home is not in (hole, i] (cyclically).
            let fromHole = (i - hole) & mask
            let fromHome = (i - home) & mask
            if fromHome >= fromHole {
                control[hole] = control[i]
                entries[hole] = entries[i]
                hole = i
            }
            i = (i + 1) & mask
        }
        control[hole] = 0
        count -= 1
    }

    /// Doubles the slots and places every entry again.
    mutating func grow() {
        // The capacity of twice the slots: 3/4 of them.
        reserveCapacity(control.count / 2 * 3)
    }

    /// Room for `minimumCapacity` entries without growing.
    public mutating func reserveCapacity(_ minimumCapacity: Int) {
        guard minimumCapacity > capacity else { return }
        var bigger = LiveTable(minimumCapacity: minimumCapacity, seed: seed)
        for (slot, tag) in control.enumerated() where tag != 0 {
            let e = entries[slot]
            let (to, _) = bigger.find(e.id)
            bigger.control[to] = bigger.tag(bigger.hash(e.id))
            bigger.entries[to] = e
        }
        bigger.count = count
        self = bigger
    }

    /// The same entries (slots and seeds may differ).
    public static func == (a: LiveTable, b: LiveTable) -> Bool {
        guard a.count == b.count else { return false }
        for (id, state) in a where b[id] != state { return false }
        return true
    }

    /// The entries in slot order (no particular order of ids).
    public struct Iterator: IteratorProtocol {
        let table: LiveTable
        var slot = 0

        /// The next entry.
        public mutating func next() -> (key: ObjectID, value: VersionDigest)? {
            while slot < table.control.count {
                defer { slot += 1 }
                if table.control[slot] != 0 {
                    let e = table.entries[slot]
                    return (e.id, e.state)
                }
            }
            return nil
        }
    }

    /// Iterates the entries.
    public func makeIterator() -> Iterator { Iterator(table: self) }

    /// The number of entries, for `Sequence` algorithms.
    public var underestimatedCount: Int { count }
}
