"""DBCache, TaylorSeer and the adaptive cache through ComfyUI's real sampler on tiny Flux and Wan models."""
from __future__ import annotations

import logging

import pytest
import torch

import tiny_models
from metrics import psnr
from sampling import ksample

from dit_cache.hosts.comfy import run_log
from dit_cache.nodes.adaptive_node import ApplyAdaptiveCache
from dit_cache.nodes.dbcache_node import ApplyDBCache
from dit_cache.nodes.taylorseer_node import ApplyTaylorSeer

log = logging.getLogger("dit_cache.tests")

pytestmark = pytest.mark.usefixtures("one_thread")

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


@pytest.fixture(scope="module", params=list(CFG))
def fam(request):
    tiny = tiny_models.build(request.param)
    return request.param, tiny, ksample(tiny.patcher, tiny, cfg=CFG[request.param])


@pytest.mark.parametrize("method", list(METHODS))
def test_skips_aggressive_close_mild_identical_when_never_skipping(fam, method):
    name, tiny, ref = fam
    cfg = CFG[name]
    aggressive, mild, never = METHODS[method]
    results = {}
    for label, make in (("aggressive", aggressive), ("mild", mild)):
        out = ksample(make(tiny.patcher), tiny, cfg=cfg)
        run = run_log.last()
        assert run["method"] == method and torch.isfinite(out).all()
        results[label] = (run["skipped_calls"], run["calls"], psnr(out, ref))
    log.info("%s %s: %s", method, name, {k: f"skipped {s}/{c}, PSNR {p:.1f} dB" for k, (s, c, p) in results.items()})
    assert 0 < results["aggressive"][0] < results["aggressive"][1]
    assert results["mild"][0] > 0 and results["mild"][2] >= 30.0
    # patched, but nothing skips: every block runs through the runner, same bits
    out = ksample(never(tiny.patcher), tiny, cfg=cfg)
    assert run_log.last()["skipped_calls"] == 0 and torch.equal(out, ref)
    assert torch.equal(ksample(tiny.patcher, tiny, cfg=cfg), ref)  # the input model is unchanged


def test_disabled_settings_return_the_model_itself():
    tiny = tiny_models.build("flux")
    assert db(tiny.patcher, 0.0) is tiny.patcher
    assert ts(tiny.patcher, 1) is tiny.patcher
    assert ad(tiny.patcher, 0.0) is tiny.patcher


@pytest.mark.parametrize("method", list(METHODS))
def test_cfg_streams_batched_and_separate(method):
    tiny = tiny_models.build("wan21")
    model = METHODS[method][0](tiny.patcher)
    ref = ksample(tiny.patcher, tiny, cfg=4.0, steps=16)
    out = ksample(model, tiny, cfg=4.0, steps=16)  # same text length: cond and uncond in one batch
    run = run_log.last()
    assert run["calls"] == 16 and {r["stream"] for r in run["records"]} == {"cond", "uncond"}
    assert 0 < run["skipped_calls"] < 16 and psnr(out, ref) > 20
    neg = tiny.conditioning(2, tokens=3)  # another text length: separate calls per stream
    ref = ksample(tiny.patcher, tiny, cfg=4.0, steps=16, negative=neg)
    out = ksample(model, tiny, cfg=4.0, steps=16, negative=neg)
    run = run_log.last()
    assert run["calls"] == 32
    per = {s: [r for r in run["records"] if r["stream"] == s] for s in ("cond", "uncond")}
    assert all(len(v) == 16 and any(r["skipped"] for r in v) for v in per.values())
    assert torch.isfinite(out).all() and psnr(out, ref) > 20


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


def test_taylorseer_schedule_final_steps_and_memory_per_order():
    tiny = tiny_models.build("flux")
    ksample(ts(tiny.patcher, 3, warmup=2, final=3), tiny)
    run = run_log.last()
    computed = [r["call_index"] for r in run["records"] if not r["skipped"]]
    assert computed == [0, 1, 3, 6, 9, 12, 15, 17, 18, 19]  # warm-up, every 3rd, the final 3
    # Taylor factors per stream: (order + 1) x (double img + txt + single joint outputs) x dtype size.
    # Tiny Flux: img 64 tokens, txt 8, hidden 64 -> (64 + 8 + 72) x 64 = 9216 values per factor.
    sizes = {}
    for order in (0, 1, 2):
        for dtype in ("bfloat16", "float32"):
            ksample(ts(tiny.patcher, 3, order=order, dtype=dtype), tiny)
            sizes[(order, dtype)] = run_log.last()["cache_bytes"]
    log.info("TaylorSeer factor bytes per stream (tiny Flux): %s", sizes)
    for (order, dtype), n in sizes.items():
        assert n == (order + 1) * 9216 * (2 if dtype == "bfloat16" else 4)


def test_adaptive_last_step_and_warmup_window_compute():
    tiny = tiny_models.build("flux")
    ksample(ad(tiny.patcher, 100.0, start=0.3), tiny)
    recs = run_log.last()["records"]
    skipped = [r["call_index"] for r in recs if r["skipped"]]
    assert skipped and min(skipped) >= 6 and 19 not in skipped
    assert recs[-1]["reason"] == "metric" and not recs[-1]["skipped"]
