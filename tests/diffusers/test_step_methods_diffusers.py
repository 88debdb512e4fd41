"""The step-level methods' contract on the diffusers host, over DBCache (with and without its TaylorSeer forecast)
the adaptive cache and AdaCache on tiny real diffusers Flux and Wan: they skip, stay close to uncached and report what the
blocks did. TaylorSeer's own comparison with diffusers is tests/diffusers/test_taylorseer_diffusers.py."""
from __future__ import annotations

import logging

import pytest
import torch

from dit_cache.cache_core.methods.adacache import AdaCacheConfig
from dit_cache.cache_core.methods.adaptive import AdaptiveCacheConfig
from dit_cache.cache_core.methods.dbcache import DBCacheConfig

from tiny_diffusers import run_with_our_cache
from tiny_diffusers import uncached_family  # noqa: F401 - the fixture "fam"

log = logging.getLogger("dit_cache.tests")

pytestmark = pytest.mark.usefixtures("one_thread")

# the tiny diffusers models (random weights) change much more per step than the ComfyUI tiny models: their
# FBC-style metric runs 0.15-0.6 (tests/diffusers/test_fbc_diffusers.py), hence the high thresholds
CONFIGS = {
    "dbcache": lambda: DBCacheConfig(front_blocks=1, back_blocks=0, threshold=0.5, warmup_steps=2),
    # a linear forecast drifts over long runs of skips on these fast-changing models: at most 2 in a row
    "dbcache_taylor": lambda: DBCacheConfig(front_blocks=1, back_blocks=1, threshold=0.5, warmup_steps=2,
                                            taylorseer_order=1, max_consecutive_skips=2),
    "adaptive": lambda: AdaptiveCacheConfig(threshold=0.6, token_stride=1),
    # the authors' 30-step "fast" codebook, thresholds halved: the tiny Flux's residual changes 0.2-0.5 per step,
    # and its full rates (up to 4 steps from one) drift to a relative L2 of 0.37
    "adacache": lambda: AdaCacheConfig(threshold_scale=0.5),
}


@pytest.mark.parametrize("method", list(CONFIGS))
def test_skips_and_stays_close(fam, method):
    name, tiny, ref = fam
    out, _, stats = run_with_our_cache(tiny, CONFIGS[method]())
    rel = ((out - ref).norm() / ref.norm()).item()
    log.info("%s %s: skipped %d/%d, relative L2 vs uncached %.3g", name, method, stats.skipped_calls, stats.calls, rel)
    assert 0 < stats.skipped_calls < stats.calls
    assert torch.isfinite(out).all() and rel < 0.25
