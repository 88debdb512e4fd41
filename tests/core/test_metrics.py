"""The quality metrics the tests and benchmarks report."""
from __future__ import annotations

import math

import pytest
import torch

from metrics import psnr, ssim


def test_psnr_and_ssim_closed_forms():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(1, 4, 32, 32, generator=g)
    assert psnr(ref, ref) == math.inf and ssim(ref, ref) == pytest.approx(1.0)
    # a constant offset d: luminance term (2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1) < 1, structure unchanged
    shifted = ssim(ref + 0.1, ref)
    assert 0.9 < shifted < 1.0
    # nearly symmetric (the data range is the reference's); more noise = lower; anti-correlated goes negative
    noisy = ref + 0.05 * torch.randn(ref.shape, generator=g)
    noisier = ref + 0.3 * torch.randn(ref.shape, generator=g)
    assert ssim(noisy, ref) == pytest.approx(ssim(ref, noisy), rel=1e-3)
    assert 1.0 > ssim(noisy, ref) > ssim(noisier, ref)
    assert ssim(1.0 - ref, ref) < 0
    # video latents (batch, channels, frames, h, w) and images smaller than the window
    vid = torch.rand(1, 2, 3, 8, 8, generator=g)
    assert ssim(vid, vid) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        ssim(ref, vid)


def test_ssim_of_a_uniform_offset_matches_the_formula():
    # constant images a and b: the sigma terms vanish, SSIM = (2ab + c1) / (a^2 + b^2 + c1); a constant
    # reference has no range, the data range falls back to 1: c1 = (0.01 * 1)^2
    x = torch.full((1, 1, 16, 16), 0.4)
    y = torch.full((1, 1, 16, 16), 0.5)
    c1 = 1e-4
    assert ssim(x, y) == pytest.approx((2 * 0.4 * 0.5 + c1) / (0.16 + 0.25 + c1), rel=1e-6)
