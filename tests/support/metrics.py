"""Quality metrics for comparing a cached result with the uncached one: the pack's own (cache_core/quality.py,
which DiT Cache Tune judges settings with), so the tests measure exactly what the tuner does."""
from __future__ import annotations

from dit_cache.cache_core.quality import psnr, ssim

__all__ = ["psnr", "ssim"]
