// Helpers shared by the browser drivers (panel_e2e.mjs, calibrate_e2e.mjs): start headless Chromium through
// playwright-core, open the "DiT Cache" sidebar tab, wait for frames, fit the graph beside the sidebar.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import path from "node:path";

export const TAB_BUTTON = ".dit-cache-stats-tab-button";

export function readConfig() {
  return JSON.parse(readFileSync(process.argv[2], "utf8"));
}

export async function launch(cfg) {
  const require = createRequire(path.join(cfg.nodeDir, "package.json"));
  const { chromium } = require("playwright-core");
  return await chromium.launchPersistentContext(cfg.userDataDir, {
    executablePath: cfg.chromium,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
      "--disable-component-update", "--disable-sync"],
    viewport: { width: 1600, height: 900 },
  });
}

// Collects console errors/warnings and page errors into result.console.
export function watchConsole(page, result) {
  page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") result.console.push(`${m.type()}: ${m.text()}`); });
  page.on("pageerror", (e) => result.console.push(`pageerror: ${e.message}`));
}

export async function openTab(page, cfg) {
  await page.waitForSelector(TAB_BUTTON, { timeout: cfg.timeoutMs });
  await page.waitForFunction(() => window.app?.graph && window.comfyAPI?.api?.api, null, { timeout: cfg.timeoutMs });
  await page.keyboard.press("Escape"); // a first-start dialog, if any
  await page.click(TAB_BUTTON);
  await page.waitForSelector(".dit-cache-panel", { timeout: cfg.timeoutMs });
  // the panel says "loading…" until GET /dit-cache/runs has answered
  await page.waitForFunction(() => !document.querySelector(".dit-cache-panel")?.innerText.includes("loading…"),
    null, { timeout: cfg.timeoutMs });
}

export const frames = (page) => page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));

// Fit the graph (or the nodes whose types are listed, at most at zoom maxScale) into the part of the canvas beside
// the open sidebar, so a screenshot shows all of it.
export async function fitGraph(page, types = null, maxScale = 1) {
  await page.evaluate(([types, maxScale]) => {
    const c = window.app.canvas, nodes = window.app.graph.nodes.filter((n) => !types || types.includes(n.type));
    const left = Math.ceil(document.querySelector(".dit-cache-panel").getBoundingClientRect().right) + 30;
    const top = 190, W = window.innerWidth - 30, H = window.innerHeight - 30;
    const x0 = Math.min(...nodes.map((n) => n.pos[0])), y0 = Math.min(...nodes.map((n) => n.pos[1] - 30));
    const x1 = Math.max(...nodes.map((n) => n.pos[0] + n.size[0])), y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1]));
    const scale = Math.min((W - left) / (x1 - x0), (H - top) / (y1 - y0), maxScale);
    c.ds.scale = scale;
    c.ds.offset[0] = left / scale - x0;
    c.ds.offset[1] = top / scale - y0;
    c.setDirty(true, true);
  }, [types, maxScale]);
  await frames(page);
}

// One driver run: start the browser, hand `body` the page, the config, the result object and a step logger; print
// the result as one line "RESULT {...}" (with "error" when something threw). Drivers assert nothing themselves.
export async function drive(name, body) {
  const cfg = readConfig();
  const result = { steps: [], console: [] };
  const step = (s) => { result.steps.push(s); process.stderr.write(`[${name}] ${s}\n`); };
  const browser = await launch(cfg);
  try {
    const page = browser.pages()[0] ?? (await browser.newPage());
    watchConsole(page, result);
    await body({ cfg, page, browser, result, step });
    step("done");
  } catch (e) {
    result.error = String(e?.stack ?? e);
  } finally {
    await browser.close();
  }
  process.stdout.write("RESULT " + JSON.stringify(result) + "\n");
}

// Load a UI-format workflow as the page does, under a workflow name (the tab names runs by it).
export async function loadWorkflow(page, workflow, name) {
  await page.evaluate(async ([wf, n]) => { await window.app.loadGraphData(wf, true, true, n); }, [workflow, name]);
  await frames(page);
}

// Queue the graph on screen with app.queuePrompt (as the Run button does) and wait until the prompt ended; the
// dit-cache events it brought, execution errors and the node errors /prompt answered.
export async function queueAndWait(page, cfg) {
  await page.evaluate(() => {
    const api = window.comfyAPI.api.api;
    const q = (window.__ditQueue = { runs: [], warnings: [], calibrated: [], errors: [], done: false });
    const on = (name, fn) => { api.addEventListener(name, fn); (q.listeners ??= []).push([name, fn]); };
    on("dit-cache.run", (e) => q.runs.push(e.detail));
    on("dit-cache.warning", (e) => q.warnings.push(e.detail));
    on("dit_cache.magcache_calibrated", (e) => q.calibrated.push(e.detail));
    on("dit-cache.calibrated", (e) => q.calibrated.push(e.detail));
    on("execution_success", () => { q.done = true; });
    on("execution_error", (e) => { q.errors.push(e.detail); q.done = true; });
  });
  const queued = await page.evaluate(async () => {
    window.app.lastNodeErrors = null;
    try { return { ok: await window.app.queuePrompt(0, 1) }; } catch (e) { return { thrown: String(e) }; }
  });
  const nodeErrors = await page.evaluate(() => window.app.lastNodeErrors ?? null);
  if (!nodeErrors || !Object.keys(nodeErrors).length) {
    await page.waitForFunction(() => window.__ditQueue.done, null, { timeout: cfg.timeoutMs });
  }
  await frames(page);
  return await page.evaluate(([queued, nodeErrors]) => {
    const q = window.__ditQueue;
    for (const [name, fn] of q.listeners) window.comfyAPI.api.api.removeEventListener(name, fn);
    return { queued, nodeErrors, runs: q.runs, warnings: q.warnings, calibrated: q.calibrated, errors: q.errors };
  }, [queued, nodeErrors]);
}
