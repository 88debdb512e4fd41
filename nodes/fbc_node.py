"""The "Apply FirstBlockCache" node."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..cache_core.methods.fbc import FirstBlockCacheConfig, FirstBlockCachePolicy
from ..hosts.comfy.patch import apply_cache
from .common_inputs import gate_inputs, validate_window

log = logging.getLogger("dit_cache")


class ApplyFirstBlockCache(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DitCache.ApplyFirstBlockCache",
            display_name="Apply FirstBlockCache",
            category="dit-cache",
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
            outputs=[io.Model.Output(tooltip="The model with First Block Cache attached.")],
            hidden=[io.Hidden.unique_id],  # the node's graph id: the statistics panel shows runs per node
        )

    @classmethod
    def validate_inputs(cls, start_percent: float = 0.0, end_percent: float = 1.0, **kwargs) -> bool | str:
        return validate_window(start_percent, end_percent)

    @classmethod
    def execute(cls, model, threshold: float, start_percent: float, end_percent: float,
                max_consecutive_skips: int, warmup_steps: int) -> io.NodeOutput:
        if threshold == 0:
            log.info("[dit-cache] Apply FirstBlockCache: threshold 0, cache disabled (model unchanged)")
            return io.NodeOutput(model)
        config = FirstBlockCacheConfig(threshold=threshold, warmup_steps=warmup_steps,
                                       max_consecutive_skips=max_consecutive_skips,
                                       start_percent=start_percent, end_percent=end_percent)
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        return io.NodeOutput(apply_cache(model, FirstBlockCachePolicy(config), "Apply FirstBlockCache",
                                         None if node_id is None else str(node_id)))
