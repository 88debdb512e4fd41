"""Apply DBCache / TaylorSeer / Adaptive Cache in a real ComfyUI server: listed with tooltips, queued through
/prompt with a KSampler, and a DBCache that leaves no block to cache refused before sampling."""
from __future__ import annotations

import re
import time
import uuid
from typing import Iterator

import pytest

from comfy_server import Server, comfy_server

pytestmark = pytest.mark.server

LOADER_NODE = "DitCacheTest.TinyModelLoader"
NODES = {  # node id: (method name in the run summary, inputs of an aggressive setting on the tiny Flux)
    "DitCache.ApplyDBCache": ("DBCache", {
        "Fn": 1, "Bn": 1, "threshold": 0.3, "warmup_steps": 2, "max_cached_steps": -1,
        "max_consecutive_cached_steps": -1, "taylorseer_order": 1, "start_percent": 0.0, "end_percent": 1.0}),
    "DitCache.ApplyTaylorSeer": ("TaylorSeer", {
        "cache_interval": 3, "warmup_steps": 2, "final_full_steps": 1, "max_order": 1, "predict": "block outputs",
        "factor_dtype": "bfloat16"}),
    "DitCache.ApplyAdaptiveCache": ("AdaptiveCache", {
        "threshold": 0.4, "start_percent": 0.15, "end_percent": 1.0, "max_consecutive_skips": -1,
        "warmup_steps": 0}),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    with comfy_server(tmp_path_factory.mktemp("comfy_server")) as srv:
        yield srv


def _prompt(node: str, inputs: dict) -> dict:
    return {
        "1": {"class_type": LOADER_NODE, "inputs": {"family": "flux", "seed": 0, "batch_size": 1}},
        "2": {"class_type": node, "inputs": {"model": ["1", 0], **inputs}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "positive": ["1", 1], "negative": ["1", 2], "latent_image": ["1", 3],
            "seed": 0, "steps": 12, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "4": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "latents/forecast"}},
    }


def _summary(server: Server, offset: int, method: str, timeout: float = 10.0) -> re.Match | None:
    pattern = re.compile(rf"\[dit-cache\] {method}: skipped (\d+)/(\d+) model calls")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = pattern.search(server.log()[offset:])
        if m:
            return m
        time.sleep(0.1)
    return None


def test_nodes_listed_with_tooltips(server: Server):
    info = server.get("/object_info")
    for node, (_, inputs) in NODES.items():
        assert node in info, node
        spec = info[node]
        assert spec["category"] == "dit-cache" and spec["description"] and spec["output"] == ["MODEL"]
        assert tuple(spec["input_order"]["required"]) == ("model", *inputs)
        for name in inputs:
            assert spec["input"]["required"][name][1].get("tooltip"), (node, name)
    predict = info["DitCache.ApplyTaylorSeer"]["input"]["required"]["predict"]
    assert "block outputs" in predict[0] or "block outputs" in predict[1].get("options", [])


@pytest.mark.parametrize("node", list(NODES))
def test_cached_sampling_over_http(server: Server, node: str):
    method, inputs = NODES[node]
    offset = len(server.log())
    status, body = server.post("/prompt", {"prompt": _prompt(node, inputs), "client_id": uuid.uuid4().hex})
    assert status == 200 and body["node_errors"] == {}, body
    entry = server.wait_for_history(body["prompt_id"])
    assert entry["status"]["status_str"] == "success", (entry["status"], server.log_tail())
    m = _summary(server, offset, method)
    assert m is not None, server.log_tail()
    assert 0 < int(m[1]) < int(m[2]) == 12


def test_dbcache_too_many_blocks_fails_before_sampling(server: Server):
    offset = len(server.log())
    inputs = dict(NODES["DitCache.ApplyDBCache"][1], Fn=8)  # the tiny Flux has 6 blocks
    status, body = server.post("/prompt", {"prompt": _prompt("DitCache.ApplyDBCache", inputs),
                                           "client_id": uuid.uuid4().hex})
    assert status == 200, body
    entry = server.wait_for_history(body["prompt_id"])
    assert entry["status"]["status_str"] == "error"
    errors = [m for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors and errors[0][1]["node_id"] == "2", entry["status"]
    assert "6 transformer blocks" in errors[0][1]["exception_message"]
    assert _summary(server, offset, "DBCache", timeout=1.0) is None  # nothing was sampled
