import ArgumentParser
import Foundation
import SomaNode

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a running node's status (its /v1/status).",
        discussion: """
            Asks the node's HTTP API: the address is --http, or http.listen of DIR/soma-node.yaml, \
            or the default 127.0.0.1:9184 (a wildcard listen address is asked on loopback). For a \
            stopped store, use `soma-node inspect`.
            """)

    @Option(help: "The node's data directory (its configuration names the HTTP address).")
    var data: String?
    @Option(help: "The node's HTTP API, HOST:PORT (default: from the data directory's configuration, else 127.0.0.1:9184).")
    var http: String?
    @Flag(help: "Print the status as JSON (as /v1/status answers it).")
    var json = false
    @Flag(help: "Show it again every --interval seconds until interrupted.")
    var watch = false
    @Option(help: "Seconds between two looks with --watch.")
    var interval = 2

    func validate() throws {
        guard interval >= 1 && interval <= 3_600 else { throw ValidationError("--interval must be 1...3600 seconds") }
        if let http { guard HTTPConfiguration.split(http) != nil else { throw ValidationError("--http takes HOST:PORT, not \(http)") } }
    }

    func run() async throws {
        let (host, port, source) = try address()
        let terminal = isatty(STDOUT_FILENO) == 1
        repeat {
            let answer: PlainHTTPClient.Answer
            do {
                answer = try await PlainHTTPClient.get(host: host, port: port, path: "/v1/status")
            } catch {
                throw CLIError("no node answers at \(host):\(port) (\(source)): \(error); is `soma-node run` running with that HTTP address? For a stopped store: soma-node inspect --data DIR")
            }
            guard answer.status == 200 else {
                throw CLIError("\(host):\(port) answered \(answer.status) to /v1/status: \(String(decoding: answer.body.prefix(300), as: UTF8.self))")
            }
            if json {
                print(String(decoding: answer.body, as: UTF8.self))
            } else {
                let report: StatusReport
                do {
                    report = try JSONDecoder().decode(StatusReport.self, from: Data(answer.body))
                } catch {
                    throw CLIError("\(host):\(port) did not answer /v1/status with a node status: \(error)")
                }
                if watch && terminal { print("\u{1B}[H\u{1B}[2J", terminator: "") }
                print(Status.describe(report, at: "\(host):\(port)"))
            }
            if watch { try await Task.sleep(for: .seconds(interval)) }
        } while watch
    }

    /// The address to ask, and where it came from.
    func address() throws -> (String, Int, String) {
        var listen = "127.0.0.1:9184"
        var source = "the default"
        if let http {
            listen = http
            source = "--http"
        } else if let data {
            var config = NodeConfiguration(dataDirectory: data)
            if FileManager.default.fileExists(atPath: config.configPath) {
                config = try NodeConfigurationFile.load(path: config.configPath, dataDirectory: data)
                guard let l = config.http.listen else {
                    throw CLIError("\(config.configPath) turns the HTTP API off (http.listen is empty): no status to ask for")
                }
                listen = l
                source = "http.listen of \(config.configPath)"
            }
        }
        guard let (listenHost, port) = HTTPConfiguration.split(listen) else { throw CLIError("\(listen) (\(source)) is not HOST:PORT") }
        var host = listenHost
        if host == "0.0.0.0" || host.isEmpty { host = "127.0.0.1" }
        if host == "::" { host = "::1" }
        guard port != 0 else { throw CLIError("the node's HTTP port is 0 (\(source)): any free port, so give the one it printed with --http") }
        return (host, port, source)
    }

    static func describe(_ r: StatusReport, at address: String) -> String {
        func mb(_ b: Double) -> String { String(format: "%.1f MB", b / 1e6) }
        func n(_ v: UInt64?) -> String { v.map(String.init) ?? "-" }
        let eta = r.etaSeconds.map { duration($0) } ?? "-"
        return """
            soma-node \(r.version) at \(address): \(r.phase.rawValue), \(r.ready ? "ready" : "not ready")
              chain        \(r.chainId)
              peer id      \(r.peerId)
              mode         \(r.mode)
              epoch        \(r.epoch)
              watermarks   verified \(n(r.highestVerified)), synced \(n(r.highestSynced)), executed \(n(r.highestExecuted)), lowest available \(n(r.lowestAvailable))
              tip          peers say \(r.peersTip); \(r.lag) checkpoints behind
              rate         \(String(format: "%.1f", r.checkpointsPerSecond)) checkpoints/s, \(mb(r.bytesPerSecond))/s, ETA \(eta)
              peers        \(r.peersConnected) connected, \(r.peersUsable) usable, \(r.peersBanned) banned
              store        \(mb(Double(r.storeBytes))) index, \(mb(Double(r.segmentBytes))) history segments
              uptime       \(duration(r.uptimeSeconds))
            """
    }

    static func duration(_ s: Double) -> String {
        let t = Int(s.rounded())
        if t >= 3_600 { return "\(t / 3_600) h \((t % 3_600) / 60) min" }
        if t >= 60 { return "\(t / 60) min \(t % 60) s" }
        return "\(t) s"
    }
}
