"""DBCache, TaylorSeer and the adaptive cache applied through their real nodes, for the ComfyUI tests
(tests/comfy/test_step_methods_comfy.py and the per-method files)."""
from __future__ import annotations

from dit_cache.nodes.adaptive_node import ApplyAdaptiveCache
from dit_cache.nodes.dbcache_node import ApplyDBCache
from dit_cache.nodes.taylorseer_node import ApplyTaylorSeer

CFG = {"flux": 1.0, "wan21": 4.0}


def db(model, threshold, fn=1, bn=0, warmup=4, max_cached=-1, max_consecutive=-1, order=0, start=0.0, end=1.0):
    return ApplyDBCache.execute(model, Fn=fn, Bn=bn, threshold=threshold, warmup_steps=warmup,
                                max_cached_steps=max_cached, max_consecutive_cached_steps=max_consecutive,
                                taylorseer_order=order, start_percent=start, end_percent=end).result[0]


def ts(model, interval, warmup=3, final=0, order=1, dtype="bfloat16"):
    return ApplyTaylorSeer.execute(model, cache_interval=interval, warmup_steps=warmup, final_full_steps=final,
                                   max_order=order, predict="block outputs", factor_dtype=dtype).result[0]


def ad(model, threshold, start=0.15, end=1.0, max_skips=-1, warmup=0):
    return ApplyAdaptiveCache.execute(model, threshold=threshold, start_percent=start, end_percent=end,
                                      max_consecutive_skips=max_skips, warmup_steps=warmup).result[0]


# Measured on the tiny models (20 euler steps): DBCache F1B0 metric 0.01-0.37 per step; the adaptive
# accumulator grows 0.01-0.2 per step. (method, aggressive, mild, patched-but-never-skipping) model factories.
METHODS = {
    "DBCache": (lambda m: db(m, 0.3), lambda m: db(m, 0.1, order=1), lambda m: db(m, 1e-9)),
    "TaylorSeer": (lambda m: ts(m, 5), lambda m: ts(m, 2), lambda m: ts(m, 5, warmup=1000)),
    "AdaptiveCache": (lambda m: ad(m, 0.8), lambda m: ad(m, 0.1), lambda m: ad(m, 1e-9)),
}
