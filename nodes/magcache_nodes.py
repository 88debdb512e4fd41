"""The "Apply MagCache" and "MagCache Calibrate" nodes."""
from __future__ import annotations

import logging
from typing import Any

from comfy_api.latest import io

from ..cache_core.methods import magcache_calibration as cal_io
from ..cache_core.methods.magcache import MagCacheCalibratePolicy, MagCacheConfig, MagCachePolicy, StreamCalibration
from . import calibration_store
from ..hosts.comfy import run_log, stats_server
from ..hosts.comfy.patch import apply_cache
from .common_inputs import validate_window, window_inputs

log = logging.getLogger("dit_cache")

CALIBRATED_EVENT = "dit_cache.magcache_calibrated"  # websocket message sent after a calibration is saved
SAMPLER_NODES = ("KSampler", "KSamplerAdvanced")


class ApplyMagCache(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        options = calibration_store.choices()  # read on every /object_info: new files show up without restart
        return io.Schema(
            node_id="DitCache.ApplyMagCache",
            display_name="Apply MagCache",
            category="dit-cache",
            description=(
                "MagCache: skips the whole transformer while the calibrated per-step magnitude ratios say the "
                "result changes little (accumulated error under the threshold, at most K skips in a row)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (Flux, Wan, Qwen-Image, ...) to speed up."),
                io.Combo.Input(
                    "calibration", options=options, default=options[0] if options else None,
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
            outputs=[io.Model.Output(tooltip="The model with MagCache attached.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, start_percent: float = 0.0, end_percent: float = 1.0, **kwargs) -> bool | str:
        return validate_window(start_percent, end_percent)

    @classmethod
    def execute(cls, model, calibration: str, threshold: float, max_skip_steps: int, retention_ratio: float,
                start_percent: float, end_percent: float, interpolation: str = "schedule") -> io.NodeOutput:
        if threshold == 0:
            log.info("[dit-cache] Apply MagCache: threshold 0, cache disabled (model unchanged)")
            return io.NodeOutput(model)
        ident = calibration_store.identify(model)
        if ident is None:
            log.warning("[dit-cache] Apply MagCache: %s is not a supported DiT model; the model is left unchanged",
                        type(model.get_model_object("diffusion_model")).__name__)
            return io.NodeOutput(model)
        cal = calibration_store.resolve(calibration)  # CalibrationError (ValueError) names the file
        cal_io.check_model(cal, ident.layout.family, ident.block_hash)
        config = MagCacheConfig(ratios=cal.ratios, threshold=threshold, max_skip_steps=max_skip_steps,
                                retention_ratio=retention_ratio, num_inference_steps=cal.steps,
                                interpolation=interpolation, start_percent=start_percent, end_percent=end_percent)
        log.info("[dit-cache] Apply MagCache: using %s (%s, %d steps, streams %s)", cal.name, cal.family, cal.steps,
                 ",".join(cal.ratios))
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        return io.NodeOutput(apply_cache(model, MagCachePolicy(config), "Apply MagCache",
                                         None if node_id is None else str(node_id)))


def _sampler_settings(prompt: dict | None, node_id: str | None) -> tuple[str, str]:
    """sampler_name/scheduler of the KSampler fed by this node (through the hidden PROMPT input).

    They are not in transformer_options, so the graph is read: a sampler node whose "model" input is this
    node's output. Anything else (a custom sampler, a model routed through other nodes) gives "unknown".
    """
    if not prompt or node_id is None:
        return "unknown", "unknown"
    found = set()
    for node in prompt.values():
        inputs = node.get("inputs", {}) if isinstance(node, dict) else {}
        link = inputs.get("model")
        if isinstance(link, list) and link and str(link[0]) == str(node_id) and "sampler_name" in inputs:
            found.add((str(inputs.get("sampler_name")), str(inputs.get("scheduler", "unknown"))))
    return next(iter(found)) if len(found) == 1 else ("unknown", "unknown")


def _notify(payload: dict[str, Any]) -> dict[str, Any]:
    """Send the ratios to the page that queued the prompt, like the statistics panel's ``dit-cache.run``
    (``stats_server.send_to_page``: to that client only, with the prompt id; no-op outside a ComfyUI server)."""
    return stats_server.send_to_page(CALIBRATED_EVENT, payload)


class _Saver:
    """End of each sampling run of a calibrating model: write the file, log and publish the ratios."""

    def __init__(self, ident: calibration_store.ModelIdentity, prefix: str, sampler: str, scheduler: str,
                 node_id: str | None) -> None:
        self.ident, self.prefix, self.sampler, self.scheduler, self.node_id = ident, prefix, sampler, scheduler, node_id
        self.saved: list[str] = []

    def __call__(self, streams: list[StreamCalibration], completed: bool) -> None:
        if not completed:
            log.warning("[dit-cache] MagCache Calibrate: the run was interrupted, nothing saved")
            return
        if not streams:
            log.warning("[dit-cache] MagCache Calibrate: no model call was measured, nothing saved")
            return
        lengths = {len(s.ratios) for s in streams}
        steps = min(lengths)
        schedule = streams[0].schedule
        if schedule and len(schedule) - 1 != steps:
            log.warning("[dit-cache] MagCache Calibrate: %d model calls per stream for %d steps (a sampler with "
                        "several calls per step); ratios are saved per call", steps, len(schedule) - 1)
        cal = cal_io.Calibration(
            ratios={s.label: s.ratios[:steps] for s in streams}, family=self.ident.layout.family, steps=steps,
            model_class=self.ident.model_class, block_hash=self.ident.block_hash,
            weights_hint=self.ident.weights_hint, sampler=self.sampler, scheduler=self.scheduler,
            sigmas=list(schedule or []), date=cal_io.utc_now(), pack_version=cal_io.pack_version(),
            source="MagCache Calibrate (dit-cache)",
        )
        path = calibration_store.new_file_path(self.prefix, cal.family, steps, self.ident.weights_hint)
        cal_io.save(path, cal)
        self.saved.append(path.name)
        log.info("[dit-cache] MagCache Calibrate: saved %s\n%s", path, cal.summary())
        # node_id: the calibrate node's graph id (the page draws the ratios on that node)
        payload = {"node_id": self.node_id, "node": "MagCache Calibrate", "file": path.name,
                   "folder": str(path.parent), "family": cal.family,
                   "steps": steps, "sampler": self.sampler, "scheduler": self.scheduler, "ratios": cal.ratios}
        payload = _notify(payload)
        run_log.record({"method": "MagCacheCalibrate", "calibration": payload})


class MagCacheCalibrate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DitCache.MagCacheCalibrate",
            display_name="MagCache Calibrate",
            category="dit-cache",
            description=(
                "Put between the model and your KSampler and run the workflow once: the sampler runs the full "
                "model (no skipping) while the per-step magnitude ratios of every CFG stream are measured, then "
                "saved to models/magcache as a .safetensors file that 'Apply MagCache' lists."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to calibrate (the same one you will speed up)."),
                io.String.Input("filename_prefix", default="magcache",
                                tooltip="Start of the saved file's name; family, step count, a weights "
                                        "fingerprint and a counter follow, so two models never collide."),
            ],
            outputs=[io.Model.Output(tooltip="The model, measuring while it samples (connect to the KSampler).")],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
            not_idempotent=True,
        )

    @classmethod
    def execute(cls, model, filename_prefix: str) -> io.NodeOutput:
        run = calibration_run(cls, model, "MagCache Calibrate")
        if run is None:
            return io.NodeOutput(model)
        ident, node_id, sampler, scheduler = run
        saver = _Saver(ident, filename_prefix, sampler, scheduler, node_id)
        patched = apply_cache(model, MagCacheCalibratePolicy(saver), "MagCache Calibrate", node_id)
        folder = calibration_store.save_dir()
        return io.NodeOutput(patched, ui={"text": [f"Calibrating {ident.layout.family} ({ident.model_class}); "
                                                   f"ratios are saved to {folder} when the sampler finishes "
                                                   f"(sampler {sampler}, scheduler {scheduler})."]})


def calibration_run(cls: type[io.ComfyNode], model: Any, label: str
                    ) -> tuple[calibration_store.ModelIdentity, str | None, str, str] | None:
    """What a Calibrate node needs before patching: the model's identity, the node's graph id and the sampler /
    scheduler of the KSampler it feeds; None (after a warning) for a model that is no supported DiT."""
    ident = calibration_store.identify(model)
    if ident is None:
        log.warning("[dit-cache] %s: %s is not a supported DiT model; nothing to calibrate", label,
                    type(model.get_model_object("diffusion_model")).__name__)
        return None
    hidden = cls.hidden
    node_id = str(hidden.unique_id) if hidden is not None and hidden.unique_id is not None else None
    sampler, scheduler = _sampler_settings(hidden.prompt if hidden is not None else None, node_id)
    return ident, node_id, sampler, scheduler
