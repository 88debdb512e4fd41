"""DiT Cache Tune end to end in the real page: ``workflows/flux-tune.json`` converted for a tiny Flux model is
queued from headless Chromium (``tests/browser/tune_e2e.mjs``); the node must hold the curve of its UI output and
draw one point per measured setting (``web/js/dit_cache_tune.js``), and the DiT Cache panel must show the tune
record (winner and file) under the node."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

import workflow_convert
from comfy_server import REPO, Server
from test_panel_browser import OUT, _drive, _require_browser, server  # noqa: F401 - the fixture "server"

WORKFLOW = REPO / "workflows" / "flux-tune.json"
DRIVER = REPO / "tests" / "browser" / "tune_e2e.mjs"
SAVED = re.compile(r"\[dit-cache\] DiT Cache Tune: .*; saved (\S+\.json)")


@pytest.mark.server
@pytest.mark.browser
def test_tune_curve_on_node_and_in_panel(server: Server, tmp_path: Path):
    _require_browser()
    wf = json.loads(WORKFLOW.read_text(encoding="utf-8"))
    tune_node = next(n for n in wf["nodes"] if n["type"] == "DitCache.Tune")
    res = _drive(DRIVER, server, tmp_path, workflow_convert.to_tiny(wf, family="flux"))
    assert res["events"]["errors"] == []
    node = res["node"]
    assert node["id"] == tune_node["id"]
    t = node["tune"]
    assert t is not None and t["winner"] is not None and t["file"].endswith(".json")
    (saved,) = SAVED.findall(server.log())
    assert saved == t["file"]
    data = json.loads((Path(t["folder"]) / saved).read_text(encoding="utf-8"))
    assert t["curve"] == data["curve"] and set(t["curve"]) == {"teacache", "taylorseer", "fbc"}
    assert node["drawn"] == {"points": sum(len(v) for v in t["curve"].values()), "methods": len(t["curve"])}
    cards = [c for c in res["cards"] if c["nodeId"] == str(tune_node["id"])]
    (tune_card,) = [c for c in cards if c["tune"]]
    assert f"saved {saved}" in tune_card["text"] and f"winner: {t['winner']['method']}" in tune_card["text"]
    assert tune_card["curves"] == {m: len(v) for m, v in t["curve"].items()}
    assert any("chosen_because" in c["text"] for c in cards)  # the KSampler's run of the tuned model
    shot = Path(res["screenshot"])
    assert shot.is_file() and shot.stat().st_size > 10_000
    OUT.mkdir(exist_ok=True)
    shutil.copy(shot, OUT / shot.name)
    assert [c for c in res["console"] if "dit-cache" in c or "dit_cache" in c] == []
