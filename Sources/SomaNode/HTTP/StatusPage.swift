/// The live status page served at `/`: one HTML document with its style and script inside (no
/// build step, nothing fetched from elsewhere). It reads `/v1/status`, `/v1/status/history`,
/// `/v1/peers` and `/v1/epochs` every two seconds and draws the phase, progress with ETA, a
/// throughput chart of the last minutes, the peers with their shares and scores, the epochs
/// and the store's size.
enum StatusPage {
    static let html = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>soma-node</title>
<style>
  :root { --fg: #1d2330; --muted: #6b7385; --line: #e3e6ec; --accent: #2f6fde; --accent2: #d9822b; --ok: #2b9a55; --bad: #c8453a; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: #f6f7f9; }
  header { display: flex; align-items: baseline; gap: 14px; padding: 14px 24px; background: #fff; border-bottom: 1px solid var(--line); }
  header h1 { font-size: 18px; margin: 0; }
  .badge { padding: 2px 10px; border-radius: 12px; font-weight: 600; font-size: 13px; background: #e8eefc; color: var(--accent); }
  .badge.ready { background: #e5f5eb; color: var(--ok); }
  .badge.notready { background: #fbe9e7; color: var(--bad); }
  main { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 16px; padding: 16px 24px; }
  section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px; }
  section h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); margin: 0 0 10px; }
  table { width: 100%; border-collapse: collapse; }
  td, th { text-align: left; padding: 3px 6px 3px 0; border-bottom: 1px solid var(--line); font-variant-numeric: tabular-nums; }
  th { color: var(--muted); font-weight: 500; }
  .mono { font-family: ui-monospace, Menlo, monospace; font-size: 12px; }
  .bar { height: 10px; background: var(--line); border-radius: 5px; overflow: hidden; margin: 6px 0; }
  .bar > div { height: 100%; background: var(--accent); width: 0; }
  .muted { color: var(--muted); }
  canvas { width: 100%; height: 180px; }
  #error { color: var(--bad); padding: 0 24px; }
</style>
</head>
<body>
<header>
  <h1>soma-node</h1>
  <span id="phase" class="badge">…</span>
  <span id="ready" class="badge">…</span>
  <span class="muted" id="version"></span>
  <span class="muted" id="updated"></span>
</header>
<div id="error"></div>
<main>
  <section id="progress">
    <h2>Progress</h2>
    <div class="bar"><div id="progressbar"></div></div>
    <table>
      <tr><th>highest synced</th><td id="synced">-</td></tr>
      <tr><th>best tip known</th><td id="tip">-</td></tr>
      <tr><th>behind</th><td id="lag">-</td></tr>
      <tr><th>rate</th><td id="rate">-</td></tr>
      <tr><th>ETA</th><td id="eta">-</td></tr>
      <tr><th>epoch</th><td id="epoch">-</td></tr>
      <tr><th>watermarks</th><td id="marks" class="mono">-</td></tr>
    </table>
  </section>
  <section>
    <h2>Throughput, last minutes</h2>
    <canvas id="chart" width="800" height="180"></canvas>
    <div class="muted"><span style="color: var(--accent)">&#9632;</span> checkpoints/s &nbsp; <span style="color: var(--accent2)">&#9632;</span> MB/s</div>
  </section>
  <section>
    <h2>Peers</h2>
    <table id="peers"><tr><th>source</th><th>share</th><th>throughput</th><th>checkpoints</th><th>failures</th><th>state</th></tr></table>
  </section>
  <section>
    <h2>Epochs</h2>
    <table id="epochs"><tr><th>epoch</th><th>checkpoints</th><th>live objects</th><th>state root</th><th>snapshot</th></tr></table>
  </section>
  <section>
    <h2>Node</h2>
    <table>
      <tr><th>chain</th><td id="chain" class="mono">-</td></tr>
      <tr><th>peer id</th><td id="peerid" class="mono">-</td></tr>
      <tr><th>mode</th><td id="mode">-</td></tr>
      <tr><th>store</th><td id="store">-</td></tr>
      <tr><th>uptime</th><td id="uptime">-</td></tr>
    </table>
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const mb = (b) => (b / 1e6).toFixed(1) + " MB";
const dur = (s) => { s = Math.round(s); return s >= 3600 ? Math.floor(s / 3600) + " h " + Math.floor(s % 3600 / 60) + " min" : s >= 60 ? Math.floor(s / 60) + " min " + (s % 60) + " s" : s + " s"; };
const esc = (t) => String(t).replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;"}[c]));
async function get(path) { const r = await fetch(path, {cache: "no-store"}); if (!r.ok) throw new Error(path + ": " + r.status); return r.json(); }

function drawChart(samples) {
  const c = $("chart"), g = c.getContext("2d"), w = c.width, h = c.height, pad = 24;
  g.clearRect(0, 0, w, h);
  g.strokeStyle = "#e3e6ec"; g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) { const y = pad + (h - 2 * pad) * i / 4; g.beginPath(); g.moveTo(pad, y); g.lineTo(w - 4, y); g.stroke(); }
  if (samples.length < 2) { g.fillStyle = "#6b7385"; g.fillText("waiting for samples…", pad + 4, h / 2); return; }
  const series = [[samples.map((s) => s.checkpointsPerSecond), "#2f6fde"], [samples.map((s) => s.bytesPerSecond / 1e6), "#d9822b"]];
  for (const [values, color] of series) {
    const max = Math.max(1, ...values);
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    values.forEach((v, i) => {
      const x = pad + (w - pad - 4) * i / (values.length - 1), y = h - pad - (h - 2 * pad) * v / max;
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke();
    g.fillStyle = color; g.fillText(max.toFixed(1), color === "#2f6fde" ? 2 : w - 40, 12);
  }
}

async function refresh() {
  try {
    const [s, hist, peers, epochs] = await Promise.all([get("/v1/status"), get("/v1/status/history"), get("/v1/peers"), get("/v1/epochs")]);
    $("phase").textContent = s.phase;
    $("ready").textContent = s.ready ? "ready" : "not ready";
    $("ready").className = "badge " + (s.ready ? "ready" : "notready");
    $("version").textContent = "v" + s.version;
    $("updated").textContent = "updated " + new Date(s.timeMs).toLocaleTimeString();
    const synced = s.highestSynced ?? 0, best = Math.max(s.peersTip, s.highestVerified ?? 0, synced);
    $("synced").textContent = synced; $("tip").textContent = best; $("lag").textContent = s.lag + " checkpoints";
    $("progressbar").style.width = (best > 0 ? 100 * synced / best : 100).toFixed(1) + "%";
    $("rate").textContent = s.checkpointsPerSecond.toFixed(1) + " checkpoints/s, " + mb(s.bytesPerSecond) + "/s";
    $("eta").textContent = s.etaSeconds != null ? dur(s.etaSeconds) : "-";
    $("epoch").textContent = s.epoch;
    $("marks").textContent = "verified " + (s.highestVerified ?? "-") + " · synced " + (s.highestSynced ?? "-") + " · executed " + (s.highestExecuted ?? "-") + " · lowest " + (s.lowestAvailable ?? "-");
    $("chain").textContent = s.chainId; $("peerid").textContent = s.peerId; $("mode").textContent = s.mode;
    $("store").textContent = mb(s.storeBytes) + " index, " + mb(s.segmentBytes) + " history segments";
    $("uptime").textContent = dur(s.uptimeSeconds);
    drawChart(hist.samples);
    const rows = peers.sources.map((p) => "<tr><td class=mono>" + esc(p.address) + "</td><td>" + (100 * p.share).toFixed(0) + "%</td><td>" +
      (p.throughput != null ? mb(p.throughput) + "/s" : "-") + "</td><td>" + p.checkpoints + "</td><td>" + p.failures + "</td><td>" +
      (p.bannedReason ? "banned: " + esc(p.bannedReason) : p.connected ? "connected" : "disconnected") + "</td></tr>");
    $("peers").innerHTML = "<tr><th>source</th><th>share</th><th>throughput</th><th>checkpoints</th><th>failures</th><th>state</th></tr>" +
      (rows.length ? rows.join("") : "<tr><td colspan=6 class=muted>no sources (" + peers.known + " peers known)</td></tr>");
    $("epochs").innerHTML = "<tr><th>epoch</th><th>checkpoints</th><th>live objects</th><th>state root</th><th>snapshot</th></tr>" +
      epochs.slice(-12).reverse().map((e) => "<tr><td>" + e.epoch + "</td><td>" + e.firstCheckpoint + "–" + (e.lastCheckpoint ?? "") + "</td><td>" +
        (e.liveObjectCount ?? "-") + "</td><td class=mono>" + (e.stateRoot ? e.stateRoot.slice(0, 16) + "…" : "-") + "</td><td>" + (e.snapshotHeld ? "held" : "-") + "</td></tr>").join("");
    $("error").textContent = "";
    document.body.dataset.loaded = "true";
  } catch (e) {
    $("error").textContent = "cannot reach the node: " + e.message;
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"""#
}
