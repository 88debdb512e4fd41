"""The "DiT Cache Tune" node: the fastest setting of each tunable method that meets a quality target for the
model and sampler settings at hand, measured against the uncached run; the winner saved as a tune file.

The search is ``cache_core/tune.py``'s (every method with a ``tune`` knob on its registry entry); this node
samples as ComfyUI's KSampler does (``comfy.sample.sample``), counts block work with
``cache_core/block_counter.py``, decodes with the VAE when one is connected, checks for an interrupt before every
run and moves ComfyUI's progress bar after each. The trial runs are not recorded (their patched models are
applied with ``publish=False``); one run record with the curve goes to the panel, and the node shows the curve.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import torch
from comfy_api.latest import io

from ..cache_core import calibration_files, tune
from ..cache_core.block_counter import BlockCounter
from ..cache_core.stats import RunStats
from ..cache_core.text import plain
from ..hosts.comfy import stats_server
from ..hosts.comfy.patch import apply_cache
from . import calibration_store
from .base import CacheNode
from .method_apply import build, node_class, node_inputs
from .naming import ROOT, alias_options, mark_advanced

log = logging.getLogger("dit_cache")

UI_KEY = "dit_cache_tune"  # the node's "executed" output the page draws (web/js/dit_cache_tune.js)


def parse_methods(text: str) -> list[str] | None:
    """``"teacache, taylorseer"`` -> the keys; empty -> None (every tunable method)."""
    keys = [k.strip() for k in (text or "").replace(";", ",").split(",") if k.strip()]
    return keys or None


class DitCacheTune(CacheNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        keys = ", ".join(tune.tunable())
        return io.Schema(
            node_id="DitCache.Tune", display_name="DiT Cache Tune", category=ROOT,
            **alias_options(("tune cache", "cache auto tune", "find cache settings")),
            description=(
                "Finds the fastest cache setting that meets a quality target for this model and these sampler "
                "settings: samples the uncached model once per tuning seed, then bisects each method's knob "
                "(threshold, interval) against it, judged on the worst seed plus a safety margin. Saves the "
                "winner (and the measured curve) as a tune file in models/magcache that 'Cache (DiT, start "
                "here)' picks up, and outputs the model with the winner applied."
            ),
            inputs=mark_advanced([
                io.Model.Input("model", tooltip="The diffusion model (Flux, Wan, Qwen-Image, ...) to tune for."),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.Latent.Input("latent_image", tooltip="An empty latent of the size you sample at (smaller is "
                                                        "faster to tune; the setting transfers roughly)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="First tuning seed; the others follow it (seed + 1, ...). Set 'control after "
                                     "generate' to fixed: a new seed per queue tunes again every time."),
                io.Int.Input("steps", default=20, min=1, max=10000),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler"),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="simple"),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01),
                io.Combo.Input("metric", options=list(tune.METRICS), default="PSNR",
                               tooltip="How the cached result is compared with the uncached one: PSNR (dB) or SSIM "
                                       "(0-1), of the decoded image when a VAE is connected, else of the latent."),
                io.Float.Input("target", default=30.0, min=0.0, max=100.0, step=0.5,
                               tooltip="Quality to meet: PSNR in dB (30 is hard to tell apart at a glance) or SSIM "
                                       "(e.g. 0.9). Met on the worst tuning seed plus a margin (1 dB / 0.01)."),
                io.Int.Input("seeds", default=2, min=1, max=3,
                             tooltip="Tuning seeds: more = safer setting, proportionally longer tuning."),
                io.String.Input("methods", default="",
                                tooltip=f"Methods to try, comma-separated (empty = all: {keys})."),
                io.String.Input("filename_prefix", default="tune",
                                tooltip="Start of the saved file's name; family, step count, a weights "
                                        "fingerprint and a counter follow."),
                io.Vae.Input("vae", optional=True,
                             tooltip="Connect to judge the decoded image (what you see) instead of the latent."),
            ], advanced=("denoise", "methods")),
            outputs=[io.Model.Output(tooltip="The model with the winning method applied.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, cfg: float | None = None, sampler_name: str | None = None,
                        scheduler: str | None = None, denoise: float | None = None, metric: str | None = None,
                        target: float | None = None, methods: str | None = None,
                        filename_prefix: str | None = None) -> bool | str:
        problem = cls.check_inputs(locals())  # every float, combo and text input, by name
        if problem is True and methods:
            try:
                tune.tunable(parse_methods(methods))
            except ValueError as e:
                return f"methods: {e}"
        return problem

    @classmethod
    def execute(cls, model: Any, positive: Any, negative: Any, latent_image: dict, seed: int, steps: int,
                cfg: float, sampler_name: str, scheduler: str, denoise: float, metric: str, target: float,
                seeds: int, methods: str, filename_prefix: str, vae: Any = None) -> io.NodeOutput:
        label, node_id = cls.label(), cls.node_id()
        cls.reject_bad_inputs({"seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler_name,
                               "scheduler": scheduler, "denoise": denoise, "metric": metric, "target": target,
                               "seeds": seeds, "methods": methods, "filename_prefix": filename_prefix})
        try:
            specs = tune.tunable(parse_methods(methods))
        except ValueError as e:
            raise ValueError(f"{label}: {e}") from None
        ident = cls.identify(model, "nothing to tune")
        if ident is None:
            return io.NodeOutput(model)
        folder = calibration_store.save_dir()
        if folder.exists() and not folder.is_dir():  # found before minutes of sampling, not after
            raise calibration_files.CalibrationError(
                f"{label}: the calibration folder {plain(str(folder), 300)} is a file, not a folder")
        seed_list = [seed + i for i in range(seeds)]
        counter = BlockCounter(model.get_model_object("diffusion_model"))
        total = tune.count_runs(specs, len(seed_list))
        pbar = comfy.utils.ProgressBar(total, node_id=node_id)
        latent = latent_image["samples"]
        patched: dict[tuple[str, float], Any] = {}

        def model_for(method: str, value: float) -> Any:
            if (method, value) not in patched:
                knob = specs[method].tune
                ncls = node_class(method)
                built = build(ncls, model, node_inputs(ncls, {**dict(knob.fixed), knob.input: value}))
                if built is None:
                    raise ValueError(f"{ncls.label()} leaves this model unchanged at {knob.input}={value:g}")
                m = apply_cache(model, built[1], label, node_id, publish=False)
                if m is model:
                    raise ValueError(f"{ncls.label()} does not apply to this model")
                patched.clear()  # one patched clone at a time
                patched[(method, value)] = m
            return patched[(method, value)]

        def run(method: str | None, value: float, s: int) -> tune.Measured:
            m = model if method is None else model_for(method, value)
            lat = comfy.sample.fix_empty_latent_channels(m, latent)
            noise = comfy.sample.prepare_noise(lat, s, latent_image.get("batch_index"))
            counter.rows = 0
            with counter:
                out = comfy.sample.sample(m, noise, steps, cfg, sampler_name, scheduler, positive, negative, lat,
                                          denoise=denoise, noise_mask=latent_image.get("noise_mask"),
                                          disable_pbar=True, seed=s)
            if vae is not None:  # ComfyUI's IMAGE layout (frames, H, W, RGB) -> channels first: SSIM reads H, W
                out = vae.decode(out).movedim(-1, 1)
            pbar.update(1)
            return tune.Measured(out.detach().float().cpu(), counter.rows)

        t0 = time.perf_counter()
        log.info("[dit-cache] %s: tuning %s for %s %g (+%g margin) on seeds %s, %d steps %s/%s cfg %g (%s)", label,
                 ", ".join(specs), metric, target, tune.MARGIN[metric], seed_list, steps, plain(sampler_name),
                 plain(scheduler), cfg, "decoded image" if vae is not None else "latent")
        result = tune.tune(specs, run, seed_list, metric, target,
                           between=comfy.model_management.throw_exception_if_processing_interrupted,
                           log=lambda msg: log.info("[dit-cache] %s: %s", label, msg))
        pbar.update_absolute(total)
        knobs = {k: {"input": s.tune.input, "fixed": dict(s.tune.fixed)} for k, s in specs.items()}
        payload: dict[str, Any] = {"node_id": node_id, "metric": metric, "target": target,
                                   "margin": result.margin, "curve": result.curve(), "knobs": knobs,
                                   "skipped": result.skipped, "winner": None, "file": None}
        w = result.winner
        if w is None:
            cls.record(payload, ident, t0, steps, sampler_name, scheduler, cfg)
            raise ValueError(f"{label}: no setting of {', '.join(specs)} met {metric} {target:g} + "
                             f"{result.margin:g} on the worst seed ({'; '.join(f'{k}: {v}' for k, v in result.skipped.items())})")
        tf = tune.TuneFile(
            method=w.method, knob=specs[w.method].tune.input, value=w.value,
            inputs={**dict(specs[w.method].tune.fixed), specs[w.method].tune.input: w.value},
            speedup=round(w.speedup, 4), quality=round(w.quality, 4), metric=metric, target=target,
            margin=result.margin, seeds=seed_list, family=ident.layout.family, model_class=ident.model_class,
            block_hash=ident.block_hash, weights_hint=ident.weights_hint, steps=steps, sampler=plain(sampler_name),
            scheduler=plain(scheduler), cfg=cfg, denoise=denoise,
            measured_on="image" if vae is not None else "latent", curve=result.curve(), knobs=knobs,
            skipped=result.skipped, date=calibration_files.utc_now(), pack_version=calibration_files.pack_version())
        path = calibration_store.new_file_path(filename_prefix, ident.layout.family, steps, ident.weights_hint,
                                               calibration_store.TUNE_EXTENSION)
        tune.write(path, tf)  # an OSError fails the node: a tune that saved nothing is no success
        winner = {"method": w.method, "input": tf.knob, "value": w.value, "speedup": tf.speedup,
                  "quality": tf.quality}
        payload.update(winner=winner, file=path.name, folder=str(path.parent))
        text = (f"{node_class(w.method).label()} {tf.knob}={w.value:g}: {w.speedup:.2f}x block speedup, worst-seed "
                f"{metric} {w.quality:.3g} (target {target:g} + {result.margin:g}); saved {path.name}")
        log.info("[dit-cache] %s: %s", label, text)
        cls.record(payload, ident, t0, steps, sampler_name, scheduler, cfg)
        ncls = node_class(w.method)
        config, policy = build(ncls, model, node_inputs(ncls, tf.inputs))
        out = apply_cache(model, policy, label, node_id,
                          details={"chosen_because": f"tuned here: {text}"})
        return io.NodeOutput(out, ui={UI_KEY: [stats_server.json_safe(payload)], "text": [text]})

    @classmethod
    def record(cls, payload: dict[str, Any], ident: Any, t0: float, steps: int, sampler: str, scheduler: str,
               cfg: float) -> None:
        """One run record for the panel: the winner in the settings, the curve in the details."""
        stats = RunStats(method=cls.label(), model=ident.model_class,
                         settings={"metric": payload["metric"], "target": payload["target"],
                                   "margin": payload["margin"], "steps": steps, "sampler": plain(sampler),
                                   "scheduler": plain(scheduler), "cfg": cfg})
        stats.details.update(tune_winner=payload["winner"], tune_file=payload["file"], tune_curve=payload["curve"],
                             tune_skipped=payload["skipped"])
        run = stats.to_dict()
        run.update(node=cls.label(), node_id=payload["node_id"], completed=payload["winner"] is not None,
                   run_wall_s=time.perf_counter() - t0, tune=True)
        stats_server.publish(run)
