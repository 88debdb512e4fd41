// Drives the real ComfyUI page in headless Chromium for tests/browser/test_panel_browser.py's MagCache Calibrate test:
// loads a workflow with a "MagCache Calibrate" node, queues it from the page, waits for the
// "dit_cache.magcache_calibrated" event, reads what the node holds and drew and what the sidebar lists, takes a
// screenshot, reloads (the sidebar lists it again from GET /dit-cache/runs), then checks that the node's listener
// goes with the node and the panel's with the page.
// It asserts nothing itself: it prints one JSON line ("RESULT {...}"); the Python test compares it with the
// saved file and the server's records.
//
// Usage: node calibrate_e2e.mjs <config.json>; config: {url, workflow, outDir, nodeDir, chromium, userDataDir,
// timeoutMs}.
import { readFileSync } from "node:fs";
import path from "node:path";
import { TAB_BUTTON, fitGraph, frames, launch, openTab, readConfig, watchConsole } from "./common.mjs";

const cfg = readConfig();
const result = { steps: [], console: [] };
const step = (s) => { result.steps.push(s); process.stderr.write(`[calibrate_e2e] ${s}\n`); };
const CAL_NODE = "DitCache.MagCacheCalibrate";

// The sidebar's calibration cards: their data attributes, text and the ratios each curve was drawn from.
const readCalibrations = () => [...document.querySelectorAll(".dit-cache-calibration")].map((c) => ({
  ...c.dataset, text: c.innerText,
  section: c.closest(".dit-cache-node")?.dataset.nodeId ?? null,
  curves: Object.fromEntries([...c.querySelectorAll("polyline.dit-cache-ratio")].map((p) =>
    [p.dataset.stream, { ratios: JSON.parse(p.dataset.ratios), points: p.getAttribute("points").trim().split(/\s+/).length }])),
}));

const browser = await launch(cfg);
try {
  const page = browser.pages()[0] ?? (await browser.newPage());
  watchConsole(page, result);

  step("open page");
  await page.goto(cfg.url, { waitUntil: "load", timeout: cfg.timeoutMs });
  await openTab(page, cfg);

  step("load workflow");
  const workflow = JSON.parse(readFileSync(cfg.workflow, "utf8"));
  await page.evaluate(async (wf) => { await window.app.loadGraphData(wf); }, workflow);

  result.sizeBefore = await page.evaluate((t) => [...window.app.graph.nodes.find((x) => x.type === t).size], CAL_NODE);

  step("queue prompt");
  await page.evaluate(() => {
    const api = window.comfyAPI.api.api;
    window.__cal = { calibrated: [], runs: [], done: false, errors: [] };
    api.addEventListener("dit_cache.magcache_calibrated", (e) => window.__cal.calibrated.push(e.detail));
    api.addEventListener("dit-cache.run", (e) => window.__cal.runs.push(e.detail));
    api.addEventListener("execution_success", () => { window.__cal.done = true; });
    api.addEventListener("execution_error", (e) => { window.__cal.errors.push(e.detail); window.__cal.done = true; });
  });
  result.queued = await page.evaluate(async () => await window.app.queuePrompt(0, 1));
  await page.waitForFunction(() => window.__cal.done, null, { timeout: cfg.timeoutMs });
  await page.waitForSelector(".dit-cache-calibration", { timeout: cfg.timeoutMs });
  await fitGraph(page); // redraws the canvas: the node draws its curve
  await frames(page);
  result.events = await page.evaluate(() => window.__cal);
  // the id the prompt was queued with: the server keeps the page's runs under it
  result.clientId = await page.evaluate(() => window.comfyAPI.api.api.clientId);
  result.node = await page.evaluate((t) => {
    const n = window.app.graph.nodes.find((x) => x.type === t);
    return { id: n.id, calibration: n.ditCacheCalibration ?? null, drawn: n.ditCacheDrawn ?? null, size: [...n.size],
      minHeight: n.computeSize()[1] };
  }, CAL_NODE);
  result.node.sizeBefore = result.sizeBefore;
  result.node.shown = await page.evaluate((t) => {
    const n = window.app.graph.nodes.find((x) => x.type === t);
    return { file: n.ditCacheCalibrationWidget?.element.querySelector(".dit-cache-file")?.value ?? null };
  }, CAL_NODE);
  result.sidebar = await page.evaluate(readCalibrations);

  step("screenshot");
  result.screenshot = path.join(cfg.outDir, "calibrate.png");
  await page.screenshot({ path: result.screenshot });

  step("reload: the sidebar lists the calibration from GET /dit-cache/runs");
  await page.reload({ waitUntil: "load", timeout: cfg.timeoutMs });
  await page.waitForSelector(TAB_BUTTON, { timeout: cfg.timeoutMs });
  if (!(await page.$(".dit-cache-panel"))) await openTab(page, cfg);
  await page.waitForSelector(".dit-cache-calibration", { timeout: cfg.timeoutMs });
  result.reloaded = await page.evaluate(readCalibrations);
  result.reloadedClientId = await page.evaluate(() => window.comfyAPI.api.api.clientId);

  step("listener removal");
  await page.evaluate(async (wf) => { await window.app.loadGraphData(wf); }, workflow);
  result.removal = await page.evaluate(async (t) => {
    const api = window.comfyAPI.api.api;
    const frame = () => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    const node = window.app.graph.nodes.find((n) => n.type === t);
    const fake = (file, nodeId = String(node.id)) => ({ node_id: nodeId, file, folder: "", family: "wan", steps: 2,
      sampler: "euler", scheduler: "simple", prompt_id: "fake", ratios: { cond: [1.0, 0.9] } });
    const cards = () => document.querySelectorAll(".dit-cache-calibration").length;
    const cards0 = cards();
    api.dispatchCustomEvent("dit_cache.magcache_calibrated", fake("attached.safetensors"));
    await frame();
    const whileAttached = node.ditCacheCalibration?.file ?? null;
    window.app.graph.remove(node);
    api.dispatchCustomEvent("dit_cache.magcache_calibrated", fake("removed.safetensors"));
    await frame();
    const afterRemoval = node.ditCacheCalibration?.file ?? null;
    const cards1 = cards();
    window.dispatchEvent(new Event("pagehide"));
    api.dispatchCustomEvent("dit_cache.magcache_calibrated", fake("unloaded.safetensors", "12345"));
    await frame();
    return { whileAttached, afterRemoval, detached: node.ditCacheDetached === true, cards0, cards1, cards2: cards() };
  }, CAL_NODE);
  step("done");
} catch (e) {
  result.error = String(e?.stack ?? e);
} finally {
  await browser.close();
}
process.stdout.write("RESULT " + JSON.stringify(result) + "\n");
