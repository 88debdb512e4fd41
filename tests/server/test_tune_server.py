"""DiT Cache Tune queued through a real ComfyUI server on the small trained Flux-class model: the tune file lands
in the server's calibration store (``<base directory>/models/magcache``), the node's UI output carries the curve
the page draws, the panel's run log holds the tune record, and "Cache (DiT, start here)", queued before (the family's table)
and again after, now uses the file: ComfyUI does not reuse its earlier choice."""
from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest

from comfy_server import Server
from comfy_server import module_server  # noqa: F401 - the fixture "server"
from server_prompts import LOADER, _run

pytestmark = pytest.mark.server

SAVED = re.compile(r"\[dit-cache\] DiT Cache Tune: .*; saved (\S+\.json)")


def _tune_prompt(prefix: str) -> dict:
    return {
        "1": {"class_type": LOADER, "inputs": {"family": "flux:trained", "seed": 1, "batch_size": 1}},
        "2": {"class_type": "DitCache.Tune", "inputs": {
            "model": ["1", 0], "positive": ["1", 1], "negative": ["1", 2], "latent_image": ["1", 3], "seed": 0,
            "steps": 20, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
            "metric": "PSNR", "target": 30.0, "seeds": 1, "methods": "teacache", "filename_prefix": prefix}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "positive": ["1", 1], "negative": ["1", 2], "latent_image": ["1", 3],
            "seed": 0, "steps": 20, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "4": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "latents/tune"}},
    }


def _runs(server: Server, client_id: str, prompt_id: str) -> list[dict]:
    return [r for r in server.get(f"/dit-cache/runs?client_id={client_id}")["runs"] if r.get("prompt_id") == prompt_id]


def test_tune_saves_its_file_in_the_store_and_start_here_uses_it(server: Server):
    prefix = f"srv{uuid.uuid4().hex[:6]}"
    created: list[Path] = []
    auto = _tune_prompt(prefix)
    auto["2"] = {"class_type": "DitCache.ApplyAuto", "inputs": {"model": ["1", 0], "choice": "balanced"}}
    try:
        # before any tune file of this model: the family's measured table
        _, log = _run(server, auto)
        assert "Cache (DiT, start here): balanced: Apply TeaCache rel_l1_threshold=0.6" in log
        assert "no tune file of this model" in log
        client = uuid.uuid4().hex
        status, body = server.post("/prompt", {"prompt": _tune_prompt(prefix), "client_id": client})
        assert status == 200 and body["node_errors"] == {}, body
        entry = server.wait_for_history(body["prompt_id"])
        assert entry["status"]["status_str"] == "success", (entry["status"], server.log_tail())
        saved = SAVED.findall(server.log())
        path = next(Path(entry["outputs"]["2"]["dit_cache_tune"][0]["folder"]) / n for n in saved if n.startswith(prefix))
        created.append(path)
        assert path.is_file() and path.parent.name == "magcache" and path.name.startswith(f"{prefix}_flux_20steps_")
        data = json.loads(path.read_text(encoding="utf-8"))
        assert data["format"] == "dit-cache.tune.v1" and data["method"] == "teacache" and data["quality"] >= 31.0
        ui = entry["outputs"]["2"]["dit_cache_tune"][0]
        assert ui["file"] == path.name and ui["curve"] == data["curve"] and ui["winner"]["method"] == "teacache"
        runs = _runs(server, client, body["prompt_id"])
        tune_rec = [r for r in runs if r.get("tune")]
        assert len(tune_rec) == 1 and tune_rec[0]["details"]["tune_file"] == path.name
        # the trial runs are not in the panel: the tune record and the KSampler's run of the winner only
        assert [r["node_id"] for r in runs] == ["2", "2"] and runs[1]["calls"] == 20
        assert runs[1]["details"]["chosen_because"].startswith("tuned here")

        # the same prompt again: the node runs again (its fingerprint is the tune files present) and uses the file
        _, log = _run(server, auto)
        assert "Cache (DiT, start here): balanced: Apply TeaCache" in log and f"tune file {path.name}" in log
    finally:
        for p in created:
            p.unlink(missing_ok=True)
