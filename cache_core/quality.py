"""Quality of a cached result against the uncached one: PSNR and SSIM on tensors (latents or decoded images).

Used by "DiT Cache Tune" (cache_core/tune.py) to judge a setting, and by the tests and benchmarks
(tests/support/metrics.py re-exports these). Nothing here imports ComfyUI."""
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


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(test: torch.Tensor, ref: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03) of ``test``
    against ``ref`` over the last two (spatial) dimensions of every channel (and frame), with the reference's
    value range as the data range. 1.0 = identical. Windows larger than the image shrink to its size."""
    import torch.nn.functional as F

    if test.shape != ref.shape or ref.ndim < 2:
        raise ValueError(f"ssim needs two tensors of the same shape (>= 2 dims), got {test.shape} and {ref.shape}")
    h, w = ref.shape[-2:]
    size = min(window, h, w)
    x = test.double().reshape(-1, 1, h, w)
    y = ref.double().reshape(-1, 1, h, w)
    k = _gaussian_window(size, sigma)[None, None]
    rng = (ref.max() - ref.min()).item() or 1.0
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    mu_x, mu_y = F.conv2d(x, k), F.conv2d(y, k)
    sxx = F.conv2d(x * x, k) - mu_x * mu_x
    syy = F.conv2d(y * y, k) - mu_y * mu_y
    sxy = F.conv2d(x * y, k) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2))
    return s.mean().item()
