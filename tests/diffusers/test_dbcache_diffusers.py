"""DBCache on the diffusers host (tiny real diffusers Flux and Wan): a DBCache without blocks to cache is refused at
apply time. Its sampling is checked with the other step-level methods in
tests/diffusers/test_step_methods_diffusers.py."""
from __future__ import annotations

import pytest

from dit_cache.cache_core.methods.dbcache import DBCacheConfig
from dit_cache.hosts.diffusers import apply_cache

from tiny_diffusers import uncached_family  # noqa: F401 - the fixture "fam"

pytestmark = pytest.mark.usefixtures("one_thread")


def test_dbcache_without_blocks_to_cache_is_refused(fam):
    _, tiny, _ = fam
    with pytest.raises(ValueError, match="leave nothing to cache"):
        apply_cache(tiny.model, DBCacheConfig(front_blocks=8))
    assert not hasattr(tiny.model, "_dit_cache")
