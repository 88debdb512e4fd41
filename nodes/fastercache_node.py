"""The "Apply FasterCache" node."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..cache_core.config import CacheWindow
from ..cache_core.methods.fastercache import FasterCacheConfig, FasterCachePolicy
from ..hosts.comfy.patch import apply_cache
from .common_inputs import named_window_inputs, validate_windows

log = logging.getLogger("dit_cache")

_WINDOWS = ("attention", "uncond", "low_freq", "high_freq")


class ApplyFasterCache(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DitCache.ApplyFasterCache",
            display_name="Apply FasterCache",
            category="dit-cache",
            description=(
                "FasterCache: inside a window, attention outputs are extrapolated from the last two computed ones "
                "(F1 + (F1 - F2) * weight), and on most CFG steps the unconditional branch is not run but rebuilt "
                "from the conditional one plus stored low/high-frequency differences. Defaults are diffusers'."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to speed up (CFG models gain most)."),
                io.Int.Input("spatial_skip", default=2, min=0, max=100,
                             tooltip="Self/joint attention is computed once every N calls inside the attention "
                                     "window, and extrapolated in between (only on steps that run no "
                                     "unconditional branch, as in the paper). 0 or 1 = always computed."),
                io.Int.Input("temporal_skip", default=0, min=0, max=100,
                             tooltip="As spatial_skip, for temporal attention (no ComfyUI DiT family has a "
                                     "separate one today)."),
                *named_window_inputs("attention", "attention extrapolation", 0.319, 1.0),
                io.Float.Input("attention_weight", default=0.5, min=-2.0, max=2.0, step=0.01,
                               tooltip="w in F1 + (F1 - F2) * w (diffusers' default 0.5)."),
                io.Int.Input("uncond_skip", default=5, min=0, max=100,
                             tooltip="The unconditional (negative prompt) branch runs once every N steps inside "
                                     "its window and is rebuilt from the conditional one in between. 0 or 1 = "
                                     "always run. Has no effect at CFG 1."),
                *named_window_inputs("uncond", "unconditional-branch reuse", 0.359, 1.0),
                io.Float.Input("alpha_low", default=1.1, min=0.0, max=5.0, step=0.01,
                               tooltip="Each rebuild multiplies the stored low-frequency difference by this inside "
                                       "the low_freq window (compounding)."),
                io.Float.Input("alpha_high", default=1.1, min=0.0, max=5.0, step=0.01,
                               tooltip="The same for the high-frequency difference, inside the high_freq window."),
                *named_window_inputs("low_freq", "the low-frequency weighting", 0.099, 0.901),
                *named_window_inputs("high_freq", "the high-frequency weighting", 0.699, 1.0),
            ],
            outputs=[io.Model.Output(tooltip="The model with FasterCache attached.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, **kwargs) -> bool | str:
        return validate_windows(kwargs, _WINDOWS)

    @classmethod
    def execute(cls, model, spatial_skip: int, temporal_skip: int, attention_weight: float, uncond_skip: int,
                alpha_low: float, alpha_high: float, **kwargs) -> io.NodeOutput:
        windows = {f"{w}_window": CacheWindow(kwargs[f"{w}_start_percent"], kwargs[f"{w}_end_percent"])
                   for w in _WINDOWS}
        config = FasterCacheConfig(spatial_skip=spatial_skip, temporal_skip=temporal_skip,
                                   attention_weight=attention_weight, uncond_skip=uncond_skip,
                                   alpha_low=alpha_low, alpha_high=alpha_high, **windows)
        if not config.enabled:
            log.info("[dit-cache] Apply FasterCache: every N is below 2, FasterCache disabled (model unchanged)")
            return io.NodeOutput(model)
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        return io.NodeOutput(apply_cache(model, FasterCachePolicy(config), "Apply FasterCache",
                                         None if node_id is None else str(node_id)))
