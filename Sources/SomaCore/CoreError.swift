/// The one error type of SomaCore: a machine-readable ``Code`` and a human-readable message.
///
/// Every rejection of bad input (a malformed encoding, a forged certificate, a wrong proof)
/// is a `CoreError`; callers `catch` by ``code``.
public struct CoreError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong, one case per distinct failure.
    public enum Code: String, Hashable, Sendable {
        // Codec.
        /// The input ended before the value did.
        case truncated
        /// Bytes remained after the value was decoded.
        case trailingBytes
        /// A ULEB128 integer was longer than its type allows or did not fit.
        case overlongULEB128
        /// A ULEB128 integer had a redundant trailing zero group.
        case nonCanonicalULEB128
        /// A declared length exceeds the bytes that remain (or the BCS maximum).
        case lengthTooLarge
        /// An enum tag not defined for the type.
        case unknownTag
        /// An Option tag other than 0 or 1.
        case invalidOptionTag
        /// A bool byte other than 0 or 1.
        case invalidBool
        /// A string that is not valid UTF-8.
        case invalidUTF8
        /// A value outside its type's domain (for example a wrong fixed length).
        case invalidValue
        // Keys and signatures.
        /// A public key that is not a valid Ed25519 point.
        case invalidPublicKey
        /// A signature that does not verify.
        case invalidSignature
        // Committees and certificates.
        /// A committee whose members are unsorted, duplicated, or whose power is not 10,000.
        case invalidCommittee
        /// A certificate for another epoch than the committee's.
        case wrongEpoch
        /// A signer bitmap of the wrong length or with bits beyond the committee.
        case bitmapOutOfRange
        /// The number of signatures differs from the number of signers in the bitmap.
        case signatureCountMismatch
        /// A signer counted twice.
        case duplicateSigner
        /// A signer that is not a member of the committee.
        case unknownSigner
        /// The signers' voting power is below the quorum.
        case insufficientVotingPower
        // Merkle.
        /// A Merkle proof that does not lead to the expected root.
        case invalidProof
        /// A proof request outside the tree (index or size out of range).
        case proofOutOfRange
        // Chain verification.
        /// Sequence numbers are not contiguous.
        case nonContiguous
        /// A summary's previous digest does not match its predecessor.
        case brokenHashChain
        /// An epoch change in the wrong place, or an epoch that does not follow.
        case invalidEpochTransition
        /// A required certificate is missing.
        case missingCertificate
        /// No committee is known for an epoch.
        case unknownCommittee
        /// A checkpoint's contents do not match the certified content digest.
        case contentMismatch
        /// An effects entry that does not belong to its transaction.
        case effectsMismatch
        /// A written output without its object, with a different object, or an extra object.
        case outputObjectMismatch
        /// An empty batch, or a batch that does not fit the request.
        case invalidBatch
        /// A snapshot manifest or chunk that disagrees with the certified state.
        case snapshotMismatch
    }

    /// What went wrong.
    public let code: Code
    /// Details for a human: what and where.
    public let message: String

    /// Creates an error with a code and a message.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// `code: message`.
    public var description: String { "\(code.rawValue): \(message)" }
}
