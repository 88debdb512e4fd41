"""The "Apply FasterCache" node."""
from __future__ import annotations

from comfy_api.latest import io

from ..cache_core.config import CacheWindow
from ..cache_core.methods.fastercache import FasterCacheConfig
from .base import CacheNode
from .common_inputs import named_window_inputs
from .naming import ATTENTION

_WINDOWS = ("attention", "uncond", "low_freq", "high_freq")


class ApplyFasterCache(CacheNode):
    DISABLED = "every N is below 2, FasterCache disabled"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.schema(
            node_id="DitCache.ApplyFasterCache",
            display_name="Apply FasterCache",
            category=ATTENTION, advanced=("temporal_skip", "attention_weight", "alpha_low", "alpha_high"),
            description=(
                "FasterCache: inside a window, attention outputs are extrapolated from the last two computed ones "
                "(F1 + (F1 - F2) * weight), and on most CFG steps the unconditional branch is not run but rebuilt "
                "from the conditional one plus stored low/high-frequency differences. Defaults are diffusers' except uncond_skip (3, not 5)."
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
                io.Int.Input("uncond_skip", default=3, min=0, max=100,
                             tooltip="The unconditional (negative prompt) branch runs once every N steps inside "
                                     "its window and is rebuilt from the conditional one in between. 0 or 1 = "
                                     "always run. Has no effect at CFG 1. Default 3 (diffusers: 5, which fell below 30 "
                                     "dB PSNR on two of the three trained models at CFG 3.5; 3 stayed above 34)."),
                *named_window_inputs("uncond", "unconditional-branch reuse", 0.359, 1.0),
                io.Float.Input("alpha_low", default=1.1, min=0.0, max=5.0, step=0.01,
                               tooltip="Each rebuild multiplies the stored low-frequency difference by this inside "
                                       "the low_freq window (compounding)."),
                io.Float.Input("alpha_high", default=1.1, min=0.0, max=5.0, step=0.01,
                               tooltip="The same for the high-frequency difference, inside the high_freq window."),
                *named_window_inputs("low_freq", "the low-frequency weighting", 0.099, 0.901),
                *named_window_inputs("high_freq", "the high-frequency weighting", 0.699, 1.0),
            ],
            output="The model with FasterCache attached.",
        )

    @classmethod
    def validate_inputs(cls, attention_weight: float | None = None, alpha_low: float | None = None,
                        alpha_high: float | None = None, attention_start_percent: float | None = None,
                        attention_end_percent: float | None = None, uncond_start_percent: float | None = None,
                        uncond_end_percent: float | None = None, low_freq_start_percent: float | None = None,
                        low_freq_end_percent: float | None = None, high_freq_start_percent: float | None = None,
                        high_freq_end_percent: float | None = None) -> bool | str:
        return cls.check_inputs(locals())  # every float, combo and text input, by name

    @classmethod
    def make_config(cls, model, spatial_skip: int, temporal_skip: int, attention_weight: float, uncond_skip: int,
                    alpha_low: float, alpha_high: float, **windows: float) -> FasterCacheConfig:
        return FasterCacheConfig(
            spatial_skip=spatial_skip, temporal_skip=temporal_skip, attention_weight=attention_weight,
            uncond_skip=uncond_skip, alpha_low=alpha_low, alpha_high=alpha_high,
            **{f"{w}_window": CacheWindow(windows[f"{w}_start_percent"], windows[f"{w}_end_percent"])
               for w in _WINDOWS})
