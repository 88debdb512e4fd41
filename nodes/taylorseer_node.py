"""The "Apply TaylorSeer" node."""
from __future__ import annotations

from comfy_api.latest import io

from ..cache_core.forecasters import FORECASTERS
from ..cache_core.methods.taylorseer import FACTOR_DTYPES, PREDICT_TARGETS, TaylorSeerConfig
from .base import CacheNode
from .naming import BLOCKS


class ApplyTaylorSeer(CacheNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.schema(
            node_id="DitCache.ApplyTaylorSeer",
            display_name="Apply TaylorSeer",
            category=BLOCKS, advanced=("final_full_steps", "predict", "factor_dtype", "forecaster", "check_blocks",
                                       "check_threshold", "uncond_interval"),
            description=(
                "TaylorSeer: computes the transformer on a fixed schedule (one step in every 'cache_interval') "
                "and, on the steps in between, predicts its result from the last computed steps with a Taylor "
                "expansion instead of reusing it: the block stack's output, or (predict = 'attention+MLP "
                "outputs') every attention and feed-forward output inside the blocks."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (Flux, Wan, Qwen-Image, ...) to speed up."),
                io.Int.Input("cache_interval", default=5, min=1, max=100,
                             tooltip="One computed step in every this many; the others are predicted. Higher = "
                                     "faster, lower quality. 1 disables the cache (model unchanged)."),
                io.Int.Input("warmup_steps", default=3, min=1, max=1000,
                             tooltip="The first steps of each CFG stream always compute (they seed the prediction)."),
                io.Int.Input("final_full_steps", default=0, min=0, max=1000,
                             tooltip="The last steps always compute (fine detail forms there). 0 = none."),
                io.Int.Input("max_order", default=1, min=0, max=2,
                             tooltip="Taylor order: 0 reuses the last result, 1 extrapolates linearly, 2 also "
                                     "uses the curvature. Memory per CFG stream grows with order + 1."),
                io.Combo.Input("predict", options=list(PREDICT_TARGETS), default=PREDICT_TARGETS[0],
                               tooltip="What is predicted on skipped steps. 'block outputs': the output of the "
                                       "transformer block stack (per block group, e.g. Flux's double and single "
                                       "blocks); the blocks are skipped. 'attention+MLP outputs' (the TaylorSeer "
                                       "paper's default): the output of every attention and feed-forward layer "
                                       "inside every block; the rest of each block (projections, modulation, "
                                       "residual adds) still runs, so it is slower but closer to the uncached "
                                       "result. Memory: (max_order + 1) factors per attention/feed-forward "
                                       "output per CFG stream, tens of times the 'block outputs' mode (Flux.1 "
                                       "1024x1024, order 1, bfloat16: about 4 GiB per stream vs 108 MiB)."),
                io.Combo.Input("factor_dtype", options=list(FACTOR_DTYPES), default="bfloat16",
                               tooltip="Precision the Taylor factors are stored in: bfloat16 halves the memory of "
                                       "float32 (diffusers' default); float32 is the most accurate."),
                io.Combo.Input("forecaster", options=list(FORECASTERS), default="taylor",
                               tooltip="How skipped steps are predicted. 'taylor': TaylorSeer's Taylor series in "
                                       "step counts (max_order). 'adams-bashforth 1/2/3': the polynomial through "
                                       "the last 2/3/4 computed steps on the sampler's actual sigmas (AB-Cache; "
                                       "non-uniform steps exact). 'foca': FoCa's forecast-then-calibrate (BDF2 "
                                       "slope, Heun correction; damps the curvature). 'hermite': HiCache's scaled "
                                       "Hermite polynomials (order max_order, damped). Memory per CFG stream: "
                                       "taylor/hermite order + 1 copies, AB-k k + 1, foca 3."),
                io.Int.Input("check_blocks", default=0, min=0, max=16,
                             tooltip="Checked predictions (SpeCa): the first this many blocks always run; on a "
                                     "predicted step their result is compared with its forecast and the step is "
                                     "computed in full when the error exceeds check_threshold, so the interval "
                                     "adapts per image (cache_interval is then the longest). Costs these blocks "
                                     "on every predicted step. 0 = off."),
                io.Float.Input("check_threshold", default=0.1, min=0.0, max=10.0, step=0.01,
                               tooltip="With check_blocks: largest relative error of the checked blocks' forecast "
                                       "that still predicts the step. Lower = more computed steps, better quality."),
                io.Int.Input("uncond_interval", default=0, min=0, max=100,
                             tooltip="CFG > 1: compute the negative (uncond) branch on only one in this many of "
                                     "the positive branch's computed steps; in between it is rebuilt from the "
                                     "positive output plus a forecast of their difference (FasterCache's "
                                     "observation: it changes slowly), halving those calls' batch. 0 or 1 = off "
                                     "(both branches on one schedule). Block outputs mode only."),
            ],
            output="The model with TaylorSeer attached.",
        )

    @classmethod
    def validate_inputs(cls, predict: str | None = None, factor_dtype: str | None = None,
                        forecaster: str | None = None, check_threshold: float | None = None) -> bool | str:
        return cls.check_inputs(locals())  # every float, combo and text input, by name

    @classmethod
    def off_reason(cls, cache_interval: int, **_) -> str | None:
        return "cache_interval 1 computes every step, cache disabled" if cache_interval == 1 else None

    @classmethod
    def make_config(cls, model, cache_interval: int, warmup_steps: int, final_full_steps: int, max_order: int,
                    predict: str, factor_dtype: str, forecaster: str = "taylor", check_blocks: int = 0,
                    check_threshold: float = 0.1, uncond_interval: int = 0) -> TaylorSeerConfig:
        return TaylorSeerConfig(cache_interval=cache_interval, warmup_steps=warmup_steps,
                                final_full_steps=final_full_steps, max_order=max_order, predict=predict,
                                factor_dtype=factor_dtype, forecaster=forecaster, check_blocks=check_blocks,
                                check_threshold=check_threshold, uncond_interval=uncond_interval)
