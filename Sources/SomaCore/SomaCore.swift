/// SomaCore: the Soma chain's types, the canonical BCS codec, digests, Ed25519 keys,
/// committees and quorum certificates, RFC 9162 Merkle trees and proofs, and the pure
/// verification rules that decide what soma-node trusts. It does no I/O.
public enum SomaCore {
    /// The protocol version this build speaks.
    public static let protocolVersion: UInt64 = 1
}
