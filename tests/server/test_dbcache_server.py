"""Apply DBCache in a real ComfyUI server: a DBCache that leaves no block to cache is refused before sampling.
Its listing and cached sampling over HTTP are checked with the other step-level methods in
tests/server/test_step_methods_server.py."""
from __future__ import annotations

import uuid

import pytest

from comfy_server import Server
from comfy_server import module_server  # noqa: F401 - the fixture "server"
from server_prompts import NODES, _prompt, _summary

pytestmark = pytest.mark.server


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
