// exospherehost dashboard: a hash-routed page that polls the JSON API about once a second.
// Vanilla JS on purpose: no build step, nothing to install. Every value from the API is
// user data (names, errors, outputs) and goes through esc() before it reaches innerHTML.
"use strict";

const POLL_MS = 1000;
const RATE_WINDOW_MS = 5000; // throughput is averaged over this many ms of samples
const view = document.getElementById("view");
const statusEl = document.getElementById("status");
const crumbs = document.getElementById("crumbs");
const flash = document.getElementById("flash");

let generation = 0; // bumps on every poll; a slower reply of an older poll is dropped
let timer = null;

// ---- helpers --------------------------------------------------------------------------
function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => (
    { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]
  ));
}
const enc = encodeURIComponent;
const pad = (n, w = 2) => String(n).padStart(w, "0");

// Times are the browser's local time with its UTC offset, e.g. "2026-12-01 15:40:37 UTC+01:00".
function tzName(d) {
  const off = -d.getTimezoneOffset(); // minutes east of UTC
  if (off === 0) return "UTC";
  const a = Math.abs(off);
  return `UTC${off > 0 ? "+" : "-"}${pad(Math.floor(a / 60))}:${pad(a % 60)}`;
}

function fmtClock(ms, seconds = true) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}${seconds ? `:${pad(d.getSeconds())}` : ""}`;
}

function fmtTime(ms) {
  if (!ms) return "—";
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${fmtClock(ms)} ${tzName(d)}`;
}

function fmtAgo(ms) {
  if (ms == null) return "—";
  const s = Math.round(ms / 1000);
  if (s < 2) return "just now";
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min ago`;
}

function fmtDuration(ms) {
  if (ms == null || ms < 0) return "—";
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60000)} m ${Math.round((ms % 60000) / 1000)} s`;
}

const badge = (s) => `<span class="badge ${esc(s)}">${esc(s)}</span>`;

// Replace an element's content only when it changed, so an unchanged table keeps its DOM
// (a button being clicked or text being selected survives the next poll).
const shown = new WeakMap(); // element -> the html it was last given
function setHTML(el, html) {
  if (shown.get(el) !== html) {
    el.innerHTML = html;
    shown.set(el, html);
  }
}

// A page is a list of [section id, html]; sections are kept across polls of one page.
function renderSections(sections) {
  const ids = sections.map(([id]) => id).join(",");
  if (view.dataset.sections !== ids) {
    view.innerHTML = sections.map(([id]) => `<section id="${esc(id)}"></section>`).join("");
    view.dataset.sections = ids;
  }
  for (const [id, html] of sections) setHTML(document.getElementById(id), html);
}

async function api(path, options) {
  const reply = await fetch(path, options);
  const body = await reply.json().catch(() => ({ error: reply.statusText }));
  if (!reply.ok) {
    const err = new Error(body.error || `${reply.status} ${reply.statusText}`);
    err.kind = body.kind || (reply.status >= 500 ? "server" : "error");
    err.status = reply.status;
    throw err;
  }
  return body;
}

function showFlash(text, isError) {
  flash.textContent = text;
  flash.className = isError ? "error" : "";
  flash.hidden = false;
  clearTimeout(showFlash.timer);
  showFlash.timer = setTimeout(() => { flash.hidden = true; }, 6000);
}

// ---- throughput -----------------------------------------------------------------------
// Every Runtime adds what its nodes did to 10-second buckets in Redis (done = succeeded or
// pruned, failed = raised); /throughput returns the last 15 minutes of them per node, so
// the chart is whole as soon as the page opens. Rates are per second.
const PALETTE = ["#2563eb", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#db2777", "#65a30d",
  "#7c3aed", "#ca8a04", "#0f766e"];
const RECENT_BUCKETS = 6; // "now" = the average of the last minute

function recentRate(series, bucketS) {
  const tail = series.slice(-RECENT_BUCKETS);
  if (!tail.length) return 0;
  return tail.reduce((a, b) => a + b, 0) / (tail.length * bucketS);
}

function fmtRate(rate) {
  if (rate == null) return "—";
  if (rate === 0) return "0/s";
  if (rate >= 10) return `${Math.round(rate)}/s`;
  if (rate >= 1) return `${rate.toFixed(1)}/s`;
  return `${rate.toFixed(2)}/s`;
}

// A round step for about four gridlines up to `peak`: 1, 2 or 5 times a power of ten.
function niceStep(peak) {
  const raw = peak > 0 ? peak / 4 : 0.25;
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

function throughputChart(t, nodeNames) {
  const W = 900, H = 230, L = 56, R = 12, T = 12, B = 34;
  const names = nodeNames.filter((n) => t.nodes[n]);
  const n = names.length ? t.nodes[names[0]].done.length : 0;
  const bucket = t.bucket_s;
  let peak = 0;
  for (const name of names) {
    for (const v of t.nodes[name].done) peak = Math.max(peak, v / bucket);
    for (const v of t.nodes[name].failed) peak = Math.max(peak, v / bucket);
  }
  const step = niceStep(peak);
  const top = Math.max(Math.ceil(peak / step - 1e-9), 1) * step;
  const levels = [];
  for (let v = 0; v <= top + step / 2; v += step) levels.push(v);
  const x = (i) => L + (n > 1 ? (i * (W - L - R)) / (n - 1) : 0);
  const y = (rate) => T + (H - T - B) * (1 - rate / top);
  const grid = levels.map((v) => (
    `<line class="grid" x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}"></line>` +
    `<text class="axis" x="${L - 6}" y="${y(v) + 4}" text-anchor="end">${esc(fmtRate(v))}</text>`
  )).join("");
  const endMs = t.start_ms + n * bucket * 1000;
  let ticks = "";
  for (let ms = Math.ceil(t.start_ms / 300000) * 300000; ms <= endMs; ms += 300000) {
    const i = (ms - t.start_ms) / (bucket * 1000);
    ticks += `<line class="grid" x1="${x(i)}" x2="${x(i)}" y1="${T}" y2="${H - B}"></line>` +
      `<text class="axis" x="${x(i)}" y="${H - B + 16}" text-anchor="middle">${fmtClock(ms, false)}</text>`;
  }
  const lines = names.map((name, k) => {
    const colour = PALETTE[nodeNames.indexOf(name) % PALETTE.length];
    const pts = (series) => series.map((v, i) => `${x(i).toFixed(1)},${y(v / bucket).toFixed(1)}`).join(" ");
    const s = t.nodes[name];
    const failedLine = s.failed.some((v) => v > 0)
      ? `<polyline class="failed" data-node="${esc(name)}" stroke="${colour}" points="${pts(s.failed)}">` +
        `<title>${esc(name)}: failed/s</title></polyline>` : "";
    return `<polyline class="done" data-node="${esc(name)}" stroke="${colour}" points="${pts(s.done)}">` +
      `<title>${esc(name)}: done/s</title></polyline>${failedLine}`;
  }).join("");
  const zone = tzName(new Date(endMs));
  const caption = `<text class="axis" x="${W - R}" y="${H - 4}" text-anchor="end">` +
    `last ${Math.round((n * bucket) / 60)} min, ${bucket} s buckets, ${esc(zone)}</text>`;
  const legend = names.map((name) => {
    const colour = PALETTE[nodeNames.indexOf(name) % PALETTE.length];
    const s = t.nodes[name];
    return `<span class="key" data-node="${esc(name)}"><span class="swatch" style="background:${colour}"></span>` +
      `${esc(name)} <span class="muted">${fmtRate(recentRate(s.done, bucket))} done · ` +
      `<span class="${recentRate(s.failed, bucket) > 0 ? "fail" : ""}">${fmtRate(recentRate(s.failed, bucket))} failed</span></span></span>`;
  }).join("");
  const empty = names.length ? "" :
    `<text class="axis" x="${W / 2}" y="${H / 2}" text-anchor="middle">no registered nodes</text>`;
  return `<div class="card" id="throughput"><h3>Throughput <span class="muted">done/s (solid) and ` +
    `failed/s (dashed) per node</span></h3>` +
    `<svg class="chart" viewBox="0 0 ${W} ${H}">` +
    `${grid}${ticks}${lines}${caption}${empty}</svg><div class="legend keys">${legend}</div></div>`;
}

// ---- DAG ------------------------------------------------------------------------------
// Queue figures belong to a node type, which many graphs (and identifiers) may share: they
// are shown once, in the Nodes table, not in every box that uses the type. A box says only
// what is true of it here: its identifier, its node, and whether anything serves that node.
function dagSvg(ns, graph, nodes) {
  const L = graph.layout;
  const edges = L.edges.map((e) => (
    `<path class="edge ${e.kind}" d="${esc(e.path)}" data-source="${esc(e.source)}" ` +
    `data-target="${esc(e.target)}" marker-end="url(#${e.kind === "unites" ? "arrow-unites" : "arrow"})">` +
    `<title>${esc(e.source)} → ${esc(e.target)}${e.kind === "unites" ? " (unites)" : ""}</title></path>`
  )).join("");
  const fit = L.box_w - 16; // text is shortened to this width once drawn (fitTexts)
  const boxes = L.boxes.map((b) => {
    const s = nodes[b.node_name];
    const unregistered = !s || s.registered === false; // (a stream no Runtime registered)
    const cls = unregistered ? "unregistered" : s.consumers === 0 ? "idle-nobody" : "";
    const x = b.x + 8;
    const note = unregistered ? "not registered: no Runtime serves it"
      : s.consumers === 0 ? "no worker serves it" : "";
    return `<g class="node ${cls}" data-identifier="${esc(b.identifier)}" data-node="${esc(b.node_name)}">` +
      `<title>${esc(b.identifier)} (${esc(b.node_name)})${note ? ` — ${esc(note)}` : ""}</title>` +
      `<rect x="${b.x}" y="${b.y}" width="${L.box_w}" height="${L.box_h}" rx="6"></rect>` +
      `<text x="${x}" y="${b.y + 20}" class="ident" data-fit="${fit}">${esc(b.identifier)}</text>` +
      `<text x="${x}" y="${b.y + 37}" class="nodename" data-fit="${fit}">${esc(b.node_name)}</text>` +
      (note ? `<text x="${x}" y="${b.y + 52}" class="warn" data-fit="${fit}">${esc(note)}</text>` : "") +
      "</g>";
  }).join("");
  return `<svg class="dag" data-graph="${esc(graph.name)}" width="${L.width}" height="${L.height}" ` +
    `viewBox="0 0 ${L.width} ${L.height}">${edges}${boxes}</svg>`;
}

function graphCard(ns, graph, nodes, linked) {
  const title = linked
    ? `<a href="#/ns/${enc(ns)}/graph/${enc(graph.name)}">${esc(graph.name)}</a>`
    : esc(graph.name);
  const errors = graph.validation_errors.length
    ? `<ul class="err">${graph.validation_errors.map((e) => `<li>${esc(e)}</li>`).join("")}</ul>`
    : "";
  const unites = graph.layout.edges.some((e) => e.kind === "unites")
    ? ` · <span class="dash"></span> unites (fan-in)` : "";
  return `<div class="card graph" data-graph="${esc(graph.name)}"><h3>${title} ` +
    `<span class="muted">v${esc(graph.version)}</span> ${badge(graph.validation_status)}</h3>` +
    `${errors}${dagSvg(ns, graph, nodes)}` +
    `<div class="legend">boxes: identifier, node; queue figures per node in the Nodes table${unites}</div></div>`;
}

// Which graphs use each node type (a node's queue is shared by all of them).
function usedBy(graphs) {
  const out = {};
  for (const g of graphs) {
    for (const b of g.layout.boxes) {
      (out[b.node_name] = out[b.node_name] || new Set()).add(g.name);
    }
  }
  return out;
}

function nodeFigures(ns, nodes, tput, users, only) {
  const names = Object.keys(nodes).filter((n) => !only || only.has(n));
  const notes = names.some((n) => nodes[n].note); // the column only when there is one
  const rows = names.map((name) => {
    const s = nodes[name];
    const t = tput && tput.nodes[name];
    const done = t ? recentRate(t.done, tput.bucket_s) : null;
    const failed = t ? recentRate(t.failed, tput.bucket_s) : null;
    const graphs = [...(users[name] || [])].sort().map((g) => (
      `<a href="#/ns/${enc(ns)}/graph/${enc(g)}">${esc(g)}</a>`)).join(", ");
    return `<tr data-node="${esc(name)}"><td class="name" title="${esc(name)}">${esc(name)}</td>` +
      `<td class="num queue">${s.length}</td><td class="num">${s.pending}</td><td class="num">${s.delayed}</td>` +
      `<td class="num">${s.consumers}</td><td class="num">${fmtDuration(s.oldest_pending_ms)}</td>` +
      `<td class="num done-rate">${fmtRate(done)}</td>` +
      `<td class="num failed-rate${failed ? " fail" : ""}">${fmtRate(failed)}</td>` +
      `<td class="used">${graphs || `<span class="muted">—</span>`}</td>` +
      (notes ? `<td class="note${s.note ? " warn" : ""}">${esc(s.note || "")}</td>` : "") + "</tr>";
  }).join("");
  return `<div class="card" id="nodes-card"><h3>Nodes <span class="muted">(queue figures once per node type; ` +
    `rates: last minute)</span></h3><table id="nodes"><thead><tr><th>node</th><th class="num">queue</th>` +
    `<th class="num">pending</th><th class="num">delayed</th><th class="num">consumers</th>` +
    `<th class="num">oldest pending</th><th class="num">done/s</th><th class="num">failed/s</th>` +
    `<th>used by graphs</th>${notes ? "<th>note</th>" : ""}</tr></thead>` +
    `<tbody>${rows || `<tr><td colspan="10" class="muted">no node streams</td></tr>`}</tbody></table>` +
    `<div class="legend">queue = on the stream (incl. in flight) · pending = delivered, unsettled</div></div>`;
}

// ---- pages ----------------------------------------------------------------------------
function setCrumbs(parts) {
  setHTML(crumbs, parts.map(([label, href]) => (
    `<span class="sep">/</span>` + (href ? `<a href="${href}">${esc(label)}</a>` : esc(label))
  )).join(""));
}

const pages = {
  async home() {
    const data = await api("api/namespaces");
    if (data.pinned) { location.replace(`#/ns/${enc(data.pinned)}`); return []; }
    setCrumbs([]);
    const items = data.namespaces.map((ns) => (
      `<li><a href="#/ns/${enc(ns)}" data-namespace="${esc(ns)}">${esc(ns)}</a></li>`
    )).join("");
    return [["namespaces", `<h2>Namespaces</h2><div class="card">` +
      (items ? `<ul>${items}</ul>` : `<p class="muted">No namespace has registered nodes yet.</p>`) +
      `</div>`]];
  },

  async namespace({ ns }) {
    const [data, tput, work] = await Promise.all([
      api(`api/ns/${enc(ns)}`), api(`api/ns/${enc(ns)}/throughput`), api(`api/ns/${enc(ns)}/workers`),
    ]);
    setCrumbs([[ns, null]]);
    const dead = `${data.dead.count}${data.dead.capped ? "+" : ""}`;
    const head = `<div class="toolbar"><h2>${esc(ns)}</h2>` +
      `<a href="#/ns/${enc(ns)}/runs" id="runs-link">runs</a>` +
      `<a href="#/ns/${enc(ns)}/nodes" id="nodes-link">node schemas</a>` +
      `<a href="#/ns/${enc(ns)}/workers" id="workers-link">workers: ${work.serving} serving</a>` +
      `<a href="#/ns/${enc(ns)}/dead" id="dead-link">dead letters: ${dead}</a>` +
      `<span class="muted" id="redis-memory">${esc(data.redis_memory.summary)}</span></div>`;
    const graphs = data.graphs.map((g) => graphCard(ns, g, data.nodes, true)).join("") ||
      `<div class="card muted">No graphs in this namespace.</div>`;
    const nodeNames = Object.keys(data.nodes);
    return [["head", head], ["nodes", nodeFigures(ns, data.nodes, tput, usedBy(data.graphs))],
      ["chart", throughputChart(tput, nodeNames)], ["graphs", graphs]];
  },

  async workers({ ns }) {
    const data = await api(`api/ns/${enc(ns)}/workers`);
    setCrumbs([[ns, `#/ns/${enc(ns)}`], ["workers", null]]);
    const num = (v) => `<td class="num">${v == null ? "—" : esc(v)}</td>`;
    const rows = data.workers.map((w) => (
      `<tr data-consumer="${esc(w.consumer)}" class="worker ${esc(w.state)}">` +
      `<td class="state">${badge(w.state)}</td>` +
      `<td class="consumer mono" title="${esc(w.consumer)}">${esc(w.consumer)}</td>` +
      `<td class="host" title="${esc(w.host || "")}">${esc(w.host || "—")}</td>${num(w.pid)}` +
      `<td class="nodes">${(w.nodes || []).map((n) => `<span class="chip">${esc(n)}</span>`).join("")}</td>` +
      `${num(w.concurrency)}<td class="num inflight">${w.inflight == null ? "—" : w.inflight}</td>` +
      `${num(w.pending)}<td class="num processed">${w.processed == null ? "—" : w.processed}</td>` +
      `<td class="num failed${w.failed ? " fail" : ""}">${w.failed == null ? "—" : w.failed}</td>` +
      `<td class="seen">${fmtAgo(w.last_seen_ms)}</td><td class="started">${fmtTime(w.started_ms)}</td></tr>`
    )).join("");
    const head = `<div class="toolbar"><h2>Workers <span class="muted">(${data.serving} serving, ` +
      `${data.workers.length} known)</span></h2></div>`;
    const table = `<div class="card"><table id="workers"><thead><tr><th>state</th><th>consumer</th>` +
      `<th>host</th><th class="num">pid</th><th>nodes</th><th class="num">concurrency</th>` +
      `<th class="num">in flight</th><th class="num">pending</th><th class="num">processed</th>` +
      `<th class="num">failed</th><th>last seen</th><th>started</th></tr></thead>` +
      `<tbody>${rows || `<tr><td colspan="12" class="muted">no worker has served this namespace in the last hour</td></tr>`}` +
      `</tbody></table><div class="legend">serving = wrote its record in the last 30 s · stopped = ` +
      `left cleanly · lost = went silent (killed, hung or cut off) · unknown = in a consumer group ` +
      `without a record (an older Runtime, or silent for over an hour) · processed / failed: ` +
      `executions since it started · in flight: read, not settled · pending: held in the groups</div></div>`;
    return [["head", head], ["table", table]];
  },

  async graph({ ns, graph }) {
    const [data, tput] = await Promise.all([
      api(`api/ns/${enc(ns)}/graphs/${enc(graph)}?count=50`), api(`api/ns/${enc(ns)}/throughput`),
    ]);
    setCrumbs([[ns, `#/ns/${enc(ns)}`], [graph, null]]);
    const rows = data.runs.map((r) => {
      const counts = Object.entries(r.nodes).map(([id, c]) => (
        `<span title="pending ${c.pending}, succeeded ${c.succeeded}, failed ${c.failed}, ` +
        `pruned ${c.pruned}, retried ${c.retried}">${esc(id)}: ${c.succeeded}✓` +
        `${c.failed ? ` ${c.failed}✗` : ""}${c.pruned ? ` ${c.pruned}⊘` : ""}` +
        `${c.pending ? ` ${c.pending}…` : ""}${c.retried ? ` ↻${c.retried}` : ""}</span>`
      )).join("");
      const took = r.finished_ms ? r.finished_ms - r.created_ms : null;
      return `<tr data-run="${esc(r.run_id)}"><td class="mono"><a href="#/ns/${enc(ns)}/run/${enc(r.run_id)}">` +
        `${esc(r.run_id)}</a></td><td class="status">${badge(r.status)}</td>` +
        `<td>${fmtTime(r.created_ms)}</td><td>${fmtTime(r.finished_ms)}</td>` +
        `<td class="num">${fmtDuration(took)}</td><td class="counts">${counts}</td></tr>`;
    }).join("");
    const all = `<a id="graph-runs-link" href="#/ns/${enc(ns)}/runs?graph=${enc(graph)}">all runs, with filters</a>`;
    const runs = `<div class="card"><h3>Runs <span class="muted">(newest ${data.runs.length})</span> ${all}</h3>` +
      `<table id="runs"><thead><tr><th>run</th><th>status</th><th>created</th><th>finished</th>` +
      `<th class="num">took</th><th>per node: ✓ succeeded ✗ failed ⊘ pruned … pending ↻ retried</th></tr></thead>` +
      `<tbody>${rows || `<tr><td colspan="6" class="muted">no runs yet</td></tr>`}</tbody></table></div>`;
    const mine = new Set(data.graph.layout.boxes.map((b) => b.node_name));
    const users = usedBy([data.graph]);
    return [["dag", graphCard(ns, data.graph, data.nodes, false)], ["template", templateCard(data.graph)],
      ["nodes", nodeFigures(ns, data.nodes, tput, users, mine)],
      ["chart", throughputChart(tput, [...mine].filter((n) => data.nodes[n]).sort())], ["runs", runs],
      ["delete", deleteCard(ns, graph)]];
  },

  // run({ ns, run, query }): static/runpage.js (the DAG of states, details, retry).

  // static/dead.js: paging, filters, purge.
  dead({ ns }) { return deadLettersPage(ns); },
};

function route() {
  // "#/ns/NS/runs?graph=g&status=FAILED": the query part carries a page's filters.
  const [path, search] = location.hash.replace(/^#\/?/, "").split("?", 2);
  const query = new URLSearchParams(search || "");
  const parts = path.split("/").map(decodeURIComponent);
  if (parts[0] !== "ns" || !parts[1]) return { page: "home" };
  const ns = parts[1];
  if (parts[2] === "runs") return { page: "runs", ns, query };
  if (parts[2] === "nodes") return { page: "nodes", ns };
  if (parts[2] === "graph" && parts[3]) return { page: "graph", ns, graph: parts[3] };
  if (parts[2] === "run" && parts[3]) return { page: "run", ns, run: parts[3], query };
  if (parts[2] === "dead") return { page: "dead", ns };
  if (parts[2] === "workers") return { page: "workers", ns };
  return { page: "namespace", ns };
}

async function poll() {
  const mine = ++generation;
  clearTimeout(timer);
  const r = route();
  try {
    const sections = await pages[r.page](r);
    if (mine !== generation) return;
    if (!sections.length) return; // redirected
    if (view.dataset.state) { view.dataset.state = ""; view.dataset.sections = ""; }
    renderSections(sections);
    fitTexts(view);
    statusEl.textContent = `updated ${fmtTime(Date.now()).slice(11)}`;
    statusEl.className = "muted";
  } catch (err) {
    if (mine !== generation) return;
    showError(r, err);
  } finally {
    if (mine === generation) timer = setTimeout(poll, POLL_MS);
  }
}

// Whatever went wrong replaces the page: nothing stale stays on screen looking current.
const sentence = (text) => esc(String(text).replace(/[.\s]+$/, "")) + ".";

function errorState(r, err) {
  const ns = r.ns;
  const back = ns ? `<a href="#/ns/${enc(ns)}">back to ${esc(ns)}</a> · ` : "";
  const home = `<a href="#/">all namespaces</a>`;
  switch (err.kind) {
    case "unknown_namespace":
      return ["Unknown namespace", sentence(err.message), home];
    case "not_found":
      return [r.page === "run" ? "Run not found" : r.page === "graph" ? "Graph not found" : "Not found",
        sentence(err.message) + (r.page === "run" ? " Finished runs are kept for the Runtimes' " +
          "run_retention (1 day by default)." : ""), back + home];
    case "redis_down":
      return ["Redis unreachable", `${sentence(err.message)} Nothing shown here would be current; ` +
        "the page retries every second.", ""];
    case "unauthorized":
      return ["Token required", sentence(err.message), ""];
    case "bad_request":
      return ["Bad request", sentence(err.message), back + home];
    default:
      if (err instanceof TypeError) { // fetch itself failed: the dashboard server is gone
        return ["Dashboard unreachable", `The dashboard server does not answer (${esc(err.message)}); ` +
          "the page retries every second.", ""];
      }
      return ["Error", sentence(err.message), back + home];
  }
}

function showError(r, err) {
  const [title, text, links] = errorState(r, err);
  const what = {
    graph: r.graph, run: r.run, dead: "dead letters", workers: "workers", runs: "runs", nodes: "nodes",
  }[r.page];
  setCrumbs(r.ns ? [[r.ns, what ? `#/ns/${enc(r.ns)}` : null], ...(what ? [[what, null]] : [])] : []);
  const kind = err.kind || "unreachable";
  if (view.dataset.state !== kind || shown.get(view) !== text) {
    view.innerHTML = `<div class="card state-error" id="page-state" data-kind="${esc(kind)}">` +
      `<h2>${esc(title)}</h2><p>${text}</p>${links ? `<p>${links}</p>` : ""}</div>`;
    shown.set(view, text);
    view.dataset.state = kind;
    view.dataset.sections = "";
  }
  statusEl.textContent = `${title.toLowerCase()} · ${fmtTime(Date.now()).slice(11)}`;
  statusEl.className = "error";
}

// SVG text does not wrap or clip: shorten each marked text to its width, with an ellipsis
// (the box's <title> keeps the full name).
function fitTexts(root) {
  for (const el of root.querySelectorAll("text[data-fit]")) {
    const max = Number(el.dataset.fit);
    if (el.dataset.fitted === el.textContent) continue;
    const full = el.textContent;
    if (el.getComputedTextLength() > max) {
      let lo = 0, hi = full.length;
      while (lo < hi) { // longest prefix that fits with "…"
        const mid = Math.ceil((lo + hi) / 2);
        el.textContent = `${full.slice(0, mid)}…`;
        if (el.getComputedTextLength() <= max) lo = mid; else hi = mid - 1;
      }
      el.textContent = `${full.slice(0, lo)}…`;
    }
    el.dataset.fitted = el.textContent;
  }
}

// ---- actions --------------------------------------------------------------------------
async function post(path) {
  // The custom header is the server's CSRF check (a cross-site form cannot send it).
  return api(path, { method: "POST", headers: { "X-Exo-Dashboard": "1" } });
}

// Dead-letter actions (redrive, delete, purge): static/dead.js.

window.addEventListener("hashchange", () => {
  view.dataset.sections = ""; // a new page: rebuild its sections
  poll();
});
// After every script of the page (operate.js adds pages) has run.
document.addEventListener("DOMContentLoaded", poll);
