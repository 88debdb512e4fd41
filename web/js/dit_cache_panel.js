// dit-cache statistics panel: what the cache skipped, per cache node and sampling run.
//
// Server side: hosts/comfy/stats_server.py pushes "dit-cache.run" (one run, at its end), "dit-cache.step" (one
// model call, live) and "dit-cache.warning" (a warning the user must see: unsupported model, a method that does
// not apply, a calibration that does not match; once per prompt, node and message) to the page that queued the
// prompt and serves GET /dit-cache/runs?client_id=<this page's id> (this page's last runs, calibrations and
// warnings, for a reloaded page). This file draws them in a "DiT Cache" sidebar tab: one section per prompt and
// cache node, newest first, headed by the workflow's name (remembered per prompt id when the page queues it;
// else the prompt id) and the node's title. A warning is also a toast and a line on the node.
// On every cache node (matched by its id, "DitCache.*") a DOM widget (drawn by both the classic canvas and the
// Nodes 2.0 / Vue renderer) holds a one-line summary of the last run (LINE_H px, reserved from the start).
// Calibrate nodes ("DitCache.*Calibrate") also reserve CAL_H px for their result: the curve of the saved ratios
// (MagCache Calibrate's "dit_cache.magcache_calibrated"; other Calibrate nodes' "dit-cache.calibrated") and the
// saved file's name in a read-only field with a copy button; the sidebar lists them under the node too.
// Listeners: the page-level ones are removed on "pagehide"; each cache node's own listener is removed when the
// node is removed from the graph (onRemoved).
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const EXT = "dit-cache.panel";
const TAB_ID = "dit-cache-stats";
const RUN_EVENT = "dit-cache.run";
const STEP_EVENT = "dit-cache.step";
const CALIBRATED_EVENT = "dit_cache.magcache_calibrated";
const ANY_CALIBRATED_EVENT = "dit-cache.calibrated"; // Calibrate nodes without a curve of their own
const WARNING_EVENT = "dit-cache.warning";
const MAX_CALIBRATIONS = 32;
const MAX_WARNINGS = 64;
const MAX_RUNS_PER_NODE = 5;
const MAX_GROUPS = 24;
const LINE_H = 22; // the "last run" line on every cache node
const CAL_H = 150; // a Calibrate node's result: curve, file name and copy button
const NAMES_KEY = "dit-cache.workflow-names"; // prompt id -> workflow name (sessionStorage, like the client id)
const MAX_NAMES = 64;
const isCacheNode = (node) => String(node?.comfyClass || node?.type || "").startsWith("DitCache.");
const isCalibrateNode = (node) => isCacheNode(node) && String(node.comfyClass || node.type).endsWith("Calibrate");
const COLORS = { computed: "#4caf50", skipped: "#5c8dd6", threshold: "#e0a030", grid: "#555" };
const STREAM_COLORS = ["#f0f0f0", "#e57373", "#ba68c8", "#4dd0e1"];
const SVG_NS = "http://www.w3.org/2000/svg";

const state = {
  runs: [], // finished runs, oldest first (as GET /dit-cache/runs returns them)
  live: new Map(), // prompt_id|spec_id -> {node_id, node, method, calls, skipped_calls, records}
  calibrations: [], // saved calibrations (event payloads), oldest first
  warnings: [], // dit-cache.warning payloads, oldest first
  warned: new Set(), // prompt|node|message already shown as a toast
  seq: new WeakMap(), // entry -> arrival order (groups sort by their newest entry)
  next: 0,
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
// A setting as text: numbers to 4 decimals, lists as "a, b", objects (Step Schedule's chosen steps per stream,
// MagCache's curve lengths) as "key value; key value", nothing as "-": never "[object Object]".
function fmtVal(v) {
  if (v == null) return "-";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(+v.toFixed(4));
  if (Array.isArray(v)) return v.length > 12 ? `${v.slice(0, 12).map(fmtVal).join(", ")}, … (${v.length})` : v.map(fmtVal).join(", ");
  if (typeof v === "object") return Object.entries(v).map(([k, x]) => `${k} ${typeof x === "object" && x ? `[${fmtVal(x)}]` : fmtVal(x)}`).join("; ");
  return String(v);
}
const seqOf = (entry) => {
  if (!state.seq.has(entry)) state.seq.set(entry, ++state.next);
  return state.seq.get(entry);
};

// ------------------------------------------------------------------------------------------------ workflow names
function readNames() {
  try { return JSON.parse(sessionStorage.getItem(NAMES_KEY) || "{}") || {}; } catch { return {}; }
}
function rememberName(promptId, name) {
  if (!promptId || !name) return;
  const names = readNames();
  delete names[promptId];
  names[promptId] = name;
  const keys = Object.keys(names);
  for (const k of keys.slice(0, Math.max(0, keys.length - MAX_NAMES))) delete names[k];
  try { sessionStorage.setItem(NAMES_KEY, JSON.stringify(names)); } catch { /* storage full: names are a nicety */ }
}
function activeWorkflowName() {
  const wf = app.extensionManager?.workflow?.activeWorkflow ?? app.workflowManager?.activeWorkflow;
  return wf?.filename ?? wf?.name ?? null;
}
const workflowName = (promptId) => (promptId ? readNames()[promptId] : null) ?? null;
// The page queues prompts through api.queuePrompt: remember the workflow on screen under the prompt id it got.
function wrapQueuePrompt() {
  const orig = api.queuePrompt;
  if (typeof orig !== "function" || orig.ditCacheWrapped) return;
  const wrapped = async function (...args) {
    const name = activeWorkflowName();
    const res = await orig.apply(this, args);
    rememberName(res?.prompt_id, name);
    scheduleRender();
    return res;
  };
  wrapped.ditCacheWrapped = true;
  api.queuePrompt = wrapped;
}

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
  if (!streams.length) { // a Calibrate node without ratios (SmoothCache, Step Schedule): its file
    return el("div", {
      class: "dit-cache-calibration", "data-node-id": cal.node_id ?? "", "data-prompt-id": cal.prompt_id ?? "",
      "data-file": cal.file ?? "", "data-steps": cal.steps ?? "", "data-streams": "",
      style: "border:1px solid var(--border-color,#444);border-radius:6px;padding:6px 8px;margin:6px 0;",
    },
      el("div", { style: "font-weight:600" }, `calibration · ${cal.family ?? "?"} · ${cal.steps ?? "?"} steps`),
      el("div", { class: "dit-cache-saved", style: "font-size:12px;word-break:break-all", title: cal.folder ?? "" },
        `saved ${cal.file}`));
  }
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
  const settings = Object.entries(run.settings || {}).map(([k, v]) => `${k}: ${fmtVal(v)}`).join(" · ");
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
    const text = fmtVal(value);
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

// The graph's node for a node id (its title is the heading's), when the graph on screen has that cache node.
function graphNode(nodeId) {
  if (nodeId == null || nodeId === "") return null;
  const node = app.graph?.getNodeById?.(Number(nodeId)) ?? app.graph?.getNodeById?.(nodeId);
  return isCacheNode(node) ? node : null;
}

function warningLine(w) {
  return el("div", { class: "dit-cache-warning", "data-node-id": w.node_id ?? "", "data-prompt-id": w.prompt_id ?? "",
    style: "color:#e0a030;font-size:12px;margin:4px 0;word-break:break-word" }, `⚠ ${w.message}`);
}

// One section per prompt and cache node (a workflow queued twice, or two workflows whose cache nodes share an id,
// are separate sections), the section with the newest entry first.
function render() {
  state.frame = 0;
  const root = state.container;
  if (!root) return;
  const body = el("div", { class: "dit-cache-panel", style: "padding:8px;font-size:13px;overflow-y:auto;height:100%;box-sizing:border-box" });
  body.append(el("div", { style: "display:flex;align-items:center;gap:8px;margin-bottom:4px" },
    el("span", { style: "font-weight:700;font-size:14px;flex:1" }, "DiT Cache · skip statistics"),
    el("button", { class: "dit-cache-refresh", title: "Fetch the last runs from the server", onclick: () => load(), style: "cursor:pointer" }, "↻")));
  if (state.error) body.append(el("div", { class: "dit-cache-error", style: "color:#e57373" }, state.error));
  const groups = new Map(); // prompt|node -> {first: an entry naming the node, last: newest arrival, items, cals, warns}
  const group = (entry) => {
    const key = `${entry.prompt_id ?? ""}|${entry.node_id ?? entry.spec_id ?? "?"}`;
    if (!groups.has(key)) groups.set(key, { first: entry, last: 0, items: [], cals: [], warns: [] });
    const g = groups.get(key);
    g.last = Math.max(g.last, seqOf(entry));
    return g;
  };
  for (const run of state.runs) group(run).items.push([run, false]);
  for (const run of state.live.values()) group(run).items.push([run, true]);
  for (const cal of state.calibrations) group(cal).cals.push(cal);
  for (const w of state.warnings) group(w).warns.push(w);
  if (!groups.size) {
    body.append(el("div", { class: "dit-cache-empty", style: "opacity:.7;margin-top:12px" },
      state.loaded ? "no runs yet" : "loading…"));
  }
  const ordered = [...groups.values()].sort((x, y) => y.last - x.last).slice(0, MAX_GROUPS); // newest first
  for (const g of ordered) {
    const e = g.first, node = graphNode(e.node_id);
    const workflow = workflowName(e.prompt_id);
    const nodeTitle = `${node?.title || e.node || "cache node"}${e.node_id != null ? " #" + e.node_id : ""}`;
    const sec = el("div", {
      class: "dit-cache-node", "data-node-id": e.node_id ?? "", "data-prompt-id": e.prompt_id ?? "",
      "data-workflow": workflow ?? "",
    },
      el("div", { class: "dit-cache-group-head", style: "margin-top:10px;border-bottom:1px solid var(--border-color,#444)" },
        el("div", { class: "dit-cache-workflow", style: "font-size:11px;opacity:.75;word-break:break-all",
          title: e.prompt_id ? `prompt ${e.prompt_id}` : "" },
          workflow ? `workflow ${workflow}` : e.prompt_id ? `prompt ${String(e.prompt_id).slice(0, 8)}` : "no prompt"),
        el("div", { class: "dit-cache-node-title", style: "font-weight:600" }, nodeTitle)));
    for (const w of g.warns) sec.append(warningLine(w));
    for (const cal of g.cals.slice(-MAX_RUNS_PER_NODE).reverse()) sec.append(calibrationCard(cal)); // newest first
    const items = g.items.sort((x, y) => seqOf(x[0]) - seqOf(y[0])).slice(-MAX_RUNS_PER_NODE).reverse();
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
    const entries = data.runs || [];
    state.seq = new WeakMap();
    state.next = 0;
    state.runs = [];
    state.calibrations = [];
    state.warnings = [];
    // in the server's order (oldest first): sampling runs, Calibrate nodes' {calibration: <the event's payload>},
    // and {warning: <the dit-cache.warning payload>}
    for (const r of entries) {
      if (isSamplingRun(r)) state.runs.push(r);
      else if (isCalibration(r?.calibration)) state.calibrations.push(r.calibration);
      else if (isWarning(r?.warning)) state.warnings.push(r.warning);
      else continue;
      seqOf(isSamplingRun(r) ? r : r.calibration ?? r.warning);
    }
    for (const live of state.live.values()) seqOf(live);
    state.error = null;
  } catch (e) {
    state.error = `could not load runs: ${e.message ?? e}`;
  }
  state.loaded = true;
  scheduleRender();
}

// ------------------------------------------------------------------------------------------------ events
const liveKey = (d) => `${d.prompt_id}|${d.spec_id}`;
// The run log also holds other entries (calibrations, warnings): the panel shows sampling runs as runs.
const isSamplingRun = (r) => r != null && typeof r.calls === "number" && Array.isArray(r.records);
const isWarning = (w) => w != null && typeof w.message === "string";
function onRun(ev) {
  const run = ev.detail;
  if (!isSamplingRun(run)) return;
  const live = state.live.get(liveKey(run));
  state.live.delete(liveKey(run));
  if (live) seqOf(live); // the finished run takes the live card's place
  seqOf(run);
  state.runs.push(run);
  if (state.runs.length > 64) state.runs.splice(0, state.runs.length - 64);
  scheduleRender();
}
const isCalibration = (c) => c != null && typeof c.file === "string" && (c.ratios == null || typeof c.ratios === "object");
function onCalibrated(ev) {
  const cal = ev.detail;
  if (!isCalibration(cal)) return;
  seqOf(cal);
  state.calibrations.push(cal);
  if (state.calibrations.length > MAX_CALIBRATIONS) state.calibrations.splice(0, state.calibrations.length - MAX_CALIBRATIONS);
  scheduleRender();
}
const warningKey = (w) => `${w.prompt_id}|${w.node_id}|${w.message}`;
// A small toast of our own where the frontend has no toast service.
function fallbackToast(summary, detail) {
  const box = el("div", { class: "dit-cache-toast", style: "position:fixed;right:16px;bottom:16px;z-index:10000;max-width:420px;" +
    "background:#3a2f10;color:#f5deb3;border:1px solid #e0a030;border-radius:6px;padding:8px 10px;font:12px sans-serif" },
    el("div", { style: "font-weight:600" }, summary), el("div", {}, detail));
  document.body.append(box);
  setTimeout(() => box.remove(), 10000);
}
function onWarning(ev) {
  const w = ev.detail;
  if (!isWarning(w) || state.warned.has(warningKey(w))) return; // once per prompt, node and message
  state.warned.add(warningKey(w));
  seqOf(w);
  state.warnings.push(w);
  if (state.warnings.length > MAX_WARNINGS) state.warnings.splice(0, state.warnings.length - MAX_WARNINGS);
  const node = graphNode(w.node_id);
  const summary = `dit-cache · ${node?.title || w.node || "cache node"}`;
  const toast = app.extensionManager?.toast;
  if (typeof toast?.add === "function") toast.add({ severity: "warn", summary, detail: w.message, life: 10000 });
  else fallbackToast(summary, w.message);
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
    seqOf(live);
  }
  live.calls = d.calls;
  live.skipped_calls = d.skipped_calls;
  live.records.push(...d.records);
  scheduleRender();
}
const PAGE_EVENTS = [[RUN_EVENT, onRun], [STEP_EVENT, onStep], [CALIBRATED_EVENT, onCalibrated],
  [ANY_CALIBRATED_EVENT, onCalibrated], [WARNING_EVENT, onWarning]];
function onPageHide() {
  for (const [name, fn] of PAGE_EVENTS) api.removeEventListener(name, fn);
  window.removeEventListener("pagehide", onPageHide);
}

// ------------------------------------------------------------------------------------------------ on the node
// DOM widgets: both renderers draw them (the classic canvas positions the element over the node; Nodes 2.0 puts
// it in the node's Vue component), and their height is part of the node's minimum size from the start, so the
// node never grows over its neighbours after a run. Never serialized: the workflow's widgets_values stay as saved.
function addDisplayWidget(node, name, element, height) {
  const widget = node.addDOMWidget(name, "dit-cache-display", element, {
    serialize: false, hideOnZoom: false, getMinHeight: () => height, getMaxHeight: () => height, getHeight: () => height,
  });
  widget.serialize = false; // litegraph's serialize() reads the widget's own flag
  widget.computeSize = (width) => [width ?? node.size[0], height];
  return widget;
}

// The node's size must hold its widgets (ours included): a workflow saved before they existed gives a smaller size.
function reserveSize(node) {
  const min = node.computeSize?.();
  if (!min) return;
  if (node.size[0] < min[0] || node.size[1] < min[1]) {
    node.setSize?.([Math.max(node.size[0], min[0]), Math.max(node.size[1], min[1])]);
    node.setDirtyCanvas?.(true, true);
  }
}

function lineElement() {
  return el("div", { class: "dit-cache-line", style: `height:${LINE_H - 4}px;line-height:${LINE_H - 4}px;font:11px sans-serif;` +
    "color:#8fc98f;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;padding:0 4px;box-sizing:border-box" }, "last run: –");
}

function calibrationElement() {
  const curve = el("div", { class: "dit-cache-node-curve", style: "height:86px;overflow:hidden" },
    el("div", { style: "opacity:.6;font:11px sans-serif;padding:30px 4px" }, "the calibration curve appears here after a run"));
  const file = el("input", { class: "dit-cache-file", type: "text", readOnly: true, value: "", placeholder: "saved file: after a run",
    title: "the saved calibration's file name (select or copy it)",
    style: "flex:1;min-width:0;font:11px monospace;background:var(--comfy-input-bg,#222);color:var(--input-text,#ddd);" +
      "border:1px solid var(--border-color,#555);border-radius:4px;padding:2px 4px" });
  const copy = el("button", { class: "dit-cache-copy", title: "copy the file name", disabled: true,
    style: "font:11px sans-serif;cursor:pointer;padding:2px 6px" }, "copy");
  copy.onclick = async (e) => {
    e.stopPropagation();
    try { await navigator.clipboard.writeText(file.value); } catch {
      file.select();
      document.execCommand?.("copy");
    }
    copy.textContent = "copied";
    setTimeout(() => { copy.textContent = "copy"; }, 1500);
  };
  const legend = el("div", { class: "dit-cache-node-legend", style: "font:10px sans-serif;opacity:.8;height:14px;overflow:hidden;white-space:nowrap" });
  const root = el("div", { class: "dit-cache-node-calibration", style: `height:${CAL_H - 8}px;box-sizing:border-box;padding:0 2px;overflow:hidden` },
    curve, legend, el("div", { style: "display:flex;gap:4px;align-items:center;margin-top:4px" }, file, copy));
  return { root, curve, legend, file, copy };
}

function showCalibration(node, parts, cal) {
  const ratios = cal.ratios || {};
  const streams = Object.keys(ratios);
  if (streams.length) {
    const chart = ratioChart(ratios);
    chart.setAttribute("width", "100%");
    chart.setAttribute("height", "86");
    chart.setAttribute("preserveAspectRatio", "none");
    parts.curve.replaceChildren(chart);
    const all = Object.values(ratios).flat().filter((v) => typeof v === "number" && isFinite(v));
    parts.legend.replaceChildren(...streams.map((name, k) =>
      el("span", { style: `color:${STREAM_COLORS[k % STREAM_COLORS.length]};margin-right:6px` }, name)),
      `ratios · ${cal.steps} calls · ${Math.min(...all).toPrecision(3)}–${Math.max(...all).toPrecision(3)}`);
  } else {
    parts.curve.replaceChildren(el("div", { style: "font:11px sans-serif;padding:30px 4px" },
      `saved · ${cal.family ?? "?"} · ${cal.steps ?? "?"} steps`));
    parts.legend.replaceChildren();
  }
  parts.file.value = cal.file;
  parts.copy.disabled = false;
  const points = Object.values(ratios).reduce((n, l) => n + l.filter((v) => typeof v === "number" && isFinite(v)).length, 0);
  node.ditCacheDrawn = { points, streams: streams.length, file: cal.file }; // what the node shows (browser tests)
}

function attachToNode(node) {
  const line = lineElement();
  node.ditCacheLine = addDisplayWidget(node, "dit_cache_last_run", line, LINE_H);
  const calibrates = isCalibrateNode(node);
  const parts = calibrates ? calibrationElement() : null;
  if (parts) node.ditCacheCalibrationWidget = addDisplayWidget(node, "dit_cache_calibration", parts.root, CAL_H);
  reserveSize(node);
  const onConfigure = node.onConfigure;
  node.onConfigure = function () { // a loaded workflow's saved size comes after the widgets: keep them in it
    const r = onConfigure?.apply(this, arguments);
    reserveSize(this);
    return r;
  };
  const onNodeRun = (ev) => {
    if (String(ev.detail?.node_id) !== String(node.id)) return;
    const r = ev.detail, computed = r.calls - r.skipped_calls;
    node.ditCacheLast = { calls: r.calls, skipped: r.skipped_calls, speedup: computed ? r.calls / computed : 1 };
    line.style.color = "#8fc98f";
    line.textContent = `last run: ${r.skipped_calls}/${r.calls} skipped · ~${node.ditCacheLast.speedup.toFixed(2)}x`;
    line.title = line.textContent;
    node.setDirtyCanvas?.(true, false);
  };
  const onNodeWarning = (ev) => {
    const w = ev.detail;
    if (!isWarning(w) || String(w.node_id) !== String(node.id)) return;
    node.ditCacheWarning = w.message;
    line.style.color = "#e0a030";
    line.textContent = `⚠ ${w.message}`;
    line.title = w.message;
    node.setDirtyCanvas?.(true, false);
  };
  const onNodeCalibrated = (ev) => {
    const cal = ev.detail;
    if (!isCalibration(cal) || String(cal.node_id) !== String(node.id)) return;
    node.ditCacheCalibration = { file: cal.file, steps: cal.steps, ratios: cal.ratios };
    showCalibration(node, parts, cal);
    node.setDirtyCanvas?.(true, true);
  };
  const events = [[RUN_EVENT, onNodeRun], [WARNING_EVENT, onNodeWarning]];
  if (calibrates) events.push([CALIBRATED_EVENT, onNodeCalibrated], [ANY_CALIBRATED_EVENT, onNodeCalibrated]);
  for (const [name, fn] of events) api.addEventListener(name, fn);
  const onRemoved = node.onRemoved;
  node.onRemoved = function () {
    for (const [name, fn] of events) api.removeEventListener(name, fn);
    node.ditCacheDetached = true;
    return onRemoved?.apply(this, arguments);
  };
}

app.registerExtension({
  name: EXT,
  async setup() {
    for (const [name, fn] of PAGE_EVENTS) api.addEventListener(name, fn);
    window.addEventListener("pagehide", onPageHide);
    wrapQueuePrompt();
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
    if (isCacheNode(node)) attachToNode(node);
  },
});
