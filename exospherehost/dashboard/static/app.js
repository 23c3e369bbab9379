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

function fmtTime(ms) {
  if (!ms) return "—";
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
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
  if (!reply.ok) throw new Error(body.error || `${reply.status} ${reply.statusText}`);
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
// The SDK exposes no monotonic per-node counter (states settled so far), so the rate shown
// is the change of the backlog (queued + in flight + delayed) per second between polls:
// negative = draining, positive = growing. Samples carry the server's clock.
const samples = new Map(); // "ns/node" -> [{t, backlog}]

function recordStats(ns, nodes, timeMs) {
  for (const [node, s] of Object.entries(nodes)) {
    const key = `${ns}/${node}`;
    const list = samples.get(key) || [];
    if (!list.length || list[list.length - 1].t !== timeMs) {
      list.push({ t: timeMs, backlog: s.length + s.delayed });
    }
    while (list.length > 2 && timeMs - list[0].t > RATE_WINDOW_MS) list.shift();
    samples.set(key, list);
  }
}

function backlogRate(ns, node) {
  const list = samples.get(`${ns}/${node}`);
  if (!list || list.length < 2) return null;
  const first = list[0], last = list[list.length - 1];
  return (last.backlog - first.backlog) / ((last.t - first.t) / 1000);
}

function fmtRate(rate) {
  if (rate == null) return "Δ —";
  const r = Math.abs(rate) >= 10 ? Math.round(rate) : Math.round(rate * 10) / 10;
  return `Δ ${r > 0 ? "+" : ""}${r}/s`;
}

// ---- DAG ------------------------------------------------------------------------------
function clip(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

function dagSvg(ns, graph, nodes) {
  const L = graph.layout;
  const edges = L.edges.map((e) => (
    `<path class="edge ${e.kind}" d="${esc(e.path)}" data-source="${esc(e.source)}" ` +
    `data-target="${esc(e.target)}" marker-end="url(#${e.kind === "unites" ? "arrow-unites" : "arrow"})">` +
    `<title>${esc(e.source)} → ${esc(e.target)}${e.kind === "unites" ? " (unites)" : ""}</title></path>`
  )).join("");
  const boxes = L.boxes.map((b) => {
    const s = nodes[b.node_name];
    const busy = s && (s.length > 0 || s.delayed > 0);
    const cls = !s ? "" : busy ? "busy" : s.consumers === 0 ? "idle-nobody" : "";
    const x = b.x + 8;
    const figures = s
      ? `<text x="${x}" y="${b.y + 50}">queue ${s.length} · pend ${s.pending} · delay ${s.delayed}</text>` +
        `<text x="${x}" y="${b.y + 67}" class="rate">consumers ${s.consumers} · ${fmtRate(backlogRate(ns, b.node_name))}</text>`
      : `<text x="${x}" y="${b.y + 50}" class="nodename">not registered</text>`;
    return `<g class="node ${cls}" data-identifier="${esc(b.identifier)}">` +
      `<title>${esc(b.identifier)} (${esc(b.node_name)})</title>` +
      `<rect x="${b.x}" y="${b.y}" width="${L.box_w}" height="${L.box_h}" rx="6"></rect>` +
      `<text x="${x}" y="${b.y + 17}" class="ident">${esc(clip(b.identifier, 24))}</text>` +
      `<text x="${x}" y="${b.y + 32}" class="nodename">${esc(clip(b.node_name, 28))}</text>` +
      figures + "</g>";
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
    `<div class="legend">queue = on the stream (incl. in flight) · pend = delivered, unsettled · ` +
    `Δ = backlog change per second (5 s average)${unites}</div></div>`;
}

function nodesTable(ns, nodes) {
  const rows = Object.entries(nodes).map(([name, s]) => (
    `<tr data-node="${esc(name)}"><td>${esc(name)}</td><td class="num">${s.length}</td>` +
    `<td class="num">${s.pending}</td><td class="num">${s.delayed}</td>` +
    `<td class="num">${s.consumers}</td><td class="num">${fmtDuration(s.oldest_pending_ms)}</td>` +
    `<td class="num">${fmtRate(backlogRate(ns, name))}</td></tr>`
  )).join("");
  return `<div class="card"><h3>Nodes</h3><table><thead><tr><th>node</th><th class="num">queue</th>` +
    `<th class="num">pending</th><th class="num">delayed</th><th class="num">consumers</th>` +
    `<th class="num">oldest pending</th><th class="num">backlog Δ</th></tr></thead>` +
    `<tbody>${rows || `<tr><td colspan="7" class="muted">no registered nodes</td></tr>`}</tbody></table></div>`;
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
    const data = await api(`api/ns/${enc(ns)}`);
    recordStats(ns, data.nodes, data.time_ms);
    setCrumbs([[ns, null]]);
    const dead = `${data.dead.count}${data.dead.capped ? "+" : ""}`;
    const head = `<div class="toolbar"><h2>${esc(ns)}</h2>` +
      `<a href="#/ns/${enc(ns)}/dead" id="dead-link">dead letters: ${dead}</a>` +
      `<span class="muted" id="redis-memory">${esc(data.redis_memory.summary)}</span></div>`;
    const graphs = data.graphs.map((g) => graphCard(ns, g, data.nodes, true)).join("") ||
      `<div class="card muted">No graphs in this namespace.</div>`;
    return [["head", head], ["graphs", graphs], ["nodes", nodesTable(ns, data.nodes)]];
  },

  async graph({ ns, graph }) {
    const data = await api(`api/ns/${enc(ns)}/graphs/${enc(graph)}?count=50`);
    recordStats(ns, data.nodes, data.time_ms);
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
    const runs = `<div class="card"><h3>Runs <span class="muted">(newest ${data.runs.length})</span></h3>` +
      `<table id="runs"><thead><tr><th>run</th><th>status</th><th>created</th><th>finished</th>` +
      `<th class="num">took</th><th>per node: ✓ succeeded ✗ failed ⊘ pruned … pending ↻ retried</th></tr></thead>` +
      `<tbody>${rows || `<tr><td colspan="6" class="muted">no runs yet</td></tr>`}</tbody></table></div>`;
    return [["dag", graphCard(ns, data.graph, data.nodes, false)], ["runs", runs]];
  },

  async run({ ns, run }) {
    const data = await api(`api/ns/${enc(ns)}/runs/${enc(run)}`);
    const s = data.status;
    setCrumbs([[ns, `#/ns/${enc(ns)}`], [s.graph, `#/ns/${enc(ns)}/graph/${enc(s.graph)}`], [run, null]]);
    const took = s.finished_ms ? s.finished_ms - s.created_ms : null;
    const summary = `<h2>Run <span class="mono">${esc(run)}</span> <span id="run-status">${badge(s.status)}</span></h2>` +
      `<div class="card"><table><tbody><tr><th>graph</th><td>${esc(s.graph)}</td></tr>` +
      `<tr><th>created</th><td>${fmtTime(s.created_ms)}</td></tr>` +
      `<tr><th>finished</th><td>${fmtTime(s.finished_ms)} <span class="muted">(${fmtDuration(took)})</span></td></tr>` +
      `<tr><th>open states</th><td>${s.open}</td></tr></tbody></table></div>`;
    const counts = Object.entries(s.nodes).map(([id, c]) => (
      `<tr><td>${esc(id)}</td><td class="num">${c.pending}</td><td class="num">${c.succeeded}</td>` +
      `<td class="num">${c.failed}</td><td class="num">${c.pruned}</td><td class="num">${c.retried}</td>` +
      `<td class="num">${c.skipped}</td><td class="muted">${esc(s.notes[id] || "")}</td></tr>`
    )).join("");
    const nodes = `<div class="card"><h3>Per node</h3><table><thead><tr><th>identifier</th>` +
      `<th class="num">pending</th><th class="num">succeeded</th><th class="num">failed</th>` +
      `<th class="num">pruned</th><th class="num">retried</th><th class="num">skipped</th><th>note</th></tr></thead>` +
      `<tbody>${counts}</tbody></table></div>`;
    const hist = data.history.map((h) => (
      `<tr data-state="${esc(h.state_id)}"><td>${fmtTime(h.time_ms)}</td><td>${esc(h.identifier)}</td>` +
      `<td>${esc(h.node)}</td><td class="mono">${esc(h.state_id)}</td><td>${badge(h.status)}</td>` +
      `<td class="num">${h.attempt}</td><td class="err">${esc(h.error)}</td></tr>`
    )).join("");
    const more = data.history_total > data.history.length
      ? ` <span class="muted">(last ${data.history.length} of ${data.history_total})</span>` : "";
    const history = `<div class="card"><h3>States${more}</h3><table id="history"><thead><tr><th>settled</th>` +
      `<th>identifier</th><th>node</th><th>state</th><th>status</th><th class="num">attempt</th><th>error</th></tr></thead>` +
      `<tbody>${hist || `<tr><td colspan="7" class="muted">nothing settled yet</td></tr>`}</tbody></table></div>`;
    const res = data.results.map((r) => (
      `<tr><td>${esc(r.identifier)}</td><td class="mono">${esc(r.state)}</td>` +
      `<td><pre>${esc(JSON.stringify(r.outputs, null, 1))}</pre></td></tr>`
    )).join("");
    const results = `<div class="card"><h3>Results <span class="muted">(${data.results_total} leaf outputs)</span></h3>` +
      `<table id="results"><thead><tr><th>identifier</th><th>state</th><th>outputs</th></tr></thead>` +
      `<tbody>${res || `<tr><td colspan="3" class="muted">no results yet</td></tr>`}</tbody></table></div>`;
    return [["summary", summary], ["nodes", nodes], ["history", history], ["results", results]];
  },

  async dead({ ns }) {
    const data = await api(`api/ns/${enc(ns)}/dead?count=200`);
    setCrumbs([[ns, `#/ns/${enc(ns)}`], ["dead letters", null]]);
    const rows = data.dead.map((d) => {
      const run = d.run_id
        ? `<a class="mono" href="#/ns/${enc(ns)}/run/${enc(d.run_id)}">${esc(d.run_id)}</a>` : "—";
      return `<tr data-dead="${esc(d.id)}"><td>${fmtTime(d.time_ms)}</td><td>${esc(d.node)}</td>` +
        `<td>${run}${d.identifier ? ` <span class="muted">${esc(d.identifier)}</span>` : ""}</td>` +
        `<td class="num">${d.attempts} <span class="muted" title="deliveries">(${d.deliveries})</span></td>` +
        `<td><div class="err">${esc(d.error)}</div>` +
        `<details><summary>inputs &amp; traceback</summary><pre>${esc(JSON.stringify(d.inputs, null, 1))}</pre>` +
        `<pre class="err">${esc(d.traceback)}</pre></details></td>` +
        `<td><button class="redrive" data-dead="${esc(d.id)}">Redrive</button></td></tr>`;
    }).join("");
    const n = `${data.dead.length}${data.capped ? "+" : ""}`;
    const head = `<div class="toolbar"><h2>Dead letters <span class="muted">(${n})</span></h2>` +
      `<button id="redrive-all"${data.dead.length ? "" : " disabled"}>Redrive all</button></div>`;
    const table = `<div class="card"><table id="dead"><thead><tr><th>time</th><th>node</th><th>run</th>` +
      `<th class="num">attempts</th><th>error</th><th></th></tr></thead>` +
      `<tbody>${rows || `<tr><td colspan="6" class="muted">no dead letters</td></tr>`}</tbody></table></div>`;
    return [["head", head], ["table", table]];
  },
};

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] !== "ns" || !parts[1]) return { page: "home" };
  const ns = parts[1];
  if (parts[2] === "graph" && parts[3]) return { page: "graph", ns, graph: parts[3] };
  if (parts[2] === "run" && parts[3]) return { page: "run", ns, run: parts[3] };
  if (parts[2] === "dead") return { page: "dead", ns };
  return { page: "namespace", ns };
}

async function poll() {
  const mine = ++generation;
  clearTimeout(timer);
  const r = route();
  try {
    const sections = await pages[r.page](r);
    if (mine !== generation) return;
    renderSections(sections);
    statusEl.textContent = `updated ${fmtTime(Date.now()).slice(11)}`;
    statusEl.className = "muted";
  } catch (err) {
    if (mine !== generation) return;
    statusEl.textContent = `error: ${err.message}`;
    statusEl.className = "error";
  } finally {
    if (mine === generation) timer = setTimeout(poll, POLL_MS);
  }
}

// ---- actions --------------------------------------------------------------------------
async function post(path) {
  // The custom header is the server's CSRF check (a cross-site form cannot send it).
  return api(path, { method: "POST", headers: { "X-Exo-Dashboard": "1" } });
}

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button.redrive, button#redrive-all");
  if (!button) return;
  const { ns } = route();
  button.disabled = true;
  try {
    if (button.id === "redrive-all") {
      if (!confirm("Redrive every dead letter of this namespace?")) { button.disabled = false; return; }
      const reply = await post(`api/ns/${enc(ns)}/dead/redrive-all`);
      showFlash(`${reply.redriven} dead letter(s) put back on their streams`);
    } else {
      const reply = await post(`api/ns/${enc(ns)}/dead/${enc(button.dataset.dead)}/redrive`);
      showFlash(reply.redriven ? `${button.dataset.dead} put back on its stream`
        : `${button.dataset.dead} was already redriven`);
    }
  } catch (err) {
    showFlash(`redrive failed: ${err.message}`, true);
    button.disabled = false;
  }
  poll();
});

window.addEventListener("hashchange", () => {
  view.dataset.sections = ""; // a new page: rebuild its sections
  poll();
});
poll();
