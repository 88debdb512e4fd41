"""Every shipped workflow opened in the real page (headless Chromium, ``tests/browser/workflows_e2e.mjs``) as a
user opens it: the page restores the saved view (zoom 1.1-1.25), every node's title lies below the page's top
bar and right of its side bar, the top left nodes are not covered by the page, the MarkdownNote renders its
download links, and the missing-models dialog names the files (no model files on the test server). The
Templates browser lists every workflow under the pack's folder name, titled by file name, with its thumbnail.

Screenshots of a few go to ``tests/out/``; ``DITCACHE_DOCS_SCREENSHOTS=1`` also copies them to
``docs/workflow-<name>.png`` (the committed ones).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from browser_drive import drive as run_driver, require_browser
from comfy_server import REPO, Server, comfy_server

WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
DRIVER = REPO / "tests" / "browser" / "workflows_e2e.mjs"
SCREENSHOTS = ("flux-firstblockcache", "flux-magcache-calibrate-apply", "wan22-t2v-high-low")
OUT = REPO / "tests" / "out"


@pytest.fixture
def server(tmp_path) -> Iterator[Server]:
    root = tmp_path / "server"
    root.mkdir()
    with comfy_server(root) as srv:
        yield srv


@pytest.mark.server
@pytest.mark.browser
def test_workflows_open_readable_in_headless_chromium(server: Server, tmp_path: Path):
    require_browser()
    (folder,) = [k for k, v in server.get("/workflow_templates").items() if WORKFLOWS[0].stem in v]
    res = run_driver(DRIVER, server, tmp_path, {
        "workflows": {p.stem: str(p) for p in WORKFLOWS}, "screenshots": list(SCREENSHOTS), "packFolder": folder},
        timeout=600)
    assert set(res["workflows"]) == {p.stem for p in WORKFLOWS}
    for path in WORKFLOWS:
        wf = json.loads(path.read_text(encoding="utf-8"))
        page = res["workflows"][path.stem]
        where = f"{path.stem}: {page['top']=} {page['topBy']=} {page['leftBy']=} {page['left']=} {page['ds']=}"
        # the saved view, restored
        assert page["ds"]["scale"] == pytest.approx(wf["extra"]["ds"]["scale"]), where
        assert page["ds"]["offset"] == pytest.approx(wf["extra"]["ds"]["offset"]), where
        assert 1.1 <= page["ds"]["scale"] <= 1.25
        # the bars were found, and no node's title is under them
        assert 0 < page["top"] < 300 and 0 < page["left"] < 200, where
        assert len(page["nodes"]) == len(wf["nodes"])
        for n in page["nodes"]:
            assert n["y"] >= page["top"] and n["x"] >= page["left"], (where, n)
        # the top left node (the note) shows, its title not covered by the page
        first = min(page["nodes"], key=lambda n: (n["x"], n["y"]))
        assert first["type"] == "MarkdownNote" and first["inView"] and first["titleOnCanvas"], (where, first)
        # the note rendered its markdown: the model files as links
        urls = {m["url"] for n in wf["nodes"] for m in n["properties"].get("models", [])}
        hrefs = {a["href"] for a in page["links"]}
        assert urls and urls <= hrefs, (where, urls - hrefs)
        assert page["noteHidden"] <= 2, (where, page["noteHidden"])  # the whole note shows, no scrolling
        # the page offered the missing model files
        dialog = page["missingModelsDialog"]
        assert dialog is not None, where
        names = {m["name"] for n in wf["nodes"] for m in n["properties"].get("models", [])}
        assert all(name in dialog for name in names), (where, dialog)
    print("top bar ends at", {p["top"] for p in res["workflows"].values()}, "px; side bar at",
          {p["left"] for p in res["workflows"].values()}, "px")
    fits = {name: all(0 <= n["x1"] <= p["width"] and 0 <= n["y1"] <= p["height"] for n in p["nodes"])
            for name, p in res["workflows"].items()}
    print("workflows shown whole at the saved view:", fits)

    # the Templates browser (Extensions -> the pack): every workflow, titled by its file name (the front end has
    # no title field for a custom node's templates), its card showing <name>.jpg (512 x 320)
    names = {p.stem for p in WORKFLOWS}
    templates = res["templates"]
    assert f"Showing {len(names)} of {len(names)} templates" in templates["text"], templates["text"][-600:]
    assert all(f"\n{n}\n" in templates["text"] for n in names)
    cards = templates["cards"]
    assert len(cards) >= 4, cards  # the ones in view (the rest load as they scroll into view)
    for card in cards:
        assert (card["w"], card["h"]) == (512, 320) and card["card"].split("\n")[0] in names, card

    OUT.mkdir(exist_ok=True)
    for shot in [Path(res["workflows"][name]["screenshot"]) for name in SCREENSHOTS] + [
            Path(res["templatesScreenshot"])]:
        assert shot.is_file() and shot.stat().st_size > 10_000
        shutil.copy(shot, OUT / shot.name)
        if os.environ.get("DITCACHE_DOCS_SCREENSHOTS") == "1":
            shutil.copy(shot, REPO / "docs" / shot.name)
    assert [c for c in res["console"] if "dit-cache" in c or "dit_cache" in c] == []
