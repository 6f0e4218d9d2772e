import ArgumentParser
import CJemalloc
import Crypto
import Foundation
import SomaStore
import SomaCore
import SomaDevnet

/// `soma-bench`: measured figures for soma-node, each with a baseline measured in the same run.
@main
struct SomaBench: AsyncParsableCommand {
    static func main() async {
        // jemalloc is linked in and serves every allocation (Package.swift: CJemalloc); glibc's
        // arena cap matters only where it does not.
        if soma_jemalloc_serves_malloc() == 0 { MemoryTuning.limitMallocArenas() }
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }

    static let configuration = CommandConfiguration(
        commandName: "soma-bench",
        abstract: "Benchmarks of soma-node (release builds only give meaningful figures).",
        subcommands: [Core.self, Store.self, Serve.self, SyncBench.self, SnapshotBench.self, ApiBench.self, GossipBench.self, ArchiveBench.self, ExportChain.self])
}

/// Wall-clock seconds of `body`.
func seconds(_ body: () throws -> Void) rethrows -> Double {
    let start = ContinuousClock.now
    try body()
    let d = ContinuousClock.now - start
    return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
}

/// Wall-clock seconds of an async `body`.
func seconds(_ body: () async throws -> Void) async rethrows -> Double {
    let start = ContinuousClock.now
    try await body()
    let d = ContinuousClock.now - start
    return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
}

/// The best of `runs` timings.
func best(_ runs: Int, _ body: () throws -> Void) rethrows -> Double {
    var b = Double.infinity
    for _ in 0..<runs { b = min(b, try seconds(body)) }
    return b
}

func fmt(_ v: Double, _ digits: Int = 1) -> String { String(format: "%.\(digits)f", v) }

func line(_ name: String, _ value: String, _ note: String = "") {
    let padded = name.padding(toLength: 46, withPad: " ", startingAt: 0)
    print("  \(padded) \(value)\(note.isEmpty ? "" : "   (\(note))")")
}

/// Peak resident set size of this process, from /proc (0 where unavailable).
func peakRSSMiB() -> Double {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for l in status.split(separator: "\n") where l.hasPrefix("VmHWM:") {
        let kb = l.split(separator: " ").compactMap { Double($0) }.first ?? 0
        return kb / 1024
    }
    return 0
}

struct Core: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "SomaCore: Merkle roots vs raw SHA-256, BCS encode/decode, certificate verification, chain generation.")

    @Option(help: "Leaves in the Merkle benchmark.")
    var leaves = 1_000_000

    @Option(help: "Checkpoints of the bench profile used for the BCS benchmark.")
    var codecCheckpoints = 300

    @Option(help: "Checkpoints of the bench profile to generate (default: the whole profile).")
    var generate = DevnetProfile.bench.checkpoints

    @Option(help: "Parallel tasks for parallel stages (default: the number of cores).")
    var parallelism = ProcessInfo.processInfo.activeProcessorCount

    mutating func run() async throws {
        print("soma-bench core: \(ProcessInfo.processInfo.activeProcessorCount) cores, parallelism \(parallelism)")
        try await merkle()
        try await codec()
        try await verification()
        try certificates()
        try await generation()
        print("  peak RSS: \(fmt(peakRSSMiB(), 0)) MiB")
    }

    func merkle() async throws {
        print("\nMerkle root over \(leaves) leaves of 72 bytes (RFC 9162, SHA-256)")
        var rng = DeterministicRandom(seed: 42)
        let packed = rng.bytes(leaves * 72)
        let mb = Double(packed.count) / 1e6
        var sink = Digest.zero
        // Baselines: the same SHA-256 (libcrypto, SHA-NI) over the same bytes, as one stream and
        // as one hash per 72-byte leaf.
        let raw = best(3) {
            sink = packed.withUnsafeBytes { buf in
                var h = SHA256Hasher()
                h.update(buf)
                return h.finalize()
            }
        }
        let perLeaf = best(3) {
            packed.withUnsafeBytes { buf in
                for i in 0..<leaves {
                    var h = SHA256Hasher()
                    h.update(UnsafeRawBufferPointer(rebasing: buf[(i * 72)..<((i + 1) * 72)]))
                    let d = h.finalize()
                    if i == 0 { sink = d }
                }
            }
        }
        var swiftCryptoSink = 0
        let swiftCryptoPerLeaf = best(3) {
            packed.withUnsafeBytes { buf in
                for i in 0..<leaves {
                    let d = SHA256.hash(data: UnsafeRawBufferPointer(rebasing: buf[(i * 72)..<((i + 1) * 72)]))
                    swiftCryptoSink &+= Int(d.withUnsafeBytes { $0[0] })
                }
            }
        }
        var root = Digest.zero
        let single = best(3) { root = Merkle.root(packedLeaves: packed, leafSize: 72) }
        var parallelRoot = Digest.zero
        var parallel = Double.infinity
        for _ in 0..<3 {
            let p = parallelism
            parallel = min(parallel, await seconds { parallelRoot = await Merkle.parallelRoot(packedLeaves: packed, leafSize: 72, parallelism: p) })
        }
        guard root == parallelRoot else { throw ValidationError("parallel root differs from the single-threaded root") }
        _ = sink
        let n = Double(leaves)
        line("raw SHA-256, one stream (baseline)", "\(fmt(mb / raw)) MB/s", "\(fmt(n / raw / 1e6, 2)) M leaves-worth/s")
        line("raw SHA-256, one hash per leaf (baseline)", "\(fmt(n / perLeaf / 1e6, 2)) M leaves/s")
        line("  same through swift-crypto (for reference)", "\(fmt(n / swiftCryptoPerLeaf / 1e6, 2)) M leaves/s", "sink \(swiftCryptoSink & 1)")
        line("Merkle root, 1 core", "\(fmt(n / single / 1e6, 2)) M leaves/s", "\(fmt(single * 1000, 0)) ms")
        line("Merkle root, \(parallelism) tasks", "\(fmt(n / parallel / 1e6, 2)) M leaves/s", "\(fmt(parallel * 1000, 0)) ms")
        line("ratio parallel / raw one-stream SHA-256", fmt(raw / parallel, 2), "goal >= 0.9")
        line("ratio parallel / raw per-leaf SHA-256", fmt(perLeaf / parallel, 2))
        line("ratio 1 core / raw one-stream SHA-256", fmt(raw / single, 2))
        line("ratio 1 core / raw per-leaf SHA-256", fmt(perLeaf / single, 2))
        print("  (a Merkle root hashes 4 SHA-256 blocks a leaf: 2 for H(0x00 || leaf), 2 for its share of")
        print("   H(0x01 || l || r); one stream over the leaves hashes 72/64 = 1.125 blocks a leaf)")
    }

    func codec() async throws {
        print("\nBCS of the bench profile's checkpoint data (\(codecCheckpoints) checkpoints, 1 core)")
        let generator = ChainGenerator(profile: .bench, seed: 1)
        var checkpoints: [CheckpointData] = []
        while checkpoints.count < codecCheckpoints && !generator.isFinished {
            checkpoints += await generator.next(count: min(100, codecCheckpoints - checkpoints.count), parallelism: parallelism).map(\.data)
        }
        var encoded: [[UInt8]] = []
        let encode = best(3) { encoded = checkpoints.map { BCS.encode($0, capacity: 262_144) } }
        let bytes = Double(encoded.reduce(0) { $0 + $1.count })
        var decoded: [CheckpointData] = []
        let decode = try best(3) { decoded = try encoded.map { try CheckpointData(bcsBytes: $0) } }
        guard decoded == checkpoints else { throw ValidationError("decoded data differs") }
        var leafTime = Double.infinity
        for _ in 0..<3 {
            leafTime = min(leafTime, try seconds {
                for (cp, data) in zip(checkpoints, decoded) where BlockVerifier.contentDigest(of: data.entries) == .zero {
                    throw ValidationError("zero root at \(cp.sequenceNumber)")
                }
            })
        }
        line("checkpoint data", "\(fmt(bytes / 1e6)) MB", "\(fmt(bytes / Double(checkpoints.count) / 1024)) KiB a checkpoint")
        line("encode", "\(fmt(bytes / encode / 1e6)) MB/s")
        line("decode (strict)", "\(fmt(bytes / decode / 1e6)) MB/s", "goal >= 400")
        line("content digest (leaves + Merkle root)", "\(fmt(bytes / leafTime / 1e6)) MB/s")
    }

    /// The cost of verifying blocks on their own (DESIGN §5.3) against the work it cannot avoid:
    /// LZ4 decompression, strict decoding, the content digest (every leaf, the Merkle root) and
    /// every output object's digest, each measured alone on the same blocks.
    func verification() async throws {
        print("\nBlock verification of the bench profile's checkpoints (\(codecCheckpoints) checkpoints, 1 core)")
        let generator = ChainGenerator(profile: .bench, seed: 1)
        var checkpoints: [GeneratedCheckpoint] = []
        while checkpoints.count < codecCheckpoints && !generator.isFinished {
            checkpoints += await generator.next(count: min(100, codecCheckpoints - checkpoints.count), parallelism: parallelism)
        }
        let built = try checkpoints.map { try CheckpointVerifier.verify(contents: $0.data, of: $0.certified, previousTotal: $0.previousTotal) }
        let frames = built.flatMap(\.frames)
        let raw = Double(built.reduce(0) { $0 + $1.rawBytes })
        let mb = raw / 1e6
        let limit = 256 << 20
        var plain: [[UInt8]] = []
        let decompress = try best(3) { plain = try frames.map { try LZ4Frame.decompress($0, limit: limit) } }
        var parts: [CheckpointData] = []
        let decode = try best(3) { parts = try plain.map { try CheckpointData(bcsBytes: $0) } }
        let digest = try best(3) {
            for part in parts where BlockVerifier.contentDigest(of: part.entries) == .zero { throw ValidationError("zero root") }
        }
        var objects = 0
        let objectDigests = best(3) {
            objects = 0
            for part in parts {
                for entry in part.entries {
                    for object in entry.outputObjects where object.digest != .zero { objects += 1 }
                }
            }
        }
        let stream = best(3) {
            var h = SHA256Hasher()
            for p in plain { p.withUnsafeBytes { h.update($0) } }
            _ = h.finalize()
        }
        var verified = 0
        let verify = try best(3) {
            verified = 0
            for (cp, v) in zip(checkpoints, built) {
                let again = try CheckpointVerifier.verify(blocks: v.frames, proofs: v.proofs, of: cp.certified, previousTotal: cp.previousTotal, limit: limit)
                verified += again.data.entries.count
            }
        }
        let floor = decompress + decode + digest + objectDigests
        line("raw checkpoint data", "\(fmt(mb)) MB", "\(frames.count) blocks, \(verified) entries, \(objects) output objects")
        line("LZ4 decompression", "\(fmt(mb / decompress)) MB/s", "\(fmt(decompress / mb * 1e3, 2)) ms/MB")
        line("strict decoding", "\(fmt(mb / decode)) MB/s", "\(fmt(decode / mb * 1e3, 2)) ms/MB")
        line("content digest (leaves + root)", "\(fmt(mb / digest)) MB/s", "\(fmt(digest / mb * 1e3, 2)) ms/MB")
        line("output object digests", "\(fmt(mb / objectDigests)) MB/s", "\(fmt(objectDigests / mb * 1e3, 2)) ms/MB")
        line("sum of the four (the floor)", "\(fmt(mb / floor)) MB/s", "\(fmt(floor / mb * 1e3, 2)) ms/MB")
        line("raw SHA-256, one stream (reference)", "\(fmt(mb / stream)) MB/s", "\(fmt(stream / mb * 1e3, 2)) ms/MB")
        line("CheckpointVerifier.verify(blocks:)", "\(fmt(mb / verify)) MB/s", "\(fmt(verify / mb * 1e3, 2)) ms/MB")
        line("ratio verify / floor", fmt(verify / floor, 2), "goal <= 1.10")
    }

    func certificates() throws {
        print("\nQuorum certificate verification, 100 validators")
        let generator = ChainGenerator(profile: .bench, seed: 1)
        let genesis = generator.genesis
        let message = genesis.checkpoint.summary.signingMessage
        let cert = genesis.checkpoint.certificate
        let signers = cert.signatures.count
        let runs = 40
        let t = try best(2) { for _ in 0..<runs { try cert.verify(message, committee: genesis.committee) } }
        line("certificates verified, 1 core", "\(fmt(Double(runs) / t)) /s", "\(signers) signatures each")
        line("Ed25519 verifications", "\(fmt(Double(runs * signers) / t, 0)) /s")
    }

    func generation() async throws {
        let profile = DevnetProfile.bench
        print("\nGeneration of the bench profile (\(generate) of \(profile.checkpoints) checkpoints, \(parallelism) tasks)")
        let generator = ChainGenerator(profile: profile, seed: 1)
        var checkpoints = 0
        var transactions = 0
        var bytes = 0
        let p = parallelism
        let total = generate
        let t = await seconds {
            while !generator.isFinished && checkpoints < total {
                let batch = await generator.next(count: min(100, total - checkpoints), parallelism: p)
                checkpoints += batch.count
                for cp in batch {
                    transactions += cp.data.entries.count
                    bytes += BCS.encode(cp.data, capacity: 262_144).count
                }
            }
        }
        line("checkpoints", "\(fmt(Double(checkpoints) / t)) /s", "\(checkpoints) in \(fmt(t)) s")
        line("transactions", "\(fmt(Double(transactions) / t, 0)) /s")
        line("raw checkpoint data", "\(fmt(Double(bytes) / t / 1e6)) MB/s", "\(fmt(Double(bytes) / 1e6)) MB in all")
        line("live objects at the end", "\(generator.liveObjectCount)", generator.isFinished ? "last epoch end" : "partial chain")
        if let last = generator.endOfEpochSummaries.last?.summary.endOfEpoch {
            line("live objects at the last epoch end", "\(last.liveObjectCount)")
        }
    }
}
