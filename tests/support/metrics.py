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


def ssim(test: torch.Tensor, ref: torch.Tensor, window: int = 7, sigma: float = 1.5) -> float:
    """Mean structural similarity of ``test`` against ``ref`` (Wang et al. 2004: Gaussian window, K1 0.01,
    K2 0.03, the reference's value range as L). Latents are read as images: (B, C, H, W), or (B, C, T, H, W)
    with every frame an image; each channel is compared on its own and the map is averaged."""
    import torch.nn.functional as F

    test, ref = test.double(), ref.double()
    if ref.ndim == 5:  # frames as images
        test, ref = (t.permute(0, 2, 1, 3, 4).reshape(-1, t.shape[1], t.shape[3], t.shape[4]) for t in (test, ref))
    if ref.ndim != 4:
        raise ValueError(f"ssim needs 4-D or 5-D latents, got shape {tuple(ref.shape)}")
    c = ref.shape[1]
    size = min(window, ref.shape[-1], ref.shape[-2])
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(c, 1, size, size)
    peak = (ref.max() - ref.min()).item() or 1.0
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=c)

    mu_x, mu_y = blur(test), blur(ref)
    var_x = blur(test * test) - mu_x ** 2
    var_y = blur(ref * ref) - mu_y ** 2
    cov = blur(test * ref) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.mean().item()
