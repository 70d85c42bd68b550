// The autoresearch dashboard: plain JS, no build step, no third-party code.
// Every datum comes from the bearer-authenticated /v1 API; the token is asked for once and kept in
// localStorage. Server-sent events are read with fetch() streaming because EventSource cannot send
// an Authorization header.
"use strict";

const TOKEN_KEY = "autoresearch.token";
const PAGE_SIZE = 200; // proposals fetched per page for the plot (the API's default maximum)
const MAX_PLOT_PROPOSALS = 2000; // newest proposals plotted
const REFRESH_DEBOUNCE_MS = 300; // coalesce bursts of state events into one refresh
const POLL_MS = 10000; // refresh even when no event arrives (e.g. a proxy buffers the stream)
const RECONNECT_MS = 2000;
const LOG_MAX_CHARS = 200000; // the live log pane keeps this much
const BUSY = ["running", "evaluating", "confirming"];
const ACTIVE = new Set(["queued", ...BUSY, "accepted"]); // not decided yet (services/states.py)

const $ = (id) => document.getElementById(id);
let view = null; // {name, id, abort: AbortController}
let refreshTimer = null;

// ------------------------------------------------------------------------------------ API

class Unauthorized extends Error {}

function token() { return localStorage.getItem(TOKEN_KEY); }

async function api(path, { text = false, signal } = {}) {
  const res = await fetch(path, { headers: { Authorization: `Bearer ${token()}` }, signal });
  if (res.status === 401) throw new Unauthorized("the token was refused");
  if (!res.ok) {
    let detail = res.statusText;
    try { const p = await res.json(); detail = `${p.title}: ${p.detail || ""}`; } catch (_) { /* not JSON */ }
    throw new Error(`${path}: ${res.status} ${detail}`);
  }
  return text ? res.text() : res.json();
}

// Reads a server-sent events stream until it ends or `signal` aborts; calls onEvent(name, data, id).
async function stream(path, onEvent, signal) {
  const res = await fetch(path, {
    headers: { Authorization: `Bearer ${token()}`, Accept: "text/event-stream" },
    signal,
    cache: "no-store",
  });
  if (res.status === 401) throw new Unauthorized("the token was refused");
  if (!res.ok) throw new Error(`${path}: ${res.status}`);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message", id = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") name = val;
        else if (field === "data") data.push(val);
        else if (field === "id") id = val;
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")), id);
    }
  }
}

// ------------------------------------------------------------------------------------ helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

const fmt = (x, digits = 6) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
const signed = (x) => (x === null || x === undefined ? "–" : (x > 0 ? "+" : "") + Number(x).toFixed(6));
const short = (commit) => (commit ? commit.slice(0, 10) : "");
const stateChip = (state) => el("span", { class: `state ${state}`, "data-state": state, text: state });
const link = (p) => el("a", { href: `#/proposals/${p.id}`, text: p.title });

function age(ts) {
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 129600) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

function fillTable(id, rows) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren(...rows.map((cells) => el("tr", {}, ...cells.map((c) => el("td", {}, c)))));
}

function showError(exc) {
  if (exc instanceof Unauthorized) { signOut(exc.message); return; }
  if (exc.name === "AbortError") return;
  $("error").textContent = String(exc.message || exc);
}

function setLive(on) {
  $("live").textContent = on ? "live" : "offline";
  $("live").className = `live ${on ? "on" : "off"}`;
}

// Prometheus text format → {name: value} for unlabelled samples and name{labels} keys otherwise.
function parseMetrics(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const space = line.lastIndexOf(" ");
    out[line.slice(0, space)] = Number(line.slice(space + 1));
  }
  return out;
}

// ------------------------------------------------------------------------------------ progress plot

// Decided, scored experiments in the order they were made: [{id, title, val_bpb, kept, at}], like
// autoresearch's progress.png: kept (merged) vs discarded, and the running best as a step line.
async function experiments(signal) {
  const items = [];
  for (let offset = 0; offset < MAX_PLOT_PROPOSALS; offset += PAGE_SIZE) {
    const page = await api(`/v1/proposals?offset=${offset}&limit=${PAGE_SIZE}`, { signal });
    items.push(...page.items);
    if (offset + page.items.length >= page.total || page.items.length === 0) break;
  }
  return items
    .filter((p) => p.val_bpb !== null && !ACTIVE.has(p.state)) // decided: kept or discarded
    .sort((a, b) => a.created_at - b.created_at)
    .map((p) => ({ id: p.id, title: p.title, val_bpb: p.val_bpb, at: p.created_at, kept: p.state === "merged" }));
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function drawPlot(points) {
  const W = 900, H = 320, L = 64, R = 16, T = 14, B = 36;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, id: "progress-plot", role: "img",
    "aria-label": "val_bpb of every scored experiment", "data-points": String(points.length) });
  if (!points.length) {
    const t = svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle" });
    t.textContent = "no scored experiments yet";
    root.append(t);
    $("plot").replaceChildren(root);
    return;
  }
  const ys = points.map((p) => p.val_bpb);
  let lo = Math.min(...ys), hi = Math.max(...ys);
  const pad = (hi - lo) * 0.08 || Math.abs(hi) * 0.01 || 0.01;
  lo -= pad; hi += pad;
  const n = points.length;
  const x = (i) => L + (n === 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (n - 1));
  const y = (v) => T + ((hi - v) * (H - T - B)) / (hi - lo);
  for (let k = 0; k <= 4; k++) {
    const v = lo + ((hi - lo) * k) / 4;
    root.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
    const t = svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" });
    t.textContent = v.toFixed(4);
    root.append(t);
  }
  root.append(svg("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
  root.append(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
  const xlabel = svg("text", { x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle" });
  xlabel.textContent = `experiment # (oldest first, ${n} scored)`;
  root.append(xlabel);
  const ylabel = svg("text", { x: 14, y: (T + H - B) / 2, transform: `rotate(-90 14 ${(T + H - B) / 2})`, "text-anchor": "middle" });
  ylabel.textContent = "val_bpb (lower is better)";
  root.append(ylabel);
  // The running best: the lowest kept score so far, held flat until the next improvement.
  let best = null, path = "";
  points.forEach((p, i) => {
    if (!p.kept || (best !== null && p.val_bpb >= best)) return;
    path += best === null ? `M${x(i)},${y(p.val_bpb)}` : `H${x(i)}V${y(p.val_bpb)}`;
    best = p.val_bpb;
  });
  if (best !== null) {
    path += `H${x(n - 1)}`;
    root.append(svg("path", { d: path, class: "best", id: "running-best" }));
  }
  points.forEach((p, i) => {
    const c = svg("circle", { cx: x(i), cy: y(p.val_bpb), r: p.kept ? 5 : 3.5,
      class: p.kept ? "kept" : "discarded", "data-id": p.id });
    const tip = svg("title");
    tip.textContent = `${p.title}\nval_bpb ${fmt(p.val_bpb)}${p.kept ? " (kept)" : ""}`;
    c.append(tip);
    c.addEventListener("click", () => { location.hash = `#/proposals/${p.id}`; });
    root.append(c);
  });
  $("plot").replaceChildren(root);
}

// ------------------------------------------------------------------------------------ overview

async function refreshOverview(signal) {
  const [status, best, board, recent, metricsText, points, ...busyPages] = await Promise.all([
    api("/v1/status", { signal }),
    api("/v1/best", { signal }).catch(() => null), // none before the baseline is scored
    api("/v1/leaderboard?limit=20", { signal }),
    api("/v1/proposals?limit=20", { signal }),
    fetch("/metrics", { signal }).then((r) => (r.ok ? r.text() : "")),
    experiments(signal),
    ...BUSY.map((s) => api(`/v1/proposals?state=${s}&limit=20`, { signal })),
  ]);
  const m = parseMetrics(metricsText);
  $("best-bpb").textContent = fmt(status.best_val_bpb);
  $("best-commit").textContent = short(status.best_commit);
  // The score recorded at the merge against the best's runs since (paired halves, its own re-runs).
  const runs = best ? best.best_runs.length : 0;
  $("best-remeasured").textContent = runs ?
    `re-measured ${fmt(best.remeasured_bpb)} over ${runs} run${runs === 1 ? "" : "s"}` : "not re-measured yet";
  $("queue-runs").textContent = `${status.queues.runs ?? 0} waiting`;
  $("queue-commits").textContent = `${status.queues.commits ?? 0} decisions waiting`;
  const busy = BUSY.reduce((sum, s) => sum + (status.states[s] || 0), 0);
  $("gpu-busy").textContent = `${busy} running`;
  const share = m["autoresearch_gpu_busy_share"];
  const perWin = status.gpu_seconds_per_improvement;
  $("gpu-share").textContent = (share === undefined ? "" : `busy share ${(share * 100).toFixed(0)}% · `) +
    (status.gpu_seconds_total === undefined ? "" : `${Math.round(status.gpu_seconds_total)} GPU s`) +
    (perWin === null || perWin === undefined ? "" : ` · ${Math.round(perWin)} s per merged improvement`);
  const running = busyPages.flatMap((page) => page.items);
  fillTable("running", running.map((p) => [stateChip(p.state), link(p), p.agent, age(p.updated_at)]));
  $("running-none").hidden = running.length > 0;
  $("accepts").textContent = String(m["autoresearch_accepts_total"] ?? "–");
  const version = m["autoresearch_program_version"];
  $("program-version").textContent = version === undefined ? "" : `program.md v${version}`;
  $("states").replaceChildren(...Object.entries(status.states).filter(([, n]) => n > 0)
    .map(([s, n]) => el("span", {}, stateChip(s), ` ${n}`)));
  fillTable("leaderboard", board.map((r, i) => [String(i + 1), fmt(r.val_bpb), signed(r.delta), stateChip(r.state), link(r), r.agent]));
  $("leaderboard").querySelectorAll("tbody tr").forEach((tr, i) => tr.setAttribute("data-id", board[i].id));
  fillTable("recent", recent.items.map((p) => [stateChip(p.state), fmt(p.val_bpb), link(p), p.agent, age(p.created_at)]));
  $("recent").querySelectorAll("tbody tr").forEach((tr, i) => tr.setAttribute("data-id", recent.items[i].id));
  drawPlot(points);
  $("error").textContent = "";
}

function scheduleRefresh(refresh) {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => refresh().catch(showError), REFRESH_DEBOUNCE_MS);
}

// Follows /v1/events and calls onEvent for each; reconnects until the view changes.
async function follow(path, onEvent, signal, { reconnect = true } = {}) {
  while (!signal.aborted) {
    try {
      setLive(true);
      await stream(path, onEvent, signal);
      if (!reconnect) return;
    } catch (exc) {
      if (exc instanceof Unauthorized) throw exc;
      if (signal.aborted) return;
    }
    setLive(false);
    await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
  }
}

function showOverview(signal) {
  const refresh = () => refreshOverview(signal);
  refresh().catch(showError);
  follow("/v1/events", () => scheduleRefresh(refresh), signal).catch(showError);
  const poll = setInterval(() => refresh().catch(showError), POLL_MS);
  signal.addEventListener("abort", () => clearInterval(poll));
}

// ------------------------------------------------------------------------------------ proposal page

function renderDiff(text) {
  const lines = text.split("\n").map((line) => {
    const cls = line.startsWith("+++") || line.startsWith("---") ? "file"
      : line.startsWith("@@") ? "hunk" : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : "";
    return el("span", { class: cls, text: `${line}\n` });
  });
  $("p-diff").replaceChildren(...lines);
}

function renderProposal(p) {
  $("p-title").textContent = p.title;
  $("p-state").replaceChildren(stateChip(p.state));
  $("p-state").setAttribute("data-state", p.state);
  $("p-meta").textContent = `${p.id} · ${p.kind} by ${p.agent}` +
    (p.program_version ? ` · program.md v${p.program_version}` : "") +
    ` · base ${short(p.base_commit)}` + (p.merged_commit ? ` · merged as ${short(p.merged_commit)}` : "");
  $("p-reason").textContent = p.reason;
  $("p-description").textContent = p.description;
  const d = p.decision;
  const rows = d ? [
    ["verdict", verdict(p)], ["rule", `${d.rule} (${d.stage})`],
    ["candidate val_bpb", fmt(d.candidate_bpb)], ["best val_bpb", fmt(d.best_bpb)],
    ["Δ (candidate − best)", signed(d.delta_bpb)], ["σ (noise)", `${fmt(d.sigma_bpb)} ${d.sigma_source}`],
    ["threshold", fmt(d.threshold_bpb)], ["candidate runs", d.candidate_runs.map((v) => fmt(v)).join(", ")],
    ["best runs", d.best_runs.map((v) => fmt(v)).join(", ")], ["seeds", d.seeds.join(", ")], ["reason", d.reason],
    ...posteriorRows(p),
    ["held-out test tripwire", d.tripwire || "not-run"],
    // The test split's figures reach only admins' browsers (the API leaves them out for agents).
    ...(d.test_gap_bpb != null ? [
      ["test gap (mean g)", `${signed(d.test_gap_bpb)} (threshold ${fmt(d.test_threshold_bpb)}, σ_g ${fmt(d.test_gap_sigma_bpb)} ${d.test_gap_sigma_source}, n ${d.test_n})`],
      ["test: candidate runs", (d.test_candidate_runs || []).map((v) => fmt(v)).join(", ")],
      ["test: best runs", (d.test_best_runs || []).map((v) => fmt(v)).join(", ")],
      ["test: cumulative gap", d.test_cumulative_gap_bpb == null ? "—" : `${signed(d.test_cumulative_gap_bpb)} (threshold ${fmt(d.test_cumulative_threshold_bpb)})`],
    ] : []),
  ] : [["val_bpb", fmt(p.val_bpb)], ["verdict", "not decided yet"]];
  $("p-decision").querySelector("tbody").replaceChildren(
    ...rows.map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: v }))));
  const runs = orderedRuns(p);
  fillTable("p-runs", runs.map(({ role, r }) => [role, String(r.seed), fmt(r.val_bpb),
    fmt(r.timings.train_container_s, 1), fmt(r.timings.eval_container_s, 1), stateChip(outcome(r))]));
  renderRunLogs(runs);
  $("p-live").hidden = !ACTIVE.has(p.state) && (runs.length > 0 || !$("p-log").textContent);
  $("p-events").replaceChildren(...p.events.map((e) => el("li", {},
    `${new Date(e.at * 1000).toLocaleTimeString()} `, stateChip(e.state), e.reason ? ` ${e.reason}` : "")));
  renderDiff(p.diff || "(a run of an existing commit: no diff)");
}

// A sequential rule's state (seq-bayes): its posterior over the effect Δ, the prior it started from, why
// it stopped or went on, and what it waits for.
function posteriorRows(p) {
  const d = p.decision, post = d.posterior || {};
  if (post.p_better === undefined) return [];
  const waiting = p.state === "confirming" ?
    `${d.more_runs || 1} more paired run${(d.more_runs || 1) === 1 ? "" : "s"} (candidate and best)` : "nothing";
  return [
    ["posterior P(Δ < 0)", fmt(post.p_better, 2)],
    ["posterior Δ", `${signed(post.mean_bpb)} ± ${fmt(post.sd_bpb)} (90%: ${signed(post.lo_bpb)} to ${signed(post.hi_bpb)})`],
    ["prior", d.prior_version || "—"], ["stopped", d.stopped || "—"], ["waiting for", waiting],
  ];
}

// Where a decision stands: a screening verdict that sent the proposal to confirmation is no rejection.
function verdict(p) {
  const d = p.decision;
  if (d.stage === "screen" && d.confirm) {
    if (p.state === "confirming") {
      const total = (p.confirm_seeds || []).length, done = (p.baseline_results || []).length;
      return `screening passed; confirming: ${done} of ${total} paired runs done, waiting for ${total - done}`;
    }
    return ACTIVE.has(p.state) ? "screening passed" : `screening passed; confirmation ended ${p.state}`;
  }
  if (d.stage === "screen") return "rejected at screening";
  if (d.accepted) return p.state === "merged" ? "accepted and merged" : "accepted";
  return d.tripwire === "blocked" ? "rejected (blocked by the held-out test tripwire)" : "rejected";
}

// How a run ended: a scored run keeps the state it was scored in (`evaluating`); show it as scored.
const outcome = (r) => (r.state === "evaluating" ? "scored" : r.state);

// A proposal's finished runs in reading order (as GET /v1/proposals/{id}/log writes them): screening
// runs, then each confirmation pair with the best's run first, so the candidate's run ends the log.
function orderedRuns(p) {
  if (p.kind === "run") return p.results.map((r) => ({ role: `commit ${short(p.base_commit)}`, r }));
  const screening = p.results.slice(0, p.seeds.length), confirmation = p.results.slice(p.seeds.length);
  const best = p.baseline_results || [];
  const total = (p.confirm_seeds || []).length || confirmation.length;
  const runs = screening.map((r) => ({ role: "candidate (screening)", r }));
  for (let i = 0; i < Math.max(confirmation.length, best.length); i++) {
    const step = `confirmation ${i + 1}/${total}`;
    if (i < best.length) runs.push({ role: `best ${short(p.base_commit)} (paired, ${step})`, r: best[i] });
    if (i < confirmation.length) runs.push({ role: `candidate (${step})`, r: confirmation[i] });
  }
  return runs;
}

// One section per finished run: a header (who ran, seed, outcome, score), its kept log, a closing line.
function renderRunLogs(runs) {
  const sections = runs.map(({ role, r }) => {
    const summary = `${outcome(r)} · val_bpb ${fmt(r.val_bpb)}`;
    return el("section", { class: "run-log", "data-run-id": r.run_id, "data-subject": r.subject, "data-outcome": outcome(r) },
      el("h3", { class: "run-log-head", text: `run ${r.run_id} · ${role} · seed ${r.seed} · ${summary}${r.reason ? `: ${r.reason}` : ""}` }),
      el("pre", { class: "log", text: r.log_tail || "(no output kept)" }),
      el("p", { class: "run-log-end", text: `end of run ${r.run_id} (${role}): ${outcome(r)}, val_bpb ${fmt(r.val_bpb)}` }));
  });
  $("p-logs").replaceChildren(...sections);
  $("p-logs-none").hidden = sections.length > 0;
}

function appendLog(text) {
  const pre = $("p-log");
  const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  pre.textContent = (pre.textContent + text).slice(-LOG_MAX_CHARS);
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

async function showProposal(id, signal) {
  $("p-log").textContent = "";
  $("p-logs").replaceChildren();
  const reload = async () => renderProposal(await api(`/v1/proposals/${encodeURIComponent(id)}`, { signal }));
  await reload();
  // The state stream ends after a terminal state; the log stream after the output is drained.
  follow(`/v1/events?proposal_id=${encodeURIComponent(id)}`, () => scheduleRefresh(reload), signal, { reconnect: false })
    .then(() => { setLive(false); return reload(); })
    .catch(showError);
  $("p-log-live").textContent = "(live)";
  let last = null, ended = false;
  while (!ended && !signal.aborted) {
    try {
      await stream(`/v1/proposals/${encodeURIComponent(id)}/log/stream` + (last ? `?after=${last}` : ""), (name, data, eventId) => {
        if (name === "log") { appendLog(data.text); if (eventId) last = eventId; }
        if (name === "end") ended = true;
      }, signal);
    } catch (exc) {
      if (exc instanceof Unauthorized || signal.aborted) throw exc;
      await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
    }
  }
  $("p-log-live").textContent = "";
  // Once it has ended, the runs' sections are the log (the live output expires an hour after a run).
  await reload();
}

// ------------------------------------------------------------------------------------ routing

function signOut(message = "") {
  localStorage.removeItem(TOKEN_KEY);
  route();
  $("login-error").textContent = message;
}

function route() {
  if (view) view.abort.abort();
  clearTimeout(refreshTimer);
  const abort = new AbortController();
  const match = location.hash.match(/^#\/proposals\/([A-Za-z0-9_-]+)/);
  const name = !token() ? "login" : match ? "proposal" : "overview";
  view = { name, abort };
  for (const section of ["login", "overview", "proposal"]) $(section).hidden = section !== name;
  $("logout").hidden = name === "login";
  $("error").textContent = "";
  setLive(false);
  if (name === "overview") showOverview(abort.signal);
  if (name === "proposal") showProposal(match[1], abort.signal).catch(showError);
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    $("login-error").textContent = "";
    route();
  });
  $("logout").addEventListener("click", () => signOut());
  window.addEventListener("hashchange", route);
  route();
});
