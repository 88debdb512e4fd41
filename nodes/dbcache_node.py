"""The "Apply DBCache" node."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..cache_core.methods.dbcache import DBCacheConfig, DBCachePolicy
from ..hosts.comfy.patch import apply_cache, block_count
from .common_inputs import validate_window, window_inputs

log = logging.getLogger("dit_cache")


class ApplyDBCache(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DitCache.ApplyDBCache",
            display_name="Apply DBCache",
            category="dit-cache",
            description=(
                "DBCache (cache-dit's dual block cache): always runs the first Fn and the last Bn transformer "
                "blocks; while the first Fn blocks' result changes less than the threshold, the blocks in "
                "between reuse their cached result (or, with TaylorSeer order 1-2, a prediction of it)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (Flux, Wan, Qwen-Image, ...) to speed up."),
                io.Int.Input("Fn", default=8, min=1, max=200,
                             tooltip="Front blocks that always run; the decision reads their result. More = "
                                     "better decisions and quality, less saved. Must leave blocks to cache."),
                io.Int.Input("Bn", default=0, min=0, max=200,
                             tooltip="Back blocks that always run after the cached middle blocks (they correct "
                                     "the reused result). 0 = none."),
                io.Float.Input("threshold", default=0.08, min=0.0, max=1.0, step=0.005,
                               tooltip="Largest relative change of the Fn blocks' result that still caches. Higher "
                                       "= faster, lower quality. 0 disables the cache (model unchanged)."),
                io.Int.Input("warmup_steps", default=8, min=0, max=1000,
                             tooltip="The first steps of each CFG stream (cond/uncond) always compute."),
                io.Int.Input("max_cached_steps", default=-1, min=-1, max=1000,
                             tooltip="Most cached steps per CFG stream in a run; later steps compute. -1 = no limit."),
                io.Int.Input("max_consecutive_cached_steps", default=-1, min=-1, max=1000,
                             tooltip="After this many cached steps in a row the next step computes. -1 = no limit."),
                io.Int.Input("taylorseer_order", default=0, min=0, max=2,
                             tooltip="0: reuse the cached middle blocks' result. 1 or 2: predict it from the "
                                     "last computed steps (TaylorSeer); keeps order + 1 copies per CFG stream."),
                *window_inputs(),
            ],
            outputs=[io.Model.Output(tooltip="The model with DBCache attached.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, start_percent: float = 0.0, end_percent: float = 1.0, **kwargs) -> bool | str:
        return validate_window(start_percent, end_percent)

    @classmethod
    def execute(cls, model, Fn: int, Bn: int, threshold: float, warmup_steps: int, max_cached_steps: int,
                max_consecutive_cached_steps: int, taylorseer_order: int, start_percent: float,
                end_percent: float) -> io.NodeOutput:
        if threshold == 0:
            log.info("[dit-cache] Apply DBCache: threshold 0, cache disabled (model unchanged)")
            return io.NodeOutput(model)
        config = DBCacheConfig(front_blocks=Fn, back_blocks=Bn, threshold=threshold, warmup_steps=warmup_steps,
                               max_cached_steps=max_cached_steps,
                               max_consecutive_skips=max_consecutive_cached_steps,
                               taylorseer_order=taylorseer_order, start_percent=start_percent,
                               end_percent=end_percent)
        total = block_count(model)
        if total is not None:
            config.check_blocks(total)  # ValueError naming the block count, before sampling
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        return io.NodeOutput(apply_cache(model, DBCachePolicy(config), "Apply DBCache",
                                         None if node_id is None else str(node_id)))
