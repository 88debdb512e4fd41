"""Per-family TeaCache signals: the first block's timestep-modulated input, computed from the first block's
call arguments (ComfyUI ``patches_replace["dit"]`` args) and the first block module.

Keyed by ``BlockLayout.signal`` (layout data), never by model name. Read from ComfyUI 0.3.75's blocks:
- "double_stream_img_mod": Flux/Chroma ``DoubleStreamBlock``: ``img_norm1(img) * (1 + mod.scale) + mod.shift``
  with ``mod = img_mod(vec)[0]`` (Chroma: ``vec`` already holds ((img_mod1, img_mod2), txt_mods)).
  TeaCache4FLUX reads the same tensor (ali-vilab/TeaCache).
- "qwen_img_mod": Qwen-Image ``QwenImageTransformerBlock``: ``_modulate(img_norm1(img), img_mod(vec) first
  half)``.
- "vec": the block's modulation input as it is (Wan: ``e0``, the projected time embedding; TeaCache4Wan2.1's
  "ret_steps" mode reads e0).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

Signal = Callable[[torch.nn.Module, dict[str, Any]], torch.Tensor]


def _double_stream_img_mod(block: torch.nn.Module, args: dict[str, Any]) -> torch.Tensor:
    img, vec = args["img"], args["vec"]
    if getattr(block, "modulation", True):
        mod = block.img_mod(vec)[0]
    else:
        (mod, _), _ = vec
    return block.img_norm1(img) * (1 + mod.scale) + mod.shift


def _qwen_img_mod(block: torch.nn.Module, args: dict[str, Any]) -> torch.Tensor:
    mod1 = block.img_mod(args["vec"]).chunk(2, dim=-1)[0]
    return block._modulate(block.img_norm1(args["img"]), mod1)[0]


def _vec(block: torch.nn.Module, args: dict[str, Any]) -> torch.Tensor:
    return args["vec"]


SIGNALS: dict[str, Signal] = {
    "double_stream_img_mod": _double_stream_img_mod,
    "qwen_img_mod": _qwen_img_mod,
    "vec": _vec,
}


def signal_fn(name: str | None) -> Signal | None:
    return SIGNALS.get(name) if name else None
