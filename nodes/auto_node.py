"""The "Cache (DiT, start here)" node: one choice (fast / balanced / high quality) -> a method and its setting.

Uses a DiT Cache Tune file of this model when one exists (same family, block shapes and weights fingerprint;
files whose steps / sampler / scheduler / CFG match the KSampler it feeds come first, then the newest): the
fastest point of the file's measured curve that meets the level's target plus the file's margin on the worst
tuning seed. Otherwise the family's measured recommendation (``cache_core/methods/auto.py``). The chosen
method's own node builds its config and policy; the run records say what was chosen and why
(``chosen_because``), and so does the log.
"""
from __future__ import annotations

import logging
from typing import Any

from comfy_api.latest import io

from ..cache_core import tune
from ..cache_core.methods.auto import DEFAULT_LEVEL, LEVELS, SSIM_LEVELS, recommendation
from ..cache_core.text import plain, shown
from ..hosts.comfy.patch import apply_cache
from . import calibration_store
from .base import CacheNode
from .method_apply import build, node_class, node_inputs

log = logging.getLogger("dit_cache")


def sampler_fed(prompt: dict | None, node_id: str | None) -> dict[str, Any]:
    """steps / cfg / sampler_name / scheduler of the one KSampler whose model input is this node (through the
    hidden PROMPT input; {} when there is none or several disagree)."""
    if not prompt or node_id is None:
        return {}
    found = []
    for node in prompt.values():
        inputs = node.get("inputs", {}) if isinstance(node, dict) else {}
        link = inputs.get("model")
        if isinstance(link, list) and link and str(link[0]) == str(node_id) and "sampler_name" in inputs:
            found.append({k: inputs.get(k) for k in ("steps", "cfg", "sampler_name", "scheduler")})
    return found[0] if len(found) == 1 else {}


def _matches(tf: tune.TuneFile, run: dict[str, Any]) -> bool:
    return bool(run) and (tf.steps, tf.sampler, tf.scheduler) == (run.get("steps"), run.get("sampler_name"),
                                                                  run.get("scheduler")) and tf.cfg == run.get("cfg")


def from_tune_files(ident: Any, level: str, run: dict[str, Any]) -> tuple[str, dict[str, Any], str] | int:
    """(method, inputs, why) from this model's tune files, or how many of them there are (none meets ``level``).
    Unreadable files are skipped (logged)."""
    mine = []
    for path in calibration_store.tune_files():
        try:
            tf = tune.read(path)
        except ValueError as e:
            log.warning("[dit-cache] start here: skipped %s", plain(str(e), 200))
            continue
        if (tf.family, tf.block_hash, tf.weights_hint) == (ident.layout.family, ident.block_hash,
                                                           ident.weights_hint):
            mine.append(tf)
    mine.sort(key=lambda tf: not _matches(tf, run))  # stable: newest first within each group
    for tf in mine:
        target = (LEVELS if tf.metric == "PSNR" else SSIM_LEVELS)[level]
        best = tune.best_at(tf, target)
        if best is None:
            continue
        method, value, (_, speedup, quality) = best
        settings = (f"{tf.steps} steps {tf.sampler}/{tf.scheduler} cfg {tf.cfg:g}"
                    + ("" if _matches(tf, run) else " (not this KSampler's settings)" if run else ""))
        why = (f"tune file {plain(tf.name, 120)} ({settings}): the fastest measured point meeting {level} "
               f"({tf.metric} {target:g} + {tf.margin:g} on the worst tuning seed): {method} "
               f"{tf.knobs[method]['input']}={value:g}, {speedup:.2f}x block speedup at {quality:.3g}")
        return method, tune.point_inputs(tf, method, value), why
    return len(mine)


class ApplyAuto(CacheNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.schema(
            node_id="DitCache.ApplyAuto",
            display_name="Cache (DiT, start here)",
            description=(
                "One choice: picks the cache method and setting for this model. Uses a 'DiT Cache Tune' file of "
                "this model when there is one, else the setting measured best for the model's family. The log "
                "and the DiT Cache panel say what it chose and why."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (Flux, Wan, Qwen-Image, ...) to speed up."),
                io.Combo.Input("choice", options=list(LEVELS), default=DEFAULT_LEVEL,
                               tooltip="fast: about 28 dB PSNR against the uncached image, the most skipped "
                                       "steps; balanced: about 30 dB; high quality: 36 dB or better, fewer "
                                       "skipped steps."),
            ],
            output="The model with the chosen cache attached.",
            hidden=(io.Hidden.unique_id, io.Hidden.prompt),
            aliases=("cache", "speed up", "auto cache", "teacache", "start here"),
        )

    @classmethod
    def fingerprint_inputs(cls, **inputs: Any) -> str:
        """The tune files present (names, sizes, times): ComfyUI runs the node again when one is added, changed
        or removed, instead of reusing the choice it made before."""
        seen = []
        for p in calibration_store.tune_files():
            try:
                st = p.stat()
            except OSError:
                continue
            seen.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
        return "|".join(seen)

    @classmethod
    def validate_inputs(cls, choice: str | None = None) -> bool | str:
        return cls.check_inputs(locals())  # every float, combo and text input, by name

    @classmethod
    def execute(cls, model: Any, choice: str = DEFAULT_LEVEL) -> io.NodeOutput:
        cls.reject_bad_inputs({"choice": choice})
        label = cls.label()
        if choice not in LEVELS:  # a linked or API value ComfyUI did not check against the list
            raise ValueError(f"{label}: choice {shown(choice)} is not one of {', '.join(LEVELS)}")
        ident = cls.identify(model)
        if ident is None:
            return io.NodeOutput(model)
        node_id = cls.node_id()
        run = sampler_fed(cls.hidden.prompt if cls.hidden is not None else None, node_id)
        picked = from_tune_files(ident, choice, run)
        if isinstance(picked, int):
            rec, in_table = recommendation(ident.layout.family, choice)
            family = ident.layout.family
            why = ((f"none of this model's {picked} tune files measured a point meeting {choice}; " if picked
                    else "no tune file of this model; ")
                   + (f"the {family} family's measured {choice} setting" if in_table
                      else f"no measured table for {family}: the setting that passes on every trained family")
                   + f" (docs/bench-trained.csv {rec.measured})")
            picked = (rec.method, dict(rec.inputs), why)
        method, given, why = picked
        ncls = node_class(method)
        built = build(ncls, model, node_inputs(ncls, given))
        listed = ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in given.items())
        if built is None:
            log.warning("[dit-cache] %s: %s (%s) does not apply to this model (%s); model unchanged", label,
                        ncls.label(), listed, why)
            return io.NodeOutput(model)
        text = f"{choice}: {ncls.label()} {listed} — {why}"
        log.info("[dit-cache] %s: %s", label, text)
        chosen = {"method": method, "node": ncls.label(), "inputs": given, "choice": choice}
        out = apply_cache(model, built[1], label, node_id, details={"chosen_because": why, "chosen": chosen})
        return io.NodeOutput(out, ui={"text": [text]})
