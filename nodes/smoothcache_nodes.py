"""The "SmoothCache Calibrate" and "Apply SmoothCache" nodes."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..cache_core.calibration_files import check_model
from ..cache_core.methods import smoothcache_calibration as smooth_io
from ..cache_core.methods.smoothcache import (DEFAULT_ALPHA, Errors, SmoothCacheCalibratePolicy, SmoothCacheConfig,
                                              schedule_text)
from ..cache_core.text import plain
from . import calibration_store
from .base import CacheNode
from .calibrate import CalibrateNode, CalibrationRun
from .naming import BLOCKS

log = logging.getLogger("dit_cache")

_ALPHA_TIP = ("Error budget: a component type reuses its last output for up to 3 steps while the calibrated "
              "relative change stays at or below alpha. Higher = more reuse, lower fidelity. The SmoothCache "
              "authors' example: 0.15.")


class SmoothCacheCalibrate(CalibrateNode):
    SAVES = "the SmoothCache errors are"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.calibrate_schema(
            node_id="DitCache.SmoothCacheCalibrate",
            display_name="SmoothCache Calibrate",
            description=(
                "Put between the model and your KSampler and run the workflow once: the full model runs while "
                "the step-to-step change of every attention and feed-forward output is measured per component "
                "type; the errors and the schedule they give at alpha are saved to models/magcache (the "
                "calibration folder MagCache uses) for 'Apply SmoothCache'. Calibrate at the step count, sampler "
                "and scheduler you will use."
            ),
            prefix="smoothcache",
            prefix_tooltip="Start of the saved file's name; family, step count, a weights fingerprint and a "
                           "counter follow.",
            inputs=(io.Float.Input("alpha", default=DEFAULT_ALPHA, min=0.0, max=10.0, step=0.01,
                                   tooltip=_ALPHA_TIP + " The schedule saved with the file uses this value; Apply "
                                                        "SmoothCache can rebuild it with another."),),
        )

    @classmethod
    def validate_inputs(cls, filename_prefix: str | None = None, alpha: float | None = None) -> bool | str:
        return cls.check_inputs(locals())  # every float, combo and text input, by name

    @classmethod
    def measuring_policy(cls, run: CalibrationRun, alpha: float = DEFAULT_ALPHA) -> SmoothCacheCalibratePolicy:
        return SmoothCacheCalibratePolicy(
            lambda errors, streams, completed: cls.save_errors(run, alpha, errors, streams, completed))

    @classmethod
    def save_errors(cls, run: CalibrationRun, alpha: float, errors: Errors, streams: list[str],
                    completed: bool) -> None:
        """End of the calibrating run: the error table and the schedule it gives at ``alpha``, saved."""
        if not run.finished(completed):
            return
        if not errors or len(next(iter(errors.values()))[0]) < 2:
            run.nothing_saved("fewer than 2 model calls were measured")
            return
        cal = smooth_io.SmoothCalibration(errors=errors, alpha=alpha,
                                          **run.file_meta(f", streams {','.join(streams)}"))
        run.save(cal, smooth_io.save, {"alpha": cal.alpha, "errors": cal.errors, "schedule": cal.schedule})


class ApplySmoothCache(CacheNode):
    OFF_INPUT = "alpha"

    @classmethod
    def define_schema(cls) -> io.Schema:
        options = calibration_store.choices(smooth_io.FORMAT)  # read on every /object_info: new files show at once
        return cls.schema(
            node_id="DitCache.ApplySmoothCache",
            display_name="Apply SmoothCache",
            category=BLOCKS,
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
            output="The model with SmoothCache attached.",
        )

    @classmethod
    def validate_inputs(cls, calibration: str | None = None, alpha: float | None = None) -> bool | str:
        return cls.check_inputs(locals())  # every float, combo and text input, by name

    @classmethod
    def make_config(cls, model, calibration: str, alpha: float = -1.0) -> SmoothCacheConfig | None:
        if alpha < 0 and alpha != -1:
            raise ValueError(f"{cls.label()}: alpha must be -1 (saved schedule), 0 (off) or positive, got {alpha}")
        ident = cls.identify(model)
        if ident is None:
            return None
        if not calibration:
            raise ValueError(f"{cls.label()}: no calibration file; run 'SmoothCache Calibrate' once first")
        cal = calibration_store.load(calibration, smooth_io.FORMAT, "SmoothCache")  # CalibrationError names the file
        check_model(cal, ident.layout.family, ident.block_hash, method="SmoothCache")
        saved = alpha < 0
        config = SmoothCacheConfig(errors=cal.errors, alpha=cal.alpha if saved else alpha,
                                   schedule=cal.schedule if saved else None)
        # the name is a listed file's (any character), the family the file's metadata: escaped for the log
        log.info("[dit-cache] %s: using %s (%s, %d steps, alpha %g%s)\n%s", cls.label(), plain(cal.name, 120),
                 plain(cal.family), cal.steps, config.alpha, ", saved schedule" if saved else "",
                 schedule_text(config.schedule_for(config.calibrated_steps)))
        return config
