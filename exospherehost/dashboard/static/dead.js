// Dead-letter page of the dashboard: newest first, paged by cursor, filtered (node, error
// text, time range), with redrive / delete per letter and redrive / purge of everything
// matching the filter. Loaded before app.js, whose helpers (api, esc, enc, fmtTime,
// setCrumbs, post, showFlash, poll) it calls at run time. Its state lives in the URL:
//   #/ns/NS/dead?node=N&grep=TEXT&since=MS&until=MS&before=CURSOR
"use strict";

const DEAD_PAGE = 50;
const deadFilterKeys = ["node", "grep", "since", "until"];

function deadState() {
  const query = location.hash.split("?")[1] || "";
  const params = new URLSearchParams(query);
  const state = {};
  for (const k of [...deadFilterKeys, "before"]) {
    const v = params.get(k);
    if (v) state[k] = v;
  }
  return state;
}

function deadQuery(state, keys) {
  const params = new URLSearchParams();
  for (const k of keys) if (state[k]) params.set(k, state[k]);
  const q = params.toString();
  return q ? `?${q}` : "";
}

function deadHash(ns, state) {
  return `#/ns/${enc(ns)}/dead${deadQuery(state, [...deadFilterKeys, "before"])}`;
}

// epoch ms <-> the value of an <input type="datetime-local"> (local time)
function toLocalInput(ms) {
  if (!ms) return "";
  const d = new Date(Number(ms));
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function fromLocalInput(value) {
  if (!value) return "";
  const ms = new Date(value).getTime();
  return Number.isNaN(ms) ? "" : String(ms);
}

function deadFilterForm(state) {
  const filtered = deadFilterKeys.some((k) => state[k]);
  return `<form id="dead-filter" class="card toolbar">` +
    `<label>node <input name="node" value="${esc(state.node)}" size="14" placeholder="any"></label>` +
    `<label>error contains <input name="grep" value="${esc(state.grep)}" size="18" placeholder="any"></label>` +
    `<label>since <input name="since" type="datetime-local" value="${esc(toLocalInput(state.since))}"></label>` +
    `<label>until <input name="until" type="datetime-local" value="${esc(toLocalInput(state.until))}"></label>` +
    `<button type="submit" id="dead-apply">Filter</button>` +
    (filtered ? `<button type="button" id="dead-clear">Clear</button>` : "") + `</form>`;
}

async function deadLettersPage(ns) {
  const state = deadState();
  const query = new URLSearchParams(deadQuery(state, [...deadFilterKeys, "before"]).slice(1));
  query.set("count", DEAD_PAGE);
  const data = await api(`api/ns/${enc(ns)}/dead?${query}`);
  setCrumbs([[ns, `#/ns/${enc(ns)}`], ["dead letters", null]]);
  const filtered = deadFilterKeys.some((k) => state[k]);
  const rows = data.dead.map((d) => {
    const run = d.run_id
      ? `<a class="mono" href="#/ns/${enc(ns)}/run/${enc(d.run_id)}">${esc(d.run_id)}</a>` : "—";
    return `<tr data-dead="${esc(d.id)}"><td>${fmtTime(d.time_ms)}</td><td>${esc(d.node)}</td>` +
      `<td>${run}${d.identifier ? ` <span class="muted">${esc(d.identifier)}</span>` : ""}</td>` +
      `<td class="num">${d.attempts} <span class="muted" title="deliveries">(${d.deliveries})</span></td>` +
      `<td><div class="err">${esc(d.error)}</div>` +
      `<details><summary>inputs &amp; traceback</summary><pre>${esc(JSON.stringify(d.inputs, null, 1))}</pre>` +
      `<pre class="err">${esc(d.traceback)}</pre></details></td>` +
      `<td class="actions"><button class="redrive" data-dead="${esc(d.id)}">Redrive</button> ` +
      `<button class="delete" data-dead="${esc(d.id)}">Delete</button></td></tr>`;
  }).join("");
  const matching = `${data.matching}${data.matching_exact ? "" : "+"}`;
  const count = filtered
    ? `<span id="dead-count" class="muted">${matching} matching of ${data.total}</span>`
    : `<span id="dead-count" class="muted">${data.total}</span>`;
  const what = filtered ? "matching" : "all";
  const head = `<div class="toolbar"><h2>Dead letters ${count}</h2>` +
    `<button id="redrive-all"${data.matching ? "" : " disabled"}>Redrive ${what}</button>` +
    `<button id="purge"${data.matching ? "" : " disabled"}>Purge ${what}</button></div>`;
  const newer = state.before ? `<a id="dead-newest" href="${deadHash(ns, { ...state, before: "" })}">⇤ newest</a>` : "";
  const older = data.cursor
    ? `<a id="dead-older" href="${deadHash(ns, { ...state, before: data.cursor })}">older →</a>` : "";
  const shownN = data.dead.length;
  const pager = `<div class="toolbar pager"><span class="muted" id="dead-shown">${shownN} shown, newest first` +
    `${state.before ? ` (older than ${esc(state.before)})` : ""}</span>${newer}${older}</div>`;
  const table = `<div class="card"><table id="dead"><thead><tr><th>time</th><th>node</th><th>run</th>` +
    `<th class="num">attempts</th><th>error</th><th></th></tr></thead>` +
    `<tbody>${rows || `<tr><td colspan="6" class="muted">no dead letters${filtered ? " match" : ""}</td></tr>`}` +
    `</tbody></table>${pager}</div>`;
  return [["head", head], ["filter", deadFilterForm(state)], ["table", table]];
}

document.addEventListener("submit", (event) => {
  if (event.target.id !== "dead-filter") return;
  event.preventDefault();
  const form = new FormData(event.target);
  const state = {
    node: (form.get("node") || "").trim(),
    grep: (form.get("grep") || "").trim(),
    since: fromLocalInput(form.get("since")),
    until: fromLocalInput(form.get("until")),
  };
  location.hash = deadHash(route().ns, state);
});

document.addEventListener("click", async (event) => {
  if (event.target.id === "dead-clear") {
    location.hash = deadHash(route().ns, {});
    return;
  }
  const button = event.target.closest("button.redrive, button.delete, button#redrive-all, button#purge");
  if (!button) return;
  const { ns } = route();
  const state = deadState();
  const filters = deadQuery(state, deadFilterKeys);
  const filtered = Boolean(filters);
  const scope = filtered ? "every dead letter matching the filter" : "every dead letter of this namespace";
  button.disabled = true;
  try {
    if (button.id === "redrive-all") {
      if (!confirm(`Redrive ${scope}?`)) { button.disabled = false; return; }
      const reply = await post(`api/ns/${enc(ns)}/dead/redrive-all${filters}`);
      const skipped = reply.skipped ? Object.keys(reply.skipped).length : 0;
      showFlash(`${reply.redriven} dead letter(s) put back on their streams` +
        (skipped ? `; ${skipped} could not be redriven` : ""), skipped > 0);
    } else if (button.id === "purge") {
      if (!confirm(`Delete ${scope} for good?`)) { button.disabled = false; return; }
      const reply = await post(`api/ns/${enc(ns)}/dead/purge${filters}`);
      showFlash(`${reply.deleted} dead letter(s) deleted`);
    } else if (button.classList.contains("delete")) {
      const reply = await post(`api/ns/${enc(ns)}/dead/${enc(button.dataset.dead)}/delete`);
      showFlash(reply.deleted ? `${button.dataset.dead} deleted` : `${button.dataset.dead} was already gone`);
    } else {
      const reply = await post(`api/ns/${enc(ns)}/dead/${enc(button.dataset.dead)}/redrive`);
      showFlash(reply.redriven ? `${button.dataset.dead} put back on its stream`
        : `${button.dataset.dead} was already redriven`);
    }
  } catch (err) {
    showFlash(`${button.textContent.toLowerCase()} failed: ${err.message}`, true);
    button.disabled = false;
  }
  poll();
});
