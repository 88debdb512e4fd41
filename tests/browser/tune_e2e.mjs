// Drives the real ComfyUI page in headless Chromium for tests/browser/test_tune_browser.py: loads the flux-tune
// workflow (converted for a tiny model), queues it from the page, waits for the prompt to finish, reads what the
// "DiT Cache Tune" node holds and drew (web/js/dit_cache_tune.js) and the panel's card of the tune record, and
// takes a screenshot. It asserts nothing itself: it prints one JSON line ("RESULT {...}").
//
// Usage: node tune_e2e.mjs <config.json>; config: {url, workflow, outDir, nodeDir, chromium, userDataDir, timeoutMs}.
import { readFileSync } from "node:fs";
import path from "node:path";
import { fitGraph, frames, launch, openTab, readConfig, watchConsole } from "./common.mjs";

const cfg = readConfig();
const result = { steps: [], console: [] };
const step = (s) => { result.steps.push(s); process.stderr.write(`[tune_e2e] ${s}\n`); };
const TUNE_NODE = "DitCache.Tune";

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

  step("queue prompt");
  await page.evaluate(() => {
    const api = window.comfyAPI.api.api;
    window.__tune = { executed: [], done: false, errors: [] };
    api.addEventListener("executed", (e) => window.__tune.executed.push(e.detail));
    api.addEventListener("execution_success", () => { window.__tune.done = true; });
    api.addEventListener("execution_error", (e) => { window.__tune.errors.push(e.detail); window.__tune.done = true; });
  });
  await page.evaluate(async () => await window.app.queuePrompt(0, 1));
  await page.waitForFunction(() => window.__tune.done, null, { timeout: cfg.timeoutMs });
  await fitGraph(page); // redraws the canvas: the node draws its curve
  await frames(page);
  result.events = await page.evaluate(() => ({ errors: window.__tune.errors,
    executed: window.__tune.executed.map((d) => ({ node: d.node ?? d.display_node, keys: Object.keys(d.output ?? {}) })) }));
  result.clientId = await page.evaluate(() => window.comfyAPI.api.api.clientId);
  result.node = await page.evaluate((t) => {
    const n = window.app.graph.nodes.find((x) => x.type === t);
    return { id: n.id, tune: n.ditCacheTune ?? null, drawn: n.ditCacheTuneDrawn ?? null, size: [...n.size] };
  }, TUNE_NODE);
  await page.waitForSelector(".dit-cache-run", { timeout: cfg.timeoutMs });
  result.cards = await page.evaluate(() => [...document.querySelectorAll(".dit-cache-run")].map((c) => ({
    nodeId: c.dataset.nodeId, text: c.innerText, tune: c.classList.contains("dit-cache-tune"),
    curves: Object.fromEntries([...c.querySelectorAll("polyline[data-method]")].map((p) => [p.dataset.method, Number(p.dataset.points)])) })));

  step("screenshot");
  result.screenshot = path.join(cfg.outDir, "tune.png");
  await page.screenshot({ path: result.screenshot });
  step("done");
} catch (e) {
  result.error = String(e?.stack ?? e);
} finally {
  await browser.close();
}
process.stdout.write("RESULT " + JSON.stringify(result) + "\n");
