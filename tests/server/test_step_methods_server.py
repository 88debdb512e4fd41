"""The step-level method nodes' contract in a real ComfyUI server, over Apply DBCache / TaylorSeer / Adaptive Cache:
listed with tooltips and queued through /prompt with a KSampler. DBCache's own refusal of too many blocks is
tests/server/test_dbcache_server.py."""
from __future__ import annotations

import uuid

import pytest

from comfy_server import Server
from comfy_server import module_server  # noqa: F401 - the fixture "server"
from server_prompts import NODES, _prompt, _summary

pytestmark = pytest.mark.server


def test_nodes_listed_with_tooltips(server: Server):
    info = server.get("/object_info")
    for node, (_, inputs) in NODES.items():
        assert node in info, node
        spec = info[node]
        assert spec["category"].startswith("dit-cache/") and spec["description"] and spec["output"] == ["MODEL"]
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
