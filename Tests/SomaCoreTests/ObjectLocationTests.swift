@testable import SomaCore
import Testing

/// The search that locates each verified object encoding in its decompressed block.
@Suite("Object locations in blocks")
struct ObjectLocationTests {
    typealias C = CheckpointVerifier.Collected

    @Test("find returns the first occurrence at or after the cursor, including at the very end, and nothing past the end")
    func find() {
        let hay: [UInt8] = [7, 7, 1, 7, 1, 2, 7, 1, 2, 3]
        #expect(C.find([7, 1, 2], in: hay, from: 0) == 3)
        #expect(C.find([7, 1, 2], in: hay, from: 4) == 6)
        #expect(C.find([1, 2, 3], in: hay, from: 0) == 7)
        #expect(C.find([2, 3], in: hay, from: 8) == 8)
        #expect(C.find([2, 3], in: hay, from: 9) == nil)
        #expect(C.find([3], in: hay, from: 10) == nil)
        #expect(C.find([9], in: hay, from: 0) == nil)
        #expect(C.find([], in: hay, from: 0) == nil)
        #expect(C.find(hay + [0], in: hay, from: 0) == nil)
        #expect(C.find([7], in: hay, from: -1) == nil)
        #expect(C.find([7], in: [], from: 0) == nil)
    }

    @Test("encodings are located in order, each after the one before; one missing from its block is rejected")
    func locate() throws {
        let block: [UInt8] = [0, 5, 6, 9, 5, 6, 8, 5, 6]
        var locations: [ObjectLocation] = []
        try C.locate([[5, 6], [5, 6], [5, 6]][...], in: block, part: 2, checkpoint: 1, into: &locations)
        #expect(locations == [ObjectLocation(part: 2, offset: 1), ObjectLocation(part: 2, offset: 4), ObjectLocation(part: 2, offset: 7)])
        var more: [ObjectLocation] = []
        #expect(throws: CoreError.self) { try C.locate([[5, 6], [0, 5]][...], in: block, part: 0, checkpoint: 1, into: &more) }
    }
}
