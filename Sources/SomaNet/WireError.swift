/// The one error type of SomaNet: a ``Code`` and a message.
public struct WireError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong.
    public enum Code: String, Hashable, Sendable {
        /// A frame declares more bytes than the limit (checked before anything is allocated).
        case frameTooLarge
        /// A frame is shorter than its header, or its kind or flags are unknown.
        case malformedFrame
        /// A payload does not decode.
        case badPayload
        /// The peer is on another chain.
        case wrongChain
        /// The peer speaks another protocol version.
        case wrongVersion
        /// The peer's proof of its key does not verify.
        case badProof
        /// The handshake did not complete in time, or came out of order.
        case handshakeFailed
        /// The connection closed before the answer came.
        case connectionClosed
        /// No answer within the request's timeout.
        case timedOut
        /// The TLS session could not be set up (no or a wrong certificate, the peer does not
        /// speak TLS 1.3, or speaks it where this node is configured for plaintext).
        case tlsFailed
        /// The peer is not the one dialled, or its hello names another key than its certificate.
        case wrongPeer
        /// A private node refused a peer that is not on its allow-list.
        case notAllowed
        /// An answer exceeded a bound of this client (a stream's items or bytes).
        case tooLarge
    }

    /// What went wrong.
    public let code: Code
    /// Details.
    public let message: String

    /// Creates an error.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// `code: message`.
    public var description: String { "\(code.rawValue): \(message)" }
}
