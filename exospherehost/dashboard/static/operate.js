// Operator pages and actions (issue 12.8), on top of app.js (loaded before this file; its
// helpers esc, enc, api, post, badge, fmtTime, showFlash, setCrumbs are shared globals):
// the namespace's runs with filters and paging, the registered nodes' schemas, a graph's
// template details, and the Cancel (run) and Delete (graph) actions.
"use strict";

const RUN_STATUS_CHOICES = ["RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"];
const PAGE_SIZES = [20, 10, 50, 100]; // the first is the default

// ---- runs list ------------------------------------------------------------------------
// Filters live in the address (#/ns/NS/runs?graph=&status=&since=&until=&offset=&count=,
// times in ms since the epoch), so a filtered page can be bookmarked and survives polls.
function runsHash(ns, q) {
  const params = new URLSearchParams();
  for (const name of ["graph", "status", "since", "until", "offset", "count"]) {
    const v = q[name];
    if (v !== undefined && v !== null && v !== "" && !(name === "offset" && Number(v) === 0)) {
      params.set(name, v);
    }
  }
  const s = params.toString();
  return `#/ns/${enc(ns)}/runs${s ? `?${s}` : ""}`;
}

// ms -> the value of an <input type="datetime-local"> (the browser's local time).
function localInput(ms) {
  if (ms === null || ms === undefined || ms === "") return "";
  const d = new Date(Number(ms));
  const frac = d.getMilliseconds() ? `.${pad(d.getMilliseconds(), 3)}` : "";
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}${frac}`;
}

function countsCell(nodes) {
  return Object.entries(nodes).map(([id, c]) => (
    `<span title="pending ${c.pending}, succeeded ${c.succeeded}, failed ${c.failed}, ` +
    `pruned ${c.pruned}, retried ${c.retried}">${esc(id)}: ${c.succeeded}✓` +
    `${c.failed ? ` ${c.failed}✗` : ""}${c.pruned ? ` ${c.pruned}⊘` : ""}` +
    `${c.pending ? ` ${c.pending}…` : ""}${c.retried ? ` ↻${c.retried}` : ""}</span>`
  )).join("");
}

// novalidate: a time from the address keeps its milliseconds, which step="1" would call a
// step mismatch and refuse to submit.
function runsFilters(ns, data, q) {
  const opt = (value, label, selected) => (
    `<option value="${esc(value)}"${selected ? " selected" : ""}>${esc(label)}</option>`);
  const graphs = [opt("", "all graphs", !q.graph),
    ...data.graphs.map((g) => opt(g, g, q.graph === g))];
  if (q.graph && !data.graphs.includes(q.graph)) graphs.push(opt(q.graph, `${q.graph} (deleted)`, true));
  const statuses = [opt("", "any status", !q.status),
    ...RUN_STATUS_CHOICES.map((s) => opt(s, s, q.status === s))];
  const sizes = [...PAGE_SIZES].sort((a, b) => a - b).map((n) => opt(n, `${n} per page`, data.count === n));
  return `<form id="run-filters" class="card filters" data-ns="${esc(ns)}" novalidate>` +
    `<label>graph <select name="graph">${graphs.join("")}</select></label>` +
    `<label>status <select name="status">${statuses.join("")}</select></label>` +
    `<label>created (${esc(tzName(new Date()))}) from <input type="datetime-local" step="1" name="since" value="${esc(localInput(q.since))}"></label>` +
    `<label>to <input type="datetime-local" step="1" name="until" value="${esc(localInput(q.until))}"></label>` +
    `<label><select name="count">${sizes.join("")}</select></label>` +
    `<button type="submit" id="apply-filters">Apply</button>` +
    `<button type="button" id="clear-filters">Clear</button></form>`;
}

function runsTable(ns, data) {
  const rows = data.runs.map((r) => {
    const took = r.finished_ms ? r.finished_ms - r.created_ms : null;
    return `<tr data-run="${esc(r.run_id)}"><td class="mono"><a href="#/ns/${enc(ns)}/run/${enc(r.run_id)}">` +
      `${esc(r.run_id)}</a></td><td class="graph"><a href="#/ns/${enc(ns)}/graph/${enc(r.graph)}">${esc(r.graph)}</a></td>` +
      `<td class="status">${badge(r.status)}</td><td class="created">${fmtTime(r.created_ms)}</td>` +
      `<td>${fmtTime(r.finished_ms)}</td><td class="num">${fmtDuration(took)}</td>` +
      `<td class="counts">${countsCell(r.nodes)}</td></tr>`;
  }).join("");
  const first = data.total ? data.offset + 1 : 0;
  const last = data.offset + data.runs.length;
  const pager = `<div class="runs-pager"><button type="button" id="page-prev"${data.offset > 0 ? "" : " disabled"}>‹ Newer</button>` +
    `<span id="page-range">${first}–${last} of <b id="runs-total">${data.total}</b></span>` +
    `<button type="button" id="page-next"${last < data.total ? "" : " disabled"}>Older ›</button></div>`;
  return `<div class="card">${pager}<table id="all-runs"><thead><tr><th>run</th><th>graph</th><th>status</th>` +
    `<th>created</th><th>finished</th><th class="num">took</th>` +
    `<th>per node: ✓ succeeded ✗ failed ⊘ pruned … pending ↻ retried</th></tr></thead>` +
    `<tbody>${rows || `<tr><td colspan="7" class="muted">no run matches</td></tr>`}</tbody></table>${pager.replace(/id="/g, 'data-bottom="1" id="b-')}</div>`;
}

pages.runs = async function runs({ ns, query }) {
  const q = Object.fromEntries(query);
  const params = new URLSearchParams(query);
  if (!params.has("count")) params.set("count", String(PAGE_SIZES[0]));
  const data = await api(`api/ns/${enc(ns)}/runs?${params}`);
  setCrumbs([[ns, `#/ns/${enc(ns)}`], ["runs", null]]);
  const what = [q.graph ? `graph ${q.graph}` : "all graphs", q.status || "any status"];
  // A status filter reads every run's status: the server may reuse a recent answer.
  const age = data.age_ms >= 1500
    ? `<span class="muted" id="runs-age">read ${Math.round(data.age_ms / 1000)} s ago</span>` : "";
  const head = `<div class="toolbar"><h2>Runs <span class="muted">(${data.total} matching: ` +
    `${esc(what.join(", "))}; newest first)</span></h2>${age}</div>`;
  return [["head", head], ["filters", runsFilters(ns, data, q)], ["table", runsTable(ns, data)]];
};

function filterQuery(form) {
  const ms = (name) => {
    const v = form.elements[name].value;
    const t = v ? new Date(v).getTime() : NaN; // "YYYY-MM-DDTHH:MM[:SS[.mmm]]": local time
    return Number.isFinite(t) ? String(t) : "";
  };
  return {
    graph: form.elements.graph.value, status: form.elements.status.value,
    since: ms("since"), until: ms("until"), count: form.elements.count.value, offset: 0,
  };
}

document.addEventListener("submit", (event) => {
  if (event.target.id !== "run-filters") return;
  event.preventDefault();
  location.hash = runsHash(event.target.dataset.ns, filterQuery(event.target));
});

// ---- node schemas ---------------------------------------------------------------------
function fieldsTable(cls, fields) {
  const rows = fields.map((f) => (
    `<tr data-field="${esc(f.name)}"><td class="mono">${esc(f.name)}</td><td class="mono type">${esc(f.type)}</td>` +
    `<td class="req">${f.required ? "required" : `<span class="muted">optional</span>`}</td>` +
    `<td class="mono default">${f.has_default ? esc(JSON.stringify(f.default)) : ""}</td>` +
    `<td class="muted">${esc(f.description || "")}</td></tr>`
  )).join("");
  return `<table class="fields ${cls}"><thead><tr><th>field</th><th>type</th><th></th><th>default</th>` +
    `<th></th></tr></thead><tbody>${rows || `<tr><td colspan="5" class="muted">no fields</td></tr>`}</tbody></table>`;
}

const RETURNS = { one: "one Outputs", many: "a list of Outputs (fans out)", either: "one Outputs or a list" };

pages.nodes = async function nodes({ ns }) {
  const data = await api(`api/ns/${enc(ns)}/nodes`);
  setCrumbs([[ns, `#/ns/${enc(ns)}`], ["nodes", null]]);
  const cards = data.nodes.map((n) => {
    const secrets = n.secrets.length
      ? n.secrets.map((s) => `<span class="chip mono">${esc(s)}</span>`).join("") : `<span class="muted">none</span>`;
    return `<div class="card node-schema" data-node="${esc(n.name)}"><h3>${esc(n.name)}</h3>` +
      `<table class="kv"><tbody><tr><th>execute returns</th><td class="returns">${esc(RETURNS[n.returns] || n.returns || "—")}</td></tr>` +
      `<tr><th>secrets</th><td class="secrets">${secrets}</td></tr>` +
      `<tr><th>registered by</th><td class="runtime">${esc(n.runtime || "—")} <span class="muted">at ${fmtTime(n.registered_ms)}</span></td></tr>` +
      `</tbody></table><div class="schema-cols"><div><h4>Inputs</h4>${fieldsTable("inputs", n.inputs)}</div>` +
      `<div><h4>Outputs</h4>${fieldsTable("outputs", n.outputs)}</div></div>` +
      Object.entries(n.models).map(([model, fields]) => (
        `<div class="model" data-model="${esc(model)}"><h4>model <span class="mono">${esc(model)}</span></h4>${fieldsTable("model-fields", fields)}</div>`
      )).join("") + `</div>`;
  }).join("");
  const head = `<div class="toolbar"><h2>Nodes <span class="muted">(${data.nodes.length} registered)</span></h2></div>`;
  return [["head", head], ["cards", cards || `<div class="card muted">No Runtime registered a node here.</div>`]];
};

// ---- graph template details and delete ------------------------------------------------
function chips(items, empty) {
  return items.length ? items.map((s) => `<span class="chip mono">${esc(s)}</span>`).join("")
    : `<span class="muted">${esc(empty)}</span>`;
}

function templateCard(graph) {
  const t = graph.template;
  const p = t.retry_policy;
  const retry = `<span class="mono">${esc(p.strategy)}</span> · max retries ${esc(p.max_retries)} · ` +
    `backoff factor ${esc(p.backoff_factor)} ms · exponent ${esc(p.exponent)} · ` +
    `max delay ${p.max_delay == null ? "none" : `${esc(p.max_delay)} ms`}` +
    (t.retry_default ? ` <span class="muted">(the default: the graph sets none)</span>` : "");
  const defaults = Object.keys(t.store_defaults).length
    ? `<pre class="store-defaults">${esc(JSON.stringify(t.store_defaults, null, 1))}</pre>` : `<span class="muted">none</span>`;
  const triggers = t.triggers.length ? t.triggers.map((tr) => (
    `<div class="trigger"><span class="chip mono">${esc(tr.expression)}</span> ` +
    `<span class="muted">${esc(tr.type || "CRON")}, UTC · next ${fmtTime(tr.next_ms)}</span></div>`
  )).join("") : `<span class="muted">none</span>`;
  return `<div class="card" id="template"><h3>Template <span class="muted">v${esc(graph.version)}, ` +
    `updated ${fmtTime(graph.updated_ms)}</span></h3><table class="kv"><tbody>` +
    `<tr><th>retry policy</th><td id="tpl-retry">${retry}</td></tr>` +
    `<tr><th>store: required keys</th><td id="tpl-required">${chips(t.store_required, "none")}</td></tr>` +
    `<tr><th>store: defaults</th><td id="tpl-defaults">${defaults}</td></tr>` +
    `<tr><th>secrets</th><td id="tpl-secrets">${chips(t.secret_names, "none")}` +
    `${t.secret_names.length ? ` <span class="muted">(names only: values are never shown)</span>` : ""}</td></tr>` +
    `<tr><th>cron triggers</th><td id="tpl-triggers">${triggers}</td></tr></tbody></table></div>`;
}

function deleteCard(ns, name) {
  return `<div class="card danger-zone" id="delete-card"><h3>Delete graph</h3>` +
    `<p class="muted">No new runs or cron fires of <b>${esc(name)}</b>. Refused while runs of it are ` +
    `in flight, unless forced: they then finish on the version they started with.</p>` +
    `<label><input type="checkbox" id="delete-force"> force: delete even with runs in flight</label> ` +
    `<button type="button" id="delete-graph" class="danger" data-graph="${esc(name)}">Delete graph</button>` +
    `<div id="delete-result"></div></div>`;
}

// ---- actions --------------------------------------------------------------------------
document.addEventListener("click", async (event) => {
  const button = event.target.closest(
    "button#cancel-run, button#delete-graph, button#clear-filters, .runs-pager button");
  if (!button || button.disabled) return;
  const r = route();
  if (button.id === "clear-filters") {
    location.hash = runsHash(r.ns, {});
  } else if (button.closest(".runs-pager")) {
    const q = Object.fromEntries(r.query);
    const count = Number(q.count || PAGE_SIZES[0]);
    const offset = Number(q.offset || 0) + (button.id.endsWith("page-next") ? count : -count);
    location.hash = runsHash(r.ns, { ...q, offset: Math.max(offset, 0) });
  } else if (button.id === "cancel-run") {
    if (!confirm(`Cancel run ${r.run}? Its queued and running states are dropped; no successor runs.`)) return;
    button.disabled = true;
    try {
      const reply = await post(`api/ns/${enc(r.ns)}/runs/${enc(r.run)}/cancel`);
      showFlash(`run ${reply.cancelled} cancelled`);
    } catch (err) {
      showFlash(`cancel refused: ${err.message}`, true);
      button.disabled = false;
    }
    poll();
  } else if (button.id === "delete-graph") {
    const name = button.dataset.graph;
    const force = document.getElementById("delete-force").checked;
    if (!confirm(`Delete graph ${name}${force ? " even with runs in flight" : ""}?`)) return;
    button.disabled = true;
    const result = document.getElementById("delete-result");
    try {
      const reply = await post(`api/ns/${enc(r.ns)}/graphs/${enc(name)}/delete${force ? "?force=1" : ""}`);
      showFlash(`graph ${name} deleted` +
        (reply.running ? `; ${reply.running} run(s) in flight finish on their version` : ""));
      location.hash = `#/ns/${enc(r.ns)}`;
    } catch (err) {
      result.className = "err";
      result.textContent = err.message;
      showFlash(`delete refused: ${err.message}`, true);
      button.disabled = false;
    }
  }
});
