// The dashboard: sessions, one session's normal curves, trajectories and drift, polled live.
// Reads the public API only (same origin); the plotted numbers are mirrored into
// <script id="bn-plot-data" type="application/json"> for tests and for anyone curious.

import { densityPoints, densityRange, featureCurves, finite, normalizer, topByKl,
  trajectories } from "./bn.js";
import { chart, fmt } from "./plot.js";

const HISTORY_PAGE = 50;
const HISTORY_MAX = 300; // fits drawn at most
const HISTORY_NUMBERS = 2_000_000; // per-channel numbers held at most (5 per channel per fit)
const SESSION_PAGES = 10; // at most 1000 sessions listed
const TOP_K = 10;
const KEY_STORAGE = "bnaas-api-key";

const $ = (id) => document.getElementById(id);

const state = {
  key: sessionStorage.getItem(KEY_STORAGE) || "",
  config: { auth: false, poll_ms: 2000 },
  sessions: [],
  sid: null,
  session: null,
  stats: null,
  history: new Map(), // version -> entry
  historyNote: "",
  feature: null,
  axis: "raw",
  ticks: 0,
};

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function api(path) {
  const headers = { Accept: "application/json" };
  if (state.key) headers["X-API-Key"] = state.key;
  const r = await fetch(path, { headers, cache: "no-store" });
  if (!r.ok) {
    let detail = `${r.status} ${r.statusText}`;
    try {
      const body = await r.json();
      detail = body.detail || detail;
    } catch {
      // not a problem document: keep the status line
    }
    throw new ApiError(r.status, detail);
  }
  return r.json();
}

function showAlert(text) {
  const a = $("alert");
  a.textContent = text || "";
  a.hidden = !text;
}

function reportError(err) {
  if (err instanceof ApiError && err.status === 401) {
    $("key-form").hidden = false;
    showAlert(`API key needed: ${err.message}`);
  } else {
    showAlert(String(err.message || err));
  }
}

// --- sessions ---

async function loadSessions() {
  const all = [];
  let after = null;
  for (let page = 0; page < SESSION_PAGES; page++) {
    const q = new URLSearchParams({ limit: "100" });
    if (after) q.set("after", after);
    const doc = await api(`/v1/sessions?${q}`);
    all.push(...doc.sessions);
    after = doc.next_after;
    if (!after) break;
  }
  state.sessions = all;
  renderSessionList();
}

function renderSessionList() {
  const filter = $("session-filter").value.trim().toLowerCase();
  const list = $("session-list");
  const shown = state.sessions.filter((s) =>
    !filter || s.id.toLowerCase().includes(filter) || (s.name || "").toLowerCase().includes(filter));
  list.replaceChildren(...shown.map((s) => {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "session-item";
    b.dataset.sessionId = s.id;
    if (s.id === state.sid) b.setAttribute("aria-current", "true");
    const name = document.createElement("span");
    name.className = "session-name";
    name.textContent = s.name || s.id;
    const meta = document.createElement("span");
    meta.className = "muted";
    meta.textContent = `C=${s.config.num_features} · ${s.num_batches_tracked} fits`;
    b.append(name, meta);
    b.addEventListener("click", () => selectSession(s.id));
    li.append(b);
    return li;
  }));
  $("session-count").textContent = `${shown.length} of ${state.sessions.length} sessions`;
}

// --- one session ---

// How many fits to keep: all of HISTORY_MAX for narrow sessions, fewer for thousands of
// features (each full fit carries 5 numbers per feature).
function historyWanted(c) {
  return Math.max(2, Math.min(HISTORY_MAX, Math.floor(HISTORY_NUMBERS / (5 * c))));
}

// The newest `wanted` fits, newest-first pages of at most HISTORY_PAGE.
async function loadHistory(sid, wanted) {
  let before = null;
  let got = 0;
  while (got < wanted) {
    const q = new URLSearchParams({ limit: String(Math.min(HISTORY_PAGE, wanted - got)) });
    if (before !== null) q.set("before", String(before));
    const doc = await api(`/v1/sessions/${encodeURIComponent(sid)}/history?${q}`);
    for (const e of doc.fits) state.history.set(e.version, e);
    got += doc.fits.length;
    before = doc.next_before;
    if (before === null || before === undefined || !doc.fits.length) break;
  }
}

async function refreshSession(full) {
  const sid = state.sid;
  const enc = encodeURIComponent(sid);
  const [session, stats] = await Promise.all([
    api(`/v1/sessions/${enc}`), api(`/v1/sessions/${enc}/stats`)]);
  if (sid !== state.sid) return; // another session was picked meanwhile
  // A poll fetches only the fits it has not seen (versions also move on reset or import).
  const seen = state.session && !full ? state.session.version : null;
  const keep = historyWanted(session.config.num_features);
  const wanted = seen === null ? keep : Math.min(keep, Math.max(1, session.version - seen));
  state.session = session;
  state.stats = stats;
  try {
    if (full) state.history.clear();
    await loadHistory(sid, wanted);
    state.historyNote = "";
  } catch (err) {
    state.historyNote = `History unavailable (${err.message}): trajectories need it.`;
  }
  if (sid !== state.sid) return;
  trimHistory();
  if (state.feature === null || state.feature >= stats.running_mean?.length) {
    const top = topByKl(newestFull(), 1);
    state.feature = top.length ? top[0].feature : 0;
  }
  renderSession();
}

function trimHistory() {
  const versions = [...state.history.keys()].sort((a, b) => b - a);
  for (const v of versions.slice(historyWanted(numFeatures()))) state.history.delete(v);
}

function newestFull() {
  let best = null;
  for (const e of state.history.values()) {
    if (e.full && (!best || e.version > best.version)) best = e;
  }
  return best;
}

async function selectSession(sid) {
  state.sid = sid;
  state.feature = null;
  state.history.clear();
  remember();
  renderSessionList();
  try {
    await refreshSession(true);
    showAlert("");
  } catch (err) {
    reportError(err);
  }
}

// The location's hash keeps the view: #session=ID&feature=F (reload and links restore it).
function remember() {
  const f = state.feature === null ? "" : `&feature=${state.feature}`;
  window.history.replaceState(null, "", `#session=${encodeURIComponent(state.sid)}${f}`);
}

function numFeatures() {
  return state.session ? state.session.config.num_features : 0;
}

function selectFeature(f) {
  const c = numFeatures();
  if (!Number.isInteger(f) || f < 0 || f >= c) return;
  state.feature = f;
  remember();
  renderSession();
}

// --- rendering ---

function renderSession() {
  const s = state.session;
  $("empty").hidden = true;
  $("session").hidden = false;
  $("session-title").textContent = s.name ? `${s.name} (${s.id})` : s.id;
  const cfg = s.config;
  const facts = [
    ["features", cfg.num_features], ["fits", s.num_batches_tracked], ["version", s.version],
    ["momentum", cfg.momentum === null ? "cumulative" : cfg.momentum], ["eps", cfg.eps],
    ["convention", cfg.convention || "torch"], ["population", s.population_count],
  ];
  const versions = [...state.history.keys()];
  if (versions.length) {
    const last = state.history.get(Math.max(...versions));
    facts.push(["last fit", last.time.replace("T", " ").replace(/\.\d+/, "")]);
    if (last.flags && last.flags.length) facts.push(["flagged", last.flags.join(", ")]);
  }
  $("session-facts").replaceChildren(...facts.map(([k, v]) => {
    const pair = document.createElement("div");
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = String(v);
    pair.append(dt, dd);
    return pair;
  }));
  $("history-note").textContent = state.historyNote;
  const data = {
    session_id: s.id, version: s.version, num_batches_tracked: s.num_batches_tracked,
    feature: state.feature, num_features: cfg.num_features, axis: state.axis,
  };
  renderPicker(data);
  renderDensity(data);
  renderTrajectories(data);
  $("bn-plot-data").textContent = JSON.stringify(data);
  // What is on screen, for tests and scripts to wait on (CSP forbids evaluating strings).
  document.body.dataset.renderedVersion = String(s.version);
  document.body.dataset.renderedFeature = String(state.feature);
}

function renderPicker(data) {
  const c = numFeatures();
  const f = state.feature;
  const input = $("feature-input");
  if (document.activeElement !== input) input.value = String(f);
  $("feature-range").textContent = `of 0…${c - 1}`;
  const entry = newestFull();
  const top = topByKl(entry, TOP_K);
  data.top_kl = top;
  $("feature-options").replaceChildren(...top.map((t) => {
    const o = document.createElement("option");
    o.value = String(t.feature);
    o.label = `KL ${fmt(t.kl)}`;
    return o;
  }));
  $("top-features").replaceChildren(...top.map((t) => {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.feature = String(t.feature);
    if (t.feature === f) b.setAttribute("aria-current", "true");
    b.textContent = `feature ${t.feature}: KL ${fmt(t.kl)}`;
    b.addEventListener("click", () => selectFeature(t.feature));
    li.append(b);
    return li;
  }));
  // Overview: KL per feature; beyond 400 features, the largest of each bucket.
  const kl = entry && entry.drift ? entry.drift.kl : null;
  const points = [];
  if (kl) {
    const buckets = Math.min(kl.length, 400);
    for (let b = 0; b < buckets; b++) {
      const lo = Math.floor((b * kl.length) / buckets);
      const hi = Math.floor(((b + 1) * kl.length) / buckets);
      let arg = lo;
      for (let i = lo; i < hi; i++) if (finite(kl[i]) && !(kl[i] <= kl[arg])) arg = i;
      if (finite(kl[arg])) points.push([arg, kl[arg]]);
    }
  }
  const top1 = points.reduce((m, p) => Math.max(m, p[1]), 0) || 1;
  chart($("overview"), {
    width: 640, height: 120, xLabel: "feature", yLabel: "KL", yZero: true, xInteger: true,
    xDomain: [0, Math.max(c - 1, 1)],
    series: [
      { name: "kl", label: "KL per feature", kind: "line", cls: "s-kl", points },
      { name: "selected", label: `feature ${f}`, kind: "line", cls: "s-selected",
        points: [[f, 0], [f, top1]] },
    ],
    onPickX: (x) => selectFeature(Math.max(0, Math.min(c - 1, Math.round(x)))),
  });
}

function renderDensity(data) {
  const f = state.feature;
  const curves = featureCurves(state.stats, newestFull(), f);
  const norm = state.axis === "normalized" ? normalizer(state.stats, f) : null;
  for (const c of curves) {
    const v = c.var + c.eps;
    c.shownMean = norm ? norm.map(c.mean) : c.mean;
    c.shownVar = norm ? v * norm.k * norm.k : v;
  }
  const [lo, hi] = densityRange(curves);
  for (const c of curves) c.points = densityPoints(c.shownMean, c.shownVar, lo, hi);
  const cls = { running: "s-running", batch: "s-batch", population: "s-population" };
  chart($("density"), {
    xLabel: norm ? `feature ${f} after normalization` : `feature ${f}`,
    yLabel: "density", yZero: true, xDomain: [lo, hi],
    series: curves.map((c) => ({
      name: c.name, label: c.label, kind: "line", cls: cls[c.name], points: c.points,
      data: { feature: f, mean: c.mean, var: c.var, eps: c.eps },
    })),
  });
  $("density-table").tBodies[0].replaceChildren(...curves.map((c) => {
    const tr = document.createElement("tr");
    tr.dataset.curve = c.name;
    for (const text of [c.label, fmt(c.mean), fmt(c.var), c.source]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  }));
  data.curves = curves.map((c) => ({
    name: c.name, mean: c.mean, var: c.var, eps: c.eps, shown_mean: c.shownMean,
    shown_var: c.shownVar, version: c.version ?? null, points: c.points,
  }));
}

function renderTrajectories(data) {
  const f = state.feature;
  const t = trajectories([...state.history.values()], state.stats, f);
  data.trajectories = t;
  chart($("traj-mean"), {
    width: 380, height: 240,
    xLabel: "num_batches_tracked", xInteger: true, yLabel: "mean",
    series: [
      { name: "running_mean", label: "running mean", kind: "line", cls: "s-running",
        points: t.running_mean, data: { feature: f } },
      { name: "batch_mean", label: "batch mean", kind: "dots", cls: "s-batch",
        points: t.batch_mean, data: { feature: f } },
    ],
  });
  chart($("traj-var"), {
    width: 380, height: 240,
    xLabel: "num_batches_tracked", xInteger: true, yLabel: "variance", yZero: true,
    series: [
      { name: "running_var", label: "running var", kind: "line", cls: "s-running",
        points: t.running_var, data: { feature: f } },
      { name: "batch_var", label: "batch var", kind: "dots", cls: "s-batch",
        points: t.batch_var, data: { feature: f } },
    ],
  });
  chart($("traj-drift"), {
    width: 380, height: 240,
    xLabel: "num_batches_tracked", xInteger: true, yLabel: "drift", yZero: true,
    series: [
      { name: "kl", label: `KL #${f}`, kind: "line", cls: "s-kl", points: t.kl },
      { name: "abs_mean_shift", label: "|mean shift|", kind: "line", cls: "s-shift",
        points: t.abs_mean_shift },
      { name: "max_kl", label: "max KL (all)", kind: "dots", cls: "s-maxkl",
        points: t.max_kl },
    ],
  });
}

// --- live updates (polling: works behind any load balancer, with any number of workers) ---

async function poll() {
  try {
    if (!document.hidden && !(state.config.auth && !state.key)) {
      state.ticks += 1;
      if (state.ticks % 5 === 0 || !state.sessions.length) await loadSessions();
      if (state.sid) {
        const s = await api(`/v1/sessions/${encodeURIComponent(state.sid)}`);
        if (!state.session || s.version !== state.session.version) await refreshSession(false);
      }
      $("live").textContent =
        `Live: checked ${new Date().toLocaleTimeString()}` +
        (state.session ? `, version ${state.session.version}` : "");
      showAlert("");
    }
  } catch (err) {
    reportError(err);
  }
  setTimeout(poll, state.config.poll_ms);
}

// --- wiring ---

function wire() {
  $("session-filter").addEventListener("input", renderSessionList);
  $("feature-input").addEventListener("change", (ev) => {
    const f = Number.parseInt(ev.target.value, 10);
    if (String(f) === ev.target.value.trim()) selectFeature(f);
  });
  $("feature-prev").addEventListener("click", () => selectFeature(state.feature - 1));
  $("feature-next").addEventListener("click", () => selectFeature(state.feature + 1));
  for (const radio of document.querySelectorAll("input[name=axis]")) {
    radio.addEventListener("change", (ev) => {
      state.axis = ev.target.value;
      if (state.session) renderSession();
    });
  }
  $("key-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    state.key = $("api-key").value.trim();
    sessionStorage.setItem(KEY_STORAGE, state.key);
    await start();
  });
}

async function start() {
  try {
    await loadSessions();
    $("live").textContent = `Live: polling every ${state.config.poll_ms / 1000} s`;
    showAlert("");
    const m = /session=([^&]+)/.exec(location.hash);
    const f = /feature=(\d+)/.exec(location.hash);
    if (m && !state.sid) {
      await selectSession(decodeURIComponent(m[1]));
      if (f) selectFeature(Number(f[1]));
    }
  } catch (err) {
    reportError(err);
  }
}

async function main() {
  wire();
  try {
    const r = await fetch("/ui/config.json", { cache: "no-store" });
    state.config = await r.json();
  } catch {
    // keep the defaults: no key field, 2 s polling
  }
  $("key-form").hidden = !state.config.auth;
  if (state.config.auth && !state.key) {
    $("live").textContent = "Enter an API key to see your sessions.";
  } else {
    await start();
  }
  setTimeout(poll, state.config.poll_ms);
}

main();
