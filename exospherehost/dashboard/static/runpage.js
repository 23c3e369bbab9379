// The run page (issue 12.8), on top of app.js and operate.js (their helpers esc, enc, api,
// post, badge, fmtTime, fmtDuration, showFlash, setCrumbs, route, poll are shared globals):
// the run's summary, the DAG of its states (laid out by the server: dashboard/rundag.py),
// the details of the state picked in it, its history and results, and the Retry (state)
// and Retry failed (run) actions next to Cancel (operate.js).
"use strict";

const num = (n) => Number(n).toLocaleString("en-US");

// The state or group picked in the DAG lives in the address (#/ns/NS/run/RUN?state=ID or
// ?group=g:N), so it survives polls and can be linked.
function runHash(ns, run, pick) {
  const params = new URLSearchParams(pick || {});
  const s = params.toString();
  return `#/ns/${enc(ns)}/run/${enc(run)}${s ? `?${s}` : ""}`;
}

// A state's times to the millisecond (its steps are often within one second).
function fmtTimeMs(ms) {
  if (!ms) return "—";
  const t = fmtTime(ms); // "YYYY-MM-DD HH:MM:SS UTC+hh:mm"
  const cut = t.indexOf(" ", 11);
  return `${t.slice(0, cut)}.${pad(new Date(ms).getMilliseconds(), 3)}${t.slice(cut)}`;
}

const STATUS_SHORT = {
  SUCCEEDED: "✓", FAILED: "✗", PRUNED: "⊘", RETRYING: "↻", PENDING: "pending", RETRIED: "retried",
};
// As dashboard/rundag.py short_id: ids start with a per-process prefix, the counter is last.
const shortId = (id) => (id.length <= 10 ? id : `…${id.slice(-8)}`);

function statusLine(statuses) {
  return Object.entries(statuses).map(([s, n]) => `${num(n)} ${STATUS_SHORT[s] || s}`).join(" ");
}

// A group's status counts as a bar along the bottom of its box, worst first.
function statusBar(box, w, h) {
  let x = box.x + 1;
  const y = box.y + h - 6;
  return Object.entries(box.statuses).map(([s, n]) => {
    const width = Math.max(((w - 2) * n) / box.count, 2);
    const seg = `<rect class="bar ${esc(s)}" x="${x.toFixed(1)}" y="${y}" width="${width.toFixed(1)}" height="5"></rect>`;
    x += width;
    return seg;
  }).join("");
}

function runDagSvg(ns, run, dag, picked) {
  const W = dag.box_w, H = dag.box_h, fit = W - 16;
  const edges = dag.edges.map((e) => (
    `<path class="edge" d="${esc(e.path)}" data-source="${esc(e.source)}" data-target="${esc(e.target)}" ` +
    `marker-end="url(#arrow)"></path>`
  )).join("");
  const boxes = dag.boxes.map((b) => {
    const group = b.kind === "group";
    const pick = group ? { group: b.key } : { state: b.state_id };
    const selected = picked === b.key ? " selected" : "";
    const retried = b.retried_as ? " retried" : "";
    const x = b.x + 10;
    const title = group
      ? `${num(b.count)} states of ${b.identifier} (${b.node}): ${Object.entries(b.statuses).map(([s, n]) => `${num(n)} ${s}`).join(", ")}`
      : `${b.identifier} (${b.node || "node not known yet"}) ${b.status}, attempt ${b.attempt}, state ${b.state_id}` +
        (b.retried_as ? `; retried as ${b.retried_as}` : "") + (b.retry_of ? `; a retry of ${b.retry_of}` : "");
    const line1 = group ? `${b.identifier} ×${num(b.count)}` : b.identifier;
    const line2 = group ? b.node : `${b.node || "not settled yet"}${b.attempt > 1 ? ` · try ${b.attempt}` : ""}` +
      (b.retry_of ? " · a retry" : ""); // of which: the title and the panel say
    const line3 = group ? statusLine(b.statuses)
      : b.retried_as ? `${b.status} · retried ↻` : `${b.status} · ${b.short}`;
    return `<a href="${esc(runHash(ns, run, pick))}" class="sbox ${esc(b.kind)} ${esc(b.status)}${selected}${retried}" ` +
      `data-key="${esc(b.key)}" data-identifier="${esc(b.identifier)}" data-status="${esc(b.status)}"` +
      `${group ? ` data-count="${b.count}"` : ` data-state="${esc(b.state_id)}"`}>` +
      `<title>${esc(title)}</title>` +
      `<rect x="${b.x}" y="${b.y}" width="${W}" height="${H}" rx="6"></rect>` +
      `<rect class="stripe" x="${b.x}" y="${b.y}" width="5" height="${H}" rx="2"></rect>` +
      `<text x="${x}" y="${b.y + 18}" class="ident" data-fit="${fit}">${esc(line1)}</text>` +
      `<text x="${x}" y="${b.y + 34}" class="nodename" data-fit="${fit}">${esc(line2)}</text>` +
      `<text x="${x}" y="${b.y + 49}" class="line3" data-fit="${fit}">${esc(line3)}</text>` +
      (group ? statusBar(b, W, H) : "") + "</a>";
  }).join("");
  return `<svg class="dag run-dag" width="${dag.width}" height="${dag.height}" ` +
    `viewBox="0 0 ${dag.width} ${dag.height}">${edges}${boxes}</svg>`;
}

function dagCard(ns, run, data, picked) {
  const dag = data.dag;
  if (!dag.states) {
    const why = data.history_total
      ? "No state records for this run: its Runtimes keep none (Runtime(state_records=\"off\"))."
      : "No state created yet.";
    return `<div class="card" id="run-dag-card"><h3>States</h3><p class="muted">${esc(why)}</p></div>`;
  }
  const age = dag.age_ms >= 1500
    ? ` <span class="muted" id="dag-age">(read ${Math.round(dag.age_ms / 1000)} s ago)</span>` : "";
  const legend = ["SUCCEEDED", "FAILED", "RETRYING", "PENDING", "PRUNED", "RETRIED"].map((s) => (
    `<span class="key"><span class="swatch-box ${s}"></span>${s === "RETRIED" ? "retried (re-run as a new state)" : s.toLowerCase()}</span>`)).join("");
  const note = dag.note ? `<div class="legend" id="dag-note">${esc(dag.note)}.</div>` : "";
  // A unite that did not fire has no state to draw: say so under the drawing.
  const notes = Object.entries(data.status.notes).map(([id, why]) => (
    `<div class="dag-unfired" data-identifier="${esc(id)}"><b>${esc(id)}</b>: ${esc(why)}</div>`)).join("");
  return `<div class="card" id="run-dag-card"><h3>States <span class="muted">(${num(dag.states)}; ` +
    `click one for its details)</span>${age}</h3>${note}` +
    `<div class="dag-scroll">${runDagSvg(ns, run, dag, picked)}</div>${notes}` +
    `<div class="legend keys">${legend}<span class="key">box: identifier · node · status · ` +
    `state id (its end)</span></div></div>`;
}

// ---- details of the picked state or group -------------------------------------------------
function isTruncated(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value) &&
    Object.prototype.hasOwnProperty.call(value, "__truncated__");
}

function truncatedBlock(cls, value, why) {
  return `<div class="truncated ${esc(cls)}"><span class="trunc-mark">truncated: ` +
    `${num(value.__truncated__)} bytes, ${esc(why)}; its start:</span><pre>${esc(value.preview)}…</pre></div>`;
}

function valueBlock(cls, label, value) {
  if (isTruncated(value)) {
    return `<h4>${esc(label)}</h4>${truncatedBlock(cls, value, "over the per-field cap of state records")}`;
  }
  const text = typeof value === "string" ? value : JSON.stringify(value, null, 1);
  return `<h4>${esc(label)}</h4><pre class="${esc(cls)}">${esc(text)}</pre>`;
}

const RETRYABLE = new Set(["SUCCEEDED", "FAILED", "PRUNED"]);

function statePanel(ns, run, s) {
  const link = (id) => `<a class="mono" href="${esc(runHash(ns, run, { state: id }))}">${esc(id)}</a>`;
  const took = s.finished_ms && s.started_ms ? s.finished_ms - s.started_ms : null;
  // A state is retried once: after that, its retry is the one to retry.
  const retry = RETRYABLE.has(s.status) && !s.retried_as
    ? `<button type="button" id="retry-state" data-state="${esc(s.state_id)}">Retry</button>` : "";
  const fact = ([k, v]) => `<div class="fact"><span class="k">${k}</span> <span class="f-${k.replace(" ", "-")}">${v}</span></div>`;
  const who = [
    ["identifier", esc(s.identifier || "—")], ["node", esc(s.node || "— (not settled yet)")],
    ["attempt", s.attempt ? esc(s.attempt) : "— (not executed yet)"],
    ["worker", s.worker ? `<span class="mono">${esc(s.worker)}</span>` : "—"],
    ["parents", s.parents.length ? s.parents.map(link).join(" ") : `<span class="muted">none: a root state</span>`],
    ...(s.retry_of ? [["retry of", link(s.retry_of)]] : []),
    ...(s.retried_as ? [["retried as", link(s.retried_as)]] : []),
  ];
  const when = [
    ["created", fmtTimeMs(s.created_ms)], ["queued", fmtTimeMs(s.queued_ms)],
    ["started", fmtTimeMs(s.started_ms)],
    ["finished", `${fmtTimeMs(s.finished_ms)}${took != null ? ` <span class="muted">(ran ${fmtDuration(took)})</span>` : ""}`],
  ];
  const facts = `<div>${who.map(fact).join("")}</div><div>${when.map(fact).join("")}</div>`;
  let body = "";
  if (s.error != null) {
    const label = s.status === "RETRYING" ? "Error (of the failed attempt; a retry is pending)" : "Error";
    body += valueBlock("err", label, s.error);
  }
  if (s.pruned != null) body += valueBlock("pruned", "Pruned with", s.pruned);
  if (s.outputs != null) body += valueBlock("outputs", "Outputs", s.outputs);
  if (s.inputs != null) body += valueBlock("inputs", "Inputs", s.inputs);
  if (s.status === "PENDING") body += `<p class="muted">Created, not settled yet: its record is written when it settles.</p>`;
  return `<div class="card state-panel" id="state-panel" data-state="${esc(s.state_id)}">` +
    `<h3>State <span class="mono">${esc(s.state_id)}</span> <span id="state-status">${badge(s.status)}</span> ${retry}` +
    ` <a class="close" href="${esc(runHash(ns, run))}" title="close">close ✕</a></h3>` +
    `<div class="facts">${facts}</div>${body}</div>`;
}

function groupPanel(ns, run, box) {
  const counts = Object.entries(box.statuses).map(([s, n]) => `${num(n)} ${badge(s)}`).join(" ");
  const rows = box.members.map((m) => (
    `<tr data-state="${esc(m.state_id)}"><td><a class="mono" href="${esc(runHash(ns, run, { state: m.state_id }))}">` +
    `${esc(m.state_id)}</a></td><td>${badge(m.status)}${m.retried_as ? ` <span class="muted">retried as ${esc(shortId(m.retried_as))}</span>` : ""}</td>` +
    `<td class="num">${esc(m.attempt || "—")}</td></tr>`
  )).join("");
  const more = !box.members.length
    ? `<p class="muted">None listed: a drawing lists 1,000 states at most in all; ` +
      `<span class="mono">exosphere runs show ${esc(run)} --children 0</span> lists them.</p>`
    : box.count > box.members.length
      ? `<p class="muted">${num(box.members.length)} of ${num(box.count)} listed, not SUCCEEDED first.</p>` : "";
  return `<div class="card state-panel" id="group-panel" data-key="${esc(box.key)}">` +
    `<h3>${num(box.count)} states of <span class="mono">${esc(box.identifier)}</span> ` +
    `<span class="muted">(${esc(box.node)})</span> <a class="close" href="${esc(runHash(ns, run))}">close ✕</a></h3>` +
    `<p>${counts}</p>${more}<table id="group-members"><thead><tr><th>state</th><th>status</th>` +
    `<th class="num">attempt</th></tr></thead><tbody>${rows}</tbody></table></div>`;
}

async function pickedPanel(ns, run, data, query) {
  const state = query.get("state");
  const group = query.get("group");
  if (group) {
    const box = data.dag.boxes.find((b) => b.key === group);
    return box ? groupPanel(ns, run, box)
      : `<div class="card state-panel muted" id="group-panel">That group is no longer drawn.</div>`;
  }
  if (!state) return "";
  try {
    const got = await api(`api/ns/${enc(ns)}/runs/${enc(run)}/states/${enc(state)}`);
    return statePanel(ns, run, got.state);
  } catch (err) {
    if (err.kind !== "not_found") throw err;
    return `<div class="card state-panel state-error" id="state-panel" data-missing="1">` +
      `<h3>State <span class="mono">${esc(state)}</span> not found</h3><p>${esc(err.message)}</p></div>`;
  }
}

// ---- the page -------------------------------------------------------------------------
function failedCount(s) {
  return Object.values(s.nodes).reduce((n, c) => n + c.failed, 0);
}

let lastPicked = null;

pages.run = async function runPage({ ns, run, query }) {
  const data = await api(`api/ns/${enc(ns)}/runs/${enc(run)}`);
  const panel = await pickedPanel(ns, run, data, query);
  const s = data.status;
  setCrumbs([[ns, `#/ns/${enc(ns)}`], [s.graph, `#/ns/${enc(ns)}/graph/${enc(s.graph)}`], [run, null]]);
  const took = s.finished_ms ? s.finished_ms - s.created_ms : null;
  const cancel = s.status === "RUNNING"
    ? ` <button type="button" id="cancel-run" class="danger">Cancel run</button>` : "";
  const failed = failedCount(s);
  const retryFailed = s.status === "FAILED" || (s.status === "RUNNING" && failed)
    ? ` <button type="button" id="retry-failed">Retry failed</button>` : "";
  const summary = `<h2>Run <span class="mono">${esc(run)}</span> <span id="run-status">${badge(s.status)}</span>${cancel}${retryFailed}</h2>` +
    `<div class="card"><table class="kv"><tbody><tr><th>graph</th><td>${esc(s.graph)}</td></tr>` +
    `<tr><th>created</th><td>${fmtTime(s.created_ms)}</td></tr>` +
    `<tr><th>finished</th><td>${fmtTime(s.finished_ms)} <span class="muted">(${fmtDuration(took)})</span></td></tr>` +
    `<tr><th>open states</th><td>${s.open}</td></tr></tbody></table></div>`;
  const picked = query.get("group") || (query.get("state") ? `s:${query.get("state")}` : null);
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
    `<td>${esc(h.node)}</td><td class="mono"><a href="${esc(runHash(ns, run, { state: h.state_id }))}">${esc(h.state_id)}</a></td>` +
    `<td>${badge(h.status)}</td><td class="num">${h.attempt}</td><td class="err">${esc(h.error)}</td></tr>`
  )).join("");
  const more = data.history_total > data.history.length
    ? ` <span class="muted">(last ${data.history.length} of ${data.history_total})</span>` : "";
  const history = `<div class="card"><h3>History${more}</h3><table id="history"><thead><tr><th>settled</th>` +
    `<th>identifier</th><th>node</th><th>state</th><th>status</th><th class="num">attempt</th><th>error</th></tr></thead>` +
    `<tbody>${hist || `<tr><td colspan="7" class="muted">nothing settled yet</td></tr>`}</tbody></table></div>`;
  const res = data.results.map((r) => (
    `<tr><td>${esc(r.identifier)}</td><td class="mono">${esc(r.state)}</td>` +
    `<td>${isTruncated(r.outputs) ? truncatedBlock("outputs", r.outputs, "shown here up to 2,000 characters") : `<pre>${esc(JSON.stringify(r.outputs, null, 1))}</pre>`}</td></tr>`
  )).join("");
  const newest = data.results_total > data.results.length ? `, the newest ${data.results.length}` : "";
  const results = `<div class="card"><h3>Results <span class="muted">(${data.results_total} leaf outputs${newest})</span></h3>` +
    `<table id="results"><thead><tr><th>identifier</th><th>state</th><th>outputs</th></tr></thead>` +
    `<tbody>${res || `<tr><td colspan="3" class="muted">no results yet</td></tr>`}</tbody></table></div>`;
  if (picked && picked !== lastPicked) {
    // Newly picked: bring its panel into view once the page has drawn it.
    setTimeout(() => document.querySelector(".state-panel")?.scrollIntoView({ block: "nearest" }), 0);
  }
  lastPicked = picked;
  return [["summary", summary], ["dag", dagCard(ns, run, data, picked)], ["picked", panel],
    ["nodes", nodes], ["history", history], ["results", results]];
};

// ---- Retry actions ----------------------------------------------------------------------
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button#retry-state, button#retry-failed");
  if (!button || button.disabled) return;
  const r = route();
  const base = `api/ns/${enc(r.ns)}/runs/${enc(r.run)}`;
  if (button.id === "retry-state") {
    const state = button.dataset.state;
    if (!confirm(`Retry state ${state} of run ${r.run}? It runs again with its inputs, and its successors after it.`)) return;
    button.disabled = true;
    try {
      const reply = await post(`${base}/states/${enc(state)}/retry`);
      showFlash(`state ${state} retried as ${reply.state_id}`);
    } catch (err) {
      showFlash(`retry refused: ${err.message}`, true);
      button.disabled = false;
    }
  } else {
    if (!confirm(`Retry every failed state of run ${r.run}? The run re-opens.`)) return;
    button.disabled = true;
    try {
      const reply = await post(`${base}/retry-failed`);
      const n = reply.state_ids.length;
      showFlash(n ? `retried ${n} failed state${n === 1 ? "" : "s"} of run ${r.run}` : `run ${r.run} has no failed state to retry`);
    } catch (err) {
      showFlash(`retry refused: ${err.message}`, true);
      button.disabled = false;
    }
  }
  poll();
});
