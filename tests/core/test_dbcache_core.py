"""Unit tests of DBCache (with and without its TaylorSeer forecast) on toy blocks whose results are known in closed
form (support/toy_blocks.py)."""
from __future__ import annotations

import pytest
import torch

from toy_blocks import call_one, make

from dit_cache.cache_core.methods.dbcache import DBCacheConfig, DBCachePolicy


# ------------------------------------------------------------------------------------------------- DBCache
def test_dbcache_decisions_strict_threshold_and_limits():
    policy = DBCachePolicy(DBCacheConfig(front_blocks=1, back_blocks=1, threshold=0.25, warmup_steps=2,
                                         max_cached_steps=2))
    runner, stats = make(policy)
    assert (policy.probe_blocks, policy.tail_blocks) == (1, 1)
    ran_all = []
    # Fn residual = block 0's add (exact in binary): diff vs the last computed one: -, (warm-up), 0.25 (equal:
    # computes, strict), 0 (cache), 0.2 (cache), then max_cached_steps 2 is reached
    for h in (1.0, 1.0, 1.25, 1.25, 1.5, 1.5):
        out, ran = call_one(runner, 0.0, [h, 2.0, 3.0, 4.0])
        ran_all.append(ran)
        assert torch.allclose(out, torch.full_like(out, h + 9.0))
    assert [r.reason for r in stats.records] == ["no_cache", "warmup", "metric", "metric", "metric", "max_cached"]
    assert [r.skipped for r in stats.records] == [False, False, False, True, True, False]
    assert [r.metric for r in stats.records][2:5] == pytest.approx([0.25, 0.0, 0.2])
    assert ran_all[3] == [0, 3] and ran_all[4] == [0, 3]  # Fn and Bn blocks always run
    with pytest.raises(ValueError, match="leave nothing to cache"):
        DBCacheConfig(front_blocks=3, back_blocks=1).check_blocks(4)
    with pytest.raises(ValueError):
        DBCacheConfig(front_blocks=0)


def test_dbcache_taylorseer_predicts_the_middle_residual():
    for order, expect_exact in ((0, False), (1, True)):
        policy = DBCachePolicy(DBCacheConfig(front_blocks=1, back_blocks=0, threshold=1.0, warmup_steps=2,
                                             taylorseer_order=order))
        runner, stats = make(policy)
        errs = []
        for s in range(6):
            out, _ = call_one(runner, 1.0, [1.0, 2.0 * s, 1.0, 0.5 * s])  # middle residual 1 + 2.5 s
            errs.append((out - (1.0 + 1.0 + 2.5 * s + 1.0)).abs().max().item())
        skipped = [r.skipped for r in stats.records]
        assert skipped == [False, False, True, True, True, True]
        if expect_exact:
            assert max(errs) < 1e-5  # linear residual: the order-1 forecast is exact
            assert stats.cache_bytes > 0
        else:
            assert errs[2:] == pytest.approx([2.5, 5.0, 7.5, 10.0])  # reuse of the step-1 residual
