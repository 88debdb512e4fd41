"""DBCache and the adaptive cache on the diffusers host (tiny real diffusers Flux and Wan): they skip, stay close
to uncached, report what the blocks did, and a DBCache without blocks to cache is refused at apply time."""
from __future__ import annotations

import logging

import pytest
import torch

from dit_cache.cache_core.methods.adaptive import AdaptiveCacheConfig
from dit_cache.cache_core.methods.dbcache import DBCacheConfig
from dit_cache.hosts.diffusers import apply_cache

from tiny_diffusers import BUILDERS, run_plain, sample, skips_of

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
}


@pytest.fixture(scope="module", params=list(BUILDERS))
def fam(request):
    tiny = BUILDERS[request.param]()
    return request.param, tiny, run_plain(tiny)[0]


@pytest.mark.parametrize("method", list(CONFIGS))
def test_skips_and_stays_close(fam, method):
    name, tiny, ref = fam
    cache = apply_cache(tiny.model, CONFIGS[method]())
    try:
        out, observed = sample(tiny, lambda stream, sigma: cache.stream(stream, sigma=sigma))
        stats = cache.reset()
    finally:
        cache.remove()
    assert skips_of(stats) == observed
    rel = ((out - ref).norm() / ref.norm()).item()
    log.info("%s %s: skipped %d/%d, relative L2 vs uncached %.3g", name, method, stats.skipped_calls, stats.calls, rel)
    assert 0 < stats.skipped_calls < stats.calls
    assert torch.isfinite(out).all() and rel < 0.25


def test_dbcache_without_blocks_to_cache_is_refused(fam):
    _, tiny, _ = fam
    with pytest.raises(ValueError, match="leave nothing to cache"):
        apply_cache(tiny.model, DBCacheConfig(front_blocks=8))
    assert not hasattr(tiny.model, "_dit_cache")
