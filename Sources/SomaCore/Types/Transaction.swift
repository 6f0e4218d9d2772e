/// The signed-over part of a transaction.
public struct TransactionData: Hashable, Sendable, BCSCodable, DomainDigestible {
    /// The sender's address.
    public var sender: Address
    /// The kind of transaction (opaque to the node).
    public var kind: UInt8
    /// The objects it reads or writes.
    public var inputs: [ObjectRef]
    /// The program or call (opaque to the node).
    public var payload: [UInt8]
    /// The gas budget.
    public var gasBudget: UInt64

    /// Creates transaction data.
    public init(sender: Address, kind: UInt8, inputs: [ObjectRef], payload: [UInt8], gasBudget: UInt64) {
        self.sender = sender
        self.kind = kind
        self.inputs = inputs
        self.payload = payload
        self.gasBudget = gasBudget
    }

    /// `"TransactionData::"`; the transaction digest is `digest(TransactionData)`.
    public static var domain: DomainPrefix { .transactionData }

    /// Writes the fields in order.
    public func encode(to writer: inout BCSWriter) {
        writer.write(sender)
        writer.write(kind)
        writer.write(inputs)
        writer.writeBytes(payload)
        writer.write(gasBudget)
    }

    /// Reads the fields in order.
    public init(from reader: inout BCSReader) throws(CoreError) {
        sender = try reader.readDigest()
        kind = try reader.readU8()
        inputs = try reader.readVector(ObjectRef.self, minElementSize: ObjectRef.encodedSize)
        payload = try reader.readBytes()
        gasBudget = try reader.readU64()
    }
}

/// A user's signature over the transaction data.
public struct UserSignature: Hashable, Sendable, BCSCodable {
    /// The signer's Ed25519 key.
    public var publicKey: PublicKey
    /// The signature over `bcs(TransactionData)` with the transaction intent.
    public var signature: Signature

    /// Creates a user signature.
    public init(publicKey: PublicKey, signature: Signature) {
        self.publicKey = publicKey
        self.signature = signature
    }

    /// The encoded size: 32 + 64 bytes.
    public static let encodedSize = 96

    /// Writes key, signature.
    public func encode(to writer: inout BCSWriter) {
        writer.write(publicKey)
        writer.write(signature)
    }

    /// Reads key, signature.
    public init(from reader: inout BCSReader) throws(CoreError) {
        publicKey = try reader.read(PublicKey.self)
        signature = try reader.read(Signature.self)
    }
}

/// A transaction: data plus the users' signatures.
public struct Transaction: Hashable, Sendable, BCSCodable {
    /// The signed data.
    public var data: TransactionData
    /// The users' signatures.
    public var signatures: [UserSignature]

    /// Creates a transaction.
    public init(data: TransactionData, signatures: [UserSignature]) {
        self.data = data
        self.signatures = signatures
    }

    /// The intent prefix of a user's signature: scope transaction-data (0), version 0, app soma-node (7).
    public static let intent: [UInt8] = [0, 0, 7]

    /// The transaction digest, `digest(TransactionData)`.
    public var digest: Digest { data.digest }

    /// The bytes a user signs: intent ‖ bcs(data).
    public static func signingMessage(_ data: TransactionData) -> [UInt8] {
        var writer = BCSWriter(capacity: 256)
        writer.writeRaw(intent)
        data.encode(to: &writer)
        return writer.bytes
    }

    /// Signs `data` with `key` and returns the transaction.
    public static func signed(_ data: TransactionData, by key: SigningKey) -> Transaction {
        let sig = key.sign(signingMessage(data))
        return Transaction(data: data, signatures: [UserSignature(publicKey: key.publicKey, signature: sig)])
    }

    /// `SHA256("Signatures::" ‖ bcs(signatures))`, the leaf's signatures field.
    public var signaturesDigest: Digest {
        var writer = BCSWriter(capacity: 8 + signatures.count * UserSignature.encodedSize)
        writer.write(signatures)
        return Hashing.sha256(domain: .signatures, writer.bytes)
    }

    /// Checks every user signature, and that the sender is the first signer's address.
    /// - Throws: ``CoreError/Code/invalidSignature`` naming the transaction.
    public func verifyUserSignatures() throws(CoreError) {
        guard let first = signatures.first, first.publicKey.address == data.sender else {
            throw CoreError(.invalidSignature, "transaction \(digest.short): sender is not the first signer")
        }
        let message = Transaction.signingMessage(data)
        for (i, s) in signatures.enumerated() where !s.publicKey.isValidSignature(s.signature, for: message) {
            throw CoreError(.invalidSignature, "transaction \(digest.short): user signature \(i) is invalid")
        }
    }

    /// Writes data, signatures.
    public func encode(to writer: inout BCSWriter) {
        writer.write(data)
        writer.write(signatures)
    }

    /// Reads data, signatures.
    public init(from reader: inout BCSReader) throws(CoreError) {
        data = try reader.read(TransactionData.self)
        signatures = try reader.readVector(UserSignature.self, minElementSize: UserSignature.encodedSize)
    }
}
