"""The pack in a ComfyUI environment without diffusers (issue 20 item 12): ``requirements.txt`` no longer installs
it, so the ComfyUI side must load every node and sample without it.

The server is the real host with a ``sitecustomize`` on its PYTHONPATH that makes every ``import diffusers`` (and
any submodule) fail as if the package were not installed; the module writes a marker line to the server log so
the test knows the block was active.
"""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from comfy_server import PACK, Server, comfy_server

pytestmark = pytest.mark.server

MARKER = "[no-diffusers] diffusers imports are blocked in this process"
BLOCKER = f'''
import importlib.abc
import sys


class _NoDiffusers(importlib.abc.MetaPathFinder):
    """Every ``diffusers`` import fails as if the package were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "diffusers" or name.startswith("diffusers."):
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, _NoDiffusers())
sys.modules.pop("diffusers", None)
sys.stderr.write({MARKER!r} + "\\n")
'''
IMPORT_LINE = re.compile(r"^\s*[\d.]+ seconds( \(IMPORT FAILED\))?: (.+?)\s*$", re.MULTILINE)


def _blocker_dir(tmp: Path) -> Path:
    folder = tmp / "no_diffusers"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(BLOCKER, encoding="utf-8")
    return folder


def _pythonpath(blocker: Path) -> str:
    return os.pathsep.join([str(blocker), *filter(None, [os.environ.get("PYTHONPATH")])])


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("comfy_server_no_diffusers")
    with comfy_server(root, env={"PYTHONPATH": _pythonpath(_blocker_dir(root))}) as srv:
        yield srv


def _registry_node_ids() -> set[str]:
    """Every node id the pack's node files define."""
    ids = set()
    for path in (PACK / "nodes").glob("*.py"):
        ids |= set(re.findall(r'node_id="(DitCache\.[A-Za-z]+)"', path.read_text(encoding="utf-8")))
    return ids


def test_server_loads_every_node_and_samples_without_diffusers(server: Server):
    log = server.log()
    assert MARKER in log, "the diffusers block was not active:\n" + server.log_tail()
    by_path = {os.path.realpath(path): failed for failed, path in IMPORT_LINE.findall(log)}
    assert str(PACK) in by_path and not by_path[str(PACK)], server.log_tail()
    listed = {k for k in server.get("/object_info") if k.startswith("DitCache.")}
    expected = _registry_node_ids()
    assert len(expected) >= 17 and expected <= listed, sorted(expected - listed)
    # one cached run through the KSampler (the tiny Flux of the test loader)
    prompt = {
        "1": {"class_type": "DitCacheTest.TinyModelLoader", "inputs": {"family": "flux", "seed": 0, "batch_size": 1}},
        "2": {"class_type": "DitCache.ApplyFirstBlockCache", "inputs": {
            "model": ["1", 0], "threshold": 0.12, "start_percent": 0.0, "end_percent": 1.0,
            "max_consecutive_skips": -1, "warmup_steps": 0}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "positive": ["1", 1], "negative": ["1", 2], "latent_image": ["1", 3],
            "seed": 0, "steps": 6, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "4": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "latents/nodiff"}},
    }
    status, body = server.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
    assert status == 200, body
    entry = server.wait_for_history(body["prompt_id"])
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert "diffusers" not in "\n".join(l for l in server.log().splitlines() if "Traceback" in l or "Error" in l)

