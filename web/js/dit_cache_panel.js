// dit-cache statistics panel: what the cache skipped, per cache node and sampling run.
//
// Server side: nodes/stats_server.py pushes "dit-cache.run" (one run, at its end) and "dit-cache.step" (one
// model call, live) to the page that queued the prompt and serves GET /dit-cache/runs?client_id=<this page's id>
// (this page's last runs, for a reloaded page). This file draws them in a "DiT Cache" sidebar tab (one section per cache node, newest run
// first) and writes a one-line summary of the last run on each cache node in the graph.
// MagCache Calibrate: nodes/calibrate.py sends "dit_cache.magcache_calibrated" (node_id, file, ratios per
// CFG stream, ...) to the same page when it has saved a calibration; the ratios are drawn as a small curve per
// stream on that node ("saved <file>" under it) and listed in the sidebar under the node.
// Listeners: the page-level ones are removed on "pagehide"; each cache node's own listener is removed when the
// node is removed from the graph (onRemoved).
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const EXT = "dit-cache.panel";
const TAB_ID = "dit-cache-stats";
const RUN_EVENT = "dit-cache.run";
const STEP_EVENT = "dit-cache.step";
const CALIBRATED_EVENT = "dit_cache.magcache_calibrated";
const CALIBRATE_NODE = "DitCache.MagCacheCalibrate";
const MAX_CALIBRATIONS = 32;
const MAX_RUNS_PER_NODE = 5;
const COLORS = { computed: "#4caf50", skipped: "#5c8dd6", threshold: "#e0a030", grid: "#555" };
const STREAM_COLORS = ["#f0f0f0", "#e57373", "#ba68c8", "#4dd0e1"];
const SVG_NS = "http://www.w3.org/2000/svg";

const state = {
  runs: [], // finished runs, oldest first (as GET /dit-cache/runs returns them)
  live: new Map(), // prompt_id|spec_id -> {node_id, node, method, calls, skipped_calls, records}
  calibrations: [], // saved MagCache calibrations (event payloads), oldest first
  container: null, // the sidebar tab's element while it is open
  loaded: false,
  error: null,
  frame: 0,
};

// ------------------------------------------------------------------------------------------------ formatting
function fmtBytes(n) {
  if (!n) return "0 B";
  const u = ["B", "KB", "MB", "GB"];
  const i = Math.min(u.length - 1, Math.floor(Math.log(n) / Math.log(1024)));
  return `${(n / 1024 ** i).toFixed(i ? 1 : 0)} ${u[i]}`;
}
const fmtS = (s) => (s == null ? "-" : s < 10 ? `${s.toFixed(2)} s` : `${s.toFixed(1)} s`);
// numbers to 4 decimals; objects (Step Schedule's chosen steps per stream, MagCache's curves) as JSON
const fmtVal = (v) => (typeof v === "number" && !Number.isInteger(v) ? +v.toFixed(4)
  : v !== null && typeof v === "object" ? JSON.stringify(v) : v);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "style") e.style.cssText = v;
    else if (k.startsWith("data-") || k === "class" || k === "title") e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}
function svg(tag, attrs = {}) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function byStream(records) {
  const out = new Map();
  for (const r of records) {
    if (!out.has(r.stream)) out.set(r.stream, []);
    out.get(r.stream).push(r);
  }
  for (const list of out.values()) list.sort((a, b) => a.call_index - b.call_index);
  return out;
}

// ------------------------------------------------------------------------------------------------ drawings
// One row of cells per CFG stream: a filled cell for a computed call, a hollow one for a skipped call.
function timeline(records) {
  const streams = byStream(records);
  const n = Math.max(1, ...[...streams.values()].map((l) => l.length));
  const label = 52, cell = Math.max(3, Math.min(12, Math.floor(220 / n))), rowH = 14;
  const w = label + n * cell + 2, h = streams.size * rowH + 2;
  const s = svg("svg", { width: w, height: h, class: "dit-cache-timeline", viewBox: `0 0 ${w} ${h}` });
  let row = 0;
  for (const [name, list] of streams) {
    const y = row * rowH + 1;
    const t = svg("text", { x: 0, y: y + 10, fill: "currentColor", "font-size": 10 });
    t.textContent = name;
    s.append(t);
    for (const r of list) {
      const rect = svg("rect", {
        x: label + r.call_index * cell, y, width: cell - 1, height: rowH - 3, rx: 1,
        fill: r.skipped ? "none" : COLORS.computed, stroke: r.skipped ? COLORS.skipped : COLORS.computed,
        "data-skipped": r.skipped ? "1" : "0", "data-stream": name,
      });
      const tip = svg("title");
      tip.textContent = `${name} call ${r.call_index}: ${r.skipped ? "skipped" : "computed"} (${r.reason})` +
        (r.sigma != null ? `, sigma ${r.sigma.toFixed(3)}` : "") + (r.metric != null ? `, metric ${r.metric.toFixed(4)}` : "") +
        (r.weights != null ? `, weights ${r.weights}` : "");
      rect.append(tip);
      s.append(rect);
    }
    row++;
  }
  return s;
}

// The decision metric per call (one line per stream) against the threshold (dashed); skipped calls as
// hollow dots, computed ones filled.
function metricChart(records) {
  const withMetric = records.filter((r) => r.metric != null);
  const W = 272, H = 90, L = 34, R = 4, T = 6, B = 14;
  const s = svg("svg", { width: W, height: H, class: "dit-cache-metric", viewBox: `0 0 ${W} ${H}` });
  const thr = records.find((r) => r.threshold != null)?.threshold ?? 0;
  const n = Math.max(2, ...records.map((r) => r.call_index + 1));
  const ymax = Math.max(thr * 1.5, ...withMetric.map((r) => r.metric), 1e-6);
  const x = (i) => L + (i / (n - 1)) * (W - L - R);
  const y = (v) => T + (1 - Math.min(v, ymax) / ymax) * (H - T - B);
  s.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: COLORS.grid }));
  s.append(svg("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: COLORS.grid }));
  for (const [v, anchor] of [[ymax, T + 8], [0, H - B]]) {
    const t = svg("text", { x: L - 3, y: anchor, "text-anchor": "end", fill: "currentColor", "font-size": 9 });
    t.textContent = v.toPrecision(2);
    s.append(t);
  }
  const xl = svg("text", { x: W - R, y: H - 2, "text-anchor": "end", fill: "currentColor", "font-size": 9 });
  xl.textContent = `call → (${n})`;
  s.append(xl);
  s.append(svg("line", {
    x1: L, x2: W - R, y1: y(thr), y2: y(thr), stroke: COLORS.threshold, "stroke-dasharray": "4 3",
    class: "dit-cache-threshold", "data-threshold": thr,
  }));
  const tl = svg("text", { x: W - R, y: y(thr) + 10, "text-anchor": "end", fill: COLORS.threshold, "font-size": 9 });
  tl.textContent = `threshold ${fmtVal(thr)}`;
  s.append(tl);
  let k = 0;
  for (const [name, list] of byStream(withMetric)) {
    const color = STREAM_COLORS[k++ % STREAM_COLORS.length];
    s.append(svg("polyline", {
      points: list.map((r) => `${x(r.call_index)},${y(r.metric)}`).join(" "),
      fill: "none", stroke: color, "stroke-width": 1.2, "data-stream": name,
    }));
    for (const r of list) {
      const c = svg("circle", {
        cx: x(r.call_index), cy: y(r.metric), r: 2.2, stroke: color,
        fill: r.skipped ? "none" : color,
      });
      const tip = svg("title");
      tip.textContent = `${name} call ${r.call_index}: metric ${r.metric.toFixed(4)}, ${r.skipped ? "skipped" : "computed"}`;
      c.append(tip);
      s.append(c);
    }
  }
  if (!withMetric.length) {
    const t = svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "currentColor", "font-size": 10 });
    t.textContent = "no metric computed";
    s.append(t);
  }
  return s;
}

// MagCache calibration: the measured magnitude ratio per model call, one line per CFG stream, 1.0 dashed.
function ratioRange(ratios) {
  const all = Object.values(ratios).flat().filter((v) => typeof v === "number" && isFinite(v));
  let lo = Math.min(1, ...all), hi = Math.max(1, ...all);
  if (hi - lo < 1e-6) { lo -= 0.05; hi += 0.05; }
  const pad = (hi - lo) * 0.08;
  return [lo - pad, hi + pad];
}
function ratioChart(ratios) {
  const W = 272, H = 80, L = 34, R = 4, T = 6, B = 14;
  const s = svg("svg", { width: W, height: H, class: "dit-cache-ratios", viewBox: `0 0 ${W} ${H}` });
  const [lo, hi] = ratioRange(ratios);
  const n = Math.max(2, ...Object.values(ratios).map((l) => l.length));
  const x = (i) => L + (i / (n - 1)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  s.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: COLORS.grid }));
  s.append(svg("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: COLORS.grid }));
  s.append(svg("line", { x1: L, x2: W - R, y1: y(1), y2: y(1), stroke: COLORS.grid, "stroke-dasharray": "4 3" }));
  for (const [v, anchor] of [[hi, T + 8], [lo, H - B]]) {
    const t = svg("text", { x: L - 3, y: anchor, "text-anchor": "end", fill: "currentColor", "font-size": 9 });
    t.textContent = v.toPrecision(3);
    s.append(t);
  }
  const xl = svg("text", { x: W - R, y: H - 2, "text-anchor": "end", fill: "currentColor", "font-size": 9 });
  xl.textContent = `call → (${n})`;
  s.append(xl);
  let k = 0;
  for (const [name, list] of Object.entries(ratios)) {
    const color = STREAM_COLORS[k++ % STREAM_COLORS.length];
    const ok = list.map((v, i) => [i, v]).filter(([, v]) => typeof v === "number" && isFinite(v));
    const line = svg("polyline", {
      points: ok.map(([i, v]) => `${x(i)},${y(v)}`).join(" "), fill: "none", stroke: color, "stroke-width": 1.2,
      class: "dit-cache-ratio", "data-stream": name, "data-ratios": JSON.stringify(list),
    });
    const tip = svg("title");
    tip.textContent = `${name}: ${list.map((v) => (v == null ? "-" : v.toFixed(4))).join(", ")}`;
    line.append(tip);
    s.append(line);
  }
  return s;
}

function calibrationCard(cal) {
  const streams = Object.keys(cal.ratios || {});
  return el("div", {
    class: "dit-cache-calibration", "data-node-id": cal.node_id ?? "", "data-prompt-id": cal.prompt_id ?? "",
    "data-file": cal.file ?? "", "data-steps": cal.steps ?? "", "data-streams": streams.join(","),
    style: "border:1px solid var(--border-color,#444);border-radius:6px;padding:6px 8px;margin:6px 0;",
  },
    el("div", { style: "font-weight:600" }, `MagCache calibration · ${cal.family ?? "?"}`),
    el("div", { style: "opacity:.8;font-size:11px;margin:2px 0 4px" },
      `${cal.steps} calls per stream (${streams.join(", ")}) · ${cal.sampler ?? "?"}/${cal.scheduler ?? "?"}`),
    el("div", { class: "dit-cache-saved", style: "font-size:12px;word-break:break-all", title: cal.folder ?? "" },
      `saved ${cal.file}`),
    el("div", { style: "font-size:11px;opacity:.8;margin-top:4px" }, "magnitude ratio per call (dashed: 1.0) · ",
      ...streams.map((name, k) => el("span", { style: `color:${STREAM_COLORS[k % STREAM_COLORS.length]};margin-right:6px` }, name))),
    ratioChart(cal.ratios || {}));
}

// DiT Cache Tune's record (nodes/tune_node.py): the measured curve, quality against block speedup per method,
// the bar (target + margin) dashed, the winner ringed.
function tuneCard(run) {
  const d = run.details || {}, st = run.settings || {}, curve = d.tune_curve || {}, win = d.tune_winner;
  const W = 272, H = 110, L = 30, R = 4, T = 6, B = 14;
  const bar = (st.target ?? 0) + (st.margin ?? 0);
  const pts = Object.values(curve).flat();
  const xmax = Math.max(1.5, ...pts.map((p) => p[1])), cap = (q) => Math.min(q, 60);
  const ymin = Math.min(bar - 2, ...pts.map((p) => cap(p[2]))), ymax = Math.max(bar + 2, ...pts.map((p) => cap(p[2])));
  const x = (v) => L + ((v - 1) / (xmax - 1)) * (W - L - R);
  const y = (v) => T + (1 - (cap(v) - ymin) / (ymax - ymin || 1)) * (H - T - B);
  const s = svg("svg", { width: W, height: H, class: "dit-cache-tune-curve", viewBox: `0 0 ${W} ${H}` });
  s.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: COLORS.grid }));
  s.append(svg("line", { x1: L, x2: W - R, y1: y(bar), y2: y(bar), stroke: COLORS.threshold, "stroke-dasharray": "4 3" }));
  const xl = svg("text", { x: W - R, y: H - 2, "text-anchor": "end", fill: "currentColor", "font-size": 9 });
  xl.textContent = `block speedup → ${xmax.toFixed(1)}x`;
  s.append(xl);
  let k = 0;
  for (const [method, list] of Object.entries(curve)) {
    const color = STREAM_COLORS[k++ % STREAM_COLORS.length];
    s.append(svg("polyline", { points: list.map((p) => `${x(p[1])},${y(p[2])}`).join(" "), fill: "none",
      stroke: color, "stroke-width": 1.2, "data-method": method, "data-points": list.length }));
    for (const [v, sp, q] of list) {
      const c = svg("circle", { cx: x(sp), cy: y(q), r: win && win.method === method && win.value === v ? 4 : 2.2,
        stroke: color, fill: q >= bar ? color : "none" });
      const tip = svg("title");
      tip.textContent = `${method} ${v}: ${sp.toFixed(2)}x, ${st.metric} ${q.toFixed(3)}`;
      c.append(tip);
      s.append(c);
    }
  }
  return el("div", { class: "dit-cache-run dit-cache-tune", "data-node-id": run.node_id ?? "",
    "data-prompt-id": run.prompt_id ?? "", "data-file": d.tune_file ?? "",
    style: "border:1px solid var(--border-color,#444);border-radius:6px;padding:6px 8px;margin:6px 0;" },
    el("div", { style: "font-weight:600" }, `${run.method}${run.model ? " · " + run.model : ""}`),
    el("div", { style: "opacity:.8;font-size:11px;margin:2px 0 4px" },
      `${st.metric} ≥ ${st.target} + ${st.margin} · ${st.steps} steps ${st.sampler}/${st.scheduler} cfg ${st.cfg}`),
    el("div", { style: "font-size:12px" }, win
      ? `winner: ${win.method} ${win.input}=${win.value}: ${win.speedup.toFixed(2)}x, ${st.metric} ${win.quality}` : "no setting met the target"),
    d.tune_file ? el("div", { class: "dit-cache-saved", style: "font-size:12px;word-break:break-all" }, `saved ${d.tune_file}`) : null,
    el("div", { style: "font-size:11px;opacity:.8;margin-top:4px" }, "worst-seed quality vs block speedup (dashed: the bar) · ",
      ...Object.keys(curve).map((m, i) => el("span", { style: `color:${STREAM_COLORS[i % STREAM_COLORS.length]};margin-right:6px` }, m))),
    s);
}

// ------------------------------------------------------------------------------------------------ panel
function runCard(run, live = false) {
  if (run.tune) return tuneCard(run); // DiT Cache Tune's record: its curve, not a sampling run's timeline
  const calls = run.calls, skipped = run.skipped_calls, computed = calls - skipped;
  const speedup = computed ? calls / computed : 1;
  const settings = Object.entries(run.settings || {}).map(([k, v]) => `${k}=${fmtVal(v)}`).join(", ");
  const status = live ? "running…" : run.completed ? "" : " (interrupted)";
  const when = run.started ? new Date(run.started * 1000).toLocaleTimeString() : "";
  const card = el("div", {
    class: "dit-cache-run" + (live ? " dit-cache-live" : ""), "data-node-id": run.node_id ?? "",
    "data-prompt-id": run.prompt_id ?? "", "data-spec-id": run.spec_id ?? "", "data-calls": calls,
    "data-skipped": skipped, "data-computed": computed, "data-streams": [...byStream(run.records || []).keys()].join(","),
    "data-cache-bytes": run.cache_bytes ?? 0, "data-live": live ? "1" : "0",
    style: "border:1px solid var(--border-color,#444);border-radius:6px;padding:6px 8px;margin:6px 0;",
  },
    el("div", { class: "dit-cache-run-head", style: "font-weight:600" },
      `${run.method}${run.model ? " · " + run.model : ""}${status}`,
      el("span", { style: "float:right;font-weight:400;opacity:.7" }, when)),
    el("div", { class: "dit-cache-settings", style: "opacity:.8;font-size:11px;margin:2px 0 4px" }, settings),
    el("div", { class: "dit-cache-counts", style: "font-size:12px" },
      el("b", {}, `${computed}`), " computed · ", el("b", {}, `${skipped}`), " skipped",
      ` of ${calls} ${run.details?.prompt_cache ? "steps" : "model calls"}`), // Prompt Cache: counted in steps
  );
  // attention-level methods (PAB, FasterCache): what was reused inside the calls that ran
  for (const [part, [reused, total]] of Object.entries(run.reuse || {})) {
    card.append(el("div", { class: "dit-cache-reuse", "data-part": part, "data-reused": reused, "data-total": total,
      style: "font-size:12px" }, "reused ", el("b", {}, `${reused}`), ` of ${total} ${part} computations`));
  }
  // a method's own end-of-run figures (AdaCache: the caching rate each decision chose, per stream)
  for (const [name, value] of Object.entries(run.details || {})) {
    const text = value !== null && typeof value === "object" ? JSON.stringify(value) : fmtVal(value);
    card.append(el("div", { class: "dit-cache-detail", "data-name": name, style: "font-size:11px;word-break:break-all" },
      `${name}: ${text}`));
  }
  if (!live) {
    card.append(el("div", { class: "dit-cache-perf", style: "font-size:12px" },
      `wall ${fmtS(run.run_wall_s)} (model ${fmtS(run.wall_s)}) · est. speedup `,
      el("b", { class: "dit-cache-speedup" }, `${speedup.toFixed(2)}x`),
      ` · cache ${fmtBytes(run.cache_bytes)}`));
  }
  const records = run.records || [];
  card.append(el("div", { style: "font-size:11px;opacity:.8;margin-top:4px" },
    "timeline (filled: computed, hollow: skipped)"), timeline(records));
  if (!run.settings?.calibrate) { // MagCache Calibrate never decides: no metric to draw
    card.append(el("div", { style: "font-size:11px;opacity:.8;margin-top:4px" }, "decision metric vs threshold"),
      metricChart(records));
  }
  return card;
}

function render() {
  state.frame = 0;
  const root = state.container;
  if (!root) return;
  const body = el("div", { class: "dit-cache-panel", style: "padding:8px;font-size:13px;overflow-y:auto;height:100%;box-sizing:border-box" });
  body.append(el("div", { style: "display:flex;align-items:center;gap:8px;margin-bottom:4px" },
    el("span", { style: "font-weight:700;font-size:14px;flex:1" }, "DiT Cache · skip statistics"),
    el("button", { class: "dit-cache-refresh", title: "Fetch the last runs from the server", onclick: () => load(), style: "cursor:pointer" }, "↻")));
  if (state.error) body.append(el("div", { class: "dit-cache-error", style: "color:#e57373" }, state.error));
  const groups = new Map(); // node key -> {run (or calibration): names the node, items: runs, cals}
  const group = (key, run) => {
    if (!groups.has(key)) groups.set(key, { run, items: [], cals: [] });
    return groups.get(key);
  };
  const add = (run, live) => group(run.node_id ?? run.spec_id ?? "?", run).items.push([run, live]);
  for (const run of state.runs) add(run, false);
  for (const run of state.live.values()) add(run, true);
  for (const cal of state.calibrations) group(cal.node_id ?? "?", cal).cals.push(cal);
  if (!groups.size) {
    body.append(el("div", { class: "dit-cache-empty", style: "opacity:.7;margin-top:12px" },
      state.loaded ? "no runs yet" : "loading…"));
  }
  for (const [key, g] of groups) {
    // the graph's title of that node, when the graph on screen has this cache node (else the node's name)
    const node = key !== "?" ? app.graph?.getNodeById?.(Number(key)) : null;
    const own = node && String(node.comfyClass || node.type || "").startsWith("DitCache.");
    const title = `${(own && node.title) || g.run.node || "cache node"}${g.run.node_id != null ? " #" + g.run.node_id : ""}`;
    const sec = el("div", { class: "dit-cache-node", "data-node-id": g.run.node_id ?? "" },
      el("div", { style: "font-weight:600;margin-top:8px;border-bottom:1px solid var(--border-color,#444)" }, title));
    for (const cal of g.cals.slice(-MAX_RUNS_PER_NODE).reverse()) sec.append(calibrationCard(cal)); // newest first
    const items = g.items.slice(-MAX_RUNS_PER_NODE).reverse(); // newest first
    for (const [run, live] of items) sec.append(runCard(run, live));
    body.append(sec);
  }
  root.replaceChildren(body);
}
function scheduleRender() {
  if (state.container && !state.frame) state.frame = requestAnimationFrame(render);
}

// The page's client id: the one its prompts are queued with (api.queuePrompt sends api.clientId), which the
// server records with each run and serves its runs by. ComfyUI's api sets it from the websocket's first "status"
// message and keeps it in sessionStorage (and window.name) across reloads; until that message, the stored one.
function pageClientId() {
  const known = api.clientId ?? api.initialClientId ?? sessionStorage.getItem("clientId");
  if (known) return Promise.resolve(known);
  return new Promise((resolve) => {
    const onStatus = () => {
      if (!api.clientId) return;
      api.removeEventListener("status", onStatus);
      resolve(api.clientId);
    };
    api.addEventListener("status", onStatus);
  });
}

async function load() {
  try {
    const id = await pageClientId();
    const res = await api.fetchApi(`/dit-cache/runs?client_id=${encodeURIComponent(id)}`);
    if (!res.ok) throw new Error(`GET /dit-cache/runs: HTTP ${res.status}`);
    const data = await res.json();
    state.runs = (data.runs || []).filter(isSamplingRun);
    // MagCache Calibrate records {method: "MagCacheCalibrate", calibration: <the event's payload>}
    state.calibrations = (data.runs || []).map((r) => r?.calibration).filter(isCalibration);
    state.error = null;
  } catch (e) {
    state.error = `could not load runs: ${e.message ?? e}`;
  }
  state.loaded = true;
  scheduleRender();
}

// ------------------------------------------------------------------------------------------------ events
const liveKey = (d) => `${d.prompt_id}|${d.spec_id}`;
// The run log also holds other entries (e.g. MagCache calibrations): the panel shows sampling runs.
const isSamplingRun = (r) => r != null && typeof r.calls === "number" && Array.isArray(r.records);
function onRun(ev) {
  const run = ev.detail;
  if (!isSamplingRun(run)) return;
  state.live.delete(liveKey(run));
  state.runs.push(run);
  if (state.runs.length > 64) state.runs.splice(0, state.runs.length - 64);
  scheduleRender();
}
const isCalibration = (c) => c != null && typeof c.file === "string" && c.ratios != null && typeof c.ratios === "object";
function onCalibrated(ev) {
  const cal = ev.detail;
  if (!isCalibration(cal)) return;
  state.calibrations.push(cal);
  if (state.calibrations.length > MAX_CALIBRATIONS) state.calibrations.splice(0, state.calibrations.length - MAX_CALIBRATIONS);
  scheduleRender();
}
function onStep(ev) {
  const d = ev.detail;
  const key = liveKey(d);
  let live = state.live.get(key);
  if (!live) {
    live = { node_id: d.node_id, spec_id: d.spec_id, prompt_id: d.prompt_id, node: d.node, method: d.method,
      settings: {}, records: [] };
    state.live.set(key, live);
  }
  live.calls = d.calls;
  live.skipped_calls = d.skipped_calls;
  live.records.push(...d.records);
  scheduleRender();
}
function onPageHide() {
  api.removeEventListener(RUN_EVENT, onRun);
  api.removeEventListener(STEP_EVENT, onStep);
  api.removeEventListener(CALIBRATED_EVENT, onCalibrated);
  window.removeEventListener("pagehide", onPageHide);
}

// Per cache node: a one-line summary of its last run, drawn under the node's widgets.
function attachToNode(node) {
  const onNodeRun = (ev) => {
    if (String(ev.detail?.node_id) !== String(node.id)) return;
    const r = ev.detail, computed = r.calls - r.skipped_calls;
    node.ditCacheLast = { calls: r.calls, skipped: r.skipped_calls, speedup: computed ? r.calls / computed : 1 };
    node.setDirtyCanvas?.(true, false);
  };
  api.addEventListener(RUN_EVENT, onNodeRun);
  const calibrates = String(node.comfyClass || node.type) === CALIBRATE_NODE;
  const onNodeCalibrated = (ev) => {
    const cal = ev.detail;
    if (!isCalibration(cal) || String(cal.node_id) !== String(node.id)) return;
    node.ditCacheCalibration = { file: cal.file, steps: cal.steps, ratios: cal.ratios };
    // room under the widgets for the curve and the file name (drawn by onDrawForeground)
    const min = node.computeSize?.() ?? node.size;
    node.setSize?.([Math.max(node.size[0], 280), Math.max(node.size[1], min[1] + NODE_CAL_H)]);
    node.setDirtyCanvas?.(true, true);
  };
  if (calibrates) api.addEventListener(CALIBRATED_EVENT, onNodeCalibrated);
  const onRemoved = node.onRemoved;
  node.onRemoved = function () {
    api.removeEventListener(RUN_EVENT, onNodeRun);
    if (calibrates) api.removeEventListener(CALIBRATED_EVENT, onNodeCalibrated);
    node.ditCacheDetached = true;
    return onRemoved?.apply(this, arguments);
  };
  const onDraw = node.onDrawForeground;
  node.onDrawForeground = function (ctx) {
    const r = onDraw?.apply(this, arguments);
    const last = this.ditCacheLast;
    if (last && !this.flags?.collapsed) {
      ctx.save();
      ctx.font = "11px sans-serif";
      ctx.fillStyle = "#8fc98f";
      ctx.fillText(`last run: ${last.skipped}/${last.calls} skipped · ~${last.speedup.toFixed(2)}x`, 8, this.size[1] - 6);
      ctx.restore();
    }
    if (this.ditCacheCalibration && !this.flags?.collapsed) drawCalibration(this, ctx, this.ditCacheCalibration);
    return r;
  };
}

// MagCache Calibrate node: the ratios per stream as a small curve above the "last run" line, "saved <file>" under it.
const NODE_CAL_H = 104; // curve 62, legend and file lines, the "last run" line
function drawCalibration(node, ctx, cal) {
  const [w, h] = node.size;
  const x0 = 8, x1 = w - 8, top = h - NODE_CAL_H, bottom = top + 62;
  const [lo, hi] = ratioRange(cal.ratios);
  const n = Math.max(2, ...Object.values(cal.ratios).map((l) => l.length));
  const x = (i) => x0 + (i / (n - 1)) * (x1 - x0);
  const y = (v) => top + 4 + (1 - (v - lo) / (hi - lo)) * (bottom - top - 8);
  ctx.save();
  ctx.fillStyle = "rgba(0,0,0,0.25)";
  ctx.fillRect(x0, top, x1 - x0, bottom - top);
  ctx.strokeStyle = COLORS.grid;
  ctx.setLineDash([4, 3]);
  ctx.beginPath();
  ctx.moveTo(x0, y(1));
  ctx.lineTo(x1, y(1));
  ctx.stroke();
  ctx.setLineDash([]);
  ctx.font = "10px sans-serif";
  let k = 0, points = 0, legend = x0;
  for (const [name, list] of Object.entries(cal.ratios)) {
    const color = STREAM_COLORS[k++ % STREAM_COLORS.length];
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.3;
    ctx.beginPath();
    let pen = false;
    list.forEach((v, i) => {
      if (typeof v !== "number" || !isFinite(v)) { pen = false; return; }
      pen ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v));
      pen = true;
      points++;
    });
    ctx.stroke();
    ctx.fillStyle = color;
    ctx.fillText(name, legend, bottom + 11);
    legend += ctx.measureText(name).width + 10;
  }
  ctx.fillStyle = "#aaa";
  ctx.textAlign = "right";
  const all = Object.values(cal.ratios).flat().filter((v) => typeof v === "number" && isFinite(v));
  ctx.fillText(`ratios · ${n} calls · ${Math.min(...all).toPrecision(3)}–${Math.max(...all).toPrecision(3)}`, x1, bottom + 11);
  ctx.textAlign = "left";
  ctx.fillStyle = "#8fc98f";
  let text = `saved ${cal.file}`;
  while (text.length > 8 && ctx.measureText(text).width > x1 - x0) text = text.slice(0, -2);
  if (text !== `saved ${cal.file}`) text = text.slice(0, -1) + "…";
  ctx.fillText(text, x0, bottom + 23);
  ctx.restore();
  node.ditCacheDrawn = { points, streams: k, top }; // what the last frame drew (read by the browser test)
}

app.registerExtension({
  name: EXT,
  async setup() {
    api.addEventListener(RUN_EVENT, onRun);
    api.addEventListener(STEP_EVENT, onStep);
    api.addEventListener(CALIBRATED_EVENT, onCalibrated);
    window.addEventListener("pagehide", onPageHide);
    app.extensionManager?.registerSidebarTab?.({
      id: TAB_ID,
      icon: "pi pi-chart-bar",
      title: "DiT Cache",
      tooltip: "dit-cache: what the cache skipped, per node and run",
      type: "custom",
      render: (container) => {
        state.container = container;
        render();
      },
      destroy: () => {
        if (state.frame) cancelAnimationFrame(state.frame);
        state.frame = 0;
        state.container = null;
      },
    });
    load(); // not awaited: it may wait for the websocket's client id, which must not hold up the app's setup
  },
  nodeCreated(node) {
    if (String(node.comfyClass || node.type || "").startsWith("DitCache.")) attachToNode(node);
  },
});
