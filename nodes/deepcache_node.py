"""The "Apply DeepCache" node (UNet models: SD1.5, SD2, SDXL)."""
from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from ..cache_core.methods.deepcache import MAX_DEPTH, DeepCacheConfig
from .base import CacheNode
from .common_inputs import window_inputs
from .naming import BLOCKS


DESCRIPTION = (
    "DeepCache (UNet models: SD1.5, SD2, SDXL): the full UNet runs once every N steps; in between only the shallow "
    "branch (the first input blocks and the matching last output blocks) runs and the deep feature is reused from "
    "the last full step. Other models pass through unchanged with a warning."
)


class ApplyDeepCache(CacheNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.schema(
            node_id="DitCache.ApplyDeepCache", display_name="Apply DeepCache", description=DESCRIPTION, category=BLOCKS,
            inputs=[
                io.Model.Input("model", tooltip="A UNet model (SD1.5, SD2, SDXL) to speed up."),
                io.Int.Input(
                    "interval", default=3, min=1, max=1000,
                    tooltip="N: one full step in every N; the N - 1 steps in between run only the shallow branch. "
                            "Higher = faster, lower quality. 1 disables (model unchanged). 3 is the paper's "
                            "2.3x SD1.5 setting; 2 is mild, 5 aggressive.",
                ),
                io.Int.Input(
                    "branch_depth", default=1, min=1, max=MAX_DEPTH,
                    tooltip="Input blocks after the stem convolution that always run, with the output blocks reading "
                            "their skip connections. 1 (the paper's default) is fastest; deeper = slower, closer to "
                            "uncached. At most 10 on SD1.5/SD2, 7 on SDXL (an error before sampling otherwise).",
                ),
                *window_inputs(),
                io.Int.Input(
                    "warmup_steps", default=0, min=0, max=1000,
                    tooltip="The first steps of each CFG stream (cond/uncond) always run the full UNet.",
                ),
            ],
            output="The model with DeepCache attached.",
        )

    @classmethod
    def validate_inputs(cls, start_percent: float | None = None, end_percent: float | None = None) -> bool | str:
        return cls.check_inputs(locals())  # every float, combo and text input, by name

    @classmethod
    def off_reason(cls, **inputs: Any) -> str | None:
        if inputs.get("interval") == 1:
            return "interval 1, every step runs the full UNet"
        return None

    @classmethod
    def make_config(cls, model, interval: int, branch_depth: int, start_percent: float, end_percent: float,
                    warmup_steps: int) -> DeepCacheConfig:
        return DeepCacheConfig(interval=interval, branch_depth=branch_depth, warmup_steps=warmup_steps,
                               start_percent=start_percent, end_percent=end_percent)
