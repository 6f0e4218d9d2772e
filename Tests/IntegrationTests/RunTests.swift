import Foundation
import NIOPosix
import SomaCore
import SomaNet
import SomaStore
import SomaTestSupport
import Testing

@Suite("soma-node run", .serialized)
struct RunTests {
    @Test("`run` serves a generated store to a peer and stops cleanly on SIGTERM, store intact")
    func serveAndStop() async throws {
        let dir = TempDir("run")
        defer { dir.cleanup() }
        #expect(try somaNode(["devnet", "generate", "--profile", "tiny", "--out", dir.path]).0 == 0)
        #expect(try somaNode(["init", "--data", dir.path]).0 == 0)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try somaNode())
        process.arguments = ["run", "--data", dir.path, "--listen", "127.0.0.1:0"]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        // The first stdout line names the port.
        var line = ""
        while !line.contains("\n") {
            let chunk = out.fileHandleForReading.availableData
            guard !chunk.isEmpty else { break }
            line += String(decoding: chunk, as: UTF8.self)
        }
        let port = try #require(line.split(separator: ":").last.flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }, "\(line)")
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let genesis = try Genesis(bcsBytes: Array(try Data(contentsOf: URL(fileURLWithPath: dir.file("genesis.bcs")))))
        let client = try await PeerClient.connect(
            host: "127.0.0.1", port: port, identity: HandshakeIdentity(key: SigningKey.generate(), chainID: genesis.chainID), group: group)
        #expect(try await client.availability().highestSynced == 29)
        let block = try await client.block(12)
        #expect(try CheckpointData(bcsBytes: try LZ4Frame.decompress(block.frame, limit: 1 << 24)).sequenceNumber == 12)
        process.terminate()  // SIGTERM
        process.waitUntilExit()
        #expect(process.terminationReason == .exit && process.terminationStatus == 0)
        await client.close()
        try await group.shutdownGracefully()
        let (status, output) = try somaNode(["verify", "--data", dir.path])
        #expect(status == 0 && output.contains("verify: OK"), "\(output)")
        // Without a node key, run refuses with a clear message.
        try FileManager.default.removeItem(atPath: dir.file("node.key"))
        let (s2, o2) = try somaNode(["run", "--data", dir.path, "--listen", "127.0.0.1:0"])
        #expect(s2 != 0 && o2.contains("soma-node init"), "\(o2)")
    }
}
