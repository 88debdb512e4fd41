// Drives the real ComfyUI page in headless Chromium for tests/browser/test_workflows_browser.py: loads every
// shipped workflow as a user opens it (app.loadGraphData with the saved view), and for each reads the view the
// page restored, where every node's title lands on screen, where the page's top bar and side bar end, what the
// MarkdownNote rendered (its links) and what the missing-models dialog offered; screenshots of a few. Then opens
// the Templates browser on the pack's category and reads its cards (title, picture size).
// It asserts nothing itself: it prints one JSON line ("RESULT {...}"); the Python test checks it.
//
// Usage: node workflows_e2e.mjs <config.json>; config: {url, workflows: {name: path}, screenshots: [name],
// packFolder (the pack's folder name: its template category), outDir, nodeDir, chromium, userDataDir, timeoutMs}.
import { readFileSync } from "node:fs";
import path from "node:path";
import { drive, frames } from "./common.mjs";

// Where the page's bars end (the side bar's icons; the menu, workflow tabs, the breadcrumb and Run bar floating
// below them): a pixel is covered when something other than the graph's own DOM widgets (the note's text, ...)
// lies above the canvas there. The side bar ends right of the rightmost covered pixel of the left BAND px, on
// every 8th row from BAND down to 80 % of the height; the top bar below the lowest covered pixel of the top BAND
// px, on every 16th column right of the side bar (every 2nd pixel).
const measure = () => {
  const canvas = window.app.canvas.canvas;
  const covered = (x, y) => {
    const above = document.elementsFromPoint(x, y);
    const i = above.indexOf(canvas);
    return i < 0 || !above.slice(0, i).every((e) => e.closest(".dom-widget"));
  };
  const W = window.innerWidth, H = window.innerHeight, BAND = 250;
  let top = 0, left = 0, topBy = null, leftBy = null;
  const what = (x, y) => {
    const e = document.elementsFromPoint(x, y)[0];
    return e ? `${e.tagName.toLowerCase()}.${String(e.className).split(" ").slice(0, 3).join(".")}` : null;
  };
  for (let y = BAND; y < H * 0.8; y += 8) {
    for (let x = BAND - 1; x >= left; x -= 1) if (covered(x, y)) { left = x + 1; leftBy = what(x, y); break; }
  }
  for (let x = left + 4; x < W; x += 16) {
    for (let y = BAND - 1; y >= top; y -= 2) if (covered(x, y)) { top = y + 1; topBy = what(x, y); break; }
  }
  const c = window.app.canvas, rect = canvas.getBoundingClientRect();
  const th = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  const nodes = window.app.graph.nodes.map((n) => {
    const x = (n.pos[0] + c.ds.offset[0]) * c.ds.scale + rect.left;
    const y = (n.pos[1] - th + c.ds.offset[1]) * c.ds.scale + rect.top;
    const x1 = (n.pos[0] + n.size[0] + c.ds.offset[0]) * c.ds.scale + rect.left;
    const y1 = (n.pos[1] + n.size[1] + c.ds.offset[1]) * c.ds.scale + rect.top;
    const inView = x >= 0 && y >= 0 && x + 4 < window.innerWidth && y + 4 < window.innerHeight;
    return { id: n.id, type: n.type, x, y, x1, y1, inView, titleOnCanvas: inView ? !covered(x + 4, y + 4) : null };
  });
  const links = [...document.querySelectorAll("a[href]")].filter((a) => {
    const r = a.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && a.closest(".comfy-markdown, .dom-widget, .comfy-multiline-input, [class*=markdown]");
  }).map((a) => ({ href: a.href, text: a.innerText }));
  // the note's rendered text scrolled out of its box, if any (px): over the scrolling elements of the DOM widgets
  // with links (not the textarea of the note's edit mode, which holds the markdown source)
  const hidden = Math.max(0, ...[...document.querySelectorAll(".dom-widget")].filter((d) => d.querySelector("a[href]"))
    .flatMap((d) => [d, ...d.querySelectorAll("*")])
    .filter((e) => e.tagName !== "TEXTAREA" && ["auto", "scroll", "hidden"].includes(getComputedStyle(e).overflowY))
    .map((e) => e.scrollHeight - e.clientHeight));
  return { top, left, topBy, leftBy, noteHidden: hidden, width: window.innerWidth, height: window.innerHeight,
    ds: { scale: c.ds.scale, offset: [...c.ds.offset] }, nodes, links };
};

await drive("workflows_e2e", async ({ cfg, page, result, step }) => {
  step("open page");
  await page.goto(cfg.url, { waitUntil: "load", timeout: cfg.timeoutMs });
  await page.waitForFunction(() => window.app?.graph && window.app?.canvas, null, { timeout: cfg.timeoutMs });
  await page.keyboard.press("Escape"); // a first-start dialog, if any
  result.workflows = {};
  for (const [name, file] of Object.entries(cfg.workflows)) {
    step(`load ${name}`);
    const wf = JSON.parse(readFileSync(file, "utf8"));
    await page.evaluate(async ([w, n]) => { await window.app.loadGraphData(w, true, true, n); }, [wf, name]);
    // the missing-models dialog (no model files on this server; it may open a moment after the graph): what it
    // offers, then closed, and no dialog mask left over the canvas
    const modelsDialog = () => [...document.querySelectorAll(".p-dialog")].find((e) => /model/i.test(e.innerText));
    await page.waitForFunction(`!!(${modelsDialog})()`, null, { timeout: 5_000 }).catch(() => {});
    const dialog = await page.evaluate(`(${modelsDialog})()?.innerText ?? null`);
    if (dialog !== null) await page.keyboard.press("Escape");
    await page.waitForFunction(() => !document.querySelector(".p-dialog-mask"), null, { timeout: cfg.timeoutMs });
    await frames(page);
    const m = await page.evaluate(measure);
    m.missingModelsDialog = dialog;
    if (cfg.screenshots.includes(name)) {
      m.screenshot = path.join(cfg.outDir, `workflow-${name}.png`);
      await page.screenshot({ path: m.screenshot });
    }
    result.workflows[name] = m;
  }

  step("template browser");
  await page.evaluate(() => window.app.extensionManager.command.execute("Comfy.BrowseTemplates"));
  await page.waitForSelector("text=Templates", { timeout: cfg.timeoutMs });
  // the pack's category (its folder name), when the dialog lists categories
  const nav = page.locator(".p-dialog").getByText(cfg.packFolder, { exact: true }).first();
  await nav.waitFor({ timeout: cfg.timeoutMs }); // the categories load after the dialog opens
  await nav.click();
  // the cards' pictures are blob: URLs of the fetched <name>.jpg: the loaded ones, with the text of their card
  const cards = () => [...document.querySelectorAll(".p-dialog img")].filter((i) => i.complete && i.naturalWidth > 0)
    .map((i) => {
      let card = i;
      while (card.parentElement && !card.innerText?.trim()) card = card.parentElement;
      return { w: i.naturalWidth, h: i.naturalHeight, card: card.innerText.trim() };
    });
  const count = Object.keys(cfg.workflows).length;
  await page.waitForFunction((n) => document.querySelector(".p-dialog")?.innerText.includes(`Showing ${n} of ${n}`),
    count, { timeout: 15_000 }).catch(() => {});
  await page.waitForFunction(`(${cards})().length >= 4`, null, { timeout: 15_000 }).catch(() => {});
  result.templates = { cards: await page.evaluate(cards),
    text: await page.evaluate(() => document.querySelector(".p-dialog")?.innerText ?? "") };
  result.templatesScreenshot = path.join(cfg.outDir, "workflow-templates.png");
  await page.screenshot({ path: result.templatesScreenshot });
});
