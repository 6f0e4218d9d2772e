import SomaCore
import SomaDevnet
import Testing

/// Asserts that `body` throws a CoreError whose code is one of `codes`.
func expectCodes(_ codes: Set<CoreError.Code>, _ comment: String = "", sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("expected one of \(codes.map(\.rawValue).sorted()), nothing was thrown. \(comment)", sourceLocation: sourceLocation)
    } catch let error as CoreError {
        #expect(codes.contains(error.code), "\(comment): got \(error)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected CoreError, got \(error). \(comment)", sourceLocation: sourceLocation)
    }
}

/// A generated chain, kept whole (small profiles only).
struct Chain {
    let generator: ChainGenerator
    let genesis: Genesis
    let checkpoints: [GeneratedCheckpoint]
    let committees: [Committee]

    /// Checkpoint 0 and the rest, in order.
    var all: [GeneratedCheckpoint] {
        [GeneratedCheckpoint(certified: genesis.checkpoint, data: genesis.contents)] + checkpoints
    }

    static func make(_ profile: DevnetProfile, seed: UInt64 = 7) async -> Chain {
        let g = ChainGenerator(profile: profile, seed: seed)
        let cps = await g.generateAll(parallelism: 2)
        return Chain(generator: g, genesis: g.genesis, checkpoints: cps, committees: g.committees)
    }

    func committee(_ epoch: UInt64) -> Committee? {
        epoch < committees.count ? committees[Int(epoch)] : nil
    }
}

/// Flips one bit of byte `i`.
func flipped(_ bytes: [UInt8], at i: Int, mask: UInt8 = 0x01) -> [UInt8] {
    var b = bytes
    b[i] ^= mask
    return b
}

/// The CoreError `body` throws, or `nil` if it succeeds (any other error fails the test).
func failure(_ body: () throws -> Void) -> CoreError? {
    do {
        try body()
        return nil
    } catch let error as CoreError {
        return error
    } catch {
        Issue.record("unexpected error \(error)")
        return nil
    }
}
