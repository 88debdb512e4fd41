"""The "Apply DBCache" node."""
from __future__ import annotations

from comfy_api.latest import io

from ..cache_core.forecasters import FORECASTERS
from ..cache_core.methods.dbcache import DBCacheConfig
from ..hosts.comfy.patch import block_count
from .base import CacheNode
from .common_inputs import window_inputs
from .naming import BLOCKS


class ApplyDBCache(CacheNode):
    OFF_INPUT = "threshold"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.schema(
            node_id="DitCache.ApplyDBCache",
            display_name="Apply DBCache",
            category=BLOCKS, advanced=("max_cached_steps", "max_consecutive_cached_steps", "calibrator"),
            description=(
                "DBCache (cache-dit's dual block cache): always runs the first Fn and the last Bn transformer "
                "blocks; while the first Fn blocks' result changes less than the threshold, the blocks in "
                "between reuse their cached result (or, with TaylorSeer order 1-2, a prediction of it)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (Flux, Wan, Qwen-Image, ...) to speed up."),
                io.Int.Input("Fn", display_name="front blocks (Fn)", default=8, min=1, max=200,
                             tooltip="Front blocks that always run; the decision reads their result. More = "
                                     "better decisions and quality, less saved. Must leave blocks to cache."),
                io.Int.Input("Bn", display_name="back blocks (Bn)", default=0, min=0, max=200,
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
                io.Combo.Input("calibrator", options=list(FORECASTERS), default="taylor",
                               tooltip="With taylorseer_order 1-2: how the middle blocks' result is predicted. "
                                       "'taylor': cache-dit's TaylorSeer calibrator. 'adams-bashforth 1/2/3': the "
                                       "polynomial through the last 2/3/4 computed steps on the sampler's sigmas "
                                       "(keeps k + 1 copies per CFG stream). 'foca': forecast then calibrate "
                                       "(3 copies). 'hermite': HiCache's scaled Hermite series (order + 1)."),
            ],
            output="The model with DBCache attached.",
        )

    @classmethod
    def validate_inputs(cls, threshold: float | None = None, start_percent: float | None = None,
                        end_percent: float | None = None, calibrator: str | None = None) -> bool | str:
        return cls.check_inputs(locals())  # every float, combo and text input, by name

    @classmethod
    def make_config(cls, model, Fn: int, Bn: int, threshold: float, warmup_steps: int, max_cached_steps: int,
                    max_consecutive_cached_steps: int, taylorseer_order: int, start_percent: float,
                    end_percent: float, calibrator: str = "taylor") -> DBCacheConfig:
        return DBCacheConfig(front_blocks=Fn, back_blocks=Bn, threshold=threshold, warmup_steps=warmup_steps,
                             max_cached_steps=max_cached_steps, max_consecutive_skips=max_consecutive_cached_steps,
                             taylorseer_order=taylorseer_order, calibrator=calibrator, start_percent=start_percent, end_percent=end_percent)

    @classmethod
    def make_policy(cls, model, config: DBCacheConfig):
        total = block_count(model)
        if total is not None:
            config.check_blocks(total)  # ValueError naming the block count, before sampling
        return super().make_policy(model, config)
