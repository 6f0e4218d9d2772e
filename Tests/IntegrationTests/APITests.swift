import Foundation
import SomaTestSupport
import Testing

/// A free TCP port on loopback (bound, then released: a small race a test can live with).
func freePort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = 0
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &addr) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
    }
    guard bound else { throw CocoaError(.fileWriteUnknown) }
    return Int(UInt16(bigEndian: addr.sin_port))
}

/// A data directory holding the tiny devnet chain, with a node key.
func tinyNode(_ base: TempDir, _ name: String) throws -> String {
    let dir = base.file(name)
    let (s, o) = try somaNode(["devnet", "generate", "--profile", "tiny", "--out", dir])
    guard s == 0 else { throw CocoaError(.fileWriteUnknown, userInfo: [NSLocalizedDescriptionKey: o]) }
    _ = try somaNode(["init", "--data", dir])
    return dir
}

/// A `soma-node run` on the tiny chain in a new temporary directory.
enum TinyRunningNode {
    static func start(_ name: String) throws -> (TempDir, String, RunningNode) {
        let base = TempDir(name)
        let dir = try tinyNode(base, "node")
        return (base, dir, try RunningNode(data: dir))
    }
}

/// GET over HTTP with curl: (status, body).
func httpGet(_ url: String, headers: [String] = []) throws -> (Int, String) {
    let curl = try #require(tool("curl"))
    let (_, out, _) = try run(curl, ["-s", "--max-time", "10", "-w", "\n%{http_code}"] + headers.flatMap { ["-H", $0] } + [url])
    let text = String(decoding: out, as: UTF8.self)
    guard let nl = text.lastIndex(of: "\n") else { return (0, text) }
    return (Int(text[text.index(after: nl)...]) ?? 0, String(text[..<nl]))
}

@Suite("The HTTP API of a running soma-node", .serialized)
struct APITests {
    @Test("/metrics passes `promtool check metrics`, every series has its help text, and a real Prometheus server scrapes the node")
    func prometheusScrape() async throws {
        let (base, _, node) = try TinyRunningNode.start("metrics")
        defer { node.stop(); base.cleanup() }
        let port = try #require(node.httpPort)
        try await Task.sleep(for: .milliseconds(1_500))
        let (status, metrics) = try httpGet("http://127.0.0.1:\(port)/metrics")
        #expect(status == 200)
        for family in ["soma_sync_watermark", "soma_node_phase", "soma_node_ready", "soma_serve_requests_total", "soma_store_bytes",
                       "soma_store_segment_bytes", "soma_net_connections", "soma_discovery_known_peers", "soma_store_compactions_running"] {
            #expect(metrics.contains("# HELP \(family) "), "\(family) missing")
        }
        #expect(!metrics.contains("undocumented"), "\(metrics)")
        let promtool = try #require(tool("promtool"), "promtool (Debian's prometheus) is installed by tools/test")
        let (pc, pout, perr) = try run(promtool, ["check", "metrics"], input: Data(metrics.utf8))
        #expect(pc == 0, "\(String(decoding: pout, as: UTF8.self)) \(perr)")

        // A real Prometheus server scrapes it every second.
        let prometheus = try #require(tool("prometheus"))
        let promPort = try freePort()
        let config = base.file("prometheus.yml")
        try """
            global:
              scrape_interval: 1s
            scrape_configs:
              - job_name: soma
                static_configs:
                  - targets: ["127.0.0.1:\(port)"]
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let server = Process()
        server.executableURL = URL(fileURLWithPath: prometheus)
        server.arguments = ["--config.file=\(config)", "--storage.tsdb.path=\(base.file("tsdb"))", "--web.listen-address=127.0.0.1:\(promPort)"]
        server.standardOutput = FileHandle.nullDevice
        server.standardError = FileHandle.nullDevice
        try server.run()
        defer { server.terminate(); server.waitUntilExit() }
        var up = "", ready = ""
        for _ in 0..<60 where up != "1" || ready != "1" {
            try await Task.sleep(for: .milliseconds(500))
            func value(_ query: String) -> String {
                guard let (s, body) = try? httpGet("http://127.0.0.1:\(promPort)/api/v1/query?query=\(query)"), s == 200,
                      let json = try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any],
                      let result = (json["data"] as? [String: Any])?["result"] as? [[String: Any]], let v = result.first?["value"] as? [Any]
                else { return "" }
                return v.last as? String ?? ""
            }
            up = value("up%7Bjob%3D%22soma%22%7D")
            ready = value("soma_node_ready")
        }
        #expect(up == "1" && ready == "1", "up \(up), soma_node_ready \(ready)")
    }

    @Test("`soma-node status` reads a running node's /v1/status (as text and --json); it names the address when no node answers; a taken port is named with what to do")
    func status() async throws {
        let (base, dir, node) = try TinyRunningNode.start("status")
        defer { node.stop(); base.cleanup() }
        let port = try #require(node.httpPort)
        let (s, o) = try somaNode(["status", "--http", "127.0.0.1:\(port)"])
        #expect(s == 0 && o.contains("serving, ready") && o.contains("watermarks   verified 29, synced 29"), "\(o)")
        let (js, jo) = try somaNode(["status", "--http", "127.0.0.1:\(port)", "--json"])
        let json = try JSONSerialization.jsonObject(with: Data(jo.utf8)) as? [String: Any]
        #expect(js == 0 && json?["highestSynced"] as? Int == 29, "\(jo)")
        // The data directory's configuration names the address.
        try "http:\n  listen: \"127.0.0.1:\(port)\"\n".write(toFile: dir + "/soma-node.yaml", atomically: true, encoding: .utf8)
        let (ds, dout) = try somaNode(["status", "--data", dir])
        #expect(ds == 0 && dout.contains("127.0.0.1:\(port)"), "\(dout)")
        // Nobody there.
        let nobody = try freePort()
        let (ns, no) = try somaNode(["status", "--http", "127.0.0.1:\(nobody)"])
        #expect(ns != 0 && no.contains("no node answers at 127.0.0.1:\(nobody)"), "\(no)")
        // A second node on the same HTTP port: the error says which port, why, and what to change.
        let copy = try tinyNode(base, "copy")
        let (ts, to, te) = try run(try somaNode(), ["run", "--data", copy, "--listen", "127.0.0.1:0", "--http", "127.0.0.1:\(port)"])
        let text = String(decoding: to, as: UTF8.self) + te
        #expect(ts != 0 && text.contains("cannot listen for the HTTP API on 127.0.0.1:\(port)") && text.contains("already in use") && text.contains("--http"), "\(text)")
    }

    @Test("`soma-node proof verify` accepts an answer's proof from the genesis alone and refuses a tampered one")
    func proofVerify() async throws {
        let (base, dir, node) = try TinyRunningNode.start("proofcli")
        defer { node.stop(); base.cleanup() }
        let port = try #require(node.httpPort)
        let (_, cp) = try httpGet("http://127.0.0.1:\(port)/v1/checkpoints/20")
        #expect(cp.contains("\"sequenceNumber\":20"))
        // A transaction of checkpoint 20, from the node's own inspect.
        let (_, inspect) = try somaNode(["inspect", "--data", dir, "--checkpoint", "20", "--json"])
        let txs = (try JSONSerialization.jsonObject(with: Data(inspect.utf8)) as? [String: Any])?["transactions"] as? [String] ?? []
        let digest = try #require(txs.first)
        let (status, answer) = try httpGet("http://127.0.0.1:\(port)/v1/transactions/\(digest)?epochs=true")
        #expect(status == 200)
        let file = base.file("answer.json")
        try answer.write(toFile: file, atomically: true, encoding: .utf8)
        let (vs, vo) = try somaNode(["proof", "verify", file, "--genesis", dir + "/genesis.bcs"])
        #expect(vs == 0 && vo.contains("verified: transaction \(digest)"), "\(vo)")
        // One hex digit of the path changed: refused.
        var doc = try #require(try JSONSerialization.jsonObject(with: Data(answer.utf8)) as? [String: Any])
        var proof = try #require(doc["proof"] as? [String: Any])
        var path = try #require(proof["path"] as? [String])
        let first = try #require(path.first)
        path[0] = (first.hasPrefix("0") ? "1" : "0") + first.dropFirst()
        proof["path"] = path
        doc["proof"] = proof
        let broken = String(decoding: try JSONSerialization.data(withJSONObject: doc), as: UTF8.self)
        try broken.write(toFile: file, atomically: true, encoding: .utf8)
        let (bs, bo) = try somaNode(["proof", "verify", file, "--genesis", dir + "/genesis.bcs"])
        #expect(bs != 0 && bo.contains("NOT verified"), "\(bo)")
    }

    @Test("the status page at / renders in headless Chromium: it loads its data from the API and shows the phase, the watermarks and the epochs")
    func statusPage() async throws {
        let (base, _, node) = try TinyRunningNode.start("page")
        defer { node.stop(); base.cleanup() }
        let port = try #require(node.httpPort)
        try await Task.sleep(for: .milliseconds(1_500))
        let chromium = try #require(tool("chromium", "chromium-browser"), "chromium (Debian's) is installed by tools/test")
        let (status, out, err) = try run(chromium, [
            "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000", "--dump-dom", "http://127.0.0.1:\(port)/",
        ], environment: ["HOME": base.path])
        let dom = String(decoding: out, as: UTF8.self)
        #expect(status == 0, "\(err)")
        #expect(dom.contains("data-loaded=\"true\""), "the page did not load its data: \(dom.prefix(2_000))")
        #expect(dom.contains("<span id=\"phase\" class=\"badge\">serving</span>"), "\(dom.prefix(2_000))")
        #expect(dom.contains("<td id=\"synced\">29</td>"), "\(dom.prefix(2_000))")
        #expect(dom.contains("verified 29 · synced 29"), "\(dom.prefix(2_000))")
        // The epochs table: the tiny chain's three ended epochs and the one running.
        #expect(dom.contains("<td>2</td>") && dom.contains("held"), "\(dom.prefix(4_000))")
        #expect(dom.contains("<div id=\"error\"></div>"), "the page reports an error: \(dom.prefix(2_000))")
        // A screenshot renders too.
        let shot = base.file("page.png")
        _ = try run(chromium, ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,800", "--virtual-time-budget=4000",
                               "--screenshot=\(shot)", "http://127.0.0.1:\(port)/"], environment: ["HOME": base.path])
        let png = try Data(contentsOf: URL(fileURLWithPath: shot))
        #expect(png.count > 10_000 && png.prefix(4) == Data([0x89, 0x50, 0x4E, 0x47]))
    }
}
