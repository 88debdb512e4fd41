"""Every workflow in ``workflows/`` loads against a real ComfyUI server and runs there with tiny models.

Per workflow: the file is a consistent UI-format graph whose Note names every model file its loaders read;
every node type exists in the server's ``/object_info`` and every widget value fits the input it lands on
(``tests/support/workflow_check.py``); ``workflow_convert.to_tiny`` swaps the loaders for the test-only tiny
loader (one tiny model per model loader: Wan 2.2's high- and low-noise models are two models), the result is
turned into an API prompt and queued; it must finish, every sampled latent must be saved and finite, and every
dit-cache node must have recorded a completed run in ``GET /dit-cache/runs``.

A workflow using a node type the server does not list (a node added on another branch) is skipped with the
missing types named. The Flux MagCache workflow is also run a second time with "Apply MagCache" reading the file
its first run calibrated (Calibrate -> Apply, as the workflow's note tells users).

Select with ``-m server``; ``scripts/make_workflows.py --check`` must find the files up to date.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest

import workflow_check
import workflow_convert
from comfy_server import REPO, Server, comfy_server

WORKFLOWS = REPO / "workflows"
# tiny-model family (tests/support/tiny_models.py) standing in for each workflow's model
FAMILY = {
    "flux-firstblockcache": "flux",
    "flux-magcache-calibrate-apply": "flux",
    "wan21-t2v-teacache": "wan21",
    "wan21-t2v-magcache": "wan21",
    "wan22-t2v-high-low": "wan21",
    "qwen-image-magcache": "qwen_image",
    "ltxv-t2v-pab": "ltxv",
}
FILES = sorted(WORKFLOWS.glob("*.json"))
SAVED = re.compile(r"\[dit-cache\] MagCache Calibrate: saved (.+\.safetensors)")
LOADER_FILE_INPUTS = ("unet_name", "ckpt_name", "vae_name", "clip_name", "clip_name1", "clip_name2", "clip_name3")


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    with comfy_server(tmp_path_factory.mktemp("comfy_server")) as srv:
        yield srv


@pytest.fixture(scope="module")
def object_info(server: Server) -> dict:
    return server.get("/object_info")


def test_every_workflow_has_a_tiny_family():
    assert FILES, "no workflows"
    assert {p.stem for p in FILES} == set(FAMILY), "add new workflows to FAMILY (and remove deleted ones)"


def test_generated_workflows_are_up_to_date():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "make_workflows.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_workflow_file_names_its_model_files(path: Path):
    wf = _load(path)
    notes = [n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "Note"]
    assert len(notes) == 1, "one Note saying which files to download"
    loaders = [n for n in wf["nodes"] if n["type"] in workflow_convert.REPLACED and n["type"].endswith("Loader")
               or n["type"] == "CheckpointLoaderSimple"]
    assert loaders
    files = [v for n in loaders for v in n["widgets_values"] if isinstance(v, str) and v.endswith(".safetensors")]
    assert files and all(f in notes[0] for f in files), (files, notes[0])
    assert any(n["type"].startswith("DitCache.") for n in wf["nodes"])
    assert wf["last_node_id"] == max(n["id"] for n in wf["nodes"])
    assert wf["last_link_id"] == max(lk[0] for lk in wf["links"])


def _queue(server: Server, prompt: dict) -> dict:
    status, body = server.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
    assert status == 200, body
    assert body["node_errors"] == {}, body
    entry = server.wait_for_history(body["prompt_id"])
    assert entry["status"]["status_str"] == "success", (entry["status"], server.log_tail())
    return {"prompt_id": body["prompt_id"], **entry}


def _check_outputs(server: Server, tiny: dict, entry: dict) -> None:
    """Every SaveLatent of the converted workflow saved a finite latent."""
    import torch
    from safetensors.torch import load_file

    savers = [str(n["id"]) for n in tiny["nodes"] if n["type"] == "SaveLatent"]
    assert savers
    for sid in savers:
        (saved,) = entry["outputs"][sid]["latents"]
        latent = load_file(str(server.output_dir / saved["subfolder"] / saved["filename"]))["latent_tensor"]
        assert torch.isfinite(latent).all() and latent.abs().sum() > 0


def _runs_by_node(server: Server, prompt_id: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for run in server.get("/dit-cache/runs")["runs"]:
        if run.get("prompt_id") == prompt_id:
            out.setdefault(str(run["node_id"]), []).append(run)
    return out


def _run(server: Server, object_info: dict, wf: dict, family: str) -> tuple[dict, dict]:
    tiny = workflow_convert.to_tiny(wf, family=family)
    assert workflow_check.problems(tiny, object_info) == []
    prompt = workflow_convert.to_api_prompt(tiny, object_info)
    cache_nodes = [n for n in wf["nodes"] if n["type"].startswith("DitCache.")]
    for n in cache_nodes:  # the dit-cache nodes are queued with the workflow's own values
        assert prompt[str(n["id"])]["class_type"] == n["type"]
    entry = _queue(server, prompt)
    _check_outputs(server, tiny, entry)
    runs = _runs_by_node(server, entry["prompt_id"])
    for n in cache_nodes:
        node_runs = runs.get(str(n["id"]), [])
        assert node_runs and all(r["completed"] for r in node_runs), (n["type"], runs, server.log_tail())
    return entry, runs


def _cleanup_calibrations(server: Server, offset: int) -> list[Path]:
    """Calibration files this test's runs wrote (into the host ComfyUI's models/magcache): removed. The folder
    stays: ComfyUI's cached file lists raise FileNotFoundError for a listed folder that disappeared while the
    server runs (later prompts with Apply MagCache would fail validation)."""
    created = [Path(p.strip()) for p in SAVED.findall(server.log()[offset:])]
    for p in created:
        p.unlink(missing_ok=True)
    return created


@pytest.mark.server
@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_workflow_loads_and_runs_on_the_server(server: Server, object_info: dict, path: Path):
    wf = _load(path)
    missing = workflow_check.missing_types(wf, object_info)
    if missing:
        pytest.skip(f"{path.name}: the server lists no node type {', '.join(missing)} yet "
                    f"(added on another branch)")
    assert workflow_check.problems(wf, object_info) == []
    offset = len(server.log())
    try:
        entry, runs = _run(server, object_info, wf, FAMILY[path.stem])
        # the sampler's model calls went through every cache node (skips are not required: tiny random
        # models at a user's threshold)
        for n in wf["nodes"]:
            if n["type"].startswith("DitCache.") and n["type"] != "DitCache.MagCacheCalibrate":
                assert all(r["calls"] > 0 for r in runs[str(n["id"])])
        if path.stem == "wan22-t2v-high-low":
            high, low = (runs[str(n["id"])][0] for n in wf["nodes"] if n["type"] == "DitCache.ApplyFirstBlockCache")
            assert high["spec_id"] != low["spec_id"]  # two models, two cache states
            steps = [n["widgets_values"][3] // 2 for n in wf["nodes"] if n["type"] == "KSamplerAdvanced"]
            assert [high["calls"], low["calls"]] == steps  # each expert ran its half of the steps
    finally:
        _cleanup_calibrations(server, offset)


@pytest.mark.server
def test_flux_magcache_workflow_calibrate_then_apply(server: Server, object_info: dict):
    """Run the workflow, then set Apply MagCache's calibration to the file the first run saved (the server
    lists it on the next /object_info) and run the cached branch with it."""
    wf = _load(WORKFLOWS / "flux-magcache-calibrate-apply.json")
    offset = len(server.log())
    try:
        entry, runs = _run(server, object_info, wf, "flux")
        (path,) = [Path(p.strip()) for p in SAVED.findall(server.log()[offset:])]
        info = server.get("/object_info")
        options = info["DitCache.ApplyMagCache"]["input"]["required"]["calibration"][1]["options"]
        assert path.name in options, options

        apply_node = next(n for n in wf["nodes"] if n["type"] == "DitCache.ApplyMagCache")
        apply_node["widgets_values"][0] = path.name
        # step 2 of the note: the calibration branch muted (mode 2: the front end leaves it out of the prompt)
        calib = next(n for n in wf["nodes"] if n["type"] == "DitCache.MagCacheCalibrate")
        tiny = workflow_convert.to_tiny(wf, family="flux")
        muted = {calib["id"]} | {lk[3] for lk in tiny["links"] if lk[1] == calib["id"]}
        muted |= {lk[3] for lk in tiny["links"] if lk[1] in muted}
        tiny["nodes"] = [n for n in tiny["nodes"] if n["id"] not in muted]
        tiny["links"] = [lk for lk in tiny["links"] if lk[1] not in muted and lk[3] not in muted]
        prompt = workflow_convert.to_api_prompt(tiny, info)
        assert prompt[str(apply_node["id"])]["inputs"]["calibration"] == path.name
        log_offset = len(server.log())
        second = _queue(server, prompt)
        (run,) = _runs_by_node(server, second["prompt_id"])[str(apply_node["id"])]
        assert run["completed"] and run["calls"] == 28
        assert f"using {path.name}" in server.log()[log_offset:]
    finally:
        _cleanup_calibrations(server, offset)
