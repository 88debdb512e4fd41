"""The "Apply FirstBlockCache" node."""
from __future__ import annotations

from comfy_api.latest import io

from ..cache_core.methods.fbc import FirstBlockCacheConfig
from .base import CacheNode
from .common_inputs import gate_inputs
from .naming import STEPS


class ApplyFirstBlockCache(CacheNode):
    OFF_INPUT = "threshold"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.schema(
            node_id="DitCache.ApplyFirstBlockCache",
            display_name="Apply FirstBlockCache",
            category=STEPS,
            description=(
                "First Block Cache: runs the first transformer block every step and, while its output changes "
                "less than the threshold since the last full step, reuses the cached result of all other blocks."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (Flux, Wan, Qwen-Image, ...) to speed up."),
                io.Float.Input(
                    "threshold", default=0.08, min=0.0, max=1.0, step=0.005,
                    tooltip="Largest relative change of the first block's residual that still reuses the cache. "
                            "Higher = faster, lower quality. 0 disables the cache (model unchanged). "
                            "Start at 0.08 for Flux (28 steps), 0.1 for Wan/HunyuanVideo.",
                ),
                *gate_inputs(),
            ],
            output="The model with First Block Cache attached.",
        )

    @classmethod
    def validate_inputs(cls, threshold: float | None = None, start_percent: float | None = None,
                        end_percent: float | None = None) -> bool | str:
        return cls.check_inputs(locals())  # every float, combo and text input, by name

    @classmethod
    def make_config(cls, model, threshold: float, start_percent: float, end_percent: float,
                    max_consecutive_skips: int, warmup_steps: int) -> FirstBlockCacheConfig:
        return FirstBlockCacheConfig(threshold=threshold, warmup_steps=warmup_steps,
                                     max_consecutive_skips=max_consecutive_skips,
                                     start_percent=start_percent, end_percent=end_percent)
