import Dispatch
import Foundation
import SomaCore
import Synchronization

/// One fuzz target: a name, what it exercises, its seed inputs, and the check of one input.
///
/// `run` must return for every input; a trap, an ASan report or ``fail(_:)`` is a finding.
struct FuzzTarget: Sendable {
    /// The name given to `SOMA_FUZZ_TARGET` and `tools/fuzz`.
    let name: String
    /// One line for `--list` and docs/RELIABILITY.md.
    let summary: String
    /// The seed inputs `tools/fuzz --seeds` writes (the committed corpus).
    let seeds: @Sendable () -> [[UInt8]]
    /// Checks one input.
    let run: @Sendable ([UInt8]) -> Void
}

/// Reports a broken invariant and aborts, so libFuzzer records the input as a crash.
func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("soma-fuzz: invariant broken: \(message)\n".utf8))
    abort()
}

/// Reads fuzz input front to back; every read past the end yields zeros or nothing, never traps.
struct FuzzInput {
    private let bytes: [UInt8]
    private var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    /// Bytes not yet read.
    var remaining: Int { bytes.count - offset }

    mutating func u8() -> UInt8 {
        guard offset < bytes.count else { return 0 }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func u16() -> UInt16 { UInt16(u8()) | UInt16(u8()) << 8 }

    mutating func u32() -> UInt32 { UInt32(u16()) | UInt32(u16()) << 16 }

    mutating func u64() -> UInt64 { UInt64(u32()) | UInt64(u32()) << 32 }

    /// Up to `count` bytes.
    mutating func take(_ count: Int) -> [UInt8] {
        let n = min(max(count, 0), remaining)
        defer { offset += n }
        return Array(bytes[offset..<(offset + n)])
    }

    /// A digest from the next 32 bytes (zero-padded).
    mutating func digest() -> Digest {
        let raw = take(32)
        guard let d = Digest(bytes: raw + [UInt8](repeating: 0, count: 32 - raw.count)) else { fail("a 32-byte digest") }
        return d
    }

    /// `count` digests.
    mutating func digests(_ count: Int) -> [Digest] { (0..<count).map { _ in digest() } }

    /// Everything not yet read.
    mutating func rest() -> [UInt8] { take(remaining) }
}

/// Decodes `bytes` as `T`; when that succeeds, the encoding of the value must be `bytes` again
/// (BCS is canonical: one value, one encoding). Returns the value.
@discardableResult
func checkRoundTrip<T: BCSCodable>(_: T.Type, _ bytes: [UInt8]) -> T? {
    guard let value = try? T(bcsBytes: bytes) else { return nil }
    let again = value.bcsBytes
    if again != bytes {
        fail("\(T.self): decode then encode of \(bytes.count) bytes gives \(again.count) different bytes")
    }
    return value
}

/// The BCS encoding of a sequence of encodable values.
func encodedVector<T: BCSEncodable>(_ values: [T]) -> [UInt8] {
    var w = BCSWriter(capacity: 256)
    w.write(values)
    return w.bytes
}

/// Runs async work to completion from a synchronous caller (libFuzzer's callback).
func blockOn<T: Sendable>(_ body: @escaping @Sendable () async -> T) -> T {
    let box = Mutex<T?>(nil)
    let done = DispatchSemaphore(value: 0)
    Task {
        let value = await body()
        box.withLock { $0 = value }
        done.signal()
    }
    done.wait()
    guard let value = box.withLock({ $0 }) else { fail("async work finished without a value") }
    return value
}

/// Little-endian bytes of an integer (to build seeds).
func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.littleEndian) { Array($0) }
}
