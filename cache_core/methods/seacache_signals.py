"""SeaCache's spectral-evolution-aware (SEA) indicator of a noisy latent, and the distance between two of them.

Facts from the SeaCache paper (arXiv 2602.18993) and diffusers 0.42 ``hooks/sea_cache.py`` (the parity reference),
written here in our own terms:

- A flow-matching latent at noise level sigma is ``x = (1 - sigma) x0 + sigma eps``. With a clean-signal power
  spectrum falling as ``1 / |f|^p`` (p = ``power_exp``, 3 for video features) and white noise, the per-axis
  Wiener gain is ``s P / (s^2 P + n^2)`` with ``s = 1 - sigma``, ``n = sigma``, ``P = 1 / (|f|^p + eps)``, i.e.
  ``s / (s^2 + n^2 (|f|^p + eps))`` (eps = 1e-16, as diffusers'); sigma is clamped to [1e-6, 1 - 1e-6].
- The 3-D gain is the product of the time, height and width gains (``fftfreq`` frequencies); it is normalised to
  unit mean (paper Eq. 7) and applied to the latent's FFT over those axes, channel by channel; the indicator is
  the real part of the inverse FFT. An image latent is a video of one frame (its time gain is a constant that the
  normalisation removes).
- Two indicators are compared per sample as ``mean|a - b| / (mean|b| + 1e-16)`` and averaged over the samples.

Only the ratio s / n matters after the normalisation, so a sigma above 1 (a model sampled as ``x0 + sigma eps``)
is read as the flow sigma with the same signal-to-noise ratio, ``sigma / (1 + sigma)``.
"""
from __future__ import annotations

import torch

EPS = 1e-16
SIGMA_CLAMP = 1e-6


def flow_sigma(sigma: float) -> float:
    """The flow-matching noise level in [1e-6, 1 - 1e-6] of a host sigma (see the module docstring)."""
    if sigma > 1.0:
        sigma = sigma / (1.0 + sigma)
    return min(max(sigma, SIGMA_CLAMP), 1.0 - SIGMA_CLAMP)


def sea_gain(shape: tuple[int, int, int], sigma: float, power_exp: float, device: torch.device) -> torch.Tensor:
    """The unit-mean spectral gain over a (frames, height, width) grid, float32."""
    s = flow_sigma(sigma)
    signal, noise2 = 1.0 - s, s * s
    gain: torch.Tensor | None = None
    for axis, n in enumerate(shape):
        freq = torch.fft.fftfreq(n, device=device, dtype=torch.float32).abs()
        axis_gain = signal / (signal * signal + (noise2 + EPS) * (freq.pow(power_exp) + EPS))
        view = [1, 1, 1]
        view[axis] = n
        axis_gain = axis_gain.reshape(view)
        gain = axis_gain if gain is None else gain * axis_gain
    mean = gain.mean()
    if torch.isfinite(mean) and mean > 0:
        gain = gain / mean
    return gain


def as_video(latent: torch.Tensor) -> torch.Tensor | None:
    """A stream's latent as (batch, channels, frames, height, width): images get one frame; other shapes None."""
    if latent.ndim == 4:
        return latent.unsqueeze(2)
    if latent.ndim == 5:
        return latent
    return None


def sea_indicator(latent: torch.Tensor, sigma: float, power_exp: float) -> torch.Tensor | None:
    """The SEA indicator of a (batch, C, [T,] H, W) latent, float32, same shape as :func:`as_video` gives; None for
    a latent of another rank (packed token sequences)."""
    video = as_video(latent)
    if video is None:
        return None
    video = video.detach().float()
    dims = (-3, -2, -1)
    gain = sea_gain(tuple(video.shape[-3:]), sigma, power_exp, video.device)
    return torch.fft.ifftn(torch.fft.fftn(video, dim=dims) * gain, dim=dims).real


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    """Mean over the samples of ``mean|current - previous| / (mean|previous| + 1e-16)`` (dim 0 = samples)."""
    total = 0.0
    for cur, prev in zip(current, previous):
        total += float(((cur - prev).abs().mean() / (prev.abs().mean() + EPS)).item())
    return total / max(len(current), 1)
