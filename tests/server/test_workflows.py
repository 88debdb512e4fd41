"""Every workflow in ``workflows/`` loads against a real ComfyUI server and runs there with tiny models.

Per workflow: the file is a consistent UI-format graph whose MarkdownNote links every model file its loaders
read, every loader declares its files in ``properties.models`` (name, https URL, a ComfyUI models folder that
fits the loader, as ComfyUI's templates do), the thumbnail ``<name>.jpg`` lies beside it and the saved view puts
the top left node below the page's top bar at a readable zoom, and no two nodes overlap once the page has drawn
on them (``tests/core/test_registry.py`` checks every registered method has a workflow);
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
sys.path.insert(0, str(REPO / "scripts"))
import make_workflows  # noqa: E402
import workflow_models  # noqa: E402

# the ComfyUI models folder each loader reads its files from
FOLDER_OF_LOADER = {"UNETLoader": "diffusion_models", "CLIPLoader": "text_encoders",
                    "DualCLIPLoader": "text_encoders", "VAELoader": "vae", "CheckpointLoaderSimple": "checkpoints"}
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
    import folder_paths

    wf = _load(path)
    notes = [n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "MarkdownNote"]
    assert len(notes) == 1, "one MarkdownNote saying which files to download"
    assert not [n for n in wf["nodes"] if n["type"] == "Note"]
    loaders = [n for n in wf["nodes"] if n["type"] in workflow_convert.REPLACED and n["type"].endswith("Loader")
               or n["type"] == "CheckpointLoaderSimple"]
    assert loaders
    for n in loaders:
        files = [v for v in n["widgets_values"] if isinstance(v, str) and v.endswith(".safetensors")]
        models = n["properties"].get("models")
        assert files and models and [m["name"] for m in models] == files, (n["type"], files, models)
        for m in models:
            assert set(m) == {"name", "url", "directory"}
            assert m["url"].startswith("https://huggingface.co/") and m["url"].split("?")[0].endswith("/" + m["name"])
            assert m["directory"] == FOLDER_OF_LOADER[n["type"]] and m["directory"] in folder_paths.folder_names_and_paths
            assert f"[{m['name']}]({m['url']})" in notes[0]  # a markdown link
            assert f"ComfyUI/models/{m['directory']}/" in notes[0]
    assert "](https://github.com/dit-cache/dit-cache#" in notes[0]  # and one to the README
    assert "<" not in re.sub(r"`[^`]*`", "", notes[0]), "markdown drops <...> outside code spans: use backticks"
    assert any(n["type"].startswith("DitCache.") for n in wf["nodes"])
    assert wf["last_node_id"] == max(n["id"] for n in wf["nodes"])
    assert wf["last_link_id"] == max(lk[0] for lk in wf["links"])
    thumb = path.with_suffix(".jpg")  # the template browser asks for workflows/<name>.jpg
    assert thumb.is_file() and thumb.read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG
    from PIL import Image
    with Image.open(thumb) as im:
        assert im.format == "JPEG" and im.size == (512, 320)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_saved_view_starts_at_the_top_left_at_a_readable_zoom(path: Path):
    """screen = (graph + offset) * scale: the top left of the nodes (titles included) and groups sits just
    below the top bar and right of the side bar (tests/browser/test_workflows_browser.py checks it in the page)."""
    wf = _load(path)
    ds = wf["extra"]["ds"]
    assert 1.1 <= ds["scale"] <= 1.25
    left = min([n["pos"][0] for n in wf["nodes"]] + [g["bounding"][0] for g in wf["groups"]])
    top = min([n["pos"][1] - 30 for n in wf["nodes"]] + [g["bounding"][1] for g in wf["groups"]])
    assert (left + ds["offset"][0]) * ds["scale"] == pytest.approx(make_workflows.VIEW_LEFT, abs=0.1)
    assert (top + ds["offset"][1]) * ds["scale"] == pytest.approx(make_workflows.VIEW_TOP, abs=0.1)
    note = next(n for n in wf["nodes"] if n["type"] == "MarkdownNote")
    assert note["pos"][0] == left  # the note is the first thing one reads


# what the page draws on a node after a run, below its widgets: the last run on a cache node, and a Calibrate
# node's curve and saved file (issue 20: the Apply node below covered them)
GROWTH = {"calibrate": 180, "cache": 30}


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_nodes_do_not_overlap_after_a_run(path: Path):
    def box(n: dict) -> tuple[int, int, int, int]:
        grow = (GROWTH["calibrate"] if _is_calibrate(n) else GROWTH["cache"] if n["type"].startswith("DitCache.")
                else 0)
        return n["pos"][0], n["pos"][1] - 30, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1] + grow

    nodes = _load(path)["nodes"]
    overlaps = []
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = box(a), box(b)
            if ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1:
                overlaps.append((a.get("title", a["type"]), b.get("title", b["type"])))
    assert overlaps == []


def test_an_unknown_model_file_fails_clearly():
    wf = make_workflows.Workflow("test")
    make_workflows.unet(wf, "not-in-the-table.safetensors", (0, 0))
    with pytest.raises(workflow_models.UnknownModelFile, match="scripts/workflow_models.py"):
        wf.to_json()


@pytest.mark.server
def test_template_browser_lists_the_workflows_with_their_thumbnails(server: Server):
    """The front end's template browser (Extensions -> the pack) lists GET /workflow_templates and asks for
    /api/workflow_templates/<pack folder>/<name>.json and <name>.jpg (frontend 1.32-1.35 sources)."""
    import urllib.request

    listed = server.get("/workflow_templates")
    (folder,) = [k for k, names in listed.items() if set(names) & {p.stem for p in FILES}]
    assert sorted(listed[folder]) == sorted(p.stem for p in FILES)  # nothing else (no index.json: it would show)
    for p in FILES:
        for suffix, kind in ((".json", "application/json"), (".jpg", "image/jpeg")):
            with urllib.request.urlopen(f"{server.url}/api/workflow_templates/{folder}/{p.stem}{suffix}",
                                        timeout=30) as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith(kind)
                assert r.read() == p.with_suffix(suffix).read_bytes()


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
