"""The "Apply TeaCache" node."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..cache_core.layout import COMFY_LAYOUTS, layout_for_module
from ..cache_core.methods.teacache import (AUTO_THRESHOLD, CHOICES, RETIRED, TeaCacheConfig, auto_threshold,
                                          resolve_coefficients)
from ..cache_core.methods.teacache_signals import signal_fn
from ..cache_core.text import plain
from .base import CacheNode
from .common_inputs import max_consecutive_skips_input, window_inputs
from .naming import STEPS

log = logging.getLogger("dit_cache")


class ApplyTeaCache(CacheNode):
    OFF_INPUT = "rel_l1_threshold"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.schema(
            node_id="DitCache.ApplyTeaCache",
            display_name="Apply TeaCache",
            category=STEPS,
            description=(
                "TeaCache: accumulates the (rescaled) relative change of the first block's timestep-modulated "
                "input and skips the whole transformer while it stays under the threshold. First and last steps "
                "always compute."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (Flux, Wan, Qwen-Image, Chroma) to speed up."),
                io.Float.Input("rel_l1_threshold", default=-1.0, min=-1.0, max=10.0, step=0.01,
                               tooltip="Accumulated change that still skips. Higher = faster, lower quality. "
                                       f"-1 = auto: {AUTO_THRESHOLD['flux']:g} with Flux's published coefficients "
                                       f"(Flux, Flux Kontext), {AUTO_THRESHOLD['raw']:g} with 'raw' (Wan, Qwen-Image, "
                                       "Chroma: a smaller scale). 0 disables. Flux: 0.25 ≈ 1.5x, 0.4 ≈ 1.8x, 0.6 ≈ "
                                       "2x. Raw: 0.05 careful, 0.1-0.25 faster."),
                io.Combo.Input("coefficients", options=list(CHOICES), default="auto",
                               tooltip="Rescaling polynomial: 'auto' uses Flux's published one on Flux and Flux "
                                       "Kontext and 'raw' (no rescaling) on Wan, Qwen-Image and Chroma, where none "
                                       "is published for the signal read. 'flux' / 'raw' force one."),
                *window_inputs(),
                max_consecutive_skips_input(),
            ],
            output="The model with TeaCache attached.",
        )

    @classmethod
    def validate_inputs(cls, rel_l1_threshold: float | None = None, coefficients: str | None = None,
                        start_percent: float | None = None, end_percent: float | None = None) -> bool | str:
        if coefficients in RETIRED:  # a workflow saved before these choices were retired: runs "auto" (warned)
            coefficients = "auto"
        checked = cls.check_inputs(locals())  # every float, combo and text input, by name
        if (checked is True and isinstance(rel_l1_threshold, (int, float)) and -1 < rel_l1_threshold < 0):
            return f"rel_l1_threshold must be -1 (auto), 0 (off) or above 0, got {rel_l1_threshold:g}"
        return checked

    @classmethod
    def make_config(cls, model, rel_l1_threshold: float, coefficients: str, start_percent: float,
                    end_percent: float, max_consecutive_skips: int) -> TeaCacheConfig | None:
        """The coefficients follow the model's family ("auto"), the threshold the coefficients (-1); a family
        without a known signal: None."""
        layout = layout_for_module(model.get_model_object("diffusion_model"), COMFY_LAYOUTS)
        family = layout.family if layout is not None else ""
        if layout is not None and signal_fn(layout.signal) is None:
            log.warning("[dit-cache] %s: no first-block signal is known for %s models yet; model left unchanged",
                        cls.label(), family)
            return None
        if coefficients in RETIRED:
            log.warning("[dit-cache] %s: coefficients '%s' are no longer offered (TeaCache reads no signal of that "
                        "family); using 'auto'", cls.label(), plain(coefficients))
        if rel_l1_threshold < 0 and rel_l1_threshold != -1:
            raise ValueError(f"{cls.label()}: rel_l1_threshold must be -1 (auto), 0 (off) or above 0, got "
                             f"{rel_l1_threshold:g}")
        name, coeffs = resolve_coefficients(coefficients, family)
        threshold = auto_threshold(name) if rel_l1_threshold < 0 else rel_l1_threshold
        return TeaCacheConfig(threshold=threshold, coefficients=coeffs, coefficients_name=name,
                              max_consecutive_skips=max_consecutive_skips, start_percent=start_percent,
                              end_percent=end_percent)
