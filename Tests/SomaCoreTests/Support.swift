import SomaCore
import Testing

/// Bytes of a hex string; fails the test on bad hex.
func hex(_ s: String) -> [UInt8] {
    guard let b = HexCoding.decode(s) else {
        Issue.record("bad hex in test: \(s)")
        return []
    }
    return b
}

/// A digest from hex; fails the test on bad hex.
func digest(_ s: String) -> Digest {
    guard let d = Digest(hex: s) else {
        Issue.record("bad digest in test: \(s)")
        return .zero
    }
    return d
}

/// Asserts that `body` throws a CoreError with `code`.
func expectCode(_ code: CoreError.Code, _ comment: Comment? = nil, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("expected \(code), nothing was thrown. \(comment.map { "\($0)" } ?? "")", sourceLocation: sourceLocation)
    } catch let error as CoreError {
        #expect(error.code == code, "\(comment.map { "\($0)" } ?? "") got \(error)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected CoreError \(code), got \(error)", sourceLocation: sourceLocation)
    }
}
