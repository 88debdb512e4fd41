"""ComfyUI glue: patch a cloned ModelPatcher so its DiT blocks go through the shared cache core.

Only ComfyUI's public extension points are used: ``ModelPatcher.clone``, keyed wrappers
(OUTER_SAMPLE for the run's life, DIFFUSION_MODEL for each model call) and ``patches_replace["dit"]`` block
replacements. A replacement that another pack set earlier on the same block is kept and called inside ours.
Per-run state lives in a copy of the guider's model options made for that run, so two clones, two samplers or
an interrupted run never share or leave state behind.
"""
from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Callable

import comfy.model_patcher
from comfy.patcher_extension import WrappersMP

from ..cache_core.config import SigmaWindow
from ..cache_core.layout import COMFY_LAYOUTS, BlockLayout, layout_for_module
from ..cache_core.policy import Policy
from ..cache_core.runner import BlockCacheRunner, CallInfo
from ..cache_core.stats import RunStats
from . import run_log

log = logging.getLogger("dit_cache")

SPEC_KEY = "dit_cache"  # transformer_options entry holding the CacheSpec of a patched model
RUN_KEY = "dit_cache_run"  # transformer_options entry holding the current run's BlockCacheRunner
WRAPPER_KEY = "dit_cache"


class CacheSpec:
    """What a cache node attached to a model: the method's policy and the model's block layout."""

    def __init__(self, policy: Policy, layout: BlockLayout, block_counts: list[int], model_name: str,
                 node_label: str) -> None:
        self.policy = policy
        self.layout = layout
        self.block_counts = block_counts
        self.model_name = model_name
        self.node_label = node_label
        self.id = uuid.uuid4().hex[:8]


def diffusion_model_of(model: Any) -> Any:
    return model.get_model_object("diffusion_model")


def apply_cache(model: Any, policy: Policy, node_label: str) -> Any:
    """A clone of ``model`` whose blocks run through ``policy``; ``model`` itself is left untouched.

    An unsupported model logs a warning and is returned unchanged. A model that already carries a dit-cache
    method raises ValueError (before sampling): two block caches on one model cannot both decide.
    """
    dm = diffusion_model_of(model)
    layout = layout_for_module(dm, COMFY_LAYOUTS)
    if layout is None:
        log.warning("[dit-cache] %s: %s is not a supported DiT model; the model is left unchanged",
                    node_label, type(dm).__name__)
        return model
    existing = model.model_options.get("transformer_options", {}).get(SPEC_KEY)
    if existing is not None:
        raise ValueError(
            f"{node_label}: this model already has {existing.policy.name} from '{existing.node_label}' applied. "
            f"Use one dit-cache node per model (remove one of them, or feed this node the model before the other)."
        )
    if layout.mechanism != "patches_replace":
        log.warning("[dit-cache] %s: %s needs %s patching, not available yet; model left unchanged",
                    node_label, type(dm).__name__, layout.mechanism)
        return model
    counts = [len(getattr(dm, seg.attr)) for seg in layout.segments]
    m = model.clone()
    spec = CacheSpec(policy, layout, counts, type(dm).__name__, node_label)
    m.model_options.setdefault("transformer_options", {})[SPEC_KEY] = spec
    existing_replace = m.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
    for s, seg in enumerate(layout.segments):
        for i in range(counts[s]):
            prev = existing_replace.get((seg.kind, i))
            m.set_model_patch_replace(_block_patch(s, i, seg.outputs, prev), "dit", seg.kind, i)
    m.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, _outer_sample_wrapper)
    m.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, _diffusion_model_wrapper)
    return m


def _block_patch(segment: int, index: int, outputs: tuple[str, ...], prev: Callable | None) -> Callable:
    def patch(args: dict, extra: dict) -> dict:
        original = extra["original_block"]

        def run(streams: dict) -> dict:
            a = dict(args)
            a.update(streams)
            if prev is not None:
                return prev(a, {"original_block": original})
            return original(a)

        runner: BlockCacheRunner | None = (args.get("transformer_options") or {}).get(RUN_KEY)
        if runner is None:
            return run({})
        return runner.block(segment, index, {k: args[k] for k in outputs}, run)

    return patch


def _sigma_window(spec: CacheSpec, model_sampling: Any) -> SigmaWindow:
    w = spec.policy.gate.window
    return SigmaWindow(float(model_sampling.percent_to_sigma(w.start_percent)),
                       float(model_sampling.percent_to_sigma(w.end_percent)))


def _outer_sample_wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
    guider = executor.class_obj
    orig_options = guider.model_options
    guider.model_options = comfy.model_patcher.create_model_options_clone(orig_options)
    t_opts = guider.model_options["transformer_options"]
    spec: CacheSpec = t_opts[SPEC_KEY]
    stats = RunStats(method=spec.policy.name, settings=spec.policy.settings(), model=spec.model_name)
    runner = BlockCacheRunner(spec.layout, spec.block_counts, spec.policy, stats,
                              _sigma_window(spec, guider.model_patcher.get_model_object("model_sampling")))
    t_opts[RUN_KEY] = runner
    t0 = time.perf_counter()
    ok = False
    try:
        out = executor(*args, **kwargs)
        ok = True
        return out
    finally:
        guider.model_options = orig_options
        run = stats.to_dict()
        run.update(node=spec.node_label, spec_id=spec.id, completed=ok, run_wall_s=time.perf_counter() - t0)
        run_log.record(run)
        log.info("[dit-cache] %s%s", stats.summary(), "" if ok else " (run interrupted)")


def _stream_labels(t_opts: dict, n_chunks: int) -> list[tuple[Any, str]]:
    cond_or_uncond = list(t_opts.get("cond_or_uncond") or [0] * n_chunks)
    uuids = list(t_opts.get("uuids") or [None] * len(cond_or_uncond))
    seen: dict[str, int] = {}
    streams = []
    for j, (cu, uid) in enumerate(zip(cond_or_uncond, uuids)):
        base = "uncond" if cu == 1 else "cond"
        seen[base] = seen.get(base, 0) + 1
        label = base if seen[base] == 1 else f"{base}{seen[base]}"
        streams.append((uid if uid is not None else (cu, j), label))
    return streams


def _diffusion_model_wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
    t_opts = kwargs.get("transformer_options")
    if t_opts is None:
        t_opts = args[-1] if args and isinstance(args[-1], dict) else {}
    runner: BlockCacheRunner | None = t_opts.get(RUN_KEY)
    if runner is None:
        return executor(*args, **kwargs)
    sigmas = t_opts.get("sigmas")
    sigma = float(sigmas.reshape(-1)[0]) if sigmas is not None else None
    n_chunks = len(t_opts.get("cond_or_uncond") or [0])
    runner.begin_call(CallInfo(_stream_labels(t_opts, n_chunks), sigma))
    t0 = time.perf_counter()
    try:
        out = executor(*args, **kwargs)
    except BaseException:
        runner.abort_call()
        raise
    runner.end_call(time.perf_counter() - t0)
    return out
