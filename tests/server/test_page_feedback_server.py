"""What the page is told, through a real ComfyUI server: warnings that matter (an unsupported model, a few-step
run) arrive as the websocket event ``dit-cache.warning`` (once per prompt, node and message) and are served by
``GET /dit-cache/runs`` to the page that queued the prompt; an empty calibration dropdown lists one entry naming
the Calibrate node to run first, and choosing it is refused (at /prompt and when the node runs)."""
from __future__ import annotations

import asyncio
import json
import re
import uuid

import aiohttp
import pytest

from comfy_server import Server
from comfy_server import module_server  # noqa: F401 - the fixture "server"
from server_prompts import LOADER

pytestmark = pytest.mark.server

WARNING = "dit-cache.warning"


def _defaults(server: Server, node: str) -> dict:
    info = server.get(f"/object_info/{node}")[node]
    out = {}
    for name, spec in info["input"]["required"].items():
        opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        if "default" in opts:
            out[name] = opts["default"]
        elif isinstance(spec[0], list) and spec[0]:
            out[name] = spec[0][0]
        elif spec[0] == "COMBO" and opts.get("options"):
            out[name] = opts["options"][0]
    return out


def _prompt(server: Server, family: str, node: str, steps: int, samplers: int = 1, **inputs) -> dict:
    prompt = {"1": {"class_type": LOADER, "inputs": {"family": family, "seed": 0, "batch_size": 1}},
              "2": {"class_type": node, "inputs": {**_defaults(server, node), **inputs, "model": ["1", 0]}}}
    for k in range(samplers):
        prompt[str(3 + 2 * k)] = {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "positive": ["1", 1], "negative": ["1", 2], "latent_image": ["1", 3],
            "seed": k, "steps": steps, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}}
        prompt[str(4 + 2 * k)] = {"class_type": "SaveLatent", "inputs": {"samples": [str(3 + 2 * k), 0],
                                                                         "filename_prefix": "latents/feedback"}}
    return prompt


async def _queue_and_listen(server: Server, prompt: dict, client: str) -> tuple[str, list[dict]]:
    """Queue ``prompt`` as the page ``client`` does (its websocket open first); every message until the prompt
    ended."""
    messages: list[dict] = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{server.url}/ws?clientId={client}") as ws:
            async with session.post(f"{server.url}/prompt", json={"prompt": prompt, "client_id": client}) as r:
                body = await r.json()
                assert r.status == 200, body
            prompt_id = body["prompt_id"]
            async with asyncio.timeout(120):
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    data = json.loads(msg.data)
                    messages.append(data)
                    d = data.get("data") or {}
                    if d.get("prompt_id") == prompt_id and (
                            data["type"] in ("execution_success", "execution_error", "execution_interrupted")):
                        break
    return prompt_id, messages


def _warnings(messages: list[dict]) -> list[dict]:
    return [m["data"] for m in messages if m["type"] == WARNING]


def test_unsupported_model_warning_reaches_the_page_once(server: Server):
    """Apply TeaCache on an SD1.5 UNet: the model runs unchanged, the log says why, and the page that queued the
    prompt gets the same sentence as a dit-cache.warning naming node 2 and the prompt (and GET /dit-cache/runs
    serves it to that page, to no other)."""
    client = uuid.uuid4().hex
    offset = len(server.log())
    prompt_id, messages = asyncio.run(_queue_and_listen(
        server, _prompt(server, "sd15", "DitCache.ApplyTeaCache", steps=6), client))
    assert messages[-1]["type"] == "execution_success", messages[-1]
    (warning,) = _warnings(messages)
    assert warning["node_id"] == "2" and warning["prompt_id"] == prompt_id
    assert "UNetModel is not a supported DiT model" in warning["message"]
    assert f"[dit-cache] {warning['node']}: {warning['message']}" in server.log()[offset:]
    served = [r for r in server.get(f"/dit-cache/runs?client_id={client}")["runs"] if "warning" in r]
    assert [r["warning"] for r in served] == [warning]
    assert server.get(f"/dit-cache/runs?client_id={uuid.uuid4().hex}")["runs"] == []


def test_a_warning_of_two_runs_in_one_prompt_is_sent_once(server: Server):
    """One First Block Cache feeding two KSamplers of 4 steps: the few-step warning is logged for each run but
    sent to the page once for the prompt and node; a second prompt is told again."""
    client = uuid.uuid4().hex
    prompts = []
    for seed in (0, 1):  # another threshold: not served from ComfyUI's execution cache
        offset = len(server.log())
        prompt = _prompt(server, "flux", "DitCache.ApplyFirstBlockCache", steps=4, samplers=2,
                         threshold=0.1 + 0.01 * seed)
        prompt_id, messages = asyncio.run(_queue_and_listen(server, prompt, client))
        assert messages[-1]["type"] == "execution_success", messages[-1]
        (warning,) = _warnings(messages)
        assert warning["node_id"] == "2" and warning["prompt_id"] == prompt_id
        assert warning["message"].startswith("4 sampling steps in this run")
        assert server.log()[offset:].count(warning["message"]) == 2  # one log line per run
        runs = [m["data"] for m in messages if m["type"] == "dit-cache.run"]
        assert len(runs) == 2 and all(r["node_id"] == "2" for r in runs)
        prompts.append(prompt_id)
    served = [r["warning"]["prompt_id"] for r in server.get(f"/dit-cache/runs?client_id={client}")["runs"]
              if "warning" in r]
    assert served == prompts


@pytest.mark.parametrize("node, calibrate", [("DitCache.ApplySmoothCache", "DitCache.SmoothCacheCalibrate"),
                                             ("DitCache.ApplyStepSchedule", "DitCache.StepScheduleCalibrate")])
def test_an_empty_calibration_dropdown_names_the_calibrate_node(server: Server, node: str, calibrate: str):
    """No calibration saved yet (a fresh server): the dropdown's one entry and its tooltip name the Calibrate node
    (by its display name, whatever it is); queueing with it is refused before anything runs, naming it."""
    label = server.get(f"/object_info/{calibrate}")[calibrate]["display_name"]
    spec = server.get(f"/object_info/{node}")[node]["input"]["required"]["calibration"]
    options = spec[1].get("options") if spec[0] == "COMBO" else spec[0]
    placeholder = f"(none yet: run '{label}' first)"
    assert options == [placeholder]
    assert spec[1]["default"] == placeholder
    assert f"Run '{label}' once on this model first" in spec[1]["tooltip"]
    status, body = server.post("/prompt", {"prompt": _prompt(server, "wan21", node, steps=4),
                                           "client_id": uuid.uuid4().hex})
    assert status == 400, body
    details = [e.get("details", "") for e in body["node_errors"]["2"]["errors"]]
    assert details and all(f"none are listed yet: run '{label}' once on this model first" in d for d in details)


def test_the_placeholder_is_refused_when_the_node_runs():
    """A value that reaches the node without /prompt's check (a linked or API value) is refused as well."""
    from dit_cache.nodes.smoothcache_nodes import ApplySmoothCache, SmoothCacheCalibrate

    placeholder = f"(none yet: run '{SmoothCacheCalibrate.label()}' first)"
    label = SmoothCacheCalibrate.label()
    with pytest.raises(ValueError, match=re.escape(f"calibration: none are listed yet: run '{label}' once")):
        ApplySmoothCache.execute(object(), calibration=placeholder, alpha=-1.0)


def test_every_calibrate_node_sends_its_saved_file(server: Server):
    """SmoothCache Calibrate (no curve of its own) sends "dit-cache.calibrated" naming its node and the saved file
    (the page shows it in the node's result area); afterwards the dropdown lists the file, not the placeholder.
    Last in this module: it saves a calibration."""
    client = uuid.uuid4().hex
    prompt = _prompt(server, "wan21", "DitCache.SmoothCacheCalibrate", steps=4, filename_prefix="pagetest")
    folder = server.output_dir.parent / "models" / "magcache"
    try:
        prompt_id, messages = asyncio.run(_queue_and_listen(server, prompt, client))
        assert messages[-1]["type"] == "execution_success", messages[-1]
        (event,) = [m["data"] for m in messages if m["type"] == "dit-cache.calibrated"]
        assert event["node_id"] == "2" and event["prompt_id"] == prompt_id and event["steps"] == 4
        assert (folder / event["file"]).is_file() and event["file"].startswith("pagetest_wan_4steps_")
        spec = server.get("/object_info/DitCache.ApplySmoothCache")["DitCache.ApplySmoothCache"]["input"][
            "required"]["calibration"]
        options = spec[1].get("options") if spec[0] == "COMBO" else spec[0]
        assert options == [event["file"]]
    finally:
        for p in folder.glob("pagetest_*.safetensors"):
            p.unlink()
