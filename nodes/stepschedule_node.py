"""The "Apply StepSchedule" and "StepSchedule Calibrate" nodes."""
from __future__ import annotations

import logging
from typing import Any

import torch
from comfy_api.latest import io

from ..cache_core.calibration_files import check_model
from ..cache_core.methods import stepschedule_calibration as cal_io
from ..cache_core.methods.stepschedule import (ON_SKIPPED, StepScheduleCalibratePolicy, StepScheduleConfig,
                                               StreamPlan, plan)
from ..cache_core.text import plain
from . import calibration_store
from .base import CacheNode
from .calibrate import CalibrateNode, CalibrationRun
from .naming import STEPS

log = logging.getLogger("dit_cache")

DEFAULT_ON_SKIPPED = "taylor"


def plan_text(plans: dict[str, StreamPlan], steps: int) -> str:
    """One line per stream: the computed steps and the accumulated errors (the node's text and the log)."""
    return "\n".join(f"{plain(label)}: computes {len(p.steps)} of {steps} steps: {', '.join(map(str, p.steps))} "
                     f"(error {p.error:.4f}; a uniform schedule of as many steps {p.uniform_error:.4f})"
                     for label, p in plans.items())


class ApplyStepSchedule(CacheNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        options = calibration_store.choices(cal_io.FORMAT)  # read on every /object_info: new files show at once
        return cls.schema(
            node_id="DitCache.ApplyStepSchedule",
            display_name="Apply StepSchedule",
            category=STEPS, advanced=("order",),
            description=(
                "Computes a fixed set of steps, chosen per CFG stream by dynamic programming over the errors "
                "measured in one 'StepSchedule Calibrate' run so that the accumulated error is the smallest for "
                "the budget; the other steps reuse the last computed result or forecast it. Fixed work per run."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (Flux, Wan, Qwen-Image, ...) to speed up."),
                io.Combo.Input("calibration", options=options, default=options[0] if options else None,
                               tooltip="A file saved by 'StepSchedule Calibrate' (models/magcache). Must match the "
                                       "model's family and block shapes. Other step counts and samplers are "
                                       "mapped by schedule position."),
                io.Int.Input("computed_steps", default=8, min=0, max=1000,
                             tooltip="Budget: steps computed per CFG stream (at the calibrated step count). 0 with "
                                     "max_error 0 disables the cache."),
                io.Float.Input("max_error", default=0.0, min=0.0, max=10.0, step=0.005,
                               tooltip="If above 0: instead of the budget, the fewest computed steps whose "
                                       "accumulated error (a fraction of the trajectory's feature motion) is at "
                                       "most this."),
                io.Combo.Input("on_skipped", options=list(ON_SKIPPED), default=DEFAULT_ON_SKIPPED,
                               tooltip="What skipped steps use: 'reuse' the last computed residual of the block "
                                       "stack, or a forecast of it from the last computed steps (the schedule is "
                                       "optimised for this choice)."),
                io.Int.Input("order", default=1, min=1, max=3,
                             tooltip="Order of the taylor / hermite forecasters (the others ignore it)."),
            ],
            output="The model with the step schedule attached.",
        )

    @classmethod
    def validate_inputs(cls, calibration: str | None = None, max_error: float | None = None,
                        on_skipped: str | None = None) -> bool | str:
        return cls.check_inputs(locals())  # every float, combo and text input, by name

    @classmethod
    def off_reason(cls, **inputs: Any) -> str | None:
        if inputs.get("computed_steps") == 0 and not inputs.get("max_error"):
            return "computed_steps 0 and max_error 0, cache disabled"
        return None

    @classmethod
    def make_config(cls, model: Any, calibration: str, computed_steps: int, max_error: float = 0.0,
                    on_skipped: str = DEFAULT_ON_SKIPPED, order: int = 1) -> StepScheduleConfig | None:
        ident = cls.identify(model)
        if ident is None:
            return None
        if not calibration:
            raise ValueError(f"{cls.label()}: no calibration file; run 'StepSchedule Calibrate' once first")
        cal = calibration_store.load(calibration, cal_io.FORMAT, "Step Schedule")  # CalibrationError names it
        check_model(cal, ident.layout.family, ident.block_hash, method="Step Schedule")
        if on_skipped not in ON_SKIPPED:
            raise ValueError(f"{cls.label()}: on_skipped must be one of {ON_SKIPPED}")
        plans = plan(cal, computed_steps, max_error, on_skipped, order)
        text = plan_text(plans, cal.steps)
        log.info("[dit-cache] %s: using %s (%s, %d steps, %s)\n%s", cls.label(), plain(cal.name, 120),
                 plain(cal.family), cal.steps, on_skipped, text)
        return StepScheduleConfig(positions={k: p.positions for k, p in plans.items()}, on_skipped=on_skipped,
                                  order=order, calibrated_steps=cal.steps,
                                  chosen={k: p.steps for k, p in plans.items()}, note=text)

    @classmethod
    def execute(cls, model: Any, **inputs: Any) -> io.NodeOutput:
        """CacheNode's flow, with the chosen steps shown on the node."""
        if cls.off_reason(**inputs) is not None:
            return super().execute(model, **inputs)  # logs why, model unchanged
        cls.reject_bad_inputs(inputs)
        config = cls.make_config(model, **inputs)
        if config is None:  # make_config has said why
            return io.NodeOutput(model)
        return cls.attach(model, cls.make_policy(model, config), ui={"text": [config.note]})


class StepScheduleCalibrate(CalibrateNode):
    SAVES = "the reduced block-stack residuals are"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.calibrate_schema(
            node_id="DitCache.StepScheduleCalibrate",
            display_name="StepSchedule Calibrate",
            description=(
                "Put between the model and your KSampler and run the workflow once: the full model runs while a "
                "small reduced copy (at most 4096 values per step and CFG stream) of the transformer's output "
                "residual is kept; it is saved to models/magcache for 'Apply StepSchedule', which computes from "
                "it the error of every skipped step and the best steps to compute for a budget."
            ),
            prefix="stepschedule",
            prefix_tooltip="Start of the saved file's name; family, step count, a weights fingerprint and a "
                           "counter follow.",
        )

    @classmethod
    def validate_inputs(cls, filename_prefix: str | None = None) -> bool | str:
        return cls.check_inputs(locals())  # every float, combo and text input, by name

    @classmethod
    def measuring_policy(cls, run: CalibrationRun) -> StepScheduleCalibratePolicy:
        return StepScheduleCalibratePolicy(lambda streams, completed: cls.save_features(run, streams, completed))

    @classmethod
    def save_features(cls, run: CalibrationRun, streams: list[tuple[str, torch.Tensor, list, Any]],
                      completed: bool) -> None:
        if not run.finished(completed):
            return
        if not streams or min(f.shape[0] for _, f, _, _ in streams) < 2:
            run.nothing_saved("fewer than 2 model calls were measured")
            return
        steps = min(f.shape[0] for _, f, _, _ in streams)
        schedule = streams[0][3]
        cal = cal_io.StepCalibration(features={label: f[:steps] for label, f, _, _ in streams},
                                     call_sigmas={label: s[:steps] for label, _, s, _ in streams}, steps=steps,
                                     sigmas=list(schedule or []), **run.file_meta())
        run.save(cal, cal_io.save, {"streams": list(cal.features),
                                    "feature_size": int(next(iter(cal.features.values())).shape[1])})
