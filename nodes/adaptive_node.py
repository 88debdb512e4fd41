"""The "Apply AdaptiveCache" node (EasyCache-style)."""
from __future__ import annotations

from comfy_api.latest import io

from ..cache_core.methods.adaptive import AdaptiveCacheConfig
from .base import CacheNode
from .common_inputs import gate_inputs
from .naming import STEPS


class ApplyAdaptiveCache(CacheNode):
    OFF_INPUT = "threshold"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.schema(
            node_id="DitCache.ApplyAdaptiveCache",
            display_name="Apply AdaptiveCache",
            category=STEPS,
            description=(
                "Adaptive cache (EasyCache-style): estimates from the change of the transformer's input, scaled by "
                "how strongly the transformer last turned input changes into output changes, how much its result "
                "has drifted; skips the whole transformer while the accumulated estimate stays under the threshold. "
                "The last step always computes."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (Flux, Wan, Qwen-Image, ...) to speed up."),
                io.Float.Input("threshold", default=0.2, min=0.0, max=5.0, step=0.01,
                               tooltip="Accumulated estimated relative change of the transformer's result that "
                                       "still skips. Higher = faster, lower quality. 0 disables (model unchanged)."),
                *gate_inputs(start=0.15),
            ],
            output="The model with the adaptive cache attached.",
        )

    @classmethod
    def validate_inputs(cls, threshold: float | None = None, start_percent: float | None = None,
                        end_percent: float | None = None) -> bool | str:
        return cls.check_inputs(locals())  # every float, combo and text input, by name

    @classmethod
    def make_config(cls, model, threshold: float, start_percent: float, end_percent: float,
                    max_consecutive_skips: int, warmup_steps: int) -> AdaptiveCacheConfig:
        return AdaptiveCacheConfig(threshold=threshold, start_percent=start_percent, end_percent=end_percent,
                                   warmup_steps=warmup_steps, max_consecutive_skips=max_consecutive_skips)
