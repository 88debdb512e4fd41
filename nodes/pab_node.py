"""The "PAB Config" node (Pyramid Attention Broadcast): MODEL in, MODEL out."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..cache_core.component_runner import KINDS
from ..cache_core.config import CacheWindow
from ..cache_core.methods.pab import PABConfig, PABPolicy
from ..hosts.comfy.patch import apply_cache
from .common_inputs import named_window_inputs, validate_windows

log = logging.getLogger("dit_cache")

# (kind, default N, what it is); windows default to diffusers' timesteps (100, 800) = 0.2-0.9 of the schedule
_KINDS = (("spatial", 2, "self/joint attention"), ("temporal", 0, "temporal attention"),
          ("cross", 6, "cross-attention to the text"))


class PABConfigNode(io.ComfyNode):
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
        return io.Schema(
            node_id="DitCache.PABConfig",
            display_name="PAB Config",
            category="dit-cache",
            description=(
                "Pyramid Attention Broadcast: attention outputs change little between neighbouring steps (cross-"
                "attention least, then temporal, then spatial). Inside a window, each attention is computed once "
                "every N calls and its last output reused in between, with one N per attention kind."
            ),
            inputs=inputs,
            outputs=[io.Model.Output(tooltip="The model with PAB attached.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, **kwargs) -> bool | str:
        return validate_windows(kwargs, KINDS)

    @classmethod
    def execute(cls, model, **kwargs) -> io.NodeOutput:
        config = PABConfig(
            **{f"{k}_skip": kwargs[f"{k}_skip"] for k in KINDS},
            **{f"{k}_window": CacheWindow(kwargs[f"{k}_start_percent"], kwargs[f"{k}_end_percent"]) for k in KINDS},
        )
        if not config.enabled:
            log.info("[dit-cache] PAB Config: no attention kind has N >= 2, PAB disabled (model unchanged)")
            return io.NodeOutput(model)
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        return io.NodeOutput(apply_cache(model, PABPolicy(config), "PAB Config",
                                         None if node_id is None else str(node_id)))
