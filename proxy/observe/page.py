"""The status page, ``GET /vramgate/``: one self-contained HTML document, no build step, no assets.

It is static (the same bytes for everyone, no data in it): its script fetches ``status`` (relative,
so ``/vramgate/status`` behind any prefix) every 3 s and builds the DOM from that JSON with
``textContent`` only, never HTML from data, so a model or user name cannot inject markup. Beyond
loopback the JSON needs the admin token: the page reads it from its own address's fragment
(``/vramgate/#token=...``, which browsers never send to a server or put in a Referer) and sends it
as ``Authorization: Bearer``.

The inline script and style are pinned by their SHA-256 in ``CSP``, the Content-Security-Policy
the page must be served with: nothing else may run, load or connect anywhere but this origin.
The bar's segments follow ``proxy.observe.segments`` (the script repeats that rule in JS).
"""

from __future__ import annotations

import base64
import hashlib

STYLE = r"""
:root { --fg: #1d2330; --muted: #667085; --bg: #f7f8fa; --card: #fff; --line: #e3e6eb;
  --ollama: #2f6fdb; --ollama2: #5b8fe8; --pending: #e0a100; --process: #8b4fc9; --unattributed: #9aa1ad;
  --reserve: #4b5563; --free: #d9f2e3; --refused: #fde8e8; --refused-fg: #b42318; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e6e8ec; --muted: #98a2b3; --bg: #12151b; --card: #1b2029; --line: #2c3340;
    --free: #1f3b2c; --refused: #3b1d1d; --refused-fg: #ff8a80; }
}
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--fg); background: var(--bg); }
header { display: flex; align-items: baseline; gap: 1em; flex-wrap: wrap; padding: 14px 24px;
  background: var(--card); border-bottom: 1px solid var(--line); }
header h1 { margin: 0; font-size: 20px; }
#meta, .muted { color: var(--muted); }
main { padding: 16px 24px; max-width: 1400px; }
main.stale { opacity: .55; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px;
  margin-bottom: 16px; }
h2 { margin: 0 0 8px; font-size: 16px; }
#error { margin: 12px 24px 0; padding: 10px 14px; border-radius: 6px; background: var(--refused);
  color: var(--refused-fg); border: 1px solid var(--refused-fg); font-weight: 600; }
.gpu + .gpu { margin-top: 18px; }
.gpu-head { display: flex; gap: 1em; flex-wrap: wrap; align-items: baseline; }
.gpu-head strong { font-size: 15px; }
.bar { display: flex; height: 34px; margin: 8px 0; border-radius: 5px; overflow: hidden;
  border: 1px solid var(--line); background: var(--free); }
.seg { height: 100%; min-width: 0; overflow: hidden; white-space: nowrap; text-overflow: ellipsis;
  padding: 0 6px; font-size: 12px; line-height: 34px; color: #fff; border-right: 1px solid rgba(255,255,255,.7); }
.seg:last-child { border-right: 0; }
.kind-ollama { background: var(--ollama); }
.kind-ollama:nth-child(even) { background: var(--ollama2); }
.kind-pending { background: repeating-linear-gradient(45deg, var(--pending) 0 8px, #f3c64b 8px 16px); color: #1d2330; }
.kind-process { background: var(--process); }
.kind-unattributed { background: var(--unattributed); }
.kind-reserve { background: repeating-linear-gradient(45deg, var(--reserve) 0 6px, #6b7280 6px 12px); }
.kind-free { background: var(--free); color: var(--fg); }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 3px; vertical-align: -1px; margin-right: 6px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 10px 5px 0; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .03em; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.nowrap { white-space: nowrap; }
table.legend { table-layout: fixed; }
.legend th:nth-child(1) { width: 18%; } .legend th:nth-child(2) { width: 42%; } .legend th:nth-child(3) { width: 20%; }
.legend th:nth-child(4) { width: 12%; } .legend th:nth-child(5) { width: 8%; }
.legend td { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
tr.refused td { background: var(--refused); }
tr.refused td.status { color: var(--refused-fg); font-weight: 700; }
.busy { color: var(--pending); font-weight: 600; }
.empty { color: var(--muted); font-style: italic; }
.explanation { max-width: 60ch; }
"""

SCRIPT = r"""
"use strict";
(() => {
  const REFRESH_MS = 3000, FETCH_TIMEOUT_MS = 10000;
  const $ = (id) => document.getElementById(id);

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined) continue;
      if (key === "class") node.className = value;
      else if (key === "data") for (const [k, v] of Object.entries(value)) { if (v !== null && v !== undefined) node.dataset[k] = String(v); }
      else node.setAttribute(key, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function isNum(v) { return typeof v === "number" && isFinite(v); }

  function fmtBytes(n) {
    if (!isNum(n)) return "\u2014";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = Math.abs(n), i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (n < 0 ? "-" : "") + (i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + units[i];
  }

  function fmtSecs(s) {
    if (!isNum(s)) return "\u2014";
    s = Math.max(0, Math.round(s));
    const pad = (x) => String(x).padStart(2, "0");
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + pad(s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + pad(Math.floor(s / 60) % 60) + "m";
    return Math.floor(s / 86400) + "d " + pad(Math.floor(s / 3600) % 24) + "h";
  }

  function bytesOf(v) { return isNum(v) ? Math.max(0, Math.floor(v)) : null; }

  // the same rule as proxy/observe/segments.py
  function segments(gpu) {
    const out = [];
    for (const h of gpu.holders || []) {
      const kind = String(h.kind || "process");
      const who = kind === "process" ? h.user : h.owner;
      out.push({kind, name: String(h.name || "?"), who: who === null || who === undefined ? null : String(who),
                bytes: bytesOf(h.bytes) || 0, pid: Number.isInteger(h.pid) ? h.pid : null, busy: h.busy === true});
    }
    const total = bytesOf(gpu.total_bytes) || 0, reserve = bytesOf(gpu.reserve_bytes) || 0;
    const freeNow = bytesOf(gpu.free_bytes), budget = bytesOf(gpu.budget_bytes);
    const held = out.reduce((a, s) => a + s.bytes, 0);
    const free = budget !== null ? budget : freeNow !== null ? Math.max(0, freeNow - reserve) : Math.max(0, total - held - reserve);
    out.push({kind: "unattributed", name: "not attributed", who: null, bytes: Math.max(0, total - held - reserve - free)});
    out.push({kind: "reserve", name: "reserve", who: null, bytes: reserve});
    out.push({kind: "free", name: "free", who: null, bytes: free});
    const kept = out.filter((s) => s.bytes > 0);
    const scale = Math.max(total, kept.reduce((a, s) => a + s.bytes, 0), 1);
    return {segments: kept, scale};
  }

  function segmentLabel(s) {
    if (s.kind === "ollama" || s.kind === "pending") return s.name + " \u00b7 " + (s.who || "outside vramgate");
    if (s.kind === "process") return (s.who || "?") + " \u00b7 " + s.name;
    return s.name;
  }

  function kindText(s) {
    return {ollama: "Ollama model", pending: "loading", process: "process", unattributed: "not attributed",
            reserve: "reserve", free: "free"}[s.kind] || s.kind;
  }

  function renderGpu(gpu) {
    const {segments: segs, scale} = segments(gpu);
    const bar = el("div", {class: "bar", role: "img", "aria-label": "GPU " + gpu.index + " memory"});
    const legend = el("tbody");
    for (const s of segs) {
      const label = segmentLabel(s);
      const seg = el("div", {class: "seg kind-" + s.kind, title: label + ": " + fmtBytes(s.bytes),
                             data: {kind: s.kind, name: s.name, who: s.who, bytes: s.bytes, pid: s.pid}},
                     label + " " + fmtBytes(s.bytes));
      seg.style.width = (100 * s.bytes / scale).toFixed(4) + "%";
      bar.append(seg);
      const swatch = el("span", {class: "swatch kind-" + s.kind});
      const who = s.kind === "process" ? (s.who || "?") + (s.pid !== null ? " (pid " + s.pid + ")" : "")
                : (s.kind === "ollama" || s.kind === "pending") ? (s.who || "outside vramgate") : "";
      legend.append(el("tr", {data: {kind: s.kind}},
        el("td", null, swatch, kindText(s)), el("td", null, s.kind === "unattributed" || s.kind === "reserve" || s.kind === "free" ? "" : s.name),
        el("td", null, who), el("td", {class: "num"}, fmtBytes(s.bytes)),
        el("td", {class: "busy"}, s.busy ? "busy" : "")));
    }
    const head = el("div", {class: "gpu-head"}, el("strong", null, "GPU " + gpu.index + " \u00b7 " + (gpu.name || "?")),
      el("span", {class: "muted"}, fmtBytes(gpu.total_bytes) + " total \u00b7 " + fmtBytes(gpu.free_bytes) + " free \u00b7 " +
         fmtBytes(gpu.reserve_bytes) + " reserve \u00b7 budget " + fmtBytes(gpu.budget_bytes) + (gpu.source ? " \u00b7 " + gpu.source : "")));
    const table = el("table", {class: "legend"}, el("thead", null, el("tr", null,
      el("th", null, "Kind"), el("th", null, "Name"), el("th", null, "Owner / user"), el("th", {class: "num"}, "Memory"), el("th", null, ""))), legend);
    return el("div", {class: "gpu", data: {index: gpu.index}}, head, bar, table);
  }

  function table(headers, rows, emptyText) {
    if (!rows.length) return el("p", {class: "empty"}, emptyText);
    return el("table", null, el("thead", null, el("tr", null, ...headers.map(([h, cls]) => el("th", {class: cls}, h)))),
              el("tbody", null, ...rows));
  }

  // a model's last loads through vramgate: how far /api/ps's size was from the prediction, oldest first
  function history(m) {
    const seen = (m.observed_history || []).filter((o) => isNum(o.predicted_bytes) && isNum(o.observed_bytes) && o.predicted_bytes > 0);
    const errs = seen.map((o) => { const e = (o.observed_bytes - o.predicted_bytes) / o.predicted_bytes * 100;
                                   return (e >= 0 ? "+" : "") + e.toFixed(1) + "%"; });
    const title = seen.map((o) => (o.time || "?") + " num_ctx " + o.num_ctx + ": predicted " + fmtBytes(o.predicted_bytes) +
                                  ", observed " + fmtBytes(o.observed_bytes)).join("\n");
    return el("td", {class: "num history", title: title || null}, errs.join(" "));
  }

  function renderModels(models) {
    const withHistory = models.some((m) => (m.observed_history || []).length > 0);
    return table([["Model"], ["Owner"], ["Users"], ["Context", "num"], ["Keep-alive left", "num"], ["Predicted", "num"],
                  ["Observed (GPU)", "num"], ["Difference", "num"], ["State"], ...(withHistory ? [["History", "num"]] : [])],
      models.map((m) => {
        const diff = isNum(m.predicted_bytes) && isNum(m.size_vram_bytes) && m.predicted_bytes > 0
          ? ((m.size_vram_bytes - m.predicted_bytes) / m.predicted_bytes * 100) : null;
        const keep = isNum(m.keep_alive_left_s) ? fmtSecs(m.keep_alive_left_s) : "forever / unknown";
        return el("tr", {class: "model", data: {model: m.name, owner: m.owner}},
          el("td", null, m.name), el("td", {class: m.owner ? null : "muted"}, m.owner || "outside vramgate"),
          el("td", null, (m.users || []).join(", ")),
          el("td", {class: "num"}, isNum(m.context_length) ? m.context_length.toLocaleString("en-US") : "\u2014"),
          el("td", {class: "num"}, keep), el("td", {class: "num"}, fmtBytes(m.predicted_bytes)),
          el("td", {class: "num"}, fmtBytes(m.size_vram_bytes)),
          el("td", {class: "num"}, diff === null ? "\u2014" : (diff >= 0 ? "+" : "") + diff.toFixed(1) + "%"),
          m.busy ? el("td", {class: "busy"}, "busy") : el("td", {class: "nowrap"}, "idle " + fmtSecs(m.idle_s)),
          withHistory ? history(m) : null);
      }), "No model is loaded.");
  }

  function renderQueue(queue) {
    return table([["#", "num"], ["User"], ["Model"], ["Priority", "num"], ["Waiting", "num"]],
      queue.map((q) => el("tr", {class: "queued", data: {user: q.user, model: q.model}},
        el("td", {class: "num"}, q.position), el("td", null, q.user || "?"), el("td", null, q.model || "?"),
        el("td", {class: "num"}, isNum(q.priority) ? q.priority : "\u2014"), el("td", {class: "num"}, fmtSecs(q.waited_s)))),
      "No load is waiting.");
  }

  function clock(iso, now) {
    const t = Date.parse(iso);
    if (isNaN(t)) return iso || "";
    const ago = isNaN(now) ? "" : " (" + fmtSecs((now - t) / 1000) + " ago)";
    return new Date(t).toLocaleTimeString([], {hour12: false}) + ago;
  }

  function renderDecisions(decisions, now) {
    const rows = decisions.slice().reverse().map((d) => {
      const refused = isNum(d.status) && d.status >= 400;
      const ctx = isNum(d.num_ctx_from) && isNum(d.num_ctx_to) ? " (num_ctx " + d.num_ctx_from + " \u2192 " + d.num_ctx_to + ")" : "";
      return el("tr", {class: refused ? "decision refused" : "decision", data: {event: d.event, status: d.status, reason: d.reason}},
        el("td", {title: d.time, class: "nowrap"}, clock(d.time, now)), el("td", null, d.event || ""), el("td", null, d.user || "?"),
        el("td", null, d.model || ""), el("td", null, d.route || ""), el("td", {class: "num status"}, isNum(d.status) ? d.status : ""),
        el("td", null, d.reason || ""), el("td", {class: "explanation"}, (d.explanation || "") + ctx));
    });
    return table([["Time"], ["Event"], ["User"], ["Model"], ["Route"], ["Status", "num"], ["Reason"], ["Explanation"]],
                 rows, "No decision yet.");
  }

  function render(status) {
    const gpus = status.gpus || [];
    $("gpus").replaceChildren(el("h2", null, "GPU memory"),
      ...(gpus.length ? gpus.map(renderGpu) : [el("p", {class: "empty"}, "No GPU is known.")]));
    $("models").replaceChildren(el("h2", null, "Resident models"), renderModels(status.models || []));
    $("queue").replaceChildren(el("h2", null, "Queue"), renderQueue(status.queue || []));
    $("decisions").replaceChildren(el("h2", null, "Last decisions (newest first)"),
                                   renderDecisions(status.decisions || [], Date.parse(status.time)));
    const parts = ["vramgate " + (status.vramgate_version || "?"), "Ollama " + (status.ollama_version || "?") +
                   " at " + (status.upstream || "?"), "updated " + clock(status.time, NaN)];
    if (status.schema !== 1) parts.push("unknown status schema " + status.schema + ": this page may misread it");
    $("meta").textContent = parts.join(" \u00b7 ");
    document.body.dataset.loaded = "1";
  }

  function token() { return new URLSearchParams(location.hash.slice(1)).get("token"); }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = false;
    $("main").classList.toggle("stale", document.body.dataset.loaded === "1");
    document.body.dataset.error = "1";
  }

  let timer = null;

  async function refresh() {
    clearTimeout(timer);
    const abort = new AbortController();
    const deadline = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
    try {
      const t = token();
      const response = await fetch("status", {cache: "no-store", signal: abort.signal,
                                              headers: t ? {Authorization: "Bearer " + t} : {}});
      if (!response.ok) {
        let reason = response.statusText;
        try { reason = (await response.json()).error || reason; } catch (e) { /* not JSON */ }
        const hint = response.status === 401 ? " Open this page as \u2026/vramgate/#token=<admin_token>." : "";
        throw new Error("vramgate answered " + response.status + ": " + reason + "." + hint);
      }
      render(await response.json());
      $("error").hidden = true;
      $("main").classList.remove("stale");
      delete document.body.dataset.error;
    } catch (e) {
      const message = e.name === "AbortError" ? "vramgate did not answer within " + FETCH_TIMEOUT_MS / 1000 + " s."
                    : e instanceof TypeError ? "vramgate is not reachable (" + e.message + ")." : e.message;
      showError("Cannot read vramgate's status: " + message +
                (document.body.dataset.loaded === "1" ? " Showing the last status read." : ""));
    } finally {
      clearTimeout(deadline);
      clearTimeout(timer);  // one refresh loop, even when the fragment changed mid-fetch
      timer = setTimeout(refresh, REFRESH_MS);
    }
  }

  window.addEventListener("hashchange", refresh);
  refresh();
})();
"""

_BODY = """<header><h1>vramgate</h1><span id="meta">loading\u2026</span></header>
<div id="error" role="alert" hidden></div>
<main id="main">
<section id="gpus"><h2>GPU memory</h2><p class="empty">Loading\u2026</p></section>
<section id="models"></section>
<section id="queue"></section>
<section id="decisions"></section>
</main>
<noscript>This page needs JavaScript; the same data is at <a href="status">status</a> (JSON).</noscript>"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


PAGE: bytes = (
    '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
    '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
    '<link rel="icon" href="data:,">\n<title>vramgate</title>\n'
    f"<style>{STYLE}</style>\n</head>\n<body>\n{_BODY}\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
).encode()

# Only this page's own script and style, fetches to its own origin, the data: favicon.
CSP = (f"default-src 'none'; script-src {_sha256(SCRIPT)}; style-src {_sha256(STYLE)}; connect-src 'self'; "
       "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
