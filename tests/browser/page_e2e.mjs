// Drives the real ComfyUI page in headless Chromium for tests/browser/test_page_browser.py: the page as a user
// meets it (issue 20 items 1, 2, 3, 5, 10, 11). On one fresh server, in order:
//   empty   - a workflow whose Apply node has no calibration yet: the dropdown's entry, its tooltip, the refusal;
//   warning - a cache node on an SD1.5 UNet: the toast, the line on the node and the one in the tab;
//   tab     - two workflows whose cache nodes share id 5, queued one after the other: one tab section each,
//             newest first, named by workflow, settings readable;
//   calibrate - a MagCache Calibrate workflow: the node's reserved result area (curve, file name, copy button),
//             node sizes before and after, every node's box (overlaps);
//   nodes2  - the same with the frontend's Nodes 2.0 (Vue) renderer switched on: the DOM widgets in the Vue nodes.
// It asserts nothing itself: it prints one JSON line ("RESULT {...}").
//
// Usage: node page_e2e.mjs <config.json>; config: {url, workflows: {<key>: {path, name}}, outDir, nodeDir, chromium,
// userDataDir, timeoutMs, nodes2 (whether the frontend offers Nodes 2.0)}.
import { readFileSync } from "node:fs";
import path from "node:path";
import { drive, fitGraph, frames, loadWorkflow, openTab, queueAndWait } from "./common.mjs";

// The tab: one entry per section (prompt and node), in the order shown.
const readTab = () => [...document.querySelectorAll(".dit-cache-node")].map((s) => ({
  ...s.dataset,
  workflowText: s.querySelector(".dit-cache-workflow")?.innerText ?? null,
  title: s.querySelector(".dit-cache-node-title")?.innerText ?? null,
  warnings: [...s.querySelectorAll(".dit-cache-warning")].map((w) => w.innerText),
  cards: [...s.querySelectorAll(".dit-cache-run")].map((c) => ({ ...c.dataset, text: c.innerText,
    settings: c.querySelector(".dit-cache-settings")?.innerText ?? "" })),
  calibrations: [...s.querySelectorAll(".dit-cache-calibration")].map((c) => ({ ...c.dataset, text: c.innerText })),
}));

// Every node: graph box (title bar included), what our widgets show and where their elements are on screen.
const readNodes = () => window.app.graph.nodes.map((n) => {
  const title = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  const own = (n.widgets ?? []).filter((w) => w.serialize === false && w.element).map((w) => w.element);
  const shown = (cls) => {
    const e = own.map((x) => (x.matches(cls) ? x : x.querySelector(cls))).find(Boolean) ?? null;
    if (!e || !e.isConnected) return null;
    const r = e.getBoundingClientRect();
    const vue = e.closest("[data-node-id]");
    return { text: e.innerText ?? "", value: e.value ?? null, w: r.width, h: r.height, x: r.x, y: r.y,
      visible: r.width > 0 && r.height > 0 && getComputedStyle(e).visibility !== "hidden" && e.offsetParent !== null,
      inVueNode: vue ? vue.dataset.nodeId : null };
  };
  return {
    id: n.id, type: n.type, title: n.title, box: [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title],
    size: [...n.size], min: n.computeSize ? [...n.computeSize()] : null, mode: n.mode,
    display: (n.widgets ?? []).filter((w) => w.serialize === false).map((w) => w.name),
    saved: n.serialize().widgets_values ?? null,
    last: n.ditCacheLast ?? null, warning: n.ditCacheWarning ?? null, drawn: n.ditCacheDrawn ?? null,
    line: shown(".dit-cache-line"), calibration: shown(".dit-cache-node-calibration"),
    file: shown(".dit-cache-file"), curve: shown(".dit-cache-node-curve svg"),
  };
});

await drive("page_e2e", async ({ cfg, page, browser, result, step }) => {
  const wfs = Object.fromEntries(Object.entries(cfg.workflows).map(([k, v]) =>
    [k, { name: v.name, graph: JSON.parse(readFileSync(v.path, "utf8")) }]));
  // the cache nodes and what they feed, readable (the graph's own nodes beside them)
  const CLOSE = ["DitCache.MagCacheCalibrate", "DitCache.ApplyMagCache", "DitCache.ApplyTeaCache",
    "DitCache.ApplySmoothCache", "KSampler", "DitCacheTest.TinyModelLoader"];
  const shot = async (name, fit = true) => {
    if (fit) await fitGraph(page, CLOSE, 1.3);
    await frames(page);
    const file = path.join(cfg.outDir, name);
    await page.screenshot({ path: file });
    (result.screenshots ??= []).push(file);
  };
  await browser.grantPermissions(["clipboard-read", "clipboard-write"], { origin: new URL(cfg.url).origin });

  step("open page");
  await page.goto(cfg.url, { waitUntil: "load", timeout: cfg.timeoutMs });
  await openTab(page, cfg);

  step("empty: a calibration dropdown with nothing listed yet");
  await loadWorkflow(page, wfs.empty.graph, wfs.empty.name);
  result.empty = await page.evaluate(() => {
    const n = window.app.graph.nodes.find((x) => x.type === "DitCache.ApplySmoothCache");
    const w = n.widgets.find((x) => x.name === "calibration");
    const spec = n.constructor.nodeData?.input?.required?.calibration;
    const fresh = window.LiteGraph.createNode("DitCache.ApplySmoothCache"); // as a user adds it (not in the graph)
    const freshValue = fresh?.widgets?.find((x) => x.name === "calibration")?.value ?? null;
    return { id: n.id, value: w.value, options: w.options?.values ?? null, tooltip: spec?.[1]?.tooltip ?? null, freshValue };
  });
  result.empty.queue = await queueAndWait(page, cfg);
  await shot("page-empty-calibration.png");
  await page.keyboard.press("Escape"); // the error dialog

  step("warning: a cache node on an SD1.5 UNet");
  await loadWorkflow(page, wfs.warning.graph, wfs.warning.name);
  await page.evaluate(() => { // every toast shown from now on (they go away after a while)
    window.__toasts = [];
    window.__toastObserver = new MutationObserver(() => {
      for (const t of document.querySelectorAll('.p-toast [role="alert"], .p-toast-message, .dit-cache-toast')) {
        if (t.innerText && !window.__toasts.includes(t.innerText)) window.__toasts.push(t.innerText);
      }
    });
    window.__toastObserver.observe(document.body, { childList: true, subtree: true, characterData: true });
  });
  result.warning = { queue: await queueAndWait(page, cfg) };
  await page.waitForSelector(".dit-cache-warning", { timeout: cfg.timeoutMs });
  const TOASTS = '.p-toast [role="alert"], .p-toast-message, .dit-cache-toast';
  await page.waitForFunction((sel) => document.querySelector(sel), TOASTS, { timeout: 15_000 }).catch(() => null);
  result.warning.toasts = await page.evaluate(() => { window.__toastObserver.disconnect(); return window.__toasts; });
  result.warning.toastHtml = await page.evaluate(() => document.querySelector(".p-toast")?.outerHTML.slice(0, 2000) ?? null);
  result.warning.nodes = await page.evaluate(readNodes);
  result.warning.tab = await page.evaluate(readTab);
  await shot("page-warning.png");

  step("tab: two workflows, cache node #5 in both");
  for (const key of ["first", "second"]) {
    await loadWorkflow(page, wfs[key].graph, wfs[key].name);
    result[key] = { queue: await queueAndWait(page, cfg) };
  }
  await page.waitForFunction((n) => document.querySelectorAll('.dit-cache-run[data-live="0"]').length >= n, 2,
    { timeout: cfg.timeoutMs });
  result.tab = await page.evaluate(readTab);
  result.second.nodes = await page.evaluate(readNodes);
  await shot("page-tab.png");
  const panel = await page.$(".dit-cache-panel");
  await panel.screenshot({ path: path.join(cfg.outDir, "page-tab-sidebar.png") });
  result.screenshots.push(path.join(cfg.outDir, "page-tab-sidebar.png"));

  step("calibrate: the node's result area");
  await loadWorkflow(page, wfs.calibrate.graph, wfs.calibrate.name);
  result.calibrate = { before: await page.evaluate(readNodes) };
  result.calibrate.queue = await queueAndWait(page, cfg);
  await page.waitForSelector(".dit-cache-calibration", { timeout: cfg.timeoutMs });
  await fitGraph(page, CLOSE, 1.3);
  result.calibrate.after = await page.evaluate(readNodes);
  result.calibrate.clipboard = await page.evaluate(async () => {
    const b = document.querySelector(".dit-cache-copy");
    b.click();
    await new Promise((r) => setTimeout(r, 200));
    return { button: b.innerText, text: await navigator.clipboard.readText().catch((e) => `unreadable: ${e}`) };
  });
  await shot("page-calibrate.png", false);
  result.calibrate.tab = await page.evaluate(readTab);

  if (cfg.nodes2) {
    step("nodes2: the same with the Nodes 2.0 renderer");
    await page.evaluate(async () => { await window.app.extensionManager.setting.set("Comfy.VueNodes.Enabled", true); });
    await loadWorkflow(page, wfs.calibrate.graph, wfs.calibrate.name);
    await page.waitForSelector("[data-node-id] .dit-cache-line", { timeout: cfg.timeoutMs });
    result.nodes2 = { enabled: await page.evaluate(() => window.app.extensionManager.setting.get("Comfy.VueNodes.Enabled")) };
    result.nodes2.before = await page.evaluate(readNodes);
    result.nodes2.queue = await queueAndWait(page, cfg);
    await frames(page);
    await fitGraph(page, CLOSE, 1.3);
    result.nodes2.after = await page.evaluate(readNodes);
    await shot("page-nodes2.png", false);
  }
});
