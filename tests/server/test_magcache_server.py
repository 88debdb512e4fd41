"""MagCache through a real ComfyUI server: calibrate -> file saved -> dropdown lists it without restart ->
Apply MagCache uses it -> skips; a bad calibration choice is a clear error before sampling.

The server saves calibrations in its "magcache" model folder (``<base directory>/models/magcache`` here, see
support/comfy_server.py); the test reads the saved path from the server's log line and deletes the files it created.
"""
from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from comfy_server import Server
from comfy_server import module_server  # noqa: F401 - the fixture "server"
from server_prompts import _graph, _run

pytestmark = pytest.mark.server

SAVED = re.compile(r"\[dit-cache\] MagCache Calibrate: saved (.+\.safetensors)")
MAG_LINE = re.compile(r"\[dit-cache\] MagCache: skipped (\d+)/(\d+) model calls")


def test_calibrate_save_dropdown_apply(server: Server):
    prefix = f"srv{uuid.uuid4().hex[:6]}"
    before = server.get("/object_info/DitCache.ApplyMagCache")["DitCache.ApplyMagCache"]
    options_before = before["input"]["required"]["calibration"][1]["options"] \
        if isinstance(before["input"]["required"]["calibration"][1], dict) and \
        "options" in before["input"]["required"]["calibration"][1] else before["input"]["required"]["calibration"][0]
    created: list[Path] = []
    try:
        entry, log = _run(server, _graph({"class_type": "DitCache.MagCacheCalibrate",
                                          "inputs": {"model": ["1", 0], "filename_prefix": prefix}}))
        saved = SAVED.findall(log)
        assert len(saved) == 1, log[-3000:]
        path = Path(saved[0].strip())
        created.append(path)
        assert path.is_file() and path.parent.name == "magcache" and path.name.startswith(f"{prefix}_wan_12steps_")
        # the node's UI output says where it saves; the metadata names the KSampler's sampler and scheduler
        assert "magcache" in str(entry["outputs"]["2"]["text"])
        from dit_cache.cache_core.methods import magcache_calibration as cal_io
        cal = cal_io.load(path)
        assert (cal.sampler, cal.scheduler, cal.steps, set(cal.ratios)) == ("euler", "simple", 12, {"cond", "uncond"})

        info = server.get("/object_info/DitCache.ApplyMagCache")["DitCache.ApplyMagCache"]
        spec = info["input"]["required"]["calibration"]
        options = spec[1]["options"] if isinstance(spec[1], dict) and "options" in spec[1] else spec[0]
        assert path.name in options and path.name not in options_before  # listed without a restart

        _, log = _run(server, _graph({"class_type": "DitCache.ApplyMagCache", "inputs": {
            "model": ["1", 0], "calibration": path.name, "threshold": 0.3, "max_skip_steps": 3,
            "retention_ratio": 0.2, "start_percent": 0.0, "end_percent": 1.0, "interpolation": "schedule"}}))
        m = MAG_LINE.findall(log)
        assert len(m) == 1, log[-3000:]
        skipped, calls = map(int, m[0])
        assert calls == 12 and 0 < skipped < calls

        # a calibration of another family: a clear error from the node, before the sampler runs
        status, body = server.post("/prompt", {"prompt": _graph({"class_type": "DitCache.ApplyMagCache", "inputs": {
            "model": ["1", 0], "calibration": "preset: flux_dev", "threshold": 0.3, "max_skip_steps": 3,
            "retention_ratio": 0.2, "start_percent": 0.0, "end_percent": 1.0, "interpolation": "schedule"}}),
            "client_id": uuid.uuid4().hex})
        assert status == 200, body
        entry = server.wait_for_history(body["prompt_id"])
        assert entry["status"]["status_str"] == "error"
        err = [m for m in entry["status"]["messages"] if m[0] == "execution_error"][0][1]
        assert err["node_id"] == "2" and "calibrated for a flux model, this model is wan" in err["exception_message"]
    finally:
        for p in created:
            p.unlink(missing_ok=True)
            if not any(p.parent.iterdir()):
                p.parent.rmdir()  # the folder the server created for it


def test_calibrate_queued_twice_calibrates_twice(server: Server):
    """ComfyUI's execution cache never reuses a Calibrate node's output: the same calibrate prompt queued again
    samples and saves again (it returned the first run's outputs and saved nothing before)."""
    prefix = f"twice{uuid.uuid4().hex[:6]}"
    graph = _graph({"class_type": "DitCache.MagCacheCalibrate", "inputs": {"model": ["1", 0],
                                                                          "filename_prefix": prefix}})
    created: list[Path] = []
    try:
        for _ in range(2):
            _, log = _run(server, graph)
            saved = SAVED.findall(log)
            assert len(saved) == 1, log[-3000:]
            created.append(Path(saved[0].strip()))
            assert created[-1].is_file()
    finally:
        for p in created:
            p.unlink(missing_ok=True)
