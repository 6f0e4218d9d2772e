import SomaCore
import SomaDevnet
import Testing

@Suite("LiveTable: the live set's hash table against Dictionary")
struct LiveTableTests {
    /// An id whose first 8 bytes are `head` (the only bytes the table hashes) and the rest `tail`.
    func id(head: UInt64, tail: UInt64) -> ObjectID {
        var bytes: [UInt8] = []
        for v in [head, tail, tail &* 3, tail &* 7] { for k in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> (56 - 8 * k))) } }
        return ObjectID(bytes: bytes)!
    }

    func state(_ v: UInt64) -> VersionDigest { VersionDigest(version: v, digest: id(head: v, tail: ~v)) }

    func expectSame(_ table: LiveTable, _ reference: [ObjectID: VersionDigest], _ note: Comment) {
        #expect(table.count == reference.count, note)
        var seen = 0
        for (k, v) in table {
            #expect(reference[k] == v, note)
            seen += 1
        }
        #expect(seen == reference.count, note)
        for (k, v) in reference where table[k] != v { Issue.record("\(k.short): \(table[k].map { "v\($0.version)" } ?? "absent"), expected v\(v.version); \(note)") }
    }

    @Test("random inserts, updates and removals (with growth from 16 slots) leave the same entries as a Dictionary; ids that share their first 8 bytes collide on purpose")
    func randomOperations() {
        for (seed, heads, steps) in [(UInt64(1), UInt64.max, 40_000), (2, 64, 20_000), (3, 3, 3_000)] {
            // heads: how many distinct first-8-byte values ids draw from (few: long probe runs).
            var rng = DeterministicRandom(seed: seed)
            var table = LiveTable(seed: seed &* 0x9E37_79B9)
            var reference: [ObjectID: VersionDigest] = [:]
            var ids: [ObjectID] = []
            for step in 0..<steps {
                let r = rng.next()
                let pick: ObjectID
                if ids.isEmpty || r % 3 == 0 {
                    pick = id(head: heads == .max ? rng.next() : rng.next() % heads, tail: rng.next())
                    ids.append(pick)
                } else {
                    pick = ids[Int(rng.next() % UInt64(ids.count))]
                }
                switch r % 7 {
                case 0, 1:
                    table[pick] = nil
                    reference[pick] = nil
                case 2:
                    // update: nothing changes when the body throws.
                    struct Refused: Error {}
                    #expect(throws: Refused.self) { try table.update(pick) { s throws(Refused) in s = nil; throw Refused() } }
                    #expect(table[pick] == reference[pick])
                default:
                    let s = state(UInt64(step))
                    table.update(pick) { $0 = s }
                    reference[pick] = s
                }
                if step % 1_000 == 0 { expectSame(table, reference, "seed \(seed), step \(step)") }
            }
            expectSame(table, reference, "seed \(seed), at the end")
            // Emptied in random order: every removal keeps the rest findable.
            for (k, i) in ids.enumerated() where k % 2 == 0 {
                table[i] = nil
                reference[i] = nil
            }
            expectSame(table, reference, "seed \(seed), half removed")
            for i in ids {
                table[i] = nil
                reference[i] = nil
            }
            #expect(table.isEmpty && table.count == 0)
        }
    }

    @Test("ids whose home is the last slot wrap to the first slots, and removing one shifts the others back across the end")
    func wrapAround() {
        // The table's hash is (first 8 bytes ^ seed) * C; the inverse of C (odd) modulo 2^64
        // gives first bytes whose hash lands where wanted.
        let c: UInt64 = 0x9E37_79B9_7F4A_7C15
        var inverse = c
        for _ in 0..<6 { inverse = inverse &* (2 &- c &* inverse) }
        #expect(c &* inverse == 1)
        let seed: UInt64 = 0x1234_5678
        var table = LiveTable(seed: seed)  // 16 slots: the home slot is the hash's top 4 bits
        var reference: [ObjectID: VersionDigest] = [:]
        // Five ids at home in slot 15 (top bits all ones), then one at home in slot 0.
        var ids = (0..<5).map { k in id(head: ((0xFFFF_FFFF_0000_0000 | UInt64(k)) &* inverse) ^ seed, tail: UInt64(k)) }
        ids.append(id(head: (UInt64(7) &* inverse) ^ seed, tail: 99))
        for (k, i) in ids.enumerated() {
            table[i] = state(UInt64(k))
            reference[i] = state(UInt64(k))
        }
        #expect(table.capacity == 12, "still 16 slots")
        expectSame(table, reference, "filled across the end")
        for victim in [ids[0], ids[2], ids[5], ids[1]] {
            table[victim] = nil
            reference[victim] = nil
            expectSame(table, reference, "after removing \(victim.short)")
        }
    }

    @Test("a table of hundreds of thousands of entries (its entries advised onto huge pages) holds them all, and half removed")
    func large() {
        let n = 800_000
        var table = LiveTable(minimumCapacity: n, seed: 5)
        #expect(table.capacity >= n)
        var rng = DeterministicRandom(seed: 11)
        var ids: [ObjectID] = []
        ids.reserveCapacity(n)
        for v in 0..<n {
            let k = id(head: rng.next(), tail: UInt64(v))
            ids.append(k)
            table[k] = state(UInt64(v))
        }
        #expect(table.count == n)
        var wrong = 0
        for (v, k) in ids.enumerated() where table[k]?.version != UInt64(v) { wrong += 1 }
        #expect(wrong == 0)
        for k in ids[..<(n / 2)] { table[k] = nil }
        wrong = 0
        for (v, k) in ids.enumerated() where table[k]?.version != (v < n / 2 ? nil : UInt64(v)) { wrong += 1 }
        #expect(wrong == 0 && table.count == n - n / 2)
    }

    @Test("growth doubles the slots: capacity 12, 24, 48 as entries are added")
    func growthDoubles() {
        var table = LiveTable(seed: 1)
        var seen: [Int] = [table.capacity]
        var rng = DeterministicRandom(seed: 3)
        for v in 0..<40 {
            table[id(head: rng.next(), tail: UInt64(v))] = state(UInt64(v))
            if table.capacity != seen.last { seen.append(table.capacity) }
        }
        #expect(seen == [12, 24, 48])
    }

    @Test("a table sized ahead does not grow; equality ignores slots and seeds; a Dictionary converts")
    func capacityAndEquality() {
        var a = LiveTable(minimumCapacity: 10_000)
        let capacity = a.capacity
        #expect(capacity >= 10_000)
        var rng = DeterministicRandom(seed: 9)
        var reference: [ObjectID: VersionDigest] = [:]
        for v in 0..<10_000 {
            let k = id(head: rng.next(), tail: rng.next())
            a[k] = state(UInt64(v))
            reference[k] = state(UInt64(v))
        }
        #expect(a.capacity == capacity, "no growth up to the capacity asked for")
        let b = LiveTable(reference)
        #expect(a == b)
        var c = b
        c[reference.first!.key] = state(99_999)
        #expect(c != b, "one state differs")
        var d = b
        d[id(head: 1, tail: 1)] = state(1)
        #expect(d != b, "one entry more")
        #expect(b == LiveTable(reference), "the copy was not changed by c and d")
        var e = LiveTable()
        e.reserveCapacity(50_000)
        #expect(e.capacity >= 50_000 && e.isEmpty)
    }
}
