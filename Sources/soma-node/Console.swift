import Foundation
import SomaSync

/// Where a command's output goes. Without `--json`, its lines go to standard output; with it,
/// standard output carries exactly one JSON document (printed at the end) and the lines a person
/// would read (progress, notes) go to standard error, so that `soma-node sync --json | jq` works.
struct Console: Sendable {
    /// Whether standard output is kept for the JSON document.
    let json: Bool

    /// One line for a person: standard output, or standard error under `--json`.
    func say(_ line: String) {
        if json {
            FileHandle.standardError.write(Data((line + "\n").utf8))
        } else {
            print(line)
        }
    }

    /// Prints `object` as the command's JSON document (sorted keys, indented) on standard output.
    /// Values are JSON types: strings, numbers, booleans, `NSNull`, arrays and dictionaries of them.
    func emit(_ object: [String: Any]) throws {
        let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        fflush(nil)
        FileHandle.standardOutput.write(data + Data("\n".utf8))
    }

    /// A progress display that writes where this console's lines go (never a redrawn bar under
    /// `--json`: standard error may be the same terminal, and the lines must stay readable logs).
    func progressDisplay() -> ProgressDisplay {
        json ? ProgressDisplay(terminal: false, output: .standardError) : ProgressDisplay()
    }
}

/// A number of seconds rounded to milliseconds, for JSON documents.
func jsonSeconds(_ seconds: Double) -> Double { (seconds * 1_000).rounded() / 1_000 }

extension SourceStats {
    /// One source's standing as a JSON object: label, peer id (null for an archive), kind (`peer`
    /// or `archive`), what it delivered, its failures, hedges, measured throughput (bytes/s, or
    /// null) and ban reason (or null).
    var jsonObject: [String: Any] {
        [
            "label": label, "peerId": peerID.map { $0.description as Any } ?? NSNull(), "kind": peerID == nil ? "archive" : "peer", "checkpoints": checkpoints, "bytes": bytes,
            "failures": failures, "hedges": hedges, "throughputBytesPerSecond": throughput.map { $0.rounded() } ?? NSNull(),
            "banReason": banReason ?? NSNull(),
        ]
    }
}
