"""The "Apply Adaptive Cache" node (EasyCache-style)."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..cache_core.methods.adaptive import AdaptiveCacheConfig, AdaptiveCachePolicy
from ..hosts.comfy.patch import apply_cache
from .common_inputs import gate_inputs, validate_window

log = logging.getLogger("dit_cache")


class ApplyAdaptiveCache(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DitCache.ApplyAdaptiveCache",
            display_name="Apply Adaptive Cache",
            category="dit-cache",
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
            outputs=[io.Model.Output(tooltip="The model with the adaptive cache attached.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, start_percent: float = 0.15, end_percent: float = 1.0, **kwargs) -> bool | str:
        return validate_window(start_percent, end_percent)

    @classmethod
    def execute(cls, model, threshold: float, start_percent: float, end_percent: float, max_consecutive_skips: int,
                warmup_steps: int) -> io.NodeOutput:
        if threshold == 0:
            log.info("[dit-cache] Apply Adaptive Cache: threshold 0, cache disabled (model unchanged)")
            return io.NodeOutput(model)
        config = AdaptiveCacheConfig(threshold=threshold, start_percent=start_percent, end_percent=end_percent,
                                     warmup_steps=warmup_steps, max_consecutive_skips=max_consecutive_skips)
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        return io.NodeOutput(apply_cache(model, AdaptiveCachePolicy(config), "Apply Adaptive Cache",
                                         None if node_id is None else str(node_id)))
