"""The "Apply SeaCache" node. Defaults: diffusers 0.42's ``SeaCacheConfig`` (threshold 0.25, residual order 1,
retention 1 step, end 1 step, at most 2 cached steps in a row, power exponent 3)."""
from __future__ import annotations

from comfy_api.latest import io

from ..cache_core.methods.seacache import SeaCacheConfig
from .base import CacheNode
from .common_inputs import window_inputs
from .naming import STEPS


class ApplySeaCache(CacheNode):
    OFF_INPUT = "threshold"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.schema(
            node_id="DitCache.ApplySeaCache",
            display_name="Apply SeaCache",
            category=STEPS,
            advanced=("residual_order", "retention_steps", "cache_end_steps", "max_consecutive_cached", "power_exp"),
            description=(
                "SeaCache: filters the noisy latent with a noise-level-aware spectral filter every step and, while "
                "the filtered latent's accumulated relative change stays under the threshold, skips the whole "
                "transformer and reuses (or extrapolates) its last residual."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (Flux, Wan, Qwen-Image, ...) to speed up."),
                io.Float.Input(
                    "threshold", default=0.25, min=0.0, max=10.0, step=0.01,
                    tooltip="Accumulated relative change of the filtered latent that still skips (diffusers' "
                            "default 0.25). Higher = faster, lower quality. 0 disables the cache (model unchanged).",
                ),
                io.Int.Input(
                    "residual_order", default=1, min=0, max=1,
                    tooltip="How a skipped step's residual is predicted: 0 reuses the last computed one, 1 "
                            "extrapolates linearly from the last two computed steps (default).",
                ),
                io.Int.Input(
                    "retention_steps", default=1, min=0, max=1000,
                    tooltip="The first steps always compute (default 1).",
                ),
                io.Int.Input(
                    "cache_end_steps", default=1, min=0, max=1000,
                    tooltip="The last steps always compute (default 1).",
                ),
                io.Int.Input(
                    "max_consecutive_cached", default=2, min=0, max=1000,
                    tooltip="After this many skipped steps in a row the next step computes (default 2). "
                            "0 = no limit.",
                ),
                io.Float.Input(
                    "power_exp", default=3.0, min=0.1, max=10.0, step=0.1,
                    tooltip="Exponent p of the clean-signal spectrum 1/|f|^p the filter assumes (3, the "
                            "paper's value for video features, is the default).",
                ),
                *window_inputs(),
            ],
            output="The model with SeaCache attached.",
        )

    @classmethod
    def validate_inputs(cls, threshold: float | None = None, power_exp: float | None = None,
                        start_percent: float | None = None, end_percent: float | None = None) -> bool | str:
        return cls.check_inputs(locals())  # every float, combo and text input, by name

    @classmethod
    def make_config(cls, model, threshold: float, residual_order: int, retention_steps: int, cache_end_steps: int,
                    max_consecutive_cached: int, power_exp: float, start_percent: float,
                    end_percent: float) -> SeaCacheConfig:
        return SeaCacheConfig(threshold=threshold, residual_order=residual_order, retention_steps=retention_steps,
                              cache_end_steps=cache_end_steps, max_consecutive_cached=max_consecutive_cached,
                              power_exp=power_exp, start_percent=start_percent, end_percent=end_percent)
