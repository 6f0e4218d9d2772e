import SomaCore
import SomaNet
import SomaStore
import SomaDevnet

/// One decodable type: the input's first byte picks it (modulo the count), the rest is decoded.
struct Codec: Sendable {
    let name: String
    let check: @Sendable ([UInt8]) -> Void

    static func of<T: BCSCodable & SendableMetatype>(_: T.Type) -> Codec {
        Codec(name: "\(T.self)") { checkRoundTrip(T.self, $0) }
    }
}

/// Runs input `[selector] ‖ bytes` through `codecs[selector % count]`.
func runCodecs(_ codecs: [Codec], _ input: [UInt8]) {
    guard let selector = input.first else { return }
    codecs[Int(selector) % codecs.count].check(Array(input.dropFirst()))
}

let chainCodecs: [Codec] = [
    .of(CheckpointSummary.self), .of(CertifiedCheckpointSummary.self), .of(QuorumCertificate.self), .of(Committee.self),
    .of(CheckpointData.self), .of(Transaction.self), .of(TransactionEffects.self), .of(Object.self), .of(Genesis.self),
    .of(ExecutionData.self), .of(ObjectRef.self), .of(EndOfEpochData.self),
]

let wireCodecs: [Codec] = [
    .of(RPCError.self), .of(Availability.self), .of(EpochEndingsRequest.self), .of(SummariesRequest.self),
    .of(SummariesResponse.self), .of(BlockRequest.self), .of(ProvenFrame.self), .of(SnapshotRequest.self),
    .of(BlocksRequest.self), .of(BlockItem.self), .of(SnapshotManifest.self), .of(Hello.self),
    Codec(name: "[CertifiedCheckpointSummary]") { bytes in
        // The getEpochEndings answer.
        guard let v = try? BCS.read(from: bytes[...], { (r: inout BCSReader) throws(CoreError) in
            try r.readVector(CertifiedCheckpointSummary.self)
        }) else { return }
        if encodedVector(v) != bytes { fail("[CertifiedCheckpointSummary]: not canonical") }
    },
]

/// BCS decoding of every chain type; decode then encode must give the input back.
let bcsChainTarget = FuzzTarget(
    name: "bcs-chain",
    summary: "BCS decode of every chain type (byte 0 picks the type); decode→encode must reproduce the input",
    seeds: {
        let f = Fixture.shared
        let last = f.checkpoints[f.checkpoints.count - 1]
        let end = f.checkpoints.first { $0.certified.summary.endOfEpoch != nil } ?? last
        let entry = last.data.entries[0]
        let tagged: [(Int, [UInt8])] = [
            (0, last.certified.summary.bcsBytes), (1, end.certified.bcsBytes), (2, last.certified.certificate.bcsBytes),
            (3, f.genesis.committee.bcsBytes), (4, last.data.bcsBytes), (5, entry.transaction.bcsBytes),
            (6, entry.effects.bcsBytes), (7, entry.outputObjects.first?.bcsBytes ?? []), (8, f.genesis.bcsBytes),
            (9, entry.bcsBytes), (10, entry.outputObjects.first?.reference.bcsBytes ?? []),
            (11, end.certified.summary.endOfEpoch?.bcsBytes ?? []),
        ]
        return tagged.map { [UInt8($0.0)] + $0.1 }
    },
    run: { runCodecs(chainCodecs, $0) }
)

/// BCS decoding of every wire type of SomaNet (and the snapshot manifest); canonical too.
let bcsWireTarget = FuzzTarget(
    name: "bcs-wire",
    summary: "BCS decode of every SomaNet wire type, SnapshotManifest and Hello; decode→encode must reproduce the input",
    seeds: {
        let f = Fixture.shared
        let cps = f.checkpoints
        let frame = f.chunkFrames[0]
        let proof = (try? f.manifest.proof(chunk: 0)) ?? []
        let hello = Hello(protocolVersion: 1, chainID: f.genesis.chainID, peerID: DevnetKeys.validator(seed: 77, index: 0).publicKey,
                          nonce: f.manifest.stateRoot, nodeInfo: [1, 2, 3])
        let response = SummariesResponse(
            summaries: cps[0..<3].map(\.certified.summary), certificates: [nil, nil, cps[2].certified.certificate])
        let tagged: [(Int, [UInt8])] = [
            (0, RPCError.notFound("block 7").bcsBytes), (0, RPCError.busy(retryAfterMs: 250).bcsBytes),
            (1, Availability(lowestAvailable: 0, highestSynced: 29, highestVerified: 29, snapshotEpochs: [1, 2]).bcsBytes),
            (2, EpochEndingsRequest(fromEpoch: 0, max: 100).bcsBytes),
            (3, SummariesRequest(from: 1, count: 1_000, allCertificates: true).bcsBytes),
            (4, response.bcsBytes), (5, BlockRequest(seq: 3, part: 0).bcsBytes),
            (6, ProvenFrame(frame: frame, proof: proof, count: UInt32(f.chunkFrames.count)).bcsBytes),
            (7, SnapshotRequest(epoch: 1, index: 2).bcsBytes), (8, BlocksRequest(from: 4, count: 32).bcsBytes),
            (9, BlockItem(seq: 4, part: 0, block: ProvenFrame(frame: [4, 34, 77, 24], proof: [], count: 1)).bcsBytes),
            (10, f.manifest.bcsBytes), (11, hello.bcsBytes),
            (12, encodedVector(cps.compactMap { $0.certified.summary.endOfEpoch == nil ? nil : $0.certified })),
        ]
        return tagged.map { [UInt8($0.0)] + $0.1 }
    },
    run: { runCodecs(wireCodecs, $0) }
)
