import ArgumentParser
import CJemalloc
import Foundation
import SomaStore

/// `soma-node`: the storage-centric sync and archive node of the Soma chain.
@main
struct SomaNodeCommand: AsyncParsableCommand {
    static func main() async {
        // jemalloc is linked in and serves every allocation (Package.swift: CJemalloc); glibc's
        // arena cap matters only where it does not.
        if soma_jemalloc_serves_malloc() == 0 { MemoryTuning.limitMallocArenas() }
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: readable(error))
        }
    }

    /// An error as an operator reads it: a store error's message without its code name, a
    /// file-system error as `PATH: reason` with what to do; anything else as it is.
    static func readable(_ error: any Error) -> any Error {
        switch error {
        case let e as StoreError:
            return CLIError(e.message)
        case let e as CocoaError:
            var reason = e.localizedDescription
            var errnoValue: Int32 = 0
            if let underlying = e.userInfo[NSUnderlyingErrorKey] as? any Error, (underlying as NSError).domain == NSPOSIXErrorDomain {
                errnoValue = Int32(truncatingIfNeeded: (underlying as NSError).code)
                reason = String(cString: strerror(errnoValue))
            }
            switch errnoValue {
            case EACCES, EPERM, EROFS: reason += ": check that this user may write there (its owner and permissions, or the mount)"
            case ENOSPC: reason += ": free space on that disk"
            default: break
            }
            let path = e.filePath ?? e.url?.path
            return CLIError(path.map { "\($0): \(reason)" } ?? reason)
        default:
            return error
        }
    }

    static let configuration = CommandConfiguration(
        commandName: "soma-node",
        abstract: "Sync, keep and serve the Soma chain's verified history.",
        subcommands: [Init.self, Run.self, Sync.self, Status.self, Peers.self, Devnet.self, Import.self, Inspect.self, Verify.self, Proof.self, Archive.self])
}

struct Devnet: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Local development chains.", subcommands: [Generate.self, DevnetRun.self, Export.self, DevnetGossip.self])
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
