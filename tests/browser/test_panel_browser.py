"""The statistics panel end to end: a real ComfyUI server, the real page in headless Chromium.

``workflows/flux-firstblockcache.json`` (a UI-format Flux workflow) is rewritten for a tiny model by
``tests/support/workflow_convert.py``; ``tests/browser/panel_e2e.mjs`` (playwright-core driving Debian's
chromium, both installed by ``scripts/setup_browser.sh``; ``make test`` runs it) opens the page, checks the
"DiT Cache" sidebar tab says "no runs yet", loads the workflow with ``app.loadGraphData``, queues it with
``app.queuePrompt`` and reads the panel; this test compares what the panel shows with ``GET /dit-cache/runs``.
Screenshots go to the test's tmp_path and are copied to ``tests/out/`` (git-ignored).

``test_magcache_calibration_on_node_in_headless_chromium``: the same workflow with its cache node turned into
"MagCache Calibrate" (tiny Wan 2.1, cfg 4, 8 steps) is queued from the page by ``tests/browser/calibrate_e2e.mjs``;
the node must draw the ratios of the ``dit_cache.magcache_calibrated`` event and the sidebar must list them, equal
to the saved file's.
"""
from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from comfy_server import REPO, Server, comfy_server
import workflow_convert
from browser_drive import OUT, drive, require_browser

WORKFLOW = REPO / "workflows" / "flux-firstblockcache.json"
DRIVER = REPO / "tests" / "browser" / "panel_e2e.mjs"
CAL_DRIVER = REPO / "tests" / "browser" / "calibrate_e2e.mjs"
CAL_NODE = "DitCache.MagCacheCalibrate"
SAVED = re.compile(r"\[dit-cache\] MagCache Calibrate: saved (.+\.safetensors)")
FBC_NODE = "DitCache.ApplyFirstBlockCache"


def _require_browser() -> None:
    require_browser()


@pytest.fixture
def server(tmp_path) -> Iterator[Server]:
    # A fresh server per test: the browser test needs one that has not sampled anything yet.
    root = tmp_path / "server"
    root.mkdir()
    with comfy_server(root) as srv:
        yield srv


def _workflow() -> dict:
    return json.loads(WORKFLOW.read_text(encoding="utf-8"))


def _cache_nodes(wf: dict) -> list[dict]:
    return [n for n in wf["nodes"] if n["type"].startswith("DitCache.")]


def test_stats_without_a_server_record_only():
    """In-process (no ComfyUI server): nothing is registered or sent, the run is still recorded, JSON-safe."""
    from dit_cache.hosts.comfy import run_log, stats_server
    assert stats_server.prompt_server() is None
    assert stats_server.register_routes() is False
    run = {"method": "FirstBlockCache", "calls": 2, "skipped_calls": 1,
           "records": [{"metric": float("nan"), "sigma": float("inf")}, {"metric": 0.5, "sigma": 1.0}]}
    out = stats_server.publish(run)
    assert run_log.last() == out
    assert out["prompt_id"] is None
    assert out["records"] == [{"metric": None, "sigma": None}, {"metric": 0.5, "sigma": 1.0}]
    json.dumps(out, allow_nan=False)
    stats_server.publish_step(None, None, 0)  # no page: a no-op


def test_cache_spec_carries_the_executing_node_id():
    """Nodes without the hidden unique_id input get the id of the node ComfyUI is executing (real ComfyUI
    execution context, real tiny Flux)."""
    import tiny_models
    from comfy_execution.utils import CurrentNodeContext
    from dit_cache.cache_core.methods.fbc import FirstBlockCacheConfig, FirstBlockCachePolicy
    from dit_cache.hosts.comfy import stats_server
    from dit_cache.hosts.comfy.patch import SPEC_KEY, apply_cache

    model = tiny_models.build("flux", "tiny", seed=0).patcher
    policy = FirstBlockCachePolicy(FirstBlockCacheConfig(threshold=0.1))
    assert stats_server.executing_node_id() is None
    with CurrentNodeContext("prompt-1", "17"):
        assert stats_server.executing_node_id() == "17"
        patched = apply_cache(model, policy, "test")
        given = apply_cache(model, policy, "test", node_id="5")
    assert patched.model_options["transformer_options"][SPEC_KEY].node_id == "17"
    assert given.model_options["transformer_options"][SPEC_KEY].node_id == "5"
    outside = apply_cache(model, policy, "test")
    assert outside.model_options["transformer_options"][SPEC_KEY].node_id is None


def test_workflow_file_is_a_flux_ui_workflow():
    wf = _workflow()
    types = {n["type"] for n in wf["nodes"]}
    assert {"UNETLoader", "DualCLIPLoader", "VAELoader", "CLIPTextEncode", "FluxGuidance", "EmptySD3LatentImage",
            "KSampler", "VAEDecode", "SaveImage", "MarkdownNote", FBC_NODE} <= types
    by_type = {n["type"]: n for n in wf["nodes"]}
    assert by_type["UNETLoader"]["widgets_values"][0] == "flux1-dev.safetensors"
    assert by_type["VAELoader"]["widgets_values"] == ["ae.safetensors"]
    assert by_type["DualCLIPLoader"]["widgets_values"][:3] == ["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux"]
    note = by_type["MarkdownNote"]["widgets_values"][0]
    for f in ("flux1-dev.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        assert f in note
    # every link is consistent with both ends
    nodes = {n["id"]: n for n in wf["nodes"]}
    for lid, src, src_slot, dst, dst_slot, ltype in wf["links"]:
        assert lid in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["link"] == lid
        assert nodes[src]["outputs"][src_slot]["type"] == ltype
    # the cache node sits between the model loader and the sampler
    fbc = _cache_nodes(wf)[0]
    src_of = {(lk[3], lk[4]): lk[1] for lk in wf["links"]}
    assert nodes[src_of[(fbc["id"], 0)]]["type"] == "UNETLoader"
    assert src_of[(by_type["KSampler"]["id"], 0)] == fbc["id"]


@pytest.mark.server
def test_converted_workflow_keeps_cache_nodes_and_runs_over_http(server: Server):
    wf = _workflow()
    tiny = workflow_convert.to_tiny(wf, family="flux")
    types = [n["type"] for n in tiny["nodes"]]
    assert types.count(workflow_convert.LOADER) == 1 and "SaveLatent" in types
    assert not set(types) & (workflow_convert.REPLACED | workflow_convert.DECODERS | workflow_convert.IMAGE_SINKS)
    assert _cache_nodes(tiny) == _cache_nodes(wf)  # ids, links, widget values untouched

    prompt = workflow_convert.to_api_prompt(tiny, server.get("/object_info"))
    fbc = _cache_nodes(wf)[0]
    assert prompt[str(fbc["id"])]["inputs"]["threshold"] == fbc["widgets_values"][0]
    client = uuid.uuid4().hex
    status, body = server.post("/prompt", {"prompt": prompt, "client_id": client})
    assert status == 200, body
    entry = server.wait_for_history(body["prompt_id"])
    assert entry["status"]["status_str"] == "success", (entry["status"], server.log_tail())

    data = server.get(f"/dit-cache/runs?client_id={client}")
    assert data["max_runs"] >= 1 and data["max_bytes"] > 0
    (run,) = data["runs"]
    assert run["node_id"] == str(fbc["id"])
    assert run["prompt_id"] == body["prompt_id"]
    assert run["method"] == "FirstBlockCache" and run["completed"] is True
    steps = next(n for n in wf["nodes"] if n["type"] == "KSampler")["widgets_values"][2]
    assert run["calls"] == steps  # cfg 1: one model call per step
    assert run["skipped_calls"] == sum(r["skipped"] for r in run["records"])
    assert run["cache_bytes"] > 0
    assert server.get(f"/dit-cache/runs?client_id={client}&limit=0")["runs"] == []
    assert server.get(f"/dit-cache/runs?client_id={client}&limit=5")["runs"] == data["runs"]
    # another client, or none, is served none of them
    assert server.get(f"/dit-cache/runs?client_id={uuid.uuid4().hex}")["runs"] == []
    assert server.get("/dit-cache/runs")["runs"] == []
    status, err = _get_status(server, f"/dit-cache/runs?client_id={client}&limit=-1")
    assert status == 400 and "limit" in err["error"]


def _get_status(server: Server, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(server.url + path, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _drive(driver: Path, server: Server, tmp_path: Path, workflow: dict) -> dict:
    """Run a browser driver on ``workflow`` (UI format) against ``server``; its RESULT, checked for errors."""
    wf_path = tmp_path / "workflow-tiny.json"
    wf_path.write_text(json.dumps(workflow), encoding="utf-8")
    return drive(driver, server, tmp_path, {"workflow": str(wf_path)})


@pytest.mark.server
@pytest.mark.browser
def test_panel_in_headless_chromium(server: Server, tmp_path: Path):
    _require_browser()
    assert server.get("/dit-cache/runs")["runs"] == []
    wf = _workflow()
    res = _drive(DRIVER, server, tmp_path, workflow_convert.to_tiny(wf, family="flux"))

    # Before the first run.
    assert res["before"]["empty"] == "no runs yet"
    assert res["before"]["cards"] == []

    # The page loaded the workflow with the cache node's widget values as saved.
    fbc = _cache_nodes(wf)[0]
    page_fbc = next(n for n in res["graphNodes"] if n["type"] == FBC_NODE)
    assert page_fbc["id"] == fbc["id"]
    assert [v for _, v in page_fbc["widgets"]] == fbc["widgets_values"]
    # the pack's display widget (the "last run" line) is never saved with the workflow
    assert page_fbc["saved"] == fbc["widgets_values"] and page_fbc["display"] == ["dit_cache_last_run"]

    # The server's record of the run, served to the page's client id (kept across the reload) and to no one else.
    assert res["clientId"] and res["reloadedClientId"] == res["clientId"]
    (run,) = server.get(f"/dit-cache/runs?client_id={res['clientId']}")["runs"]
    assert server.get("/dit-cache/runs")["runs"] == []
    assert run["node_id"] == str(fbc["id"]) and run["completed"] is True
    calls, skipped = run["calls"], run["skipped_calls"]
    computed = calls - skipped
    assert calls == 28 and 0 < skipped < calls, (skipped, calls)  # the panel has both kinds to show
    assert res["events"]["errors"] == []
    assert len(res["events"]["runs"]) == 1 and res["events"]["runs"][0]["prompt_id"] == run["prompt_id"]
    assert res["events"]["steps"] == calls  # one live update per model call
    live = res["events"]["live"]  # the live card was drawn while sampling ran (a run takes seconds on CPU)
    assert live["renders"] > 0 and 0 < live["maxCalls"] <= calls and live["maxCells"] == live["maxCalls"], live

    # What the panel shows equals the server's JSON.
    for view in ("after", "reloaded"):
        panel = res[view]
        assert panel["empty"] is None
        (card,) = panel["cards"]
        assert card["nodeId"] == str(fbc["id"]) and card["promptId"] == run["prompt_id"] and card["live"] == "0"
        assert (int(card["calls"]), int(card["skipped"]), int(card["computed"])) == (calls, skipped, computed)
        assert f"{computed} computed · {skipped} skipped of {calls} model calls" in card["text"]
        assert f"{calls / computed:.2f}x" in card["text"]
        assert "threshold: 0.08" in card["text"] and run["method"] in card["text"]
        assert int(card["cacheBytes"]) == run["cache_bytes"] > 0
        assert card["text"].count("wall ") == 1
        want: dict[str, dict[str, int]] = {}
        for r in run["records"]:
            s = want.setdefault(r["stream"], {"computed": 0, "skipped": 0})
            s["skipped" if r["skipped"] else "computed"] += 1
        assert card["timeline"] == want
        assert card["metricPoints"] == sum(r["metric"] is not None for r in run["records"]) > 0
        assert float(card["threshold"]) == fbc["widgets_values"][0]
    (summary,) = res["nodeSummary"]
    assert summary["id"] == fbc["id"]
    assert summary["last"]["calls"] == calls and summary["last"]["skipped"] == skipped

    # Listeners: the node's goes with the node, the page-level ones with the page.
    rm = res["removal"]
    assert rm["whileAttached"] == 777  # control: the node's listener works while the node is in the graph
    assert rm["afterRemoval"] == 777 and rm["detached"] is True
    assert rm["cards1"] == rm["cards0"] + 2  # control: the panel's listener took both events
    assert rm["cards2"] == rm["cards1"]  # after pagehide it takes none

    # Screenshots: under tmp_path, and copied to tests/out/ for people to look at.
    shots = [Path(res["screenshot"]), Path(res["panelScreenshot"])]
    OUT.mkdir(exist_ok=True)
    for shot in shots:
        assert shot.is_file() and shot.stat().st_size > 10_000 and shot.parent == tmp_path / "screenshots"
        shutil.copy(shot, OUT / shot.name)
    page_errors = [c for c in res["console"] if "dit-cache" in c or "dit_cache" in c]
    assert page_errors == [], page_errors


def _calibrate_workflow(prefix: str, steps: int = 8, cfg: float = 4.0) -> dict:
    """The Flux workflow with its cache node turned into "MagCache Calibrate" and the KSampler at ``cfg`` and
    ``steps`` (two CFG streams), converted for a tiny Wan 2.1 model."""
    wf = _workflow()
    node = _cache_nodes(wf)[0]
    node.update(type=CAL_NODE, widgets_values=[prefix], properties={"Node name for S&R": CAL_NODE})
    sampler = next(n for n in wf["nodes"] if n["type"] == "KSampler")
    sampler["widgets_values"][2:4] = [steps, cfg]
    return workflow_convert.to_tiny(wf, family="wan21")


@pytest.mark.server
@pytest.mark.browser
def test_magcache_calibration_on_node_in_headless_chromium(server: Server, tmp_path: Path):
    _require_browser()
    from dit_cache.cache_core.methods import magcache_calibration as cal_io

    prefix, steps = f"e2e{uuid.uuid4().hex[:6]}", 8
    wf = _calibrate_workflow(prefix, steps)
    node_id = str(_cache_nodes(wf)[0]["id"])
    created: list[Path] = []
    try:
        res = _drive(CAL_DRIVER, server, tmp_path, wf)
        created = [Path(p.strip()) for p in SAVED.findall(server.log())]
        assert res["events"]["errors"] == []

        # The event: sent to this page, naming the calibrate node, the prompt and the saved file.
        (event,) = res["events"]["calibrated"]
        (path,) = created
        assert event["node_id"] == node_id and event["file"] == path.name and Path(event["folder"]) == path.parent
        assert path.is_file() and path.name.startswith(f"{prefix}_wan_{steps}steps_")
        (run,) = res["events"]["runs"]
        assert run["method"] == "MagCacheCalibrate" and run["node_id"] == node_id
        assert event["prompt_id"] == run["prompt_id"]

        # One ratio per model call and stream (cfg 4: cond and uncond), equal to the saved file's.
        per_stream: dict[str, int] = {}
        for r in run["records"]:
            per_stream[r["stream"]] = per_stream.get(r["stream"], 0) + 1
        assert per_stream == {"cond": steps, "uncond": steps}, per_stream
        ratios = event["ratios"]
        assert {k: len(v) for k, v in ratios.items()} == per_stream
        saved = cal_io.load(path)
        assert set(saved.ratios) == set(ratios)
        for stream, values in ratios.items():
            assert values == pytest.approx(list(saved.ratios[stream]), rel=1e-6)  # the file holds float32
            assert values[0] == 1.0 and all(v > 0 for v in values)

        # The node holds the event's ratios and drew one curve point per ratio, below its widgets.
        node = res["node"]
        assert str(node["id"]) == node_id
        assert node["calibration"] == {"file": path.name, "steps": steps, "ratios": ratios}
        drawn = node["drawn"]
        assert (drawn["points"], drawn["streams"], drawn["file"]) == (2 * steps, 2, path.name)
        # the node's area for the result was reserved before the run: it holds its widgets and did not grow
        assert node["minHeight"] <= node["size"][1] and node["size"] == node["sizeBefore"]

        # The run log serves the calibration (and the run) to the page's client id, kept across the reload.
        assert res["clientId"] and res["reloadedClientId"] == res["clientId"]
        served = server.get(f"/dit-cache/runs?client_id={res['clientId']}")["runs"]
        assert [r["calibration"]["file"] for r in served if "calibration" in r] == [path.name]
        assert server.get("/dit-cache/runs")["runs"] == []

        # The sidebar lists the calibration under the node, with the same ratios (live, and after a reload
        # from GET /dit-cache/runs).
        for view in ("sidebar", "reloaded"):
            (card,) = res[view]
            assert card["nodeId"] == card["section"] == node_id and card["promptId"] == run["prompt_id"]
            assert card["file"] == path.name and f"saved {path.name}" in card["text"]
            assert card["streams"].split(",") == list(ratios) and int(card["steps"]) == steps
            assert {k: v["ratios"] for k, v in card["curves"].items()} == ratios
            assert all(v["points"] == steps for v in card["curves"].values())

        # Listeners: the node's goes with the node, the panel's with the page.
        rm = res["removal"]
        assert rm["whileAttached"] == "attached.safetensors"  # control: it listens while in the graph
        assert rm["afterRemoval"] == "attached.safetensors" and rm["detached"] is True
        assert rm["cards1"] == rm["cards0"] + 2  # control: the panel took both events
        assert rm["cards2"] == rm["cards1"]  # after pagehide it takes none

        shot = Path(res["screenshot"])
        assert shot.is_file() and shot.stat().st_size > 10_000
        OUT.mkdir(exist_ok=True)
        shutil.copy(shot, OUT / shot.name)
        assert [c for c in res["console"] if "dit-cache" in c or "dit_cache" in c] == []
    finally:
        for p in created or [Path(p.strip()) for p in SAVED.findall(server.log())]:
            p.unlink(missing_ok=True)
            if p.parent.is_dir() and not any(p.parent.iterdir()):
                p.parent.rmdir()  # the folder the server created for it
