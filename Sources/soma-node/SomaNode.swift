import ArgumentParser
import Foundation
import SomaStore

/// `soma-node`: the storage-centric sync and archive node of the Soma chain.
@main
struct SomaNodeCommand: AsyncParsableCommand {
    static func main() async {
        MemoryTuning.limitMallocArenas()
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }

    static let configuration = CommandConfiguration(
        commandName: "soma-node",
        abstract: "Sync, keep and serve the Soma chain's verified history.",
        subcommands: [Init.self, Run.self, Devnet.self, Import.self, Inspect.self, Verify.self])
}

struct Devnet: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Local development chains.", subcommands: [Generate.self, Export.self])
}

/// A command-line failure, printed as one line.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The paths of a node's data directory.
struct DataDirectory {
    let root: String
    var genesis: String { (root as NSString).appendingPathComponent("genesis.bcs") }
    var database: String { (root as NSString).appendingPathComponent("db") }
}

/// Seconds since `start`.
func elapsed(since start: ContinuousClock.Instant) -> Double {
    let d = ContinuousClock.now - start
    return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
}

func format(_ value: Double, _ digits: Int = 1) -> String { String(format: "%.\(digits)f", value) }

/// Maps `transform` over `items` on up to `parallelism` concurrent tasks, keeping order.
func parallelMap<T: Sendable, R: Sendable>(
    _ items: [T], parallelism: Int, _ transform: @escaping @Sendable (T) throws -> R
) async throws -> [R] {
    if parallelism <= 1 || items.count <= 1 { return try items.map(transform) }
    return try await withThrowingTaskGroup(of: (Int, R).self) { group in
        var results = [R?](repeating: nil, count: items.count)
        var next = 0
        func add(_ i: Int) { group.addTask { (i, try transform(items[i])) } }
        while next < min(parallelism, items.count) {
            add(next)
            next += 1
        }
        for try await (i, r) in group {
            results[i] = r
            if next < items.count {
                add(next)
                next += 1
            }
        }
        return results.compactMap { $0 }
    }
}
