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

// Fit the graph into the part of the canvas beside the open sidebar, so a screenshot shows all of it.
export async function fitGraph(page) {
  await page.evaluate(() => {
    const c = window.app.canvas, nodes = window.app.graph.nodes;
    const left = Math.ceil(document.querySelector(".dit-cache-panel").getBoundingClientRect().right) + 30;
    const top = 190, W = window.innerWidth - 30, H = window.innerHeight - 30;
    const x0 = Math.min(...nodes.map((n) => n.pos[0])), y0 = Math.min(...nodes.map((n) => n.pos[1] - 30));
    const x1 = Math.max(...nodes.map((n) => n.pos[0] + n.size[0])), y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1]));
    const scale = Math.min((W - left) / (x1 - x0), (H - top) / (y1 - y0), 1);
    c.ds.scale = scale;
    c.ds.offset[0] = left / scale - x0;
    c.ds.offset[1] = top / scale - y0;
    c.setDirty(true, true);
  });
  await frames(page);
}

// The frame of every driver: read the config, start Chromium, collect console errors, run `body`, always close
// the browser and print one line "RESULT {...}" (with `error` when `body` threw) for the Python test to read.
export async function drive(name, body) {
  const cfg = readConfig();
  const result = { steps: [], console: [] };
  const step = (s) => { result.steps.push(s); process.stderr.write(`[${name}] ${s}\n`); };
  const browser = await launch(cfg);
  try {
    const page = browser.pages()[0] ?? (await browser.newPage());
    watchConsole(page, result);
    await body({ cfg, page, result, step });
    step("done");
  } catch (e) {
    result.error = String(e?.stack ?? e);
  } finally {
    await browser.close();
  }
  process.stdout.write("RESULT " + JSON.stringify(result) + "\n");
}
