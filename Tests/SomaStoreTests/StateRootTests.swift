import Foundation
import SomaCore
import SomaDevnet
@testable import SomaStore
import SomaTestSupport
import Testing

/// The epoch-end state root is computed over ranges of the id space on several cores and
/// combined through chunk roots: it must equal the RFC 9162 root over the whole sorted set.
@Suite("State root: ranges on every core, combined through chunk roots")
struct StateRootTests {
    /// A random id; with `firstByte`, one that starts with it (the ranges' edges).
    static func id(_ rng: inout DeterministicRandom, firstByte: UInt8? = nil) -> ObjectID {
        var bytes = (0..<32).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        if let firstByte { bytes[0] = firstByte }
        return Digest(bytes: bytes)!
    }

    /// `size` random live entries; every `edgeEvery`-th id starts on an edge of the ranges
    /// (first bytes 0x00, 0x7f, 0x80, 0xff in turn).
    static func randomSet(_ size: Int, edgeEvery: Int, _ rng: inout DeterministicRandom) -> [ObjectID: VersionDigest] {
        var set: [ObjectID: VersionDigest] = [:]
        for i in 0..<size {
            let edge: UInt8? = i % edgeEvery == 0 ? [0x00, 0x7f, 0x80, 0xff][(i / edgeEvery) % 4] : nil
            set[Self.id(&rng, firstByte: edge)] = VersionDigest(version: rng.next() % 1_000, digest: Self.id(&rng))
        }
        return set
    }

    /// Makes `set` the store's whole `liveObjects`.
    static func storeLive(_ set: [ObjectID: VersionDigest], in store: NodeStore) throws {
        let live = store.database.columnFamily("liveObjects")!
        let batch = WriteBatch(for: store.database)
        try store.database.withIterator(live) { it in
            while it.isValid { batch.delete(live, it.withKey { Array($0) }); it.next() }
        }
        for (id, vd) in set { batch.put(live, id.bytes, StoreKeys.versionDigest(vd)) }
        try store.database.write(batch, sync: false)
    }

    static func expected(_ set: [ObjectID: VersionDigest]) -> Digest {
        Merkle.root(leafHashes: set.keys.sorted().map { ObjectRef(id: $0, version: set[$0]!.version, digest: set[$0]!.digest).leafHash })
    }

    @Test("stored set merged with an overlay of changes, creations and deletions, at every size around the chunk and range edges")
    func matchesWholeTree() async throws {
        let dir = TempDir("stateroot")
        defer { dir.cleanup() }
        let store = try await NodeStore.open(path: dir.path)
        var rng = DeterministicRandom(seed: 5)
        // Sizes: empty, one, around one chunk, several chunks unevenly split between ranges.
        for size in [0, 1, 2, NodeStore.stateRootChunk - 1, NodeStore.stateRootChunk, NodeStore.stateRootChunk + 1, 3 * NodeStore.stateRootChunk + 17] {
            let stored = Self.randomSet(size, edgeEvery: 50, &rng)
            try Self.storeLive(stored, in: store)
            // The overlay: a third of the stored ids changed or deleted, new ids created.
            var current = stored
            var touched: [ObjectID] = []
            for (n, id) in stored.keys.enumerated() where n % 3 == 0 {
                touched.append(id)
                current[id] = n % 2 == 0 ? VersionDigest(version: 5_000, digest: Self.id(&rng)) : nil
            }
            for n in 0..<(size / 4 + 2) {
                let id = Self.id(&rng, firstByte: n % 7 == 0 ? 0x80 : nil)
                touched.append(id)
                current[id] = VersionDigest(version: 1, digest: Self.id(&rng))
            }
            var overlay: [ObjectID: VersionDigest] = [:]
            for id in touched { overlay[id] = current[id] }
            let (root, count) = try store.stateRoot(overlay: LiveObjectSet(overlay), touched: touched)
            #expect(count == UInt64(current.count), "size \(size)")
            #expect(root == Self.expected(current), "size \(size)")
            let (plain, plainCount) = try store.stateRoot(overlay: LiveObjectSet(), touched: [])
            #expect(plainCount == UInt64(stored.count) && plain == Self.expected(stored), "size \(size), no overlay")
        }
        await store.close()
    }

    @Test("an epoch end over the cached live set merges the changes into the previous end's leaves and gives the whole tree's root; ids that share their first 8 bytes make the merge wrong and the exact pass answers instead")
    func leafIndexMerge() async throws {
        let dir = TempDir("leafindex")
        defer { dir.cleanup() }
        let store = try await NodeStore.open(path: dir.path)
        var rng = DeterministicRandom(seed: 11)
        let stored = Self.randomSet(2 * NodeStore.stateRootChunk + 333, edgeEvery: 40, &rng)
        try Self.storeLive(stored, in: store)
        // The previous epoch end's index, the exact way.
        let index = try store.stateRootLeaves(overlay: LiveObjectSet(), touched: [])
        #expect(try NodeStore.root(ofRanges: index.leaves).0 == Self.expected(stored))
        #expect(index.prefixes.map(\.count) == index.leaves.map(\.count))

        for collide in [false, true] {
            var current = stored
            var touched: [ObjectID] = []
            for (n, id) in stored.keys.sorted().enumerated() where n % 5 == 0 {
                // Some touched twice (the merge takes an id's state once).
                touched.append(id)
                if n % 3 == 0 { touched.append(id) }
                current[id] = n % 2 == 0 ? VersionDigest(version: 5_000, digest: Self.id(&rng)) : nil
            }
            for n in 0..<700 {
                let id = Self.id(&rng, firstByte: n % 9 == 0 ? 0x80 : (n % 11 == 0 ? 0xff : nil))
                touched.append(id)
                current[id] = VersionDigest(version: 1, digest: Self.id(&rng))
            }
            if collide {
                // A new id whose first 8 bytes are those of a live one it does not touch.
                let victim = stored.keys.sorted()[7]
                var bytes = victim.bytes
                bytes[31] ^= 0xff
                let twin = Digest(bytes: bytes)!
                touched.append(twin)
                current[twin] = VersionDigest(version: 1, digest: Self.id(&rng))
            }
            let expected = Self.expected(current)
            let merged = NodeStore.mergeLeaves(index, changed: touched.sorted(), set: LiveObjectSet(current))
            let (mergedRoot, mergedCount) = try NodeStore.root(ofRanges: merged.leaves)
            if collide {
                #expect(mergedRoot != expected, "the shared prefix hides the twin or its neighbour")
            } else {
                #expect(mergedRoot == expected && mergedCount == UInt64(current.count))
            }
            // The epoch end: fast when the merge gives the certified root, exact otherwise.
            var cache = LiveCache(set: LiveObjectSet(current), executed: nil)
            cache.leafIndex = index
            var changed = touched
            let (root, count) = try store.epochStateRoot(
                &cache, dirty: touched, changed: &changed, certified: (expected, UInt64(current.count)))
            #expect(root == expected && count == UInt64(current.count), "collide: \(collide)")
            #expect(changed.isEmpty)
            // The changes it resolved are the write-back's (the same stream of changes).
            let resolved = try #require(cache.resolvedDirty)
            #expect(resolved.ids == Array(Set(touched)).sorted())
            #expect(resolved.states == resolved.ids.map { current[$0] })
            if !collide {
                // A write-back since the last root: fewer dirty ids than changes. The merge
                // still gives the root; what it resolved is not the write-back's.
                var again = LiveCache(set: LiveObjectSet(current), executed: nil)
                again.leafIndex = index
                var all = touched
                _ = try store.epochStateRoot(&again, dirty: Array(touched.suffix(10)), changed: &all, certified: (expected, UInt64(current.count)))
                #expect(again.leafIndex != nil && again.resolvedDirty == nil)
            }
            let kept = try #require(cache.leafIndex, "the index that gave the certified root is kept")
            #expect(try NodeStore.root(ofRanges: kept.leaves).0 == expected)
            #expect(kept.prefixes.map(\.count) == kept.leaves.map(\.count))
        }
        // A root that is not the certified one (execution went wrong) keeps no index.
        var cache = LiveCache(set: LiveObjectSet(stored), executed: nil)
        cache.leafIndex = index
        var changed: [ObjectID] = []
        let (root, _) = try store.epochStateRoot(&cache, dirty: [], changed: &changed, certified: (Digest.zero, 1))
        #expect(root == Self.expected(stored) && cache.leafIndex == nil)
        await store.close()
    }
}
