"""DBCache through ComfyUI's real sampler on tiny models."""
from __future__ import annotations

import logging

import pytest

import tiny_models
from comfy_step_methods import db
from metrics import psnr
from sampling import ksample

from dit_cache.hosts.comfy import run_log

log = logging.getLogger("dit_cache.tests")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_dbcache_block_counts_limits_and_window():
    tiny = tiny_models.build("flux")  # 2 double + 4 single blocks
    with pytest.raises(ValueError, match="with 6 transformer blocks"):
        db(tiny.patcher, 0.1, fn=4, bn=2)
    with pytest.raises(ValueError, match="with 6 transformer blocks"):
        db(tiny.patcher, 0.1, fn=8)  # the cache-dit default is too many for this model: refused before sampling
    ksample(db(tiny.patcher, 10.0, fn=2, bn=1, warmup=2, max_cached=5, max_consecutive=2), tiny)
    recs = run_log.last()["records"]
    assert [r["skipped"] for r in recs][:2] == [False, False]
    assert sum(r["skipped"] for r in recs) == 5 and recs[-1]["reason"] == "max_cached"
    streak = 0
    for r in recs:
        streak = streak + 1 if r["skipped"] else 0
        assert streak <= 2
    # Fn reaching into the single blocks (joined txt + img tokens): the decision reads the image tokens
    ref = ksample(tiny.patcher, tiny)
    out = ksample(db(tiny.patcher, 0.2, fn=3, warmup=2), tiny)
    run = run_log.last()
    assert all(r["metric"] is not None for r in run["records"][1:]) and run["skipped_calls"] > 0
    assert psnr(out, ref) > 30
    ksample(db(tiny.patcher, 10.0, start=0.5, end=0.8), tiny)
    skipped = [r["call_index"] for r in run_log.last()["records"] if r["skipped"]]
    assert skipped and min(skipped) >= 9 and max(skipped) <= 17
