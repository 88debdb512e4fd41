"""SmoothCache through a real ComfyUI server: SmoothCache Calibrate saves a file into the calibration folder
(``<base directory>/models/magcache`` here, shared with MagCache), Apply SmoothCache lists it without a restart
(Apply MagCache does not) and reuses components with it. The test deletes the files it created."""
from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from comfy_server import Server
from comfy_server import module_server  # noqa: F401 - the fixture "server"
from server_prompts import _graph, _run

pytestmark = pytest.mark.server

SMOOTH_SAVED = re.compile(r"\[dit-cache\] SmoothCache Calibrate: saved (.+\.safetensors)")
SMOOTH_LINE = re.compile(r"\[dit-cache\] SmoothCache: skipped 0/(\d+) model calls \(ideal 1\.00x\), "
                         r"reused (\d+)/(\d+) component computations")


def _options(server: Server, node: str) -> list[str]:
    spec = server.get(f"/object_info/{node}")[node]["input"]["required"]["calibration"]
    return spec[1]["options"] if isinstance(spec[1], dict) and "options" in spec[1] else spec[0]


def test_smoothcache_calibrate_lists_only_for_smoothcache_and_applies(server: Server):
    """SmoothCache Calibrate saves into the same folder; the file appears in Apply SmoothCache's list (not in
    Apply MagCache's) without a restart and Apply SmoothCache reuses components with it."""
    prefix = f"smooth{uuid.uuid4().hex[:6]}"
    created: list[Path] = []
    try:
        entry, log = _run(server, _graph({"class_type": "DitCache.SmoothCacheCalibrate",
                                          "inputs": {"model": ["1", 0], "filename_prefix": prefix, "alpha": 0.15}}))
        saved = SMOOTH_SAVED.findall(log)
        assert len(saved) == 1, log[-3000:]
        path = Path(saved[0].strip())
        created.append(path)
        assert path.is_file() and path.parent.name == "magcache" and path.name.startswith(f"{prefix}_wan_12steps_")
        assert path.name in _options(server, "DitCache.ApplySmoothCache")
        assert path.name not in _options(server, "DitCache.ApplyMagCache")

        _, log = _run(server, _graph({"class_type": "DitCache.ApplySmoothCache", "inputs": {
            "model": ["1", 0], "calibration": path.name, "alpha": 10.0}}))
        m = SMOOTH_LINE.findall(log)
        assert len(m) == 1, log[-3000:]
        calls, reused, total = map(int, m[0])
        assert calls == 12 and 0 < reused < total
    finally:
        for p in created:
            p.unlink(missing_ok=True)
