"""Write the UI-format example workflows in ``workflows/`` (the JSON ComfyUI's Load, drag-and-drop and template
browser read) and their thumbnails (``workflows/<name>.jpg``, drawn by ``scripts/workflow_thumbnail.py``).

Each workflow is described below in a few lines (nodes with their widget values, links by input name) and
written with the layout fields the ComfyUI front end expects (ids, slots, link list, positions, sizes). On top:
- a MarkdownNote at the top left, with the model files as download links (from ``scripts/workflow_models.py``,
  which must know every file a loader names) and a link to the README;
- ``properties.models`` on every loader node (``[{name, url, directory}]``, as ComfyUI's own templates: the
  page offers the downloads of missing files);
- the saved view (``extra.ds``) computed from the node bounds: zoom ``VIEW_SCALE`` with the top left node just
  below the page's top bar and right of its side bar.
Widget values follow the order of each node's inputs in ``/object_info``; ``tests/server/test_workflows.py``
checks them against a running server and runs every workflow with tiny models. To add a workflow: write a
function returning a :class:`Workflow` and add it to ``WORKFLOWS``.

    .venv/bin/python scripts/make_workflows.py          # rewrite the files
    .venv/bin/python scripts/make_workflows.py --check  # exit 1 when a file differs from what this writes
"""
from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workflow_models  # noqa: E402
import workflow_thumbnail  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "workflows"
REPO_URL = "https://github.com/dit-cache/dit-cache"
NOTE_COLOR = {"color": "#432", "bgcolor": "#653"}
NOTE_WIDTH = 440
NOTE_X = -40 - NOTE_WIDTH - 40  # left of the loaders (x -40)
FILES = "{files}"  # where a note lists the model files (written from the loaders' properties.models)
# The saved view: zoom, and where the top left node's title starts on screen (px): below the top bar (menu and
# workflow tabs, about 110 px in frontend 1.32-1.35) and right of the side bar's icons (about 50 px).
VIEW_SCALE = 1.2
VIEW_LEFT, VIEW_TOP = 70, 140
TITLE_HEIGHT = 30  # LiteGraph draws a node's title above its pos
# The page draws the last run on cache nodes (about 22 px) and a Calibrate node's curve and saved file below its
# widgets (about 170 px): the layouts leave room below them.
ON_NODE_ROOM = 30
# Fixed ids so re-running the script gives the same files.
NAMESPACE = uuid.UUID("1b0f1f5e-6d2a-4c57-9a43-5b1f0c9d7e21")


class Workflow:
    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[dict[str, Any]] = []
        self.links: list[list[Any]] = []
        self.groups: list[dict[str, Any]] = []
        self._by_id: dict[int, dict[str, Any]] = {}

    def node(self, type_: str, widgets: list[Any], pos: tuple[int, int], size: tuple[int, int] = (320, 100),
             inputs: tuple[tuple[str, str], ...] = (), outputs: tuple[tuple[str, str], ...] = (),
             title: str | None = None, nid: int | None = None, **extra: Any) -> int:
        """Add a node; its id is ``nid`` or else the smallest unused one."""
        if nid is None:
            nid = next(i for i in range(1, len(self.nodes) + 2) if i not in self._by_id)
        elif nid in self._by_id:
            raise ValueError(f"{self.name}: node id {nid} is taken")
        node = {
            "id": nid, "type": type_, "pos": list(pos), "size": list(size), "flags": {}, "order": len(self.nodes),
            "mode": 0,
            "inputs": [{"name": n, "type": t, "link": None} for n, t in inputs],
            "outputs": [{"name": n, "type": t, "links": []} for n, t in outputs],
            "properties": {"Node name for S&R": type_}, "widgets_values": widgets,
        }
        if title:
            node["title"] = title
        node.update(extra)
        self.nodes.append(node)
        self._by_id[nid] = node
        return nid

    def note(self, text: str, height: int | None = None) -> int:
        """The workflow's MarkdownNote, at the top left; ``FILES`` in ``text`` becomes the list of model files
        (download links) and a link to the README ends it. Its height fits the text (about 90 characters a line
        of 13 px at the front end's markdown size) unless given."""
        if FILES not in text:
            raise ValueError(f"{self.name}: the note must list the model files ({FILES!r})")
        if height is None:
            lines = sum(-(-len(par) // 90) + 1 for par in text.split("\n")) + 6  # + the files and links
            height = 60 + 13 * lines
        return self.node("MarkdownNote", [text], (NOTE_X, 60), (NOTE_WIDTH, height), title="Read me", **NOTE_COLOR)

    def size_of(self, nid: int) -> list[int]:
        return self._by_id[nid]["size"]

    def mute(self, *nids: int) -> None:
        """Mode 2 ("never"): the front end leaves the nodes out of the prompt until they are unmuted."""
        for nid in nids:
            self._by_id[nid]["mode"] = 2

    def group(self, title: str, bounding: tuple[int, int, int, int], color: str = "#3f789e") -> None:
        """A titled frame; right-clicking its title offers 'Set Group Nodes to Never / Always' for the nodes
        inside it."""
        self.groups.append({"id": len(self.groups) + 1, "title": title, "bounding": list(bounding),
                            "color": color, "font_size": 24, "flags": {}})

    def link(self, src: int, src_slot: int, dst: int, dst_input: str) -> None:
        lid = len(self.links) + 1
        s, d = self._by_id[src], self._by_id[dst]
        out = s["outputs"][src_slot]
        slot = next(i for i, x in enumerate(d["inputs"]) if x["name"] == dst_input)
        if d["inputs"][slot]["type"] != out["type"]:
            raise ValueError(f"{s['type']}.{out['name']} ({out['type']}) -> {d['type']}.{dst_input}")
        out["links"].append(lid)
        d["inputs"][slot]["link"] = lid
        self.links.append([lid, src, src_slot, dst, slot, out["type"]])

    def models(self) -> list[dict[str, str]]:
        """Every model file the loaders name, once each, in node order."""
        seen: dict[str, dict[str, str]] = {}
        for n in self.nodes:
            for m in n["properties"].get("models", []):
                seen.setdefault(m["name"], m)
        return list(seen.values())

    def _finish_note(self) -> None:
        (note,) = [n for n in self.nodes if n["type"] == "MarkdownNote"]
        files = "\n".join(f"- [{m['name']}]({m['url']}) → `ComfyUI/models/{m['directory']}/`" for m in self.models())
        note["widgets_values"] = [note["widgets_values"][0].replace(FILES, files) + (
            f"\n\nMore: [the README's two-minute start]({REPO_URL}#two-minute-start) · "
            f"[every node's inputs]({REPO_URL}/blob/main/docs/nodes.md) · "
            f"[the workflows]({REPO_URL}/tree/main/workflows)")]

    def view(self) -> dict[str, Any]:
        """``extra.ds``: zoom VIEW_SCALE with the top left corner of the nodes' and groups' bounds (titles
        included) at (VIEW_LEFT, VIEW_TOP) on screen; screen = (graph + offset) * scale in LiteGraph."""
        x0 = min([n["pos"][0] for n in self.nodes] + [g["bounding"][0] for g in self.groups])
        y0 = min([n["pos"][1] - TITLE_HEIGHT for n in self.nodes] + [g["bounding"][1] for g in self.groups])
        return {"scale": VIEW_SCALE, "offset": [round(VIEW_LEFT / VIEW_SCALE - x0, 2),
                                                round(VIEW_TOP / VIEW_SCALE - y0, 2)]}

    def to_json(self) -> dict[str, Any]:
        for n in self.nodes:
            for i in n["inputs"]:
                if i["link"] is None:
                    raise ValueError(f"{self.name}: input {n['type']}.{i['name']} is not connected")
            files = workflow_models.files_of(n["type"], n["widgets_values"])
            if files:
                n["properties"]["models"] = [workflow_models.entry(f) for f in files]
        self._finish_note()
        return {
            "id": str(uuid.uuid5(NAMESPACE, self.name)), "revision": 0,
            "last_node_id": max(self._by_id), "last_link_id": len(self.links),
            "nodes": self.nodes, "links": self.links, "groups": self.groups, "config": {},
            "extra": {"ds": self.view()}, "version": 0.4,
        }


# --- building blocks -------------------------------------------------------------------------------------
M, C, CL, V, L, I = "MODEL", "CONDITIONING", "CLIP", "VAE", "LATENT", "IMAGE"


def unet(wf: Workflow, file: str, pos: tuple[int, int], title: str | None = None) -> int:
    return wf.node("UNETLoader", [file, "default"], pos, (320, 82), outputs=(("MODEL", M),), title=title)


def text(wf: Workflow, clip: int, prompt: str, pos: tuple[int, int], negative: bool = False,
         clip_slot: int = 0) -> int:
    n = wf.node("CLIPTextEncode", [prompt], pos, (400, 130), inputs=(("clip", CL),),
                outputs=(("CONDITIONING", C),),
                title=f"CLIP Text Encode ({'Negative' if negative else 'Positive'} Prompt)")
    wf.link(clip, clip_slot, n, "clip")
    return n


def ksampler(wf: Workflow, model: int, pos_c: int, neg_c: int, latent: int, widgets: list[Any],
             pos: tuple[int, int], neg_slot: int = 0, pos_slot: int = 0, title: str | None = None) -> int:
    n = wf.node("KSampler", widgets, pos, (320, 262),
                inputs=(("model", M), ("positive", C), ("negative", C), ("latent_image", L)),
                outputs=(("LATENT", L),), title=title)
    wf.link(model, 0, n, "model")
    wf.link(pos_c, pos_slot, n, "positive")
    wf.link(neg_c, neg_slot, n, "negative")
    wf.link(latent, 0, n, "latent_image")
    return n


def decode_save(wf: Workflow, samples: int, vae: int, pos: tuple[int, int], prefix: str,
                video_fps: float | None = None, vae_slot: int = 0) -> tuple[int, int]:
    """VAE Decode and a save node under it; returns both ids."""
    d = wf.node("VAEDecode", [], pos, (210, 46), inputs=(("samples", L), ("vae", V)), outputs=(("IMAGE", I),))
    wf.link(samples, 0, d, "samples")
    wf.link(vae, vae_slot, d, "vae")
    if video_fps is None:
        s = wf.node("SaveImage", [prefix], (pos[0], pos[1] + 90), (420, 440), inputs=(("images", I),))
    else:  # filename_prefix, fps, lossless, quality, method
        s = wf.node("SaveAnimatedWEBP", [prefix, video_fps, False, 90, "default"], (pos[0], pos[1] + 90),
                    (420, 440), inputs=(("images", I),))
    wf.link(d, 0, s, "images")
    return d, s


def cache_node(wf: Workflow, type_: str, widgets: list[Any], model: int, pos: tuple[int, int],
               title: str | None = None, size: tuple[int, int] = (320, 200), nid: int | None = None) -> int:
    n = wf.node(type_, widgets, pos, size, inputs=(("model", M),), outputs=(("MODEL", M),), title=title, nid=nid)
    wf.link(model, 0, n, "model")
    return n


def model_sampling(wf: Workflow, type_: str, shift: float, model: int, pos: tuple[int, int]) -> int:
    n = wf.node(type_, [shift], pos, (300, 58), inputs=(("model", M),), outputs=(("MODEL", M),))
    wf.link(model, 0, n, "model")
    return n


def clip_loader(wf: Workflow, file: str, kind: str, pos: tuple[int, int]) -> int:
    return wf.node("CLIPLoader", [file, kind, "default"], pos, (320, 106), outputs=(("CLIP", CL),))


def vae_loader(wf: Workflow, file: str, pos: tuple[int, int]) -> int:
    return wf.node("VAELoader", [file], pos, (320, 58), outputs=(("VAE", V),))


PANEL_HINT = "The **DiT Cache** tab in ComfyUI's left sidebar shows what the cache skipped after each run."
MODEL_FILES = ("**Model files** (click to download, then put each in the folder shown; the page also offers the "
               "missing ones when it opens this workflow):\n" + FILES)
PROMPT_IMAGE = "a red fox sitting in a snowy birch forest at dawn, soft golden light, 35mm photo, highly detailed"
PROMPT_VIDEO = "a red fox trotting through a snowy birch forest at dawn, the camera slowly tracking beside it"
NEG_WAN = "blurry, low quality, static, overexposed, worst quality, jpeg artifacts, deformed"


# Node ids of the cache nodes in the workflows added after the first seven: the panel groups runs by node id,
# so each gets an id no other workflow's cache node has (the first seven use 3, 4, 5, 7, 8 and 9).
ID_FBC = 20
ID_DBCACHE, ID_TAYLORSEER, ID_ADAPTIVE, ID_FASTERCACHE, ID_SMOOTH_CALIBRATE, ID_SMOOTH_APPLY = 21, 22, 23, 24, 25, 26
ID_SEACACHE = 27
ID_DEEPCACHE = 28
ID_ADACACHE = 29
ID_PROMPTCACHE = 30
ID_STEP_CALIBRATE, ID_STEP_APPLY = 31, 32
ID_AUTO, ID_TUNE = 33, 34
FLUX_KSAMPLER = [0, "fixed", 28, 1.0, "euler", "simple", 1.0]  # seed, control, steps, cfg, sampler, scheduler, denoise


# --- the workflows ------------------------------------------------------------------------------------------
def _flux_inputs(wf: Workflow, text_y: int = 420) -> tuple[int, int, int, int, int]:
    """Flux.1-dev loaders, prompts (FluxGuidance 3.5 on the positive one) and a 1024x1024 latent: the ids of
    the model, VAE, guided positive, negative and latent nodes."""
    model = unet(wf, "flux1-dev.safetensors", (-40, 60))
    clip = wf.node("DualCLIPLoader", ["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", "default"],
                   (-40, 200), (320, 130), outputs=(("CLIP", CL),))
    vae = vae_loader(wf, "ae.safetensors", (-40, 380))
    pos_t = text(wf, clip, PROMPT_IMAGE, (340, text_y))
    neg_t = text(wf, clip, "", (340, text_y + 180), negative=True)
    guid = wf.node("FluxGuidance", [3.5], (780, text_y), (300, 58), inputs=(("conditioning", C),),
                   outputs=(("CONDITIONING", C),))
    wf.link(pos_t, 0, guid, "conditioning")
    latent = wf.node("EmptySD3LatentImage", [1024, 1024, 1], (780, text_y + 120), (300, 106),
                     outputs=(("LATENT", L),))
    return model, vae, guid, neg_t, latent


def flux_magcache() -> Workflow:
    wf = Workflow("flux-magcache-calibrate-apply")
    model, vae, guid, neg_t, latent = _flux_inputs(wf, text_y=700)  # the prompts below the Apply node
    # the Calibrate node grows by its curve and saved file after a run: room below it
    calib = cache_node(wf, "DitCache.MagCacheCalibrate", ["flux-dev"], model, (340, 60), size=(320, 82),
                       title="1. MagCache Calibrate (run once, then mute this branch)")
    apply_ = cache_node(wf, "DitCache.ApplyMagCache", ["preset: flux_dev", 0.12, 3, 0.2, 0.0, 1.0, "schedule"],
                        model, (340, 400), title="2. Apply MagCache (pick your calibration file)")
    s1 = ksampler(wf, calib, guid, neg_t, latent, list(FLUX_KSAMPLER), (1120, 60),
                  title="KSampler (calibration pass: full model)")
    s2 = ksampler(wf, apply_, guid, neg_t, latent, list(FLUX_KSAMPLER), (1120, 360), title="KSampler (cached)")
    decode_save(wf, s1, vae, (1480, 60), "flux-magcache-calibration")
    decode_save(wf, s2, vae, (1940, 60), "flux-magcache")
    wf.note("### Flux.1-dev with MagCache calibrated on your own model (dit-cache)\n\n"
            f"{MODEL_FILES}\n\n1. Queue once. The upper branch runs the full model through "
            "'MagCache Calibrate' and saves the measured ratios to `models/magcache/flux-dev_flux_28steps_"
            "<fingerprint>_00001.safetensors` (the node shows the folder; the curve is drawn on the node). The lower "
            "branch meanwhile uses the built-in 'preset: flux_dev' ratios (published for FLUX.1-dev, 28 steps).\n"
            "2. In 'Apply MagCache' pick your file in 'calibration' (the list is read afresh when the page "
            "reloads the node list: press R), then mute the calibration branch (select it, Ctrl+M) and queue "
            "again. Calibrate at the step count and sampler you use.\n\nthreshold: 0.12 is the low end the "
            "MagCache authors use for Flux (0.12-0.24); raise for speed. " + PANEL_HINT)
    return wf


def _flux_single(name: str, type_: str, widgets: list[Any], nid: int, size: tuple[int, int], label: str,
                 tip: str) -> Workflow:
    """Flux.1-dev text-to-image with one cache node between the loader and the KSampler."""
    wf = Workflow(name)
    # the prompts below the cache node, with room for the line the page draws on it after a run
    model, vae, guid, neg_t, latent = _flux_inputs(wf, text_y=max(420, 60 + size[1] + ON_NODE_ROOM + 40))
    cache = cache_node(wf, type_, widgets, model, (340, 60), size=size, nid=nid)
    s = ksampler(wf, cache, guid, neg_t, latent, list(FLUX_KSAMPLER), (1120, 60))
    decode_save(wf, s, vae, (1480, 60), name)
    wf.note(f"### Flux.1-dev text-to-image with Apply {label} (dit-cache)\n\n{MODEL_FILES}\n\n{tip}\n\n"
            f"{PANEL_HINT}")
    return wf


def flux_fbc() -> Workflow:
    # threshold, start_percent, end_percent, max_consecutive_skips, warmup_steps
    return _flux_single(
        "flux-firstblockcache", "DitCache.ApplyFirstBlockCache", [0.08, 0.0, 1.0, -1, 0], ID_FBC, (320, 178),
        "FirstBlockCache",
        "threshold 0.08 suits 28 steps: while the first block's output changes by less than 8 % from the last "
        "computed step, the other blocks are skipped and their last change is reused. Raise it for more speed, "
        "lower it for fidelity.")


def flux_dbcache() -> Workflow:
    # Fn, Bn, threshold, warmup_steps, max_cached_steps, max_consecutive_cached_steps, taylorseer_order,
    # start_percent, end_percent, calibrator
    return _flux_single(
        "flux-dbcache", "DitCache.ApplyDBCache", [1, 0, 0.08, 8, -1, -1, 1, 0.0, 1.0, "taylor"], ID_DBCACHE, (320, 290),
        "DBCache",
        "Fn 1, Bn 0 with taylorseer_order 1: cache-dit's fast setting for Flux. The first block always runs; "
        "while its result changes by less than threshold, the other 56 blocks are skipped and their result is "
        "predicted from the last computed steps. cache-dit's figures for Fn 1 Bn 0 on an L20: 1.59x at threshold 0.08, 2.90x at 0.2. "
        "warmup_steps 8: the first 8 of the 28 steps always compute. For fidelity first use cache-dit's "
        "defaults (the node defaults): Fn 8, Bn 0, threshold 0.08, taylorseer_order 0.")


def flux_taylorseer() -> Workflow:
    # cache_interval, warmup_steps, final_full_steps, max_order, predict, factor_dtype, forecaster, check_blocks,
    # check_threshold, uncond_interval (the node defaults)
    return _flux_single(
        "flux-taylorseer", "DitCache.ApplyTaylorSeer",
        [5, 3, 0, 1, "block outputs", "bfloat16", "taylor", 0, 0.1, 0], ID_TAYLORSEER,
        (320, 210), "TaylorSeer",
        "cache_interval 5 (diffusers' default): after 3 warm-up steps the transformer computes one step in 5 "
        "and the others are predicted (max_order 1: linear Taylor extrapolation) from the computed ones. Lower "
        "cache_interval (3-4) or set final_full_steps 1-2 for fidelity; the TaylorSeer authors ran 6 (3.53x). "
        "predict 'attention+MLP outputs' (the paper's mode) stays closer to the uncached image but needs about "
        "4 GiB per CFG stream at 1024x1024 instead of about 108 MiB. forecaster 'hermite' with warmup_steps 2 "
        "was the best measured setting on the small trained models (docs/nodes.md).")


def flux_smoothcache() -> Workflow:
    wf = Workflow("flux-smoothcache-calibrate-apply")
    model, vae, guid, neg_t, latent = _flux_inputs(wf)
    # filename_prefix, alpha
    calib = cache_node(wf, "DitCache.SmoothCacheCalibrate", ["smoothcache", 0.15], model, (1120, 60),
                       size=(320, 82), title="1. SmoothCache Calibrate (run once)", nid=ID_SMOOTH_CALIBRATE)
    # calibration (no file exists before the first run: a placeholder the user replaces), alpha (-1: the
    # schedule saved with the file)
    apply_ = cache_node(wf, "DitCache.ApplySmoothCache", ["(run group 1 once, press R, then pick its file)", -1.0],
                        model, (1120, 800), size=(320, 82), title="2. Apply SmoothCache (pick your calibration file)",
                        nid=ID_SMOOTH_APPLY)
    s1 = ksampler(wf, calib, guid, neg_t, latent, list(FLUX_KSAMPLER), (1120, 380),
                  title="KSampler (calibration pass: full model)")
    s2 = ksampler(wf, apply_, guid, neg_t, latent, list(FLUX_KSAMPLER), (1120, 960), title="KSampler (cached)")
    d1, v1 = decode_save(wf, s1, vae, (1480, 60), "flux-smoothcache-calibration")
    d2, v2 = decode_save(wf, s2, vae, (1480, 800), "flux-smoothcache")
    wf.mute(apply_, s2, d2, v2)  # nothing to apply before the first run saved a calibration
    wf.group("1. Calibrate (queue once, then mute this group)", (1100, -10, 820, 700))
    wf.group("2. Apply (muted until a calibration file exists)", (1100, 730, 820, 700))
    wf.note("### Flux.1-dev with SmoothCache calibrated on your own model (dit-cache)\n\n"
            f"{MODEL_FILES}\n\n1. Queue once. Group 1 runs the full model through "
            "'SmoothCache Calibrate', which measures how much each attention and feed-forward output changes "
            "from step to step and saves the errors with the schedule they give at alpha 0.15 to "
            "`models/magcache/smoothcache_flux_28steps_<fingerprint>_00001.safetensors` (the server log prints the "
            "schedule). Group 2 is muted (greyed out) until a file exists.\n2. Press R (reloads the node lists), "
            "pick your file in 'Apply SmoothCache' > calibration, then right-click group 1's title > 'Set Group "
            "Nodes to Never' and group 2's title > 'Set Group Nodes to Always', and queue again. Calibrate at the "
            "step count, sampler and scheduler you use.\n\nalpha -1 uses the schedule saved with the file "
            "(0.15, the SmoothCache authors' example); try 0.1 / 0.2 without recalibrating (higher = more reuse, "
            "faster). Extra memory: about 2 GiB at 1024x1024 (the last output of every attention and "
            "feed-forward module). " + PANEL_HINT)
    return wf


def flux_stepschedule() -> Workflow:
    wf = Workflow("flux-stepschedule-calibrate-apply")
    model, vae, guid, neg_t, latent = _flux_inputs(wf)
    # filename_prefix
    calib = cache_node(wf, "DitCache.StepScheduleCalibrate", ["stepschedule"], model, (1120, 60),
                       size=(320, 58), title="1. StepSchedule Calibrate (run once)", nid=ID_STEP_CALIBRATE)
    # calibration (a placeholder the user replaces), computed_steps, max_error, on_skipped, order
    apply_ = cache_node(wf, "DitCache.ApplyStepSchedule",
                        ["(run group 1 once, press R, then pick its file)", 7, 0.0, "taylor", 1],
                        model, (1120, 800), size=(320, 154), title="2. Apply StepSchedule (pick your calibration file)",
                        nid=ID_STEP_APPLY)
    s1 = ksampler(wf, calib, guid, neg_t, latent, list(FLUX_KSAMPLER), (1120, 380),
                  title="KSampler (calibration pass: full model)")
    s2 = ksampler(wf, apply_, guid, neg_t, latent, list(FLUX_KSAMPLER), (1120, 1040), title="KSampler (cached)")
    d1, v1 = decode_save(wf, s1, vae, (1480, 60), "flux-stepschedule-calibration")
    d2, v2 = decode_save(wf, s2, vae, (1480, 800), "flux-stepschedule")
    wf.mute(apply_, s2, d2, v2)  # nothing to apply before the first run saved a calibration
    wf.group("1. Calibrate (queue once, then mute this group)", (1100, -10, 820, 700))
    wf.group("2. Apply (muted until a calibration file exists)", (1100, 730, 820, 700))
    wf.note("### Flux.1-dev with a step schedule optimised on your own model (dit-cache)\n\n"
            f"{MODEL_FILES}\n\n1. Queue once. Group 1 runs the full model through "
            "'StepSchedule Calibrate', which keeps a small reduced copy of the transformer's output at every step "
            "and saves it to `models/magcache/stepschedule_flux_28steps_<fingerprint>_00001.safetensors`. Group 2 "
            "is muted (greyed out) until a file exists.\n2. Press R (reloads the node lists), pick your file in "
            "'Apply StepSchedule' > calibration, then right-click group 1's title > 'Set Group Nodes to Never' "
            "and group 2's title > 'Set Group Nodes to Always', and queue again.\n\ncomputed_steps 7: the 7 of "
            "the 28 steps that keep the accumulated error smallest compute (chosen by dynamic programming over the "
            "calibration's errors, shown on the node and in the log); the others are forecast from the last two "
            "computed steps (linear Taylor extrapolation). Fewer steps = faster; or set max_error (e.g. 0.05) "
            "to let the node choose the count. " + PANEL_HINT)
    return wf


def _wan_loaders(wf: Workflow) -> tuple[int, int]:
    clip = clip_loader(wf, "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan", (-40, 200))
    vae = vae_loader(wf, "wan_2.1_vae.safetensors", (-40, 360))
    return clip, vae


WAN21_METHODS = ("teacache", "magcache", "adaptivecache", "fastercache", "seacache", "adacache")


def wan21(method: str) -> Workflow:
    wf = Workflow(f"wan21-t2v-{method}")
    model = unet(wf, "wan2.1_t2v_1.3B_fp16.safetensors", (-40, 60))
    clip, vae = _wan_loaders(wf)
    shifted = model_sampling(wf, "ModelSamplingSD3", 8.0, model, (340, 60))
    text_y = 420
    if method == "teacache":
        label = "TeaCache"
        # rel_l1_threshold, coefficients, start_percent, end_percent, max_consecutive_skips
        cache = cache_node(wf, "DitCache.ApplyTeaCache", [0.08, "auto", 0.0, 1.0, -1], shifted, (340, 160))
        tip = ("Apply TeaCache on Wan reads the first block's modulation input (e0) without a published "
               "rescaling polynomial ('auto' = raw): start rel_l1_threshold near 0.05-0.1, raise it for speed.")
    elif method == "magcache":
        label = "MagCache"
        cache = cache_node(wf, "DitCache.ApplyMagCache",
                           ["preset: wan21_t2v_1.3b", 0.1, 3, 0.2, 0.0, 1.0, "schedule"], shifted, (340, 160))
        tip = ("Apply MagCache uses 'preset: wan21_t2v_1.3b' (ratios published by the MagCache authors for "
               "Wan 2.1 T2V 1.3B, 50 steps, cond+uncond; other step counts are interpolated). For the 14B model "
               "pick 'preset: wan21_t2v_14b', or calibrate your own with 'MagCache Calibrate' (see the Flux "
               "MagCache workflow). threshold: higher = faster.")
    elif method == "adaptivecache":
        label = "AdaptiveCache"
        # threshold, start_percent, end_percent, max_consecutive_skips, warmup_steps (the node defaults)
        cache = cache_node(wf, "DitCache.ApplyAdaptiveCache", [0.2, 0.15, 1.0, -1, 0], shifted, (340, 160),
                           nid=ID_ADAPTIVE)
        tip = ("Apply AdaptiveCache (EasyCache-style) skips the whole transformer while the change of its "
               "result, estimated from the change of its input, adds up to less than threshold (per CFG stream); "
               "the last step always computes. threshold 0.2 is the node default (= ComfyUI's EasyCache "
               "default): 0.1 careful, 0.3-0.4 fast. start_percent 0.15: the first 15 % of the schedule always "
               "computes. The EasyCache paper reports 2.54x on Wan 2.1 T2V 1.3B (with its own signal).")
    elif method == "fastercache":
        label = "FasterCache"
        # spatial_skip, temporal_skip, attention window, attention_weight, uncond_skip, uncond window,
        # alpha_low, alpha_high, low_freq window, high_freq window: the node defaults (diffusers' but uncond_skip 3)
        cache = cache_node(wf, "DitCache.ApplyFasterCache",
                           [2, 0, 0.319, 1.0, 0.5, 3, 0.359, 1.0, 1.1, 1.1, 0.099, 0.901, 0.699, 1.0], shifted,
                           (340, 160), size=(340, 390), nid=ID_FASTERCACHE)
        tip = ("Apply FasterCache with its defaults: from 36 % of the schedule on, the negative-prompt "
               "branch runs every 3rd step (uncond_skip) and is rebuilt from the positive one in between (this "
               "part needs CFG > 1: here 6); from 32 % on, self-attention is computed every 2nd call "
               "(spatial_skip) and extrapolated in between, in calls without a negative-prompt branch. Higher "
               "uncond_skip / spatial_skip = faster.")
    elif method == "seacache":
        label = "SeaCache"
        # threshold, residual_order, retention_steps, cache_end_steps, max_consecutive_cached, power_exp,
        # start_percent, end_percent: diffusers' SeaCacheConfig defaults (the node defaults)
        cache = cache_node(wf, "DitCache.ApplySeaCache", [0.25, 1, 1, 1, 2, 3.0, 0.0, 1.0], shifted, (340, 160),
                           size=(340, 270), nid=ID_SEACACHE)
        tip = ("Apply SeaCache with diffusers' defaults: each step the noisy latent is filtered with a "
               "noise-level-aware spectral filter, and the whole transformer is skipped while the filtered "
               "latent's accumulated relative change stays under threshold 0.25 (higher = faster); a skipped step "
               "extrapolates the last two computed residuals (residual_order 1). The first and last step always "
               "compute, and at most 2 steps in a row are skipped.")
    elif method == "adacache":
        label = "AdaCache"
        # codebook, threshold_scale, motion_regularization, block, start_percent, end_percent,
        # max_consecutive_skips, warmup_steps (the node defaults: the AdaCache authors' 30-step "slow" codebook)
        cache = cache_node(wf, "DitCache.ApplyAdaCache",
                           ["0.08:3, 0.16:2, 0.24:1, 0.32:1, 0.40:1, 1.00:1", 1.0, True, -1, 0.0, 1.0, -1, 0],
                           shifted, (340, 160), size=(340, 290), nid=ID_ADACACHE)
        tip = ("Apply AdaCache (content-adaptive caching, Kahatapitiya et al. 2024): after each computed step the "
               "change of the middle block's residual picks, from the codebook, how many steps reuse the cache "
               "(threshold:rate; the default is the authors' 30-step 'slow' codebook). motion_regularization lowers "
               "the rate for videos with more motion. threshold_scale above 1 = faster; the authors' 'fast' "
               "codebook 0.08:6, 0.16:5, 0.24:4, 0.32:3, 0.40:2, 1.00:1 skips more. Not the "
               "EasyCache-style Apply AdaptiveCache.")
    else:
        raise ValueError(f"no Wan 2.1 workflow for {method!r}")
    # the prompts below the cache node, with room for the line the page draws on it after a run
    text_y = max(text_y, 160 + wf.size_of(cache)[1] + ON_NODE_ROOM + 40)
    pos_t = text(wf, clip, PROMPT_VIDEO, (340, text_y))
    neg_t = text(wf, clip, NEG_WAN, (340, text_y + 180), negative=True)
    latent = wf.node("EmptyHunyuanLatentVideo", [832, 480, 33, 1], (780, text_y), (300, 130),
                     outputs=(("LATENT", L),))
    s = ksampler(wf, cache, pos_t, neg_t, latent, [0, "fixed", 30, 6.0, "uni_pc", "simple", 1.0], (1120, 60))
    decode_save(wf, s, vae, (1480, 60), f"wan21-{method}", video_fps=16.0)
    wf.note(f"### Wan 2.1 text-to-video (1.3B) with Apply {label} (dit-cache)\n\n{MODEL_FILES}\n\n{tip}\n\n"
            f"{PANEL_HINT}")
    return wf


def wan22() -> Workflow:
    wf = Workflow("wan22-t2v-high-low")
    high = unet(wf, "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", (-40, 60), "Load Diffusion Model (high noise)")
    low = unet(wf, "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", (-40, 200), "Load Diffusion Model (low noise)")
    clip = clip_loader(wf, "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan", (-40, 340))
    vae = vae_loader(wf, "wan_2.1_vae.safetensors", (-40, 500))
    hs = model_sampling(wf, "ModelSamplingSD3", 8.0, high, (340, 60))
    ls = model_sampling(wf, "ModelSamplingSD3", 8.0, low, (340, 200))
    # threshold, start_percent, end_percent, max_consecutive_skips, warmup_steps
    hc = cache_node(wf, "DitCache.ApplyFirstBlockCache", [0.1, 0.0, 1.0, -1, 0], hs, (680, 60),
                    title="Apply FirstBlockCache (high noise)")
    lc = cache_node(wf, "DitCache.ApplyFirstBlockCache", [0.1, 0.0, 1.0, -1, 0], ls, (680, 340),
                    title="Apply FirstBlockCache (low noise)")
    pos_t = text(wf, clip, PROMPT_VIDEO, (340, 620))
    neg_t = text(wf, clip, NEG_WAN, (340, 800), negative=True)
    latent = wf.node("EmptyHunyuanLatentVideo", [640, 640, 81, 1], (780, 620), (300, 130), outputs=(("LATENT", L),))
    adv = (("model", M), ("positive", C), ("negative", C), ("latent_image", L))
    # add_noise, noise_seed, control, steps, cfg, sampler, scheduler, start_at_step, end_at_step, leftover noise
    s1 = wf.node("KSamplerAdvanced", ["enable", 0, "fixed", 20, 3.5, "euler", "simple", 0, 10, "enable"],
                 (1040, 60), (320, 334), inputs=adv, outputs=(("LATENT", L),), title="KSampler (high noise, steps 0-10)")
    s2 = wf.node("KSamplerAdvanced", ["disable", 0, "fixed", 20, 3.5, "euler", "simple", 10, 10000, "disable"],
                 (1400, 60), (320, 334), inputs=adv, outputs=(("LATENT", L),), title="KSampler (low noise, steps 10-20)")
    for s, m, lat in ((s1, hc, latent), (s2, lc, s1)):
        wf.link(m, 0, s, "model")
        wf.link(pos_t, 0, s, "positive")
        wf.link(neg_t, 0, s, "negative")
        wf.link(lat, 0, s, "latent_image")
    decode_save(wf, s2, vae, (1760, 60), "wan22-fbc", video_fps=16.0)
    wf.note("### Wan 2.2 A14B text-to-video, two experts (dit-cache)\n\nThe high-noise expert samples the first "
            "half of the steps, the low-noise expert the rest, each with its own Apply FirstBlockCache (each model "
            f"keeps its own cache state; one cache node per model).\n\n{MODEL_FILES}\n\nthreshold 0.1 is the "
            "usual starting point for video DiTs; with only 10 steps per expert, lower it (0.05-0.08) if motion "
            "degrades. MagCache works here too: calibrate each expert separately (two files).\n\n" + PANEL_HINT)
    return wf


def qwen_image() -> Workflow:
    wf = Workflow("qwen-image-magcache")
    model = unet(wf, "qwen_image_fp8_e4m3fn.safetensors", (-40, 60))
    clip = clip_loader(wf, "qwen_2.5_vl_7b_fp8_scaled.safetensors", "qwen_image", (-40, 200))
    vae = vae_loader(wf, "qwen_image_vae.safetensors", (-40, 360))
    shifted = model_sampling(wf, "ModelSamplingAuraFlow", 3.1, model, (340, 60))
    cache = cache_node(wf, "DitCache.ApplyMagCache", ["preset: qwen_image", 0.1, 3, 0.2, 0.0, 1.0, "schedule"],
                       shifted, (340, 160))
    pos_t = text(wf, clip, "a cosy bookshop window at dusk with a hand-painted sign that reads \"DiT Cache\"",
                 (340, 420))
    neg_t = text(wf, clip, "", (340, 600), negative=True)
    latent = wf.node("EmptySD3LatentImage", [1328, 1328, 1], (780, 420), (300, 106), outputs=(("LATENT", L),))
    s = ksampler(wf, cache, pos_t, neg_t, latent, [0, "fixed", 20, 2.5, "euler", "simple", 1.0], (1120, 60))
    decode_save(wf, s, vae, (1480, 60), "qwen-image-magcache")
    wf.note(f"### Qwen-Image text-to-image with Apply MagCache (dit-cache)\n\n{MODEL_FILES}\n\n'preset: "
            "qwen_image' holds the MagCache authors' ratios (50 steps; other step counts are interpolated). For the "
            "best match, calibrate your model with 'MagCache Calibrate' at your step count.\n\n" + PANEL_HINT)
    return wf


def ltxv_pab() -> Workflow:
    wf = Workflow("ltxv-t2v-pab")
    ckpt = wf.node("CheckpointLoaderSimple", ["ltx-video-2b-v0.9.5.safetensors"], (-40, 60), (320, 98),
                   outputs=(("MODEL", M), ("CLIP", CL), ("VAE", V)))
    clip = clip_loader(wf, "t5xxl_fp16.safetensors", "ltxv", (-40, 220))
    # spatial_skip, temporal_skip, cross_skip, then start/end percent of each (the window where broadcasting
    # is allowed: 0.2-0.9 of the schedule, diffusers' PyramidAttentionBroadcastConfig timestep range (100, 800)
    # read as schedule percent)
    pab = cache_node(wf, "DitCache.PABConfig", [2, 0, 6, 0.2, 0.9, 0.2, 0.9, 0.2, 0.9], ckpt, (340, 60),
                     size=(320, 300))
    pos_t = text(wf, clip, PROMPT_VIDEO, (340, 420))
    neg_t = text(wf, clip, "worst quality, inconsistent motion, blurry, jittery, distorted", (340, 600),
                 negative=True)
    cond = wf.node("LTXVConditioning", [25.0], (780, 420), (300, 78),
                   inputs=(("positive", C), ("negative", C)), outputs=(("positive", C), ("negative", C)))
    wf.link(pos_t, 0, cond, "positive")
    wf.link(neg_t, 0, cond, "negative")
    latent = wf.node("EmptyLTXVLatentVideo", [768, 512, 97, 1], (780, 560), (300, 130), outputs=(("LATENT", L),))
    s = ksampler(wf, pab, cond, cond, latent, [0, "fixed", 30, 3.0, "euler", "simple", 1.0], (1120, 60),
                 neg_slot=1)
    decode_save(wf, s, ckpt, (1480, 60), "ltxv-pab", video_fps=24.0, vae_slot=2)  # the checkpoint's VAE
    wf.note("### LTX-Video text-to-video with PAB Config (dit-cache)\n\nPyramid Attention Broadcast: attention "
            "outputs are reused for a few steps in the middle of sampling, spatial self-attention every "
            "spatial_skip steps, cross-attention every cross_skip steps (temporal_skip 0: off; LTXV has no "
            f"separate temporal attention).\n\n{MODEL_FILES}\n\nStarting values 2 / 6 follow the PAB authors' "
            "spatial/cross ranges.\n\n" + PANEL_HINT)
    return wf


def sd15_deepcache() -> Workflow:
    wf = Workflow("sd15-deepcache")
    ckpt = wf.node("CheckpointLoaderSimple", ["v1-5-pruned-emaonly-fp16.safetensors"], (-40, 60), (320, 98),
                   outputs=(("MODEL", M), ("CLIP", CL), ("VAE", V)))
    # interval, branch_depth, start_percent, end_percent, warmup_steps: the paper's SD1.5 setting (N 3, depth 1)
    cache = cache_node(wf, "DitCache.ApplyDeepCache", [3, 1, 0.0, 1.0, 0], ckpt, (340, 60), size=(320, 180),
                       nid=ID_DEEPCACHE)
    pos_t = text(wf, ckpt, PROMPT_IMAGE, (340, 300), clip_slot=1)  # the checkpoint's CLIP
    neg_t = text(wf, ckpt, "blurry, low quality, deformed, watermark", (340, 480), negative=True, clip_slot=1)
    latent = wf.node("EmptyLatentImage", [512, 512, 1], (780, 380), (300, 106), outputs=(("LATENT", L),))
    s = ksampler(wf, cache, pos_t, neg_t, latent, [0, "fixed", 25, 7.0, "euler", "normal", 1.0], (780, 60))
    decode_save(wf, s, ckpt, (1140, 60), "sd15-deepcache", vae_slot=2)  # the checkpoint's VAE
    wf.note("### Stable Diffusion 1.5 text-to-image with Apply DeepCache (dit-cache)\n\nThe full UNet runs on "
            "one step in every 3; in between only the shallow branch runs and the deep feature is reused (the "
            "DeepCache paper's SD1.5 setting, 2.3x reported). branch_depth 1 is the fastest; raise it, or lower "
            "interval to 2, for fidelity. Works the same on SD2 and SDXL checkpoints.\n\n"
            f"{MODEL_FILES}\n\n" + PANEL_HINT)
    return wf


def flux_promptcache() -> Workflow:
    # threshold, max_skip, levels, max_entries, max_mb, same_seed, disk (the node defaults)
    return _flux_single(
        "flux-promptcache", "DitCache.ApplyPromptCache", [0.95, 0.5, 5, 64, 1024.0, False, False], ID_PROMPTCACHE,
        (320, 250), "PromptCache",
        "Reuse across prompts (Nirvana, NSDI 2024): every finished generation leaves its latents at 5 steps "
        "(up to half the schedule) in a cache; queue again with the prompt edited slightly, or another seed, and "
        "the run starts from the most similar cached generation, skipping up to half the steps (more similar: "
        "more steps skipped). A hit reuses the cached generation's noise (seed) unless same_seed is on. A "
        "changed model, LoRA, size, batch, sampler, steps or negative prompt never hits. disk keeps the entries "
        "in models/dit_cache_prompt_cache across restarts. Same prompt and seed: ComfyUI itself reuses the "
        "result without sampling.")


def flux_start_here() -> Workflow:
    """The README's two-minute start: one node, one choice."""
    return _flux_single(
        "flux-start-here", "DitCache.ApplyAuto", ["balanced"], ID_AUTO, (320, 58), "'Cache (DiT, start here)'",
        "Queue. choice: fast / balanced / high quality. The node uses a 'DiT Cache Tune' file of this model when "
        "one is in `models/magcache` (see flux-tune.json), else the setting measured best for Flux (balanced: "
        "TeaCache 0.6). The server log and the panel say what it chose and why.")


def flux_tune() -> Workflow:
    """DiT Cache Tune on a small latent, its tuned model sampled at full size."""
    wf = Workflow("flux-tune")
    model, vae, guid, neg_t, latent = _flux_inputs(wf, text_y=60 + 400 + ON_NODE_ROOM + 40)
    small = wf.node("EmptySD3LatentImage", [512, 512, 1], (780, 60 + 400 + ON_NODE_ROOM + 300), (300, 106),
                    outputs=(("LATENT", L),), title="Tuning latent (small: faster to tune)")
    # seed, control ("fixed": the same seeds each queue), steps, cfg, sampler, scheduler, denoise, metric, target,
    # seeds, methods, filename_prefix
    tuner = wf.node("DitCache.Tune", [0, "fixed", 28, 1.0, "euler", "simple", 1.0, "PSNR", 30.0, 1,
                                      "teacache, taylorseer, fbc", "tune"],
                    (340, 60), (340, 400),
                    inputs=(("model", M), ("positive", C), ("negative", C), ("latent_image", L)),
                    outputs=(("MODEL", M),), nid=ID_TUNE)
    wf.link(model, 0, tuner, "model")
    wf.link(guid, 0, tuner, "positive")
    wf.link(neg_t, 0, tuner, "negative")
    wf.link(small, 0, tuner, "latent_image")
    s = ksampler(wf, tuner, guid, neg_t, latent, list(FLUX_KSAMPLER), (1120, 60), title="KSampler (tuned)")
    decode_save(wf, s, vae, (1480, 60), "flux-tune")
    wf.note("### Flux.1-dev: tune the cache to a quality target once (dit-cache)\n\n"
            f"{MODEL_FILES}\n\nQueue once. 'DiT Cache Tune' samples the uncached model, then bisects TeaCache's "
            "threshold, TaylorSeer's interval and First Block Cache's threshold for the fastest setting whose result "
            "stays within PSNR 30 dB (+1 dB margin) of the uncached one, draws the curve it measured on the node, "
            "saves the winner to `models/magcache/tune_flux_28steps_<fingerprint>_00001.json` and feeds the "
            "KSampler the model with it. It takes about 20 samplings of the small latent (more seeds or methods: "
            "longer; connect the VAE to judge the decoded image). Afterwards 'Cache (DiT, start here)' uses the "
            "file for this model (flux-start-here.json). " + PANEL_HINT)
    return wf


WORKFLOWS = (flux_fbc, flux_magcache, *(lambda m=m: wan21(m) for m in WAN21_METHODS), wan22, qwen_image, ltxv_pab,
             flux_dbcache, flux_taylorseer, flux_smoothcache, sd15_deepcache, flux_promptcache, flux_stepschedule,
             flux_start_here, flux_tune)


def outputs(wf: Workflow) -> dict[Path, bytes]:
    """The files one workflow writes: its JSON and its thumbnail."""
    data = wf.to_json()
    return {OUT / f"{wf.name}.json": (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode("utf-8"),
            OUT / f"{wf.name}.jpg": workflow_thumbnail.draw(data, wf.name)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    stale = []
    for make in WORKFLOWS:
        try:
            files = outputs(make())
        except workflow_models.UnknownModelFile as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for path, data in files.items():
            if args.check:
                if not path.exists() or path.read_bytes() != data:
                    stale.append(path.name)
            else:
                path.write_bytes(data)
                print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)} (run scripts/make_workflows.py)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
