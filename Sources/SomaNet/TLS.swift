import Crypto
import Foundation
public import NIOCore
public import NIOSSL
public import SomaCore
import SwiftASN1
import Synchronization
import X509

/// The TLS side of a node's identity (DESIGN §8): a self-signed X.509 certificate whose key is
/// the node's Ed25519 key, and the TLS 1.3 contexts built from it, made once per identity.
///
/// Both sides present such a certificate; a peer is identified by the Ed25519 key in the
/// certificate it presents (TLS 1.3's CertificateVerify proves it holds the private key), which
/// the handshake then requires to equal the peer id its hello names and, when dialling a known
/// peer, the peer id dialled. Names, validity dates and extensions are not checked.
public final class TLSIdentity: Sendable {
    /// The certificate (DER).
    public let certificateDER: [UInt8]
    /// The context for connections this node accepts.
    let serverContext: NIOSSLContext
    /// The context for connections this node dials.
    let clientContext: NIOSSLContext

    /// The identity of `key`.
    /// - Throws: ``WireError`` `tlsFailed` if the certificate or the contexts cannot be built.
    public init(key: SigningKey) throws {
        do {
            let ed = try Curve25519.Signing.PrivateKey(rawRepresentation: key.seed)
            let name = try DistinguishedName { CommonName("soma-node \(key.publicKey.raw.hex)") }
            // Fixed dates: the certificate of a key is always the same bytes (Ed25519 is deterministic).
            let certificate = try Certificate(
                version: .v3, serialNumber: Certificate.SerialNumber(bytes: Array(key.publicKey.raw.bytes.prefix(16))),
                publicKey: Certificate.PublicKey(ed.publicKey),
                notValidBefore: Date(timeIntervalSince1970: 1_735_689_600),  // 2025-01-01
                notValidAfter: Date(timeIntervalSince1970: 4_102_444_800),   // 2100-01-01
                issuer: name, subject: name, signatureAlgorithm: .ed25519,
                extensions: try Certificate.Extensions { Critical(BasicConstraints.notCertificateAuthority) },
                issuerPrivateKey: Certificate.PrivateKey(ed))
            var serializer = DER.Serializer()
            try serializer.serialize(certificate)
            certificateDER = serializer.serializedBytes
            let nioCertificate = try NIOSSLCertificate(bytes: certificateDER, format: .der)
            let nioKey = try NIOSSLPrivateKey(bytes: TLSIdentity.pkcs8Prefix + key.seed, format: .der)

            var server = TLSConfiguration.makeServerConfiguration(
                certificateChain: [.certificate(nioCertificate)], privateKey: .privateKey(nioKey))
            TLSIdentity.restrict(&server)
            serverContext = try NIOSSLContext(configuration: server)

            var client = TLSConfiguration.makeClientConfiguration()
            client.certificateChain = [.certificate(nioCertificate)]
            client.privateKey = .privateKey(nioKey)
            client.trustRoots = .certificates([])
            TLSIdentity.restrict(&client)
            clientContext = try NIOSSLContext(configuration: client)
        } catch let error as WireError {
            throw error
        } catch {
            throw WireError(.tlsFailed, "cannot build the node's TLS certificate: \(error)")
        }
    }

    /// TLS 1.3 only, Ed25519 signatures only, and a peer certificate required on both sides
    /// (checked by ``TLSIdentity/verify(_:expected:)`` instead of a trust store).
    static func restrict(_ c: inout TLSConfiguration) {
        c.minimumTLSVersion = .tlsv13
        c.maximumTLSVersion = .tlsv13
        c.signingSignatureAlgorithms = [.ed25519]
        c.verifySignatureAlgorithms = [.ed25519]
        c.certificateVerification = .noHostnameVerification
        c.renegotiationSupport = .none
    }

    /// The DER prefix of an Ed25519 private key in PKCS #8 (RFC 8410), before the 32-byte seed.
    static let pkcs8Prefix: [UInt8] = [0x30, 0x2E, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20]
    /// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32-byte key.
    static let spkiPrefix: [UInt8] = [0x30, 0x2A, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70, 0x03, 0x21, 0x00]

    /// The Ed25519 key of a certificate, or `nil` if it holds another kind of key.
    public static func peerID(of certificate: NIOSSLCertificate) -> PeerID? {
        guard let spki = try? certificate.extractPublicKey().toSPKIBytes(), spki.count == spkiPrefix.count + 32,
              spki.starts(with: spkiPrefix)
        else { return nil }
        return PeerID(bytes: spki.dropFirst(spkiPrefix.count))
    }

    /// The verification of a peer's certificate chain: exactly one certificate holding an
    /// Ed25519 key (and, when `expected` is set, that key). The TLS 1.3 handshake itself proves
    /// that the peer holds the private key.
    static func verify(_ chain: [NIOSSLCertificate], expected: PeerID?) -> NIOSSLVerificationResult {
        guard chain.count == 1, let key = peerID(of: chain[0]) else { return .failed }
        if let expected, key != expected { return .failed }
        return .certificateVerified
    }
}

/// The first byte of a TLS record carrying a handshake message (a ClientHello).
let tlsHandshakeRecordByte: UInt8 = 0x16

/// The first handler of an accepted connection: looks at the first byte the peer sends and sets
/// up the rest of the pipeline. A TLS ClientHello (`0x16`) on a TLS node, or a frame on a
/// plaintext node, goes on; the other way round gets a plaintext `goodbye` frame naming the
/// mismatch, and the connection is closed (a plaintext frame's first byte is the high byte of
/// its length, 0 for every frame below 16 MiB).
final class TransportSniffer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let tls: Bool
    private let configure: (ChannelHandlerContext) throws -> Void
    private var decided = false

    /// `configure` adds the handlers after this one for the transport this node speaks.
    init(tls: Bool, configure: @escaping (ChannelHandlerContext) throws -> Void) {
        self.tls = tls
        self.configure = configure
    }

    func channelActive(context: ChannelHandlerContext) {
        // Handlers added later see the connection as active once they are added.
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !decided else { return context.fireChannelRead(data) }
        let buffer = unwrapInboundIn(data)
        guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return }
        decided = true
        let peerSpeaksTLS = first == tlsHandshakeRecordByte
        guard peerSpeaksTLS == tls else {
            let reason = tls
                ? "this node requires TLS 1.3 on every connection (protocol \(protocolVersion)); the peer sent plaintext"
                : "this node speaks plaintext (net.tls is off); the peer started TLS"
            var payload = context.channel.allocator.buffer(capacity: reason.utf8.count)
            payload.writeString(reason)
            var out = context.channel.allocator.buffer(capacity: 16 + payload.readableBytes)
            Frame(kind: .oneWay, method: Method.goodbye.rawValue, requestID: 0, payload: payload).write(into: &out)
            context.writeAndFlush(NIOAny(out)).whenComplete { _ in context.close(promise: nil) }
            context.fireErrorCaught(WireError(.tlsFailed, reason))
            return
        }
        do {
            try configure(context)
        } catch {
            context.fireErrorCaught(error)
            context.close(promise: nil)
            return
        }
        context.fireChannelActive()
        context.fireChannelRead(data)
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}

/// The protocol version this build speaks (in every hello).
public let protocolVersion: UInt64 = 3
