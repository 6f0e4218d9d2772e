import ArgumentParser
import Foundation
import SomaCore
import SomaNode

struct Proof: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Proofs that come with the HTTP API's reads.", subcommands: [ProofVerify.self])
}

struct ProofVerify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check offline an answer of /v1/transactions/{digest} or /v1/objects/{id} against a genesis.",
        discussion: """
            FILE is the JSON body as the node sent it (`-` reads standard input). The proof must \
            carry the epoch chain (ask with ?epochs=true) unless the checkpoint is of the genesis \
            epoch. Prints what the proof establishes and exits 0, or names what fails and exits 1.
            """)

    @Argument(help: "The answer (JSON), or - for standard input.")
    var file: String
    @Option(help: "The chain's genesis file (genesis.bcs).")
    var genesis: String
    @Flag(help: "Print the verdict as JSON.")
    var json = false

    func run() async throws {
        let answer: Data
        if file == "-" {
            // At most one byte past the bound: enough to refuse more.
            answer = FileHandle.standardInput.readData(ofLength: (64 << 20) + 1)
        } else {
            // Sized before it is read: an answer of the API is far below the bound.
            let size = (try? FileManager.default.attributesOfItem(atPath: file)[.size] as? UInt64) ?? 0
            guard size <= 64 << 20 else { throw CLIError("\(file) is over 64 MiB: not an answer of the HTTP API") }
            guard let d = FileManager.default.contents(atPath: file) else { throw CLIError("cannot read \(file): \(fileProblem(file))") }
            answer = d
        }
        guard answer.count <= 64 << 20 else { throw CLIError("\(file) is over 64 MiB: not an answer of the HTTP API") }
        guard let g = FileManager.default.contents(atPath: genesis) else { throw CLIError("cannot read the genesis \(genesis): \(fileProblem(genesis))") }
        let chain: Genesis
        do {
            chain = try Genesis(bcsBytes: Array(g))
            try chain.verify()
        } catch {
            throw CLIError("\(genesis) is not a valid genesis: \(error)")
        }
        do {
            let verdict = try ProofCheck.verify(answer: Array(answer), genesis: chain)
            if json {
                print("{\"verified\": true, \"kind\": \"\(verdict.kind)\", \"summary\": \"\(verdict.summary)\"}")
            } else {
                print("verified: \(verdict.summary)")
            }
        } catch {
            if json {
                let reason = "\(error)".replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
                print("{\"verified\": false, \"reason\": \"\(reason)\"}")
            } else {
                print("NOT verified: \(error)")
            }
            throw ExitCode(1)
        }
    }
}
