"""Shared set-up for the demo and the benchmark: the host ComfyUI, the pack and timed KSampler runs.

The benchmark reaches the pack's nodes by ComfyUI node id (``bench/sweep.py`` ``node_classes``); it reads the
ComfyUI host's run log and feed-forward walk and the block layouts directly.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "support"))

import comfy_env  # noqa: E402

# A bench script sets ComfyUI up here; a process that loaded the pack already (the tests, whose conftest set
# ComfyUI up) keeps its own set-up and logging level.
_HOSTED = "dit_cache" in sys.modules
if not _HOSTED:
    # DITCACHE_BENCH_DEVICE=gpu (set by bench/sweep.py --device) lets ComfyUI use the GPU; the default is CPU.
    comfy_env.setup_comfy(cpu=os.environ.get("DITCACHE_BENCH_DEVICE", "cpu") == "cpu")
PACK = comfy_env.load_pack()
if not _HOSTED:
    logging.getLogger().setLevel(logging.WARNING)  # keep ComfyUI's per-run model-loading lines out of the table

import torch  # noqa: E402

import tiny_models  # noqa: E402,F401  (re-exported for the scripts)
from metrics import psnr  # noqa: E402
from sampling import ksample  # noqa: E402

run_log = PACK.hosts.comfy.run_log


@dataclass
class Result:
    label: str
    wall_s: float
    calls: int
    skipped: int
    latent: torch.Tensor

    @property
    def computed(self) -> int:
        return self.calls - self.skipped


def timed(label: str, model: Any, tiny: Any, steps: int, cfg: float, patched: bool) -> Result:
    """One KSampler run; wall time of the whole sample call. Counts come from the pack's run log."""
    run_log.clear()
    t0 = time.perf_counter()
    out = ksample(model, tiny, steps=steps, cfg=cfg)
    wall = time.perf_counter() - t0
    run = run_log.last() if patched else None
    calls = run["calls"] if run else steps
    skipped = run["skipped_calls"] if run else 0
    return Result(label, wall, calls, skipped, out)


def measure(configs: list[tuple[str, Any, bool]], tiny: Any, steps: int, cfg: float, repeats: int) -> list[Result]:
    """Time every (label, model, patched) config ``repeats`` times, interleaved so that load from elsewhere
    on the machine hits all of them alike; each keeps its fastest run. Runs are deterministic, so the
    latents and counts of all repeats are the same."""
    best: dict[str, Result] = {}
    for _ in range(repeats):
        for label, model, patched in configs:
            r = timed(label, model, tiny, steps, cfg, patched)
            if label not in best or r.wall_s < best[label].wall_s:
                best[label] = r
    return [best[label] for label, _, _ in configs]


def row(r: Result, ref: Result) -> str:
    q = psnr(r.latent, ref.latent)
    q_s = "identical" if q == float("inf") else f"{q:6.2f} dB"
    return (f"{r.label:<34} {r.wall_s:8.2f}s  computed {r.computed:3d}/{r.calls:<3d} skipped {r.skipped:3d}  "
            f"speedup {ref.wall_s / r.wall_s:5.2f}x  ideal {r.calls / max(r.computed, 1):5.2f}x  PSNR {q_s}")


def component_shares(model: Any, tiny: Any, cfg: float, steps: int = 2) -> dict[str, float]:
    """Share of an uncached run's wall time spent in attention cores (timed through ComfyUI's attention
    override) and in the feed-forward modules the layout names (forward hooks), on a clone of ``model``. One
    untimed step first: the first run of a process also loads the model, which is no part of a step."""
    ksample(model, tiny, steps=1, cfg=cfg)
    spent = {"attention": 0.0, "ffn": 0.0}
    started: list[float] = []

    def attention(func, *args, **kwargs):
        t0 = time.perf_counter()
        out = func(*args, **kwargs)
        spent["attention"] += time.perf_counter() - t0
        return out

    m = model.clone()
    m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = attention
    layouts = PACK.cache_core.layout
    layout = layouts.layout_for_module(m.get_model_object("diffusion_model"), layouts.COMFY_LAYOUTS)
    handles = []
    for _, _, module in PACK.hosts.comfy.patch.feed_forward_modules(m, layout):
        handles.append(module.register_forward_pre_hook(lambda *_: started.append(time.perf_counter())))
        handles.append(module.register_forward_hook(
            lambda *_: spent.__setitem__("ffn", spent["ffn"] + time.perf_counter() - started.pop())))
    try:
        t0 = time.perf_counter()
        ksample(m, tiny, steps=steps, cfg=cfg)
        total = time.perf_counter() - t0
    finally:
        for h in handles:
            h.remove()
    return {k: v / total for k, v in spent.items()}


def weighted_ideal(run: dict, shares: dict[str, float], streams: int = 1) -> float:
    """Cost-weighted ideal speedup of a dit-cache run (its run-log record): the uncached work over what was still
    computed. Skipped model calls count whole; of the ``streams`` CFG passes per call (2 with CFG, batched in one
    call by ComfyUI), each unconditional pass rebuilt instead of run (FasterCache) counts as one pass; inside
    what ran, each reused attention / feed-forward computation counts at its measured share of an uncached run
    (:func:`component_shares`; attention kinds share one figure). Block-skipping methods get calls / computed."""
    calls = run.get("calls", 0)
    left = (calls - run.get("skipped_calls", 0)) / calls if calls else 1.0
    rebuilt = run.get("reuse", {}).get("uncond", [0, 0])[0]
    if calls and streams > 1:
        left *= 1.0 - rebuilt / (calls * streams)
    by_kind = run.get("reuse_by_kind", {})
    saved = 0.0
    for part, kinds in (("attention", ("spatial", "temporal", "cross")), ("ffn", ("ffn",))):
        reused = sum(by_kind.get(k, [0, 0])[0] for k in kinds)
        total = sum(by_kind.get(k, [0, 0])[1] for k in kinds)
        if total:
            saved += shares[part] * reused / total
    return 1.0 / max(left * (1.0 - saved), 1e-9)
