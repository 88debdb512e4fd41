"""Every workflow in ``workflows/`` loads against a real ComfyUI server and runs there with tiny models.

Per workflow: the file is a consistent UI-format graph whose Note names every model file its loaders read;
every node type exists in the server's ``/object_info`` and every widget value fits the input it lands on
(``tests/support/workflow_check.py``); ``workflow_convert.to_tiny`` swaps the loaders for the test-only tiny
loader (one tiny model per model loader: Wan 2.2's high- and low-noise models are two models), the result is
turned into an API prompt and queued; it must finish, every sampled latent must be saved and finite, and every
dit-cache node must have recorded a completed run in ``GET /dit-cache/runs``.

Muted nodes (mode 2, e.g. the Apply branch of a calibrate -> apply workflow before a calibration exists) are
left out of the prompt, as the front end does. A workflow using a node type the server does not list (a node
added on another branch) is skipped with the missing types named. Every workflow with a "... Calibrate" node
is also run a second time as its note tells users: the Apply node reading the file its first run calibrated,
the calibration branch muted and every other node unmuted.

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
# tiny-model family (tests/support/tiny_models.py) standing in for a workflow's model, by file name prefix
FAMILY_BY_PREFIX = {
    "flux-": "flux",
    "wan21-": "wan21",
    "wan22-": "wan21",
    "qwen-image-": "qwen_image",
    "ltxv-": "ltxv",
    "sd15-": "sd15",
}
FILES = sorted(WORKFLOWS.glob("*.json"))
SAVED = re.compile(r"\[dit-cache\] (?:MagCache|SmoothCache|StepSchedule) Calibrate: saved (.+\.safetensors)")
MUTED = workflow_convert.MUTED
# the Apply node that reads each calibrate node's files
APPLY_OF = {"DitCache.MagCacheCalibrate": "DitCache.ApplyMagCache",
            "DitCache.SmoothCacheCalibrate": "DitCache.ApplySmoothCache",
            "DitCache.StepScheduleCalibrate": "DitCache.ApplyStepSchedule"}


def family(path: Path) -> str | None:
    return next((f for prefix, f in FAMILY_BY_PREFIX.items() if path.stem.startswith(prefix)), None)


def _is_calibrate(node: dict) -> bool:
    return node["type"].startswith("DitCache.") and node["type"].endswith("Calibrate")


def _active(node: dict) -> bool:
    return node.get("mode", 0) != MUTED


CALIBRATE_APPLY = [p for p in FILES if any(_is_calibrate(n) for n in json.loads(p.read_text("utf-8"))["nodes"])]
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
    assert [p.name for p in FILES if family(p) is None] == [], "add the file name prefix to FAMILY_BY_PREFIX"
    assert {"flux-magcache-calibrate-apply", "flux-smoothcache-calibrate-apply"} <= {p.stem for p in CALIBRATE_APPLY}


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
    client = uuid.uuid4().hex
    status, body = server.post("/prompt", {"prompt": prompt, "client_id": client})
    assert status == 200, body
    assert body["node_errors"] == {}, body
    entry = server.wait_for_history(body["prompt_id"])
    assert entry["status"]["status_str"] == "success", (entry["status"], server.log_tail())
    return {"prompt_id": body["prompt_id"], "client_id": client, **entry}


def _check_outputs(server: Server, tiny: dict, entry: dict) -> None:
    """Every SaveLatent of the converted workflow saved a finite latent."""
    import torch
    from safetensors.torch import load_file

    savers = [str(n["id"]) for n in tiny["nodes"] if n["type"] == "SaveLatent" and _active(n)]
    assert savers
    for sid in savers:
        (saved,) = entry["outputs"][sid]["latents"]
        latent = load_file(str(server.output_dir / saved["subfolder"] / saved["filename"]))["latent_tensor"]
        assert torch.isfinite(latent).all() and latent.abs().sum() > 0


def _runs_by_node(server: Server, client_id: str, prompt_id: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for run in server.get(f"/dit-cache/runs?client_id={client_id}")["runs"]:
        if run.get("prompt_id") == prompt_id:
            out.setdefault(str(run["node_id"]), []).append(run)
    return out


def _run(server: Server, object_info: dict, wf: dict, family: str) -> tuple[dict, dict]:
    tiny = workflow_convert.to_tiny(wf, family=family)
    assert workflow_check.problems(tiny, object_info) == []
    prompt = workflow_convert.to_api_prompt(tiny, object_info)
    cache_nodes = [n for n in wf["nodes"] if n["type"].startswith("DitCache.") and _active(n)]
    assert cache_nodes
    for n in cache_nodes:  # the dit-cache nodes are queued with the workflow's own values
        assert prompt[str(n["id"])]["class_type"] == n["type"]
    entry = _queue(server, prompt)
    _check_outputs(server, tiny, entry)
    runs = _runs_by_node(server, entry["client_id"], entry["prompt_id"])
    for n in cache_nodes:
        node_runs = runs.get(str(n["id"]), [])
        assert node_runs and all(r["completed"] for r in node_runs), (n["type"], runs, server.log_tail())
    return entry, runs


def _cleanup_calibrations(server: Server, offset: int) -> list[Path]:
    """Calibration files this test's runs wrote (into the server's models/magcache): removed. The folder
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
        entry, runs = _run(server, object_info, wf, family(path))
        # the sampler's model calls went through every cache node (skips are not required: tiny random
        # models at a user's threshold)
        for n in wf["nodes"]:
            if n["type"].startswith("DitCache.") and n["type"] != "DitCache.MagCacheCalibrate" and _active(n):
                # DiT Cache Tune's own record (the curve) samples nothing itself: its tuned model's runs do
                assert all(r["calls"] > 0 for r in runs[str(n["id"])] if not r.get("tune"))
        if path.stem == "wan22-t2v-high-low":
            high, low = (runs[str(n["id"])][0] for n in wf["nodes"] if n["type"] == "DitCache.ApplyFirstBlockCache")
            assert high["spec_id"] != low["spec_id"]  # two models, two cache states
            steps = [n["widgets_values"][3] // 2 for n in wf["nodes"] if n["type"] == "KSamplerAdvanced"]
            assert [high["calls"], low["calls"]] == steps  # each expert ran its half of the steps
    finally:
        _cleanup_calibrations(server, offset)


def _downstream(wf: dict, start: int) -> set[int]:
    """``start`` and every node fed, directly or not, by its outputs."""
    found, todo = {start}, [start]
    while todo:
        nid = todo.pop()
        for lk in wf["links"]:
            if lk[1] == nid and lk[3] not in found:
                found.add(lk[3])
                todo.append(lk[3])
    return found


@pytest.mark.server
@pytest.mark.parametrize("path", CALIBRATE_APPLY, ids=[p.stem for p in CALIBRATE_APPLY])
def test_calibrate_then_apply_workflow(server: Server, object_info: dict, path: Path):
    """Run the workflow (its calibration branch saves a file), then do step 2 of its note: set the Apply node's
    calibration to the saved file (the server lists it on the next /object_info), mute the calibration branch,
    unmute the rest, and run again."""
    wf = _load(path)
    offset = len(server.log())
    try:
        _run(server, object_info, wf, family(path))
        (saved,) = [Path(p.strip()) for p in SAVED.findall(server.log()[offset:])]
        info = server.get("/object_info")
        calib = next(n for n in wf["nodes"] if _is_calibrate(n))
        apply_type = APPLY_OF[calib["type"]]
        options = info[apply_type]["input"]["required"]["calibration"][1]["options"]
        assert saved.name in options, options

        apply_node = next(n for n in wf["nodes"] if n["type"] == apply_type)
        apply_node["widgets_values"][0] = saved.name
        branch = _downstream(wf, calib["id"])
        for n in wf["nodes"]:
            n["mode"] = MUTED if n["id"] in branch else 0
        assert workflow_check.problems(wf, info) == []
        tiny = workflow_convert.to_tiny(wf, family=family(path))
        prompt = workflow_convert.to_api_prompt(tiny, info)
        assert not {str(i) for i in branch} & set(prompt)
        assert prompt[str(apply_node["id"])]["inputs"]["calibration"] == saved.name
        log_offset = len(server.log())
        second = _queue(server, prompt)
        _check_outputs(server, tiny, second)
        (run,) = _runs_by_node(server, second["client_id"], second["prompt_id"])[str(apply_node["id"])]
        sampler = next(n for n in wf["nodes"] if n["id"] in _downstream(wf, apply_node["id"])
                       and n["type"] == "KSampler")
        assert run["completed"] and run["calls"] == sampler["widgets_values"][2]  # one model call per step
        assert f"using {saved.name}" in server.log()[log_offset:]
    finally:
        _cleanup_calibrations(server, offset)
