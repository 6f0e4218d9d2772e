public import SomaCore

/// The one error type of SomaStore: a ``Code`` and a message naming what and where.
public struct StoreError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong.
    public enum Code: String, Hashable, Sendable {
        /// RocksDB reported corruption (`Corruption:`).
        case corruption
        /// RocksDB reported an I/O error (`IO error:`).
        case ioError
        /// RocksDB rejected an argument or option (`Invalid argument:`).
        case invalidArgument
        /// RocksDB does not support the operation (`Not implemented:`).
        case notSupported
        /// RocksDB is busy or timed out (`Resource busy:`, `Operation timed out:`, `Operation aborted:`).
        case busy
        /// Any other RocksDB error.
        case engine
        /// The database is closed.
        case closed
        /// An LZ4 frame declares more bytes than the caller allows.
        case frameTooLarge
        /// An LZ4 frame is malformed, truncated, lacks its content size, or fails its checksum.
        case corruptFrame
        /// A stored value does not decode.
        case badValue
        /// The store contradicts itself (a watermark without its data, a gap).
        case inconsistent
        /// A checkpoint offered out of order, or data for an unknown checkpoint.
        case outOfOrder
        /// Execution failed a rule of DESIGN §5.4 (input mismatch, state root mismatch).
        case executionFailed
        /// Verification of stored data failed.
        case verificationFailed
    }

    /// What went wrong.
    public let code: Code
    /// Details: what and where.
    public let message: String

    /// Creates an error.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// Wraps a SomaCore error under `code`, keeping its message.
    public init(_ code: Code, _ error: CoreError, context: String = "") {
        self.code = code
        self.message = context.isEmpty ? error.description : "\(context): \(error.description)"
    }

    /// `code: message`.
    public var description: String { "\(code.rawValue): \(message)" }

    /// Classifies a RocksDB error message by its status prefix.
    static func rocks(_ message: String, operation: String) -> StoreError {
        let table: [(String, Code)] = [
            ("Corruption:", .corruption), ("IO error:", .ioError), ("Invalid argument:", .invalidArgument),
            ("Not implemented:", .notSupported), ("Resource busy:", .busy), ("Operation timed out:", .busy),
            ("Operation aborted:", .busy),
        ]
        let code = table.first { message.hasPrefix($0.0) }?.1 ?? .engine
        return StoreError(code, "\(operation): \(message)\(advice(for: message))")
    }

    /// What an operator can do about a RocksDB failure, when its message says (appended to it).
    static func advice(for message: String) -> String {
        if message.contains("No space left on device") {
            return ": the disk is full; free space on it or move the data directory to a larger disk, then start again (the store resumes from its watermarks)"
        }
        if message.contains("Permission denied") || message.contains("Read-only file system") {
            return ": this user cannot write the data directory; check its owner and permissions (or the mount)"
        }
        if message.hasPrefix("Corruption:") {
            return ": the store is damaged; `soma-node verify --data DIR` names the first fault"
        }
        return ""
    }
}
