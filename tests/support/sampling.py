"""Run ComfyUI's own sampler (the KSampler path) on a tiny model."""
from __future__ import annotations

from typing import Any, Callable

import torch


def ksample(model: Any, tiny: Any, steps: int = 20, cfg: float = 1.0, sampler: str = "euler",
            scheduler: str = "simple", batch: int = 1, noise: torch.Tensor | None = None,
            positive: list | None = None, negative: list | None = None,
            callback: Callable | None = None) -> torch.Tensor:
    """``comfy.sample.sample`` exactly as ComfyUI's KSampler node calls it."""
    import comfy.sample

    if noise is None:
        noise = tiny.noise(batch)
    latent = torch.zeros_like(noise)
    return comfy.sample.sample(
        model, noise, steps, cfg, sampler, scheduler,
        positive if positive is not None else tiny.conditioning(1),
        negative if negative is not None else tiny.conditioning(2),
        latent, seed=0, disable_pbar=True, callback=callback,
    )
