"""The "PAB Config" node (Pyramid Attention Broadcast): MODEL in, MODEL out."""
from __future__ import annotations

from comfy_api.latest import io

from ..cache_core.component_runner import KINDS
from ..cache_core.config import CacheWindow
from ..cache_core.methods.pab import PABConfig
from .base import CacheNode
from .common_inputs import named_window_inputs
from .naming import ATTENTION

# (kind, default N, what it is); windows default to diffusers' timesteps (100, 800) = 0.2-0.9 of the schedule
_KINDS = (("spatial", 2, "self/joint attention"), ("temporal", 0, "temporal attention"),
          ("cross", 6, "cross-attention to the text"))


class PABConfigNode(CacheNode):
    DISABLED = "no attention kind has N >= 2, PAB disabled"

    @classmethod
    def define_schema(cls) -> io.Schema:
        inputs: list = [io.Model.Input("model", tooltip="The diffusion model (HunyuanVideo, LTXV, Wan, Flux, ...).")]
        for kind, n, what in _KINDS:
            inputs.append(io.Int.Input(
                f"{kind}_skip", default=n, min=0, max=100,
                tooltip=f"N for {what}: inside its window it is computed once every N calls and the last output "
                        f"is reused in between. 0 or 1 = always computed. PAB's published video settings: "
                        f"spatial 2, temporal 4, cross 6." + (
                            " No DiT family that ComfyUI loads has separate temporal attention (their attention "
                            "is full 3-D), so this applies to none of them today." if kind == "temporal" else "")))
        for kind, _, what in _KINDS:
            inputs += named_window_inputs(kind, f"reusing {what}", 0.2, 0.9)
        return cls.schema(
            node_id="DitCache.PABConfig",
            display_name="PAB Config",
            category=ATTENTION, advanced=("temporal_skip",),
            description=(
                "Pyramid Attention Broadcast: attention outputs change little between neighbouring steps (cross-"
                "attention least, then temporal, then spatial). Inside a window, each attention is computed once "
                "every N calls and its last output reused in between, with one N per attention kind."
            ),
            inputs=inputs,
            output="The model with PAB attached.",
        )

    @classmethod
    def validate_inputs(cls, spatial_start_percent: float | None = None, spatial_end_percent: float | None = None,
                        temporal_start_percent: float | None = None, temporal_end_percent: float | None = None,
                        cross_start_percent: float | None = None,
                        cross_end_percent: float | None = None) -> bool | str:
        return cls.check_inputs(locals())  # every float, combo and text input, by name

    @classmethod
    def make_config(cls, model, **inputs) -> PABConfig:
        return PABConfig(
            **{f"{k}_skip": inputs[f"{k}_skip"] for k in KINDS},
            **{f"{k}_window": CacheWindow(inputs[f"{k}_start_percent"], inputs[f"{k}_end_percent"]) for k in KINDS},
        )
