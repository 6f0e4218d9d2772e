import Foundation
import SomaArchive
import SomaCore
import SomaNet
import SomaStore
import SomaSync
import SomaTestSupport
import Testing

@Suite("Archives as sources of the sync scheduler", .serialized)
struct ArchiveSourceTests {
    @Test("an archive as a sync source: its manifest's range and snapshots, epoch ends, summaries and blocks across a segment boundary; a fresh store caught up by the scheduler from it alone; a snapshot restored from it")
    func source() async throws {
        try await ArchiveTests.withStore("archive-source") { store, genesis, chain, dir in
            let backend = try FolderBackend(root: dir.file("archive"))
            let manifest = try await ArchiveExport.run(store: store, to: backend, key: SigningKey.generate()).manifest
            let source = ArchiveSource(reader: ArchiveReader(backend: backend), chainID: genesis.chainID)
            let a = try await source.availability()
            #expect(a.lowestAvailable == manifest.ranges[0].first && a.highestSynced == manifest.ranges.last!.last)
            #expect(a.snapshotEpochs == (try await store.snapshotEpochs()) && !a.snapshotEpochs.isEmpty)
            // The epoch chain: the store's epoch ends, verified from the genesis committee.
            let ends = try await source.epochEndings(from: 0)
            #expect(ends.count == manifest.epochEnds.count && ends.count >= 3)
            #expect(try ChainVerifier.verifyEpochChain(genesis: genesis.committee, endOfEpochSummaries: ends).count == ends.count + 1)
            #expect(try await source.epochEndings(from: UInt64(ends.count)).isEmpty)
            // Summaries and blocks of a run across the first segment's end, as the store serves them.
            let boundary = manifest.ranges[0].last
            let summaries = try await source.summaries(from: boundary - 2, count: 5, allCertificates: true)
            #expect(summaries.summaries.map(\.sequenceNumber) == Array((boundary - 2)...(boundary + 2)))
            #expect(summaries.certificates.allSatisfy { $0 != nil })
            let items = try await source.blocks(from: boundary - 1, count: 3, timeout: nil)
            var seqs: [UInt64] = []
            for item in items where item.part == 0 { seqs.append(item.seq) }
            #expect(seqs == [boundary - 1, boundary, boundary + 1])
            for item in items {
                let stored = try #require(try await store.block(at: item.seq, part: item.part))
                #expect(stored.frame == item.block.frame && stored.parts == item.block.count)
            }
            // What it does not hold.
            await #expect(throws: RPCError.self) { _ = try await source.blocks(from: a.highestSynced + 1, count: 1, timeout: nil) }
            await #expect(throws: RPCError.self) { _ = try await source.snapshotManifest(epoch: 999) }

            // A fresh store from the archive alone, through the scheduler the peers use.
            let fresh = try await NodeStore.open(path: dir.file("fresh"))
            do {
                let pool = SourcePool(clients: [source], labels: ["archive"])
                let report = try await PeerSync(store: fresh, genesis: genesis, pool: pool).catchUp()
                #expect(report.tip == a.highestSynced && report.sources[0].checkpoints == report.checkpoints)
                #expect(report.sources[0].peerID == nil && report.sources[0].source == .archive(dir.file("archive")))
                let last = chain.last { $0.verified.certified.summary.sequenceNumber == report.tip }
                #expect(try await fresh.summary(at: report.tip) == last?.verified.certified)
            } catch {
                await fresh.close()
                throw error
            }
            await fresh.close()

            // A snapshot restored from it (a pruned store), checked against the certified root.
            var pruned = StoreConfiguration()
            pruned.mode = .pruned
            let restored = try await NodeStore.open(path: dir.file("restored"), configuration: pruned)
            do {
                let restore = SnapshotRestore(store: restored, genesis: genesis, pool: SourcePool(clients: [source], labels: ["archive"]))
                let report = try #require(try await restore.restore(.latest))
                #expect(report.epoch == a.snapshotEpochs.last && report.chunks > 0)
                #expect(report.stateRoot == ends[Int(report.epoch)].summary.endOfEpoch?.stateRoot)
            } catch {
                await restored.close()
                throw error
            }
            await restored.close()

            // archive verify's snapshot pass: every chunk against the certified roots; a flipped
            // byte in a chunks file is named.
            let reader = ArchiveReader(backend: backend)
            let verified = try await reader.verifySnapshots(manifest, genesis: genesis)
            #expect(verified.map(\.epoch) == manifest.snapshots.map(\.epoch))
            let chunks = try #require(manifest.snapshots.last).data.name
            var bytes = try #require(FileManager.default.contents(atPath: dir.file("archive/\(chunks)")))
            bytes[bytes.count / 2] ^= 0x01
            try bytes.write(to: URL(fileURLWithPath: dir.file("archive/\(chunks)")))
            await #expect { _ = try await reader.verifySnapshots(manifest, genesis: genesis) } throws: { "\($0)".contains(chunks) }
        }
    }

    @Test("a corrupt archive (a byte flipped in every segment) raced against an intact copy: set aside with the reason after its first bad answer; the sync finishes from the other; a missing summaries file likewise")
    func corruptSetAside() async throws {
        try await ArchiveTests.withStore("archive-corrupt-source") { store, genesis, _, dir in
            let key = SigningKey.generate()
            let goodBackend = try FolderBackend(root: dir.file("good"))
            let badBackend = try FolderBackend(root: dir.file("bad"))
            let manifest = try await ArchiveExport.run(store: store, to: goodBackend, key: key).manifest
            _ = try await ArchiveExport.run(store: store, to: badBackend, key: key)
            for range in manifest.ranges {
                let path = dir.file("bad/\(range.data.name)")
                var seg = try #require(FileManager.default.contents(atPath: path))
                for k in stride(from: 64, to: seg.count, by: 4_096) { seg[k] ^= 0x10 }
                try seg.write(to: URL(fileURLWithPath: path))
            }
            for (name, damage) in [("corrupt", { () async throws in }), ("missing", { try await badBackend.remove(manifest.ranges[0].summaries.name) })] {
                try await damage()
                let fresh = try await NodeStore.open(path: dir.file("fresh-\(name)"))
                do {
                    let bad = ArchiveSource(reader: ArchiveReader(backend: badBackend), chainID: genesis.chainID)
                    let good = ArchiveSource(reader: ArchiveReader(backend: goodBackend), chainID: genesis.chainID)
                    let pool = SourcePool(clients: [bad, good], labels: ["bad", "good"])
                    let report = try await PeerSync(store: fresh, genesis: genesis, pool: pool).catchUp()
                    #expect(report.tip == manifest.ranges.last!.last)
                    #expect(report.sources[0].banReason != nil && report.sources[0].bannedForBadData, "\(report.sources)")
                    #expect(report.sources[1].banReason == nil && report.sources[1].checkpoints > 0)
                } catch {
                    await fresh.close()
                    throw error
                }
                await fresh.close()
            }
        }
    }
}
