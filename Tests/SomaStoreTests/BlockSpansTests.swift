@testable import SomaCore
import SomaDevnet
import SomaStore
import Testing

/// The verifier hashes the bytes it decoded each entry from instead of encoding the decoded
/// values again: the ranges it records must hold exactly those encodings.
@Suite("Block spans: where each entry's parts lie in a decoded block")
struct BlockSpansTests {
    @Test("every range holds the exact encoding of what was decoded from it; the decode equals the plain one, refuses what it refuses, and places objects where the search finds them")
    func spans() async throws {
        let generator = ChainGenerator(profile: .tiny, seed: 11)
        let checkpoints = await generator.generateAll(parallelism: 2).map(\.verified)
        var objects = 0
        for cp in checkpoints {
            for (part, frame) in cp.frames.enumerated() {
                let bytes = try LZ4Frame.decompress(frame, limit: 1 << 26)
                let (data, spans) = try CheckpointData.decodeRecordingSpans(bytes)
                #expect(data == (try CheckpointData(bcsBytes: bytes)))
                #expect(spans.entries.count == data.entries.count)
                var k = 0
                var encodings: [[UInt8]] = []
                for (entry, span) in zip(data.entries, spans.entries) {
                    #expect(Array(bytes[span.data]) == entry.transaction.data.bcsBytes)
                    var w = BCSWriter()
                    w.write(entry.transaction.signatures)
                    #expect(Array(bytes[span.signatures]) == w.bytes)
                    #expect(Array(bytes[span.effects]) == entry.effects.bcsBytes)
                    for object in entry.outputObjects {
                        #expect(Array(bytes[spans.objects[k]]) == object.bcsBytes)
                        encodings.append(object.bcsBytes)
                        k += 1
                    }
                }
                #expect(k == spans.objects.count)
                objects += k
                // The locations the verifier kept are where the decoder read each object, and
                // where a search for the encodings finds them.
                var searched: [ObjectLocation] = []
                try CheckpointVerifier.Collected.locate(encodings[...], in: bytes, part: part, checkpoint: 0, into: &searched)
                #expect(searched.map(\.offset) == spans.objects.map { UInt32($0.lowerBound) })
                // Whatever the plain decode refuses, this one refuses.
                #expect(throws: CoreError.self) { try CheckpointData.decodeRecordingSpans(bytes + [0]) }
                #expect(throws: CoreError.self) { try CheckpointData.decodeRecordingSpans(Array(bytes.dropLast())) }
            }
        }
        #expect(objects > 0)
    }

    @Test("a checkpoint verified from its blocks gives the same digests, locations and encodings as one verified from its contents")
    func blocksAndContents() async throws {
        let generator = ChainGenerator(profile: .tiny, seed: 12)
        for item in await generator.generateAll(parallelism: 2) {
            let built = item.verified
            let received = try CheckpointVerifier.verify(
                blocks: built.frames, proofs: built.proofs, of: built.certified, previousTotal: item.previousTotal
            ) { try LZ4Frame.decompress($0, limit: 1 << 26) }
            #expect(received.transactionDigests == built.transactionDigests)
            #expect(received.objectLocations == built.objectLocations)
            #expect(received.decompressedParts == built.decompressedParts)
            var k = 0
            received.forEachOutput { object, encoding, _ in
                #expect(Array(encoding) == object.bcsBytes)
                #expect(built.objectEncoding(k) == encoding)
                k += 1
            }
        }
    }
}
