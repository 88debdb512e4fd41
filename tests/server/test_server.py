"""End-to-end tests against a real ComfyUI server (``main.py``) with this pack installed.

One server per module (``tests/support/comfy_server.py``: host ComfyUI on CPU, free loopback port, writable
folders in a temporary directory, the test-only "DitCacheTest.TinyModelLoader" pack loaded through an
``--extra-model-paths-config`` YAML).

Select with ``-m server`` (or deselect with ``-m "not server"``).
"""
from __future__ import annotations

import json
import os
import re
import time
import uuid
from typing import Iterator

import pytest

from comfy_server import COMFY_DIR, PACK, TEST_NODES, Server, comfy_server

pytestmark = pytest.mark.server

FBC_NODE = "DitCache.ApplyFirstBlockCache"
LOADER_NODE = "DitCacheTest.TinyModelLoader"
FBC_INPUTS = ("model", "threshold", "start_percent", "end_percent", "max_consecutive_skips", "warmup_steps")
# "[dit-cache] FirstBlockCache: skipped X/Y model calls ..." (nodes/comfy_host.py, cache_core/stats.py)
SKIP_LINE = re.compile(r"\[dit-cache\] FirstBlockCache: skipped (\d+)/(\d+) model calls")
# ComfyUI's summary after loading custom nodes: "   0.1 seconds (IMPORT FAILED): /path/to/pack"
IMPORT_LINE = re.compile(r"^\s*[\d.]+ seconds( \(IMPORT FAILED\))?: (.+?)\s*$", re.MULTILINE)
WEB_ROOT_LINE = re.compile(r"\[Prompt Server\] web root: (.+?)\s*$", re.MULTILINE)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    with comfy_server(tmp_path_factory.mktemp("comfy_server")) as srv:
        yield srv


def _prompt(family: str, threshold: float, cfg: float, *, start_percent: float = 0.0,
            end_percent: float = 1.0) -> dict:
    """API-format prompt: tiny model -> Apply FirstBlockCache -> KSampler -> SaveLatent."""
    return {
        "1": {"class_type": LOADER_NODE, "inputs": {"family": family, "seed": 0, "batch_size": 1}},
        "2": {"class_type": FBC_NODE, "inputs": {
            "model": ["1", 0], "threshold": threshold, "start_percent": start_percent,
            "end_percent": end_percent, "max_consecutive_skips": -1, "warmup_steps": 0}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "positive": ["1", 1], "negative": ["1", 2], "latent_image": ["1", 3],
            "seed": 0, "steps": 12, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "4": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": f"latents/{family}"}},
    }


def _wait_for_log(server: Server, offset: int, pattern: re.Pattern, timeout: float = 10.0) -> list[re.Match]:
    """Matches of ``pattern`` in the log written after character ``offset``, waiting briefly for one."""
    deadline = time.monotonic() + timeout
    while True:
        matches = list(pattern.finditer(server.log()[offset:]))
        if matches or time.monotonic() > deadline:
            return matches
        time.sleep(0.1)


def test_object_info_lists_nodes_and_pack_imports_cleanly(server: Server):
    info = server.get("/object_info")
    assert LOADER_NODE in info
    assert FBC_NODE in info
    node = info[FBC_NODE]
    assert node["category"] == "dit-cache/step skipping"
    assert node["description"]
    required = node["input"]["required"]
    assert tuple(node["input_order"]["required"]) == FBC_INPUTS
    assert required["model"][0] == "MODEL"
    for name in FBC_INPUTS:
        tooltip = required[name][1].get("tooltip")
        assert isinstance(tooltip, str) and tooltip.strip(), f"input {name!r} has no tooltip"
    assert required["threshold"][0] == "FLOAT"
    assert required["threshold"][1]["min"] == 0.0 and required["threshold"][1]["max"] == 1.0
    assert node["output"] == ["MODEL"]
    assert all(node["output_tooltips"])

    # ComfyUI's import summary names every custom-node pack it tried; ours must be there without a failure
    # (other lines, e.g. comfy_extras needing torchaudio, may say IMPORT FAILED on this host).
    log = server.log()
    by_path = {os.path.realpath(path): failed for failed, path in IMPORT_LINE.findall(log)}
    for pack_dir in (PACK, TEST_NODES / "dit_cache_test_loader"):
        assert str(pack_dir) in by_path, f"{pack_dir} not in ComfyUI's import summary; log tail:\n" \
                                         f"{server.log_tail()}"
        assert not by_path[str(pack_dir)], f"ComfyUI reports IMPORT FAILED for {pack_dir}:\n{log}"
    # the checkout under test, and no other dit-cache (e.g. the host's custom_nodes/dit-cache link)
    packs = [path for path in by_path if os.path.isfile(os.path.join(path, "nodes", "base.py"))]
    assert packs == [str(PACK)], by_path
    for line in log.splitlines():
        if "IMPORT FAILED" in line or "Cannot import" in line or "comfy_entrypoint" in line:
            assert "dit-cache" not in line and "dit_cache" not in line, line


def test_server_is_the_host_tree_with_its_pinned_frontend(server: Server):
    """The server runs the host tree under test (.host/ComfyUI, or DITCACHE_COMFYUI: 0.8.0) and serves the
    frontend package version that tree's requirements pin (0.8.0's comes from the .host080/site overlay)."""
    version = re.search(r'__version__ = "(.+?)"', (COMFY_DIR / "comfyui_version.py").read_text()).group(1)
    system = server.get("/system_stats")["system"]
    assert system["comfyui_version"] == version
    required = system["required_frontend_version"]
    assert f"ComfyUI frontend version: {required}" in server.log(), server.log_tail()
    web_root = WEB_ROOT_LINE.search(server.log()).group(1)
    site = os.path.dirname(os.path.dirname(web_root))  # <site>/comfyui_frontend_package/static
    assert os.path.isdir(os.path.join(site, f"comfyui_frontend_package-{required}.dist-info")), web_root


# The first call of a run always computes (there is no reference residual yet), so X < Y holds whenever the
# cache is in the loop; the thresholds are the "aggressive" settings of test_fbc_comfy.py, above the tiny
# models' step-to-step FBC metric for part of the run (a batched cond+uncond call skips only when both
# streams may), so some calls skip and some compute.
@pytest.mark.parametrize("family,threshold,cfg,shape", [
    ("flux", 0.12, 1.0, (1, 16, 16, 16)),
    ("wan21", 0.08, 4.0, (1, 16, 2, 8, 8)),  # cfg > 1: cond and uncond
])
def test_cached_sampling_over_http(server: Server, family: str, threshold: float, cfg: float, shape: tuple):
    log_offset = len(server.log())
    status, body = server.post("/prompt", {"prompt": _prompt(family, threshold, cfg),
                                           "client_id": uuid.uuid4().hex})
    assert status == 200, body
    assert body["node_errors"] == {}
    entry = server.wait_for_history(body["prompt_id"])
    assert entry["status"]["status_str"] == "success", (entry["status"], server.log_tail())
    assert entry["status"]["completed"] is True

    saved = entry["outputs"]["4"]["latents"]
    assert len(saved) == 1
    path = server.output_dir / saved[0]["subfolder"] / saved[0]["filename"]
    assert path.is_file(), f"{path} missing"
    from safetensors.torch import load_file
    import torch
    latent = load_file(str(path))["latent_tensor"]
    assert tuple(latent.shape) == shape
    assert torch.isfinite(latent).all()

    # The server-side run went through the cache: some, but not all, model calls skipped.
    matches = _wait_for_log(server, log_offset, SKIP_LINE)
    assert len(matches) == 1, f"expected one FirstBlockCache summary; log tail:\n{server.log_tail()}"
    skipped, calls = int(matches[0][1]), int(matches[0][2])
    assert calls == 12  # one call per euler step (cond and uncond are batched into one call)
    assert 0 < skipped < calls, matches[0][0]


def test_invalid_window_rejected_at_validation(server: Server):
    log_offset = len(server.log())
    history_before = server.get("/history")
    status, body = server.post("/prompt", {"prompt": _prompt("flux", 0.6, 1.0, start_percent=0.9, end_percent=0.1),
                                           "client_id": uuid.uuid4().hex})
    assert status == 400, body
    assert "2" in body["node_errors"], body
    assert "start_percent" in json.dumps(body["node_errors"]["2"]), body
    # Nothing was queued or sampled.
    assert "prompt_id" not in body
    queue = server.get("/queue")
    assert queue["queue_running"] == [] and queue["queue_pending"] == []
    assert server.get("/history").keys() == history_before.keys()
    assert not SKIP_LINE.search(server.log()[log_offset:])


def test_runs_route_serves_each_client_only_its_own_runs(server: Server):
    """GET /dit-cache/runs?client_id=<id>: the runs of prompts queued with that id, no other client's; none
    without an id (a prompt queued without one is served to nobody)."""
    ids: dict[str | None, str] = {}
    for seed, client in enumerate(("client-a-" + uuid.uuid4().hex, "client-b-" + uuid.uuid4().hex, None)):
        prompt = _prompt("flux", 0.12, 1.0)
        prompt["3"]["inputs"]["seed"] = 1000 + seed  # a prompt ComfyUI has not cached: it samples
        status, body = server.post("/prompt", {"prompt": prompt, **({"client_id": client} if client else {})})
        assert status == 200, body
        assert server.wait_for_history(body["prompt_id"])["status"]["status_str"] == "success"
        ids[client] = body["prompt_id"]
    a, b, _ = ids
    for client in (a, b):
        runs = server.get(f"/dit-cache/runs?client_id={client}")["runs"]
        assert [r["prompt_id"] for r in runs] == [ids[client]], runs
    assert server.get("/dit-cache/runs")["runs"] == []
    assert server.get("/dit-cache/runs?client_id=")["runs"] == []
    assert server.get(f"/dit-cache/runs?client_id={uuid.uuid4().hex}")["runs"] == []


def test_run_log_is_bounded_in_bytes_as_well_as_count(monkeypatch):
    """In-process: the oldest runs go once the kept JSON passes MAX_BYTES; the newest always stays."""
    from dit_cache.hosts.comfy import run_log

    monkeypatch.setattr(run_log, "MAX_BYTES", 10_000)
    run_log.clear()
    for i in range(10):
        run_log.record({"i": i, "pad": "x" * 3000}, client_id="c")
    kept = run_log.for_client("c")
    assert [r["i"] for r in kept] == [7, 8, 9] and run_log.size_bytes() <= 10_000
    run_log.record({"i": 10, "pad": "y" * 50_000}, client_id="c")  # alone above the cap: still kept
    assert [r["i"] for r in run_log.for_client("c")] == [10] and run_log.last()["i"] == 10
    for i in range(run_log.MAX_RUNS + 5):
        run_log.record({"i": i}, client_id="d")
    assert len(run_log.recent()) == run_log.MAX_RUNS and run_log.for_client("c") == []
    assert run_log.for_client(None) == []
    run_log.clear()
    assert run_log.size_bytes() == 0
