"""Unit tests of the adaptive cache on toy blocks whose results are known in closed form (support/toy_blocks.py)."""
from __future__ import annotations

import pytest

from toy_blocks import call_one, make

from dit_cache.cache_core.methods.adaptive import AdaptiveCacheConfig, AdaptiveCachePolicy


# ------------------------------------------------------------------------------------------------- adaptive
def test_adaptive_accumulates_scaled_input_change():
    policy = AdaptiveCachePolicy(AdaptiveCacheConfig(threshold=0.25, token_stride=1))
    runner, stats = make(policy, counts=(2,))
    # inputs x_t and stack residuals y_t (two blocks adding a_t each: y = 2 a_t)
    xs = [1.0, 1.2, 1.3, 1.4, 1.5, 1.6]
    a = [1.0, 1.5, 1.5, 1.5, 1.5, 1.5]
    for x, at in zip(xs, a):
        call_one(runner, x, [at, at])
    # calls 0, 1 compute (no k yet); k = |3 - 2| / |1.2 - 1| = 5, y_last = 3
    # call 2: acc = 5 * 0.1 / 3 = 0.1667 < 0.25 skip; call 3: 0.3333 -> compute, acc = 0
    # k from calls 1 and 3: |3 - 3| / 0.2 = 0 -> calls 4, 5 skip (acc stays 0)
    assert [r.skipped for r in stats.records] == [False, False, True, False, True, True]
    metrics = [r.metric for r in stats.records]
    assert metrics[:2] == [None, None]
    assert metrics[2] == pytest.approx(5 * 0.1 / 3, rel=1e-4) and metrics[3] == pytest.approx(2 * 5 * 0.1 / 3, rel=1e-4)
    assert metrics[4] == pytest.approx(0.0, abs=1e-6)


def test_adaptive_per_stream_state_and_batch_join():
    policy = AdaptiveCachePolicy(AdaptiveCacheConfig(threshold=0.25, token_stride=1))
    runner, stats = make(policy, counts=(2,))
    streams = (("c", "cond"), ("u", "uncond"))
    # cond as above; uncond's input jumps: its vote to compute makes the whole call compute ("batch")
    xs_c = [1.0, 1.2, 1.3, 1.4]
    xs_u = [1.0, 1.2, 3.0, 3.1]
    for xc, xu in zip(xs_c, xs_u):
        call_one(runner, [xc, xu], [1.5, 1.5] if xc > 1.0 else [1.0, 1.0], streams)
    recs = [(r.stream, r.call_index, r.skipped, r.reason) for r in stats.records]
    # call 2: cond's acc 5 * 0.1 / 3 < 0.25 would skip, uncond's 5 * 1.8 / 3 = 3 computes: the call computes;
    # both streams then measure k = 0 (same residual, input moved), so call 3 skips for both
    assert recs[4:] == [("cond", 2, False, "batch"), ("uncond", 2, False, "metric"),
                        ("cond", 3, True, "metric"), ("uncond", 3, True, "metric")]
    assert [r.metric for r in stats.records][4:6] == pytest.approx([5 * 0.1 / 3, 5 * 1.8 / 3], rel=1e-4)
    assert stats.skipped_calls == 1
