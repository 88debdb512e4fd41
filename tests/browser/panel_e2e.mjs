// Drives the real ComfyUI page in headless Chromium (Debian's chromium via playwright-core) for
// tests/browser/test_panel_browser.py: opens the "DiT Cache" sidebar tab, loads a workflow, queues it, waits for the
// run's card, reads what the panel shows, takes screenshots, reloads, and checks listener removal.
// It asserts nothing itself: it prints one JSON line ("RESULT {...}") with its observations; the Python test
// compares them with the server's GET /dit-cache/runs?client_id=<the page's id>.
//
// Usage: node panel_e2e.mjs <config.json>; config: {url, workflow (UI-format JSON path), outDir, nodeDir,
// chromium, userDataDir, timeoutMs}.
import { readFileSync } from "node:fs";
import path from "node:path";
import { TAB_BUTTON, fitGraph, launch, openTab as openTabWith, readConfig, watchConsole } from "./common.mjs";

const cfg = readConfig();
const openTab = (page) => openTabWith(page, cfg);
const result = { steps: [], console: [] };
const step = (s) => { result.steps.push(s); process.stderr.write(`[panel_e2e] ${s}\n`); };

// Everything the panel shows for each run card, plus the timeline cells per stream.
const readPanel = () => {
  const empty = document.querySelector(".dit-cache-empty");
  const cards = [...document.querySelectorAll(".dit-cache-run")].map((c) => {
    const cells = [...c.querySelectorAll(".dit-cache-timeline rect")];
    const perStream = {};
    for (const r of cells) {
      const s = (perStream[r.dataset.stream] ??= { computed: 0, skipped: 0 });
      s[r.dataset.skipped === "1" ? "skipped" : "computed"]++;
    }
    return {
      ...c.dataset, text: c.innerText, timeline: perStream,
      metricPoints: c.querySelectorAll(".dit-cache-metric circle").length,
      threshold: c.querySelector(".dit-cache-threshold")?.dataset.threshold ?? null,
    };
  });
  return { empty: empty ? empty.innerText.trim() : null, cards, text: document.querySelector(".dit-cache-panel")?.innerText ?? null };
};

const browser = await launch(cfg);
try {
  const page = browser.pages()[0] ?? (await browser.newPage());
  watchConsole(page, result);

  step("open page");
  await page.goto(cfg.url, { waitUntil: "load", timeout: cfg.timeoutMs });
  await openTab(page);
  result.extensionRegistered = await page.evaluate(() =>
    (window.app.extensions ?? window.app.extensionManager?.extensions ?? []).some?.((e) => e.name === "dit-cache.panel") ?? null);
  result.before = await page.evaluate(readPanel);

  step("load workflow");
  const workflow = JSON.parse(readFileSync(cfg.workflow, "utf8"));
  await page.evaluate(async (wf) => { await window.app.loadGraphData(wf); }, workflow);
  result.graphNodes = await page.evaluate(() => window.app.graph.nodes.map((n) => ({
    id: n.id, type: n.type, widgets: (n.widgets ?? []).filter((w) => w.serialize !== false).map((w) => [w.name, w.value]),
    saved: n.serialize().widgets_values ?? null, display: (n.widgets ?? []).filter((w) => w.serialize === false).map((w) => w.name),
  })));

  step("queue prompt");
  await page.evaluate(() => {
    const api = window.comfyAPI.api.api;
    window.__ditCache = { runs: [], steps: 0, done: false, errors: [] };
    api.addEventListener("dit-cache.run", (e) => window.__ditCache.runs.push(e.detail));
    api.addEventListener("dit-cache.step", () => window.__ditCache.steps++);
    api.addEventListener("execution_success", () => { window.__ditCache.done = true; });
    api.addEventListener("execution_error", (e) => { window.__ditCache.errors.push(e.detail); window.__ditCache.done = true; });
    // the live card (drawn from dit-cache.step events while sampling runs): how often and how far it was seen
    window.__ditCache.live = { renders: 0, maxCalls: 0, maxCells: 0 };
    window.__ditCacheObserver = new MutationObserver(() => {
      for (const c of document.querySelectorAll('.dit-cache-run[data-live="1"]')) {
        const live = window.__ditCache.live;
        live.renders++;
        live.maxCalls = Math.max(live.maxCalls, Number(c.dataset.calls));
        live.maxCells = Math.max(live.maxCells, c.querySelectorAll(".dit-cache-timeline rect").length);
      }
    });
    window.__ditCacheObserver.observe(document.body, { childList: true, subtree: true });
  });
  result.queued = await page.evaluate(async () => await window.app.queuePrompt(0, 1));
  await page.waitForFunction(() => window.__ditCache.done, null, { timeout: cfg.timeoutMs });
  await page.waitForSelector('.dit-cache-run[data-live="0"]', { timeout: cfg.timeoutMs });
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  result.events = await page.evaluate(() => { window.__ditCacheObserver.disconnect(); return window.__ditCache; });
  // the id the prompt was queued with: the server keeps the page's runs under it
  result.clientId = await page.evaluate(() => window.comfyAPI.api.api.clientId);
  result.after = await page.evaluate(readPanel);
  result.nodeSummary = await page.evaluate(() =>
    window.app.graph.nodes.filter((n) => n.type.startsWith("DitCache.")).map((n) => ({ id: n.id, last: n.ditCacheLast ?? null })));

  step("screenshots");
  await fitGraph(page);
  result.screenshot = path.join(cfg.outDir, "panel.png");
  await page.screenshot({ path: result.screenshot });
  result.panelScreenshot = path.join(cfg.outDir, "panel-sidebar.png");
  const panel = await page.$(".dit-cache-panel");
  await panel.screenshot({ path: result.panelScreenshot });

  step("reload: the panel fetches GET /dit-cache/runs");
  await page.reload({ waitUntil: "load", timeout: cfg.timeoutMs });
  // the tab may come back open (the frontend remembers it) or closed
  await page.waitForSelector(TAB_BUTTON, { timeout: cfg.timeoutMs });
  if (!(await page.$(".dit-cache-panel"))) await openTab(page);
  await page.waitForSelector('.dit-cache-run[data-live="0"]', { timeout: cfg.timeoutMs });
  result.reloaded = await page.evaluate(readPanel);
  result.reloadedClientId = await page.evaluate(() => window.comfyAPI.api.api.clientId);

  step("node removal removes the node's listener");
  await page.evaluate(async (wf) => { await window.app.loadGraphData(wf); }, workflow);
  result.removal = await page.evaluate(async () => {
    const api = window.comfyAPI.api.api;
    const frame = () => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    const node = window.app.graph.nodes.find((n) => n.type.startsWith("DitCache."));
    const fake = (calls) => ({ node_id: String(node.id), spec_id: "fake", prompt_id: `fake-${calls}`, method: "Fake",
      settings: {}, model: "", calls, skipped_calls: 1, computed_calls: calls - 1, records: [], completed: true,
      cache_bytes: 0, wall_s: 0, run_wall_s: 0 });
    const cards0 = document.querySelectorAll(".dit-cache-run").length;
    api.dispatchCustomEvent("dit-cache.run", fake(777));
    await frame();
    const whileAttached = node.ditCacheLast?.calls ?? null;
    window.app.graph.remove(node);
    api.dispatchCustomEvent("dit-cache.run", fake(999));
    await frame();
    const afterRemoval = node.ditCacheLast?.calls ?? null;
    const cards1 = document.querySelectorAll(".dit-cache-run").length;
    // page unload: the page-level listeners go away
    window.dispatchEvent(new Event("pagehide"));
    api.dispatchCustomEvent("dit-cache.run", { ...fake(555), node_id: "12345" });
    await frame();
    const cards2 = document.querySelectorAll(".dit-cache-run").length;
    return { whileAttached, afterRemoval, detached: node.ditCacheDetached === true, cards0, cards1, cards2 };
  });
  step("done");
} catch (e) {
  result.error = String(e?.stack ?? e);
} finally {
  await browser.close();
}
process.stdout.write("RESULT " + JSON.stringify(result) + "\n");
