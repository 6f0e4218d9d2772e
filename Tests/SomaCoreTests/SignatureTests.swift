import SomaCore
import Testing

@Suite("Ed25519: RFC 8032 vectors")
struct SignatureTests {
    /// RFC 8032 §7.1 TEST 1, 2 and 3: (secret seed, public key, message, signature).
    static let vectors: [(String, String, String, String)] = [
        ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
         "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
         "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
        ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
         "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
         "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
        ("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
         "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
         "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"),
    ]

    @Test("keys and signatures match the RFC; tampering is rejected", arguments: 0..<3)
    func rfc8032(index: Int) throws {
        let (secret, publicHex, messageHex, signatureHex) = Self.vectors[index]
        let key = try SigningKey(seed: hex(secret))
        #expect(key.publicKey.raw.hex == publicHex)
        let message = hex(messageHex)
        let signature = key.sign(message)
        #expect(signature.bytes == hex(signatureHex))
        let pub = PublicKey(bytes: hex(publicHex))!
        #expect(pub.isValidSignature(Signature(bytes: hex(signatureHex))!, for: message))
        #expect(!pub.isValidSignature(signature, for: message + [0]))
        for position in [0, 31, 32, 63] {
            var bad = signature.bytes
            bad[position] ^= 0x04
            #expect(!pub.isValidSignature(Signature(bytes: bad)!, for: message))
        }
        var otherKey = pub.raw.bytes
        otherKey[5] ^= 1
        #expect(!PublicKey(bytes: otherKey)!.isValidSignature(signature, for: message))
    }

    @Test("seeds of the wrong length are rejected")
    func badSeed() {
        expectCode(.invalidValue) { _ = try SigningKey(seed: [1, 2, 3]) }
        #expect(PublicKey(bytes: [1, 2]) == nil)
        #expect(Signature(bytes: [UInt8](repeating: 0, count: 63)) == nil)
    }

    @Test("a user transaction's signatures verify, and a wrong sender or signature is rejected")
    func userSignatures() throws {
        let key = try SigningKey(seed: [UInt8](repeating: 3, count: 32))
        let data = TransactionData(sender: key.publicKey.address, kind: 1, inputs: [], payload: [1], gasBudget: 1)
        let tx = Transaction.signed(data, by: key)
        try tx.verifyUserSignatures()
        var wrongSender = tx
        wrongSender.data.sender = .zero
        expectCode(.invalidSignature) { try wrongSender.verifyUserSignatures() }
        var badSig = tx
        badSig.data.payload = [2]
        badSig.data.sender = key.publicKey.address
        expectCode(.invalidSignature) { try badSig.verifyUserSignatures() }
    }
}
