"""TaylorSeer's forecasters, checked predictions and the sparser negative CFG branch, and DBCache's calibrator,
through ComfyUI's KSampler on the tiny models (tests/support/tiny_models.py)."""
from __future__ import annotations

import logging

import pytest
import torch

import tiny_models
from metrics import psnr
from sampling import ksample

from dit_cache.cache_core.forecasters import FORECASTERS
from dit_cache.hosts.comfy import run_log
from dit_cache.nodes.dbcache_node import ApplyDBCache
from dit_cache.nodes.taylorseer_node import ApplyTaylorSeer

log = logging.getLogger("dit_cache.tests")
pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 20
CFG = {"flux": 1.0, "wan21": 4.0}


def ts(model, forecaster="taylor", interval=4, warmup=2, order=1, predict="block outputs", check_blocks=0,
       check_threshold=0.1, uncond_interval=0):
    return ApplyTaylorSeer.execute(model, cache_interval=interval, warmup_steps=warmup, final_full_steps=0,
                                   max_order=order, predict=predict, factor_dtype="float32", forecaster=forecaster,
                                   check_blocks=check_blocks, check_threshold=check_threshold,
                                   uncond_interval=uncond_interval).result[0]


@pytest.fixture(scope="module", params=list(CFG))
def fam(request):
    tiny = tiny_models.build(request.param)
    return request.param, tiny, ksample(tiny.patcher, tiny, cfg=CFG[request.param], steps=STEPS)


def skipped_per_stream(run: dict) -> dict[str, list[bool]]:
    out: dict[str, list[bool]] = {}
    for r in run["records"]:
        out.setdefault(r["stream"], []).append(r["skipped"])
    return out


@pytest.mark.parametrize("forecaster", FORECASTERS)
def test_each_forecaster_predicts_the_schedule_close_to_uncached(fam, forecaster):
    name, tiny, ref = fam
    out = ksample(ts(tiny.patcher, forecaster), tiny, cfg=CFG[name], steps=STEPS)
    run = run_log.last()
    assert run["completed"] and torch.isfinite(out).all()
    assert run["settings"]["forecaster"] == forecaster
    expected = [not (s < 2 or (s - 3) % 4 == 0) for s in range(STEPS)]  # warm-up 2, interval 4
    for skipped in skipped_per_stream(run).values():
        assert skipped == expected
    quality = psnr(out, ref)
    log.info("TaylorSeer %s on tiny %s: PSNR %.1f dB, cache %d bytes", forecaster, name, quality, run["cache_bytes"])
    assert quality > 22
    assert run["cache_bytes"] > 0


@pytest.mark.parametrize("forecaster", ["adams-bashforth 2", "hermite"])
def test_forecasters_in_attention_mlp_mode(fam, forecaster):
    name, tiny, ref = fam
    out = ksample(ts(tiny.patcher, forecaster, predict="attention+MLP outputs"), tiny, cfg=CFG[name], steps=STEPS)
    run = run_log.last()
    reused, total = run["reuse"]["component"]
    assert run["completed"] and 0 < reused < total and psnr(out, ref) > 22


def test_check_at_threshold_zero_computes_every_step_and_a_loose_one_predicts(fam):
    name, tiny, ref = fam
    strict = ksample(ts(tiny.patcher, "hermite", interval=6, check_blocks=1, check_threshold=0.0), tiny,
                     cfg=CFG[name], steps=STEPS)
    run = run_log.last()
    assert not any(r["skipped"] for r in run["records"])
    assert run["details"]["check_rejected"] > 0
    assert psnr(strict, ref) > 60  # every step computed (same blocks, in the cache core)
    loose = ksample(ts(tiny.patcher, "hermite", interval=6, check_blocks=1, check_threshold=10.0), tiny,
                    cfg=CFG[name], steps=STEPS)
    run = run_log.last()
    for skipped in skipped_per_stream(run).values():
        # at most cache_interval - 1 predicted calls after each computed one, counted from the last computed call
        assert skipped == [not (s < 2 or (s - 1) % 6 == 0) for s in range(STEPS)]
    quality = psnr(loose, ref)
    log.info("TaylorSeer hermite, check 1 block, threshold 10, tiny %s: PSNR %.1f dB", name, quality)
    assert quality > 20


def test_negative_branch_is_computed_more_sparsely_than_the_positive(fam):
    name, tiny, ref = fam
    out = ksample(ts(tiny.patcher, "hermite", uncond_interval=2), tiny, cfg=CFG[name], steps=STEPS)
    run = run_log.last()
    assert run["completed"] and torch.isfinite(out).all()
    if CFG[name] == 1.0:
        assert "uncond" not in run["reuse"]  # CFG 1: no negative branch, nothing to rebuild
        return
    rebuilt, total = run["reuse"]["uncond"]
    per_stream = skipped_per_stream(run)
    cond_computed = per_stream["cond"].count(False)
    uncond_computed = len(per_stream["uncond"])  # the negative branch reaches the blocks only when computed
    assert total == STEPS and rebuilt == STEPS - uncond_computed
    assert 0 < uncond_computed < cond_computed
    assert not any(per_stream["uncond"])
    quality = psnr(out, ref)
    log.info("TaylorSeer hermite, uncond interval 2, tiny %s: uncond computed %d vs cond %d, PSNR %.1f dB", name,
             uncond_computed, cond_computed, quality)
    assert quality > 15


@pytest.mark.parametrize("calibrator", ["adams-bashforth 1", "foca", "hermite"])
def test_dbcache_calibrators(fam, calibrator):
    name, tiny, ref = fam
    model = ApplyDBCache.execute(tiny.patcher, Fn=1, Bn=0, threshold=0.3, warmup_steps=4, max_cached_steps=-1,
                                 max_consecutive_cached_steps=-1, taylorseer_order=1, start_percent=0.0,
                                 end_percent=1.0, calibrator=calibrator).result[0]
    out = ksample(model, tiny, cfg=CFG[name], steps=STEPS)
    run = run_log.last()
    assert run["completed"] and run["settings"]["calibrator"] == calibrator and torch.isfinite(out).all()
    assert any(r["skipped"] for r in run["records"]) and psnr(out, ref) > 15
