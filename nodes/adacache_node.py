"""The "Apply AdaCache" node (content-adaptive caching with motion regularisation, arXiv 2411.02397)."""
from __future__ import annotations

from comfy_api.latest import io

from ..cache_core.methods.adacache import FAST_30, SLOW_30, STEPS_100, AdaCacheConfig, parse_codebook
from .base import CacheNode
from .common_inputs import gate_inputs
from .naming import STEPS


class ApplyAdaCache(CacheNode):
    OFF_INPUT = "threshold_scale"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.schema(
            node_id="DitCache.ApplyAdaCache",
            display_name="Apply AdaCache",
            category=STEPS, advanced=("motion_regularization", "block"),
            description=(
                "AdaCache (content-adaptive caching for video DiTs): after every computed step it measures how much "
                "a middle block's residual changed since the last computed step and looks up in a codebook how many "
                "of the following steps reuse the cache; with motion regularisation a video with more motion "
                "(latent frame differences) gets a lower caching rate. Not the EasyCache-style Adaptive Cache."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (Wan, HunyuanVideo, LTXV, Mochi, Flux, ...)."),
                io.String.Input(
                    "codebook", default=SLOW_30,
                    tooltip="threshold:rate entries. The change per step of the observed residual picks the first "
                            "entry whose threshold it is under; rate n = this step plus n - 1 reused steps. "
                            f"Paper presets (Open-Sora): slow 30 steps {SLOW_30} (the default: at 20 steps the "
                            f"fast one fell below 30 dB PSNR on every trained test model, the slow one kept "
                            f"31-46 dB); fast 30 steps {FAST_30}; 100 steps {STEPS_100}.",
                ),
                io.Float.Input(
                    "threshold_scale", default=1.0, min=0.0, max=10.0, step=0.05,
                    tooltip="Multiplies every codebook threshold: above 1 = longer caching (faster, lower quality), "
                            "below 1 = shorter. 0 disables the cache (model unchanged).",
                ),
                io.Boolean.Input(
                    "motion_regularization", default=True,
                    tooltip="MoReg: on videos, lower the caching rate for high-motion content (latent frame "
                            "differences of the observed residual, plus their change). No effect on images.",
                ),
                io.Int.Input(
                    "block", default=-1, min=-1, max=1000,
                    tooltip="The block whose residual drives the schedule, counted over all blocks from 0. -1 = "
                            "the middle block (the paper observes block 13 of 28); past the last = the last.",
                ),
                *gate_inputs(),
            ],
            output="The model with AdaCache attached.",
        )

    @classmethod
    def validate_inputs(cls, codebook: str | None = None, threshold_scale: float | None = None,
                        start_percent: float | None = None, end_percent: float | None = None) -> bool | str:
        checked = cls.check_inputs(locals())  # every float, combo and text input, by name
        if checked is True and codebook is not None:
            try:
                parse_codebook(codebook)
            except ValueError as e:
                return str(e)
        return checked

    @classmethod
    def make_config(cls, model, codebook: str, threshold_scale: float, motion_regularization: bool, block: int,
                    start_percent: float, end_percent: float, max_consecutive_skips: int,
                    warmup_steps: int) -> AdaCacheConfig:
        return AdaCacheConfig(codebook=codebook, threshold_scale=threshold_scale,
                              motion_regularization=motion_regularization, block=block, start_percent=start_percent,
                              end_percent=end_percent, max_consecutive_skips=max_consecutive_skips,
                              warmup_steps=warmup_steps)
