"""Quality metrics for comparing a cached result with the uncached one."""
from __future__ import annotations

import math

import torch


def psnr(test: torch.Tensor, ref: torch.Tensor) -> float:
    """Peak signal-to-noise ratio of ``test`` against ``ref`` in dB, with the reference's value range as peak."""
    test, ref = test.double(), ref.double()
    mse = torch.mean((test - ref) ** 2).item()
    if mse == 0:
        return math.inf
    peak = (ref.max() - ref.min()).item()
    return 10.0 * math.log10(peak * peak / mse)
