"""The "Apply MagCache" and "MagCache Calibrate" nodes."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..cache_core.methods import magcache_calibration as cal_io
from ..cache_core.methods.magcache import MagCacheCalibratePolicy, MagCacheConfig, StreamCalibration
from ..cache_core.text import plain
from . import calibration_store
from .base import CacheNode
from .calibrate import CalibrateNode, CalibrationRun
from .common_inputs import window_inputs
from .naming import STEPS

log = logging.getLogger("dit_cache")

CALIBRATED_EVENT = "dit_cache.magcache_calibrated"  # websocket message sent after a calibration is saved


DEFAULT_PRESET = cal_io.PRESET_PREFIX + "flux_dev"  # the dropdown's default (presets are listed by name)


def calibration_choices() -> list[str]:
    """The "calibration" dropdown: the built-in presets first, then the saved MagCache calibrations."""
    return [cal_io.PRESET_PREFIX + n for n in cal_io.preset_names()] + calibration_store.choices(cal_io.FORMAT)


def resolve(choice: str) -> cal_io.Calibration:
    """The calibration a dropdown entry names: a built-in preset or a file listed in the calibration folders,
    never a path. Any other value gets the same CalibrationError (a ValueError); an unusable file is named."""
    if isinstance(choice, str) and choice.startswith(cal_io.PRESET_PREFIX):
        name = choice[len(cal_io.PRESET_PREFIX):]
        if name in cal_io.preset_names():
            return cal_io.load_preset(name)
    return calibration_store.load(choice, cal_io.FORMAT, "MagCache")


class ApplyMagCache(CacheNode):
    OFF_INPUT = "threshold"

    @classmethod
    def define_schema(cls) -> io.Schema:
        options = calibration_choices()  # read on every /object_info: new files show up without restart
        return cls.schema(
            node_id="DitCache.ApplyMagCache",
            display_name="Apply MagCache",
            category=STEPS, advanced=("retention_ratio", "interpolation"),
            description=(
                "MagCache: skips the whole transformer while the calibrated per-step magnitude ratios say the "
                "result changes little (accumulated error under the threshold, at most K skips in a row)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (Flux, Wan, Qwen-Image, ...) to speed up."),
                io.Combo.Input(
                    "calibration", options=options,
                    default=DEFAULT_PRESET if DEFAULT_PRESET in options else (options[0] if options else None),
                    tooltip="Magnitude ratios: a file saved by 'MagCache Calibrate' (models/magcache) or a "
                            "built-in preset of published ratios. Must match the model's family (and, for "
                            "files, its block shapes). Other step counts are interpolated.",
                ),
                io.Float.Input("threshold", default=0.1, min=0.0, max=2.0, step=0.01,
                               tooltip="Error budget: higher = more skips, lower quality. 0 disables the cache. "
                                       "diffusers' default is 0.06; the MagCache authors use 0.12-0.24 for Flux."),
                io.Int.Input("max_skip_steps", default=3, min=1, max=50,
                             tooltip="K: most steps skipped in a row before one is computed again."),
                io.Float.Input("retention_ratio", default=0.2, min=0.0, max=1.0, step=0.01,
                               tooltip="This first share of the steps always computes (the layout forms there)."),
                *window_inputs(),
                io.Combo.Input("interpolation", options=["schedule", "nearest"], default="schedule",
                               tooltip="How ratios calibrated for another step count are mapped: 'schedule' "
                                       "interpolates the cumulative magnitude along the schedule (keeps the total "
                                       "change); 'nearest' picks the nearest calibrated step (diffusers)."),
            ],
            output="The model with MagCache attached.",
        )

    @classmethod
    def validate_inputs(cls, calibration: str | None = None, threshold: float | None = None,
                        retention_ratio: float | None = None, start_percent: float | None = None,
                        end_percent: float | None = None, interpolation: str | None = None) -> bool | str:
        return cls.check_inputs(locals())  # every float, combo and text input, by name

    @classmethod
    def make_config(cls, model, calibration: str, threshold: float, max_skip_steps: int, retention_ratio: float,
                    start_percent: float, end_percent: float, interpolation: str = "schedule") -> MagCacheConfig | None:
        ident = cls.identify(model)
        if ident is None:
            return None
        cal = resolve(calibration)  # CalibrationError (ValueError) names the file
        cal_io.check_model(cal, ident.layout.family, ident.block_hash)
        config = MagCacheConfig(ratios=cal.ratios, threshold=threshold, max_skip_steps=max_skip_steps,
                                retention_ratio=retention_ratio, num_inference_steps=cal.steps,
                                interpolation=interpolation, start_percent=start_percent, end_percent=end_percent)
        # the name is a listed file's (any character) and the rest the file's metadata: escaped for the log
        log.info("[dit-cache] %s: using %s (%s, %d steps, streams %s)", cls.label(), plain(cal.name, 120),
                 plain(cal.family), cal.steps, ",".join(plain(k) for k in cal.ratios))
        return config


class MagCacheCalibrate(CalibrateNode):
    EVENT = CALIBRATED_EVENT  # the page draws the ratios on the node (web/js/dit_cache_panel.js)
    SAVES = "ratios are"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.calibrate_schema(
            node_id="DitCache.MagCacheCalibrate",
            display_name="MagCache Calibrate",
            description=(
                "Put between the model and your KSampler and run the workflow once: the sampler runs the full "
                "model (no skipping) while the per-step magnitude ratios of every CFG stream are measured, then "
                "saved to models/magcache as a .safetensors file that 'Apply MagCache' lists."
            ),
            prefix="magcache",
            prefix_tooltip="Start of the saved file's name; family, step count, a weights fingerprint and a "
                           "counter follow, so two models never collide.",
        )

    @classmethod
    def validate_inputs(cls, filename_prefix: str | None = None) -> bool | str:
        return cls.check_inputs(locals())  # every float, combo and text input, by name

    @classmethod
    def measuring_policy(cls, run: CalibrationRun) -> MagCacheCalibratePolicy:
        return MagCacheCalibratePolicy(lambda streams, completed: cls.save_ratios(run, streams, completed))

    @classmethod
    def save_ratios(cls, run: CalibrationRun, streams: list[StreamCalibration], completed: bool) -> None:
        """End of a calibrating run: the ratios of every stream, cut to the shortest, saved."""
        if not run.finished(completed):
            return
        if not streams:
            run.nothing_saved("no model call was measured")
            return
        steps = min(len(s.ratios) for s in streams)
        schedule = streams[0].schedule
        if schedule and len(schedule) - 1 != steps:
            log.warning("[dit-cache] %s: %d model calls per stream for %d steps (a sampler with several calls per "
                        "step); ratios are saved per call", run.label, steps, len(schedule) - 1)
        cal = cal_io.Calibration(ratios={s.label: s.ratios[:steps] for s in streams}, steps=steps,
                                 sigmas=list(schedule or []), **run.file_meta())
        run.save(cal, cal_io.save, {"ratios": cal.ratios})
