import Foundation
public import Logging

/// A swift-log handler that writes one JSON object a line to standard error (`--log-format
/// json`): `timestamp` (RFC 3339, UTC, milliseconds), `level`, `label`, `message`, `metadata`
/// (dotted keys, values as strings) and `source` (`file:line`).
public struct JSONLogHandler: LogHandler {
    /// The logger's label.
    public let label: String
    /// The lowest level written.
    public var logLevel: Logger.Level = .info
    /// Metadata added to every line.
    public var metadata: Logger.Metadata = [:]

    /// A handler for `label`.
    public init(label: String) {
        self.label = label
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        let line = JSONLogHandler.line(
            time: Date(), level: event.level, label: label, message: "\(event.message)", metadata: merged,
            file: event.file, line: event.line)
        FileHandle.standardError.write(Data(line.utf8))
    }

    /// One line, newline-terminated.
    static func line(time: Date, level: Logger.Level, label: String, message: String, metadata: Logger.Metadata, file: String, line: UInt) -> String {
        var fields: [(String, String)] = [
            ("timestamp", quoted(timestamp(time))), ("level", quoted(level.rawValue)), ("label", quoted(label)),
            ("message", quoted(message)),
        ]
        if !metadata.isEmpty {
            let inner = metadata.sorted { $0.key < $1.key }.map { "\(quoted($0.key)):\(quoted("\($0.value)"))" }.joined(separator: ",")
            fields.append(("metadata", "{\(inner)}"))
        }
        let fileName = file.split(separator: "/").last.map(String.init) ?? file
        fields.append(("source", quoted("\(fileName):\(line)")))
        return "{" + fields.map { "\(quoted($0.0)):\($0.1)" }.joined(separator: ",") + "}\n"
    }

    static func timestamp(_ date: Date) -> String {
        var f = Date.ISO8601FormatStyle(includingFractionalSeconds: true)
        f.timeZone = .gmt
        return date.formatted(f)
    }

    /// A JSON string literal (RFC 8259 escapes).
    static func quoted(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 {
                    out += String(format: "\\u%04x", u.value)
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }
}
