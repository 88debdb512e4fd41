"""Transformer-block work of a sampling run, counted exactly: batch rows x calls of every block module the model's
layout names (forward pre-hooks; they fire for blocks run through ComfyUI's block patches too, so a cached run
counts only the blocks that really ran). Block speedup = uncached rows / cached rows (a batched CFG call counts 2
rows, a call that runs only the positive half 1). Used by DiT Cache Tune and the trained-model benchmark."""
from __future__ import annotations

from typing import Any

import torch

from .layout import COMFY_LAYOUTS, layout_for_module


class BlockCounter:
    """``with BlockCounter(diffusion_model) as c: ...`` adds the rows every block ran to ``c.rows``."""

    def __init__(self, diffusion_model: Any) -> None:
        layout = layout_for_module(diffusion_model, COMFY_LAYOUTS)
        if layout is None:
            raise ValueError(f"no block layout for {type(diffusion_model).__name__}")
        self.blocks = [b for seg in layout.segments for b in getattr(diffusion_model, seg.attr)]
        self.rows = 0
        self._handles: list[Any] = []

    def _hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        self.rows += 1 if first is None else int(first.shape[0])

    def __enter__(self) -> "BlockCounter":
        self._handles = [b.register_forward_pre_hook(self._hook, with_kwargs=True) for b in self.blocks]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
