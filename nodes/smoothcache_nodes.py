"""The "SmoothCache Calibrate" and "Apply SmoothCache" nodes."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..cache_core.methods import magcache_calibration as cal_io
from ..cache_core.methods import smoothcache_calibration as smooth_io
from ..cache_core.methods.smoothcache import (DEFAULT_ALPHA, Errors, SmoothCacheCalibratePolicy, SmoothCacheConfig,
                                      SmoothCachePolicy, schedule_text)
from . import calibration_store
from ..hosts.comfy import run_log
from ..hosts.comfy.patch import apply_cache
from .magcache_nodes import calibration_run

log = logging.getLogger("dit_cache")

_ALPHA_TIP = ("Error budget: a component type reuses its last output for up to 3 steps while the calibrated "
              "relative change stays at or below alpha. Higher = more reuse, lower fidelity. The SmoothCache "
              "authors' example: 0.15.")


class _Saver:
    """End of the calibrating run: build the schedule, write the file, log it."""

    def __init__(self, ident: calibration_store.ModelIdentity, prefix: str, alpha: float, sampler: str,
                 scheduler: str, node_id: str | None) -> None:
        self.ident, self.prefix, self.alpha = ident, prefix, alpha
        self.sampler, self.scheduler, self.node_id = sampler, scheduler, node_id
        self.saved: list[str] = []

    def __call__(self, errors: Errors, streams: list[str], completed: bool) -> None:
        if not completed:
            log.warning("[dit-cache] SmoothCache Calibrate: the run was interrupted, nothing saved")
            return
        if not errors or len(next(iter(errors.values()))[0]) < 2:
            log.warning("[dit-cache] SmoothCache Calibrate: fewer than 2 model calls were measured, nothing saved")
            return
        cal = smooth_io.SmoothCalibration(
            errors=errors, alpha=self.alpha, family=self.ident.layout.family, model_class=self.ident.model_class,
            block_hash=self.ident.block_hash, weights_hint=self.ident.weights_hint, sampler=self.sampler,
            scheduler=self.scheduler, date=cal_io.utc_now(), pack_version=cal_io.pack_version(),
            source=f"SmoothCache Calibrate (dit-cache), streams {','.join(streams)}")
        path = calibration_store.new_file_path(self.prefix, cal.family, cal.steps, self.ident.weights_hint)
        smooth_io.save(path, cal)
        cal.name = path.name
        self.saved.append(path.name)
        log.info("[dit-cache] SmoothCache Calibrate: saved %s\n%s", path, cal.summary())
        run_log.record({"method": "SmoothCacheCalibrate", "node_id": self.node_id,
                        "calibration": {"file": path.name, "folder": str(path.parent), "family": cal.family,
                                        "steps": cal.steps, "alpha": cal.alpha, "errors": cal.errors,
                                        "schedule": cal.schedule}})


class SmoothCacheCalibrate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DitCache.SmoothCacheCalibrate",
            display_name="SmoothCache Calibrate",
            category="dit-cache",
            description=(
                "Put between the model and your KSampler and run the workflow once: the full model runs while "
                "the step-to-step change of every attention and feed-forward output is measured per component "
                "type; the errors and the schedule they give at alpha are saved to models/magcache (the "
                "calibration folder MagCache uses) for 'Apply SmoothCache'. Calibrate at the step count, sampler "
                "and scheduler you will use."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to calibrate (the same one you will speed up)."),
                io.String.Input("filename_prefix", default="smoothcache",
                                tooltip="Start of the saved file's name; family, step count, a weights "
                                        "fingerprint and a counter follow."),
                io.Float.Input("alpha", default=DEFAULT_ALPHA, min=0.0, max=10.0, step=0.01,
                               tooltip=_ALPHA_TIP + " The schedule saved with the file uses this value; Apply "
                                                    "SmoothCache can rebuild it with another."),
            ],
            outputs=[io.Model.Output(tooltip="The model, measuring while it samples (connect to the KSampler).")],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
            not_idempotent=True,
        )

    @classmethod
    def execute(cls, model, filename_prefix: str, alpha: float = DEFAULT_ALPHA) -> io.NodeOutput:
        run = calibration_run(cls, model, "SmoothCache Calibrate")
        if run is None:
            return io.NodeOutput(model)
        ident, node_id, sampler, scheduler = run
        saver = _Saver(ident, filename_prefix, alpha, sampler, scheduler, node_id)
        patched = apply_cache(model, SmoothCacheCalibratePolicy(saver), "SmoothCache Calibrate", node_id)
        folder = calibration_store.save_dir()
        return io.NodeOutput(patched, ui={"text": [f"Calibrating {ident.layout.family} ({ident.model_class}); the "
                                                   f"SmoothCache errors are saved to {folder} when the sampler "
                                                   f"finishes."]})


class ApplySmoothCache(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        options = calibration_store.smooth_choices()  # read on every /object_info: new files appear at once
        return io.Schema(
            node_id="DitCache.ApplySmoothCache",
            display_name="Apply SmoothCache",
            category="dit-cache",
            description=(
                "SmoothCache: a static schedule per component type (self/joint attention, cross-attention, "
                "feed-forward) from a 'SmoothCache Calibrate' run. On the scheduled steps those components "
                "return their last computed output instead of computing; nothing is decided while sampling."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (Flux, Wan, HunyuanVideo, ...) to speed up."),
                io.Combo.Input("calibration", options=options, default=options[0] if options else None,
                               tooltip="A file saved by 'SmoothCache Calibrate' (models/magcache). Must match the "
                                       "model's family and block shapes. Other step counts are mapped by "
                                       "nearest step (a warning says so)."),
                io.Float.Input("alpha", default=-1.0, min=-1.0, max=10.0, step=0.01,
                               tooltip="-1: the schedule saved with the calibration. 0: disabled (model "
                                       "unchanged). Otherwise the schedule is rebuilt from the saved errors "
                                       "with this budget. " + _ALPHA_TIP),
            ],
            outputs=[io.Model.Output(tooltip="The model with SmoothCache attached.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, calibration: str, alpha: float = -1.0) -> io.NodeOutput:
        if alpha == 0:
            log.info("[dit-cache] Apply SmoothCache: alpha 0, cache disabled (model unchanged)")
            return io.NodeOutput(model)
        if alpha < 0 and alpha != -1:
            raise ValueError(f"Apply SmoothCache: alpha must be -1 (saved schedule), 0 (off) or positive, got {alpha}")
        ident = calibration_store.identify(model)
        if ident is None:
            log.warning("[dit-cache] Apply SmoothCache: %s is not a supported DiT model; the model is left "
                        "unchanged", type(model.get_model_object("diffusion_model")).__name__)
            return io.NodeOutput(model)
        if not calibration:
            raise ValueError("Apply SmoothCache: no calibration file; run 'SmoothCache Calibrate' once first")
        cal = calibration_store.resolve_smooth(calibration)  # CalibrationError (ValueError) names the file
        cal_io.check_model(cal, ident.layout.family, ident.block_hash, method="SmoothCache")
        saved = alpha < 0
        config = SmoothCacheConfig(errors=cal.errors, alpha=cal.alpha if saved else alpha,
                                   schedule=cal.schedule if saved else None)
        policy = SmoothCachePolicy(config)
        log.info("[dit-cache] Apply SmoothCache: using %s (%s, %d steps, alpha %g%s)\n%s", cal.name, cal.family,
                 cal.steps, config.alpha, ", saved schedule" if saved else "", schedule_text(policy.schedule(None)))
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        return io.NodeOutput(apply_cache(model, policy, "Apply SmoothCache", None if node_id is None else str(node_id)))
