import Foundation
import SomaSync
import Synchronization

/// Shows a sync's progress: a bar redrawn in place on a terminal (checkpoints/s, MB/s, sources,
/// ETA), plain log lines every `logEvery` otherwise (a pipe, a file, a service manager).
final class ProgressDisplay: Sendable {
    let terminal: Bool
    let logEvery: Duration
    /// Where log lines go (a bar always goes to standard output's terminal).
    let output: FileHandle
    private let last = Mutex<(ContinuousClock.Instant, Bool)>((.now - .seconds(3_600), false))
    /// When each quarter of a checkpoint sync's range was committed: elapsed time and raw bytes.
    private let quarterMarks = Mutex<[(seconds: Double, rawBytes: Int)]>([])

    init(terminal: Bool = isatty(STDOUT_FILENO) == 1, logEvery: Duration = .seconds(5), output: FileHandle = .standardOutput) {
        self.terminal = terminal
        self.logEvery = logEvery
        self.output = output
    }

    /// One update of a checkpoint sync; drawn at most 10 times a second on a terminal, once
    /// per `logEvery` otherwise (and always at 100%).
    func update(_ p: SyncProgress) {
        let total = max(1, Double(p.target) - Double(p.first) + 1)
        quarterMarks.withLock { marks in
            while marks.count < 4 && Double(p.checkpoints) >= total * Double(marks.count + 1) / 4 {
                marks.append((p.elapsed.inSeconds, p.rawBytes))
            }
        }
        show(fraction: min(1, Double(p.checkpoints) / total), done: p.synced >= p.target, line: Self.describe(p), prefix: "sync")
    }

    /// One update of a snapshot restore, drawn the same way.
    func update(_ p: RestoreProgress) {
        show(fraction: Double(p.chunksDone) / Double(max(1, p.chunks)), done: p.chunksDone >= p.chunks, line: Self.describe(p), prefix: "restore")
    }

    private func show(fraction: Double, done: Bool, line: String, prefix: String) {
        let now = ContinuousClock.now
        let due = last.withLock { state -> Bool in
            let interval: Duration = terminal ? .milliseconds(100) : logEvery
            guard done || now - state.0 >= interval else { return false }
            // A finished bar has its newline: nothing is left to end.
            state = (now, !done)
            return true
        }
        guard due else { return }
        if terminal {
            let width = 24
            let filled = Int(fraction * Double(width))
            let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
            FileHandle.standardOutput.write(Data("\r[\(bar)] \(format(fraction * 100, 0))% \(line)\u{1B}[K".utf8))
            if done { FileHandle.standardOutput.write(Data("\n".utf8)) }
        } else {
            // Written at once: a pipe or a file must see the line now, not at exit, and after
            // the lines printed before it.
            fflush(nil)
            output.write(Data("\(prefix): \(line)\n".utf8))
        }
    }

    /// The raw MB/s of each quarter of the sync's range, once all four are committed (the flat
    /// cost of a catch-up: the last quarter against the first).
    var quarterRates: [Double]? {
        let marks = quarterMarks.withLock { $0 }
        guard marks.count == 4 else { return nil }
        var out: [Double] = []
        var before = (seconds: 0.0, rawBytes: 0)
        for m in marks {
            // Quarters seen in one update (a short sync) have no rate of their own.
            guard m.seconds - before.seconds >= 0.001, m.rawBytes > before.rawBytes else { return nil }
            out.append(Double(m.rawBytes - before.rawBytes) / 1e6 / max(1e-3, m.seconds - before.seconds))
            before = m
        }
        return out
    }

    /// Ends the bar's line (a sync that stopped before 100%).
    func finish() {
        let drawn = last.withLock { $0.1 }
        if terminal && drawn { FileHandle.standardOutput.write(Data("\u{1B}[K\n".utf8)) }
    }

    /// `checkpoint 1234/10000 · 250 checkpoints/s · 40.1 MB/s · 3 sources · ETA 0:35`.
    static func describe(_ p: SyncProgress) -> String {
        let secs = max(1e-3, p.elapsed.inSeconds)
        let rate = Double(p.checkpoints) / secs
        let remaining = Double(p.target - min(p.target, p.synced))
        let eta = rate > 0 ? Int(remaining / rate) : 0
        var s = "checkpoint \(p.synced)/\(p.target) · \(format(rate, 0)) checkpoints/s · \(format(Double(p.rawBytes) / 1e6 / secs)) MB/s"
        s += " · \(p.sources) source\(p.sources == 1 ? "" : "s")"
        if p.banned > 0 { s += " (\(p.banned) banned)" }
        s += " · ETA \(eta / 60):\(String(format: "%02d", eta % 60))"
        return s
    }

    /// `epoch 9 chunk 120/304 · 510000 objects/s · 61.2 MB/s · 3 sources · ETA 0:02`.
    static func describe(_ p: RestoreProgress) -> String {
        let secs = max(1e-3, p.elapsed.inSeconds)
        let rate = Double(p.objects) / secs
        let chunkRate = Double(p.chunksDone) / secs
        let eta = chunkRate > 0 ? Int(Double(p.chunks - p.chunksDone) / chunkRate) : 0
        return "epoch \(p.epoch) chunk \(p.chunksDone)/\(p.chunks) · \(format(rate, 0)) objects/s · \(format(Double(p.rawBytes) / 1e6 / secs)) MB/s"
            + " · \(p.sources) source\(p.sources == 1 ? "" : "s") · ETA \(eta / 60):\(String(format: "%02d", eta % 60))"
    }
}
