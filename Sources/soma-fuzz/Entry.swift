import Foundation

/// Every target, by name (`tools/fuzz` and docs/RELIABILITY.md list the same).
let allTargets: [FuzzTarget] = [
    bcsChainTarget, bcsWireTarget, frameTarget, handshakeTarget, lz4Target, segmentsTarget, nodeInfoTarget, merkleTarget, blockProofTarget,
    snapshotChunkTarget, configTarget, dispatchTarget, gossipTarget, archiveTarget,
]

func target(named name: String) -> FuzzTarget? { allTargets.first { $0.name == name } }

/// Writes `target`'s seeds into `directory` as `seed-NN`.
func writeSeeds(_ target: FuzzTarget, to directory: String) throws {
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    for (i, seed) in target.seeds().enumerated() {
        let name = String(format: "seed-%02d", i)
        try Data(seed).write(to: URL(fileURLWithPath: (directory as NSString).appendingPathComponent(name)))
    }
}

func listTargets() {
    for t in allTargets { print("\(t.name.padding(toLength: 15, withPad: " ", startingAt: 0)) \(t.summary)") }
}

#if SOMA_FUZZ

/// The target chosen by `SOMA_FUZZ_TARGET`, looked up once.
let selectedTarget: FuzzTarget = {
    let name = ProcessInfo.processInfo.environment["SOMA_FUZZ_TARGET"] ?? ""
    guard let t = target(named: name) else {
        FileHandle.standardError.write(Data("soma-fuzz: set SOMA_FUZZ_TARGET to one of: \(allTargets.map(\.name).joined(separator: " "))\n".utf8))
        exit(2)
    }
    return t
}()

/// libFuzzer's callback: one input for the selected target.
@_cdecl("LLVMFuzzerTestOneInput")
func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    selectedTarget.run(bytes)
    return 0
}

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

/// The fuzzing build: libFuzzer's driver over the selected target (SwiftPM gives an executable
/// its own `main`, so libFuzzer's is not linked; its driver is called instead).
/// `soma-fuzz --list` lists the targets; `SOMA_FUZZ_SEEDS=DIR` writes the target's seeds and exits.
@main
struct FuzzMain {
    static func main() {
        if CommandLine.arguments.dropFirst().first == "--list" { listTargets(); exit(0) }
        let t = selectedTarget
        if let dir = ProcessInfo.processInfo.environment["SOMA_FUZZ_SEEDS"] {
            do { try writeSeeds(t, to: dir) } catch { fail("writing seeds to \(dir): \(error)") }
            exit(0)
        }
        var argc = CommandLine.argc
        var argv = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzOne(data, size) })
    }
}

#else

/// The normal build: replays inputs through a target without libFuzzer (a crash found by
/// `tools/fuzz` can be re-run in a plain debug build): `soma-fuzz TARGET FILE|DIR...`,
/// `soma-fuzz --list`, `soma-fuzz --seeds TARGET DIR`.
@main
struct ReplayMain {
    static func main() {
        let args = Array(CommandLine.arguments.dropFirst())
        if args.first == "--list" { listTargets(); return }
        if args.count == 3, args[0] == "--seeds", let t = target(named: args[1]) {
            do { try writeSeeds(t, to: args[2]) } catch { fail("writing seeds to \(args[2]): \(error)") }
            return
        }
        guard let name = args.first, let t = target(named: name) else {
            print("usage: soma-fuzz TARGET FILE|DIR... | --list | --seeds TARGET DIR")
            exit(2)
        }
        var count = 0
        for path in args.dropFirst() {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { fail("no such input: \(path)") }
            let files = isDir.boolValue
                ? ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted().map { (path as NSString).appendingPathComponent($0) }
                : [path]
            for f in files {
                guard let data = FileManager.default.contents(atPath: f) else { continue }
                t.run(Array(data))
                count += 1
            }
        }
        print("\(t.name): \(count) inputs, no finding")
    }
}

#endif
