"""Apply SeaCache through ComfyUI's real sampler on tiny real Flux / Wan / Qwen-Image models."""
from __future__ import annotations

import logging

import pytest
import torch

import tiny_models
from metrics import psnr
from sampling import ksample

from dit_cache.hosts.comfy import run_log
from dit_cache.nodes.seacache_node import ApplySeaCache

log = logging.getLogger("dit_cache.tests")

pytestmark = pytest.mark.usefixtures("one_thread")


def apply_sea(model, threshold, order=1, retention=1, end=1, limit=2, power=3.0, start=0.0, stop=1.0):
    return ApplySeaCache.execute(model, threshold=threshold, residual_order=order, retention_steps=retention,
                                 cache_end_steps=end, max_consecutive_cached=limit, power_exp=power,
                                 start_percent=start, end_percent=stop).result[0]


# Measured SEA distance per step of the tiny models (20 euler steps): 0.1-1.4 early, 0.07-0.5 later; at the
# moderate threshold 0.25 (diffusers' default) each family skips 8-9 of 20 steps at PSNR > 50 dB.
CASES = {"flux": 1.0, "wan21": 4.0, "qwen_image": 4.0}  # family: cfg
MODERATE = 0.25


@pytest.fixture(scope="module", params=list(CASES))
def fam(request):
    tiny = tiny_models.build(request.param)
    cfg = CASES[request.param]
    return request.param, tiny, cfg, ksample(tiny.patcher, tiny, cfg=cfg)


def _runs(records: list[dict], stream: str = "cond") -> list[bool]:
    return [r["skipped"] for r in records if r["stream"] == stream]


def test_skips_at_a_moderate_threshold_and_stays_close(fam):
    name, tiny, cfg, ref = fam
    out = ksample(apply_sea(tiny.patcher, MODERATE), tiny, cfg=cfg)
    run = run_log.last()
    assert run["method"] == "SeaCache" and run["settings"]["threshold"] == MODERATE
    quality = psnr(out, ref)
    log.info("SeaCache %s %.2f: skipped %d/%d, PSNR %.1f dB", name, MODERATE, run["skipped_calls"], run["calls"],
             quality)
    assert torch.isfinite(out).all() and 0 < run["skipped_calls"] < run["calls"] and quality >= 30.0
    skipped = _runs(run["records"])
    assert not skipped[0] and not skipped[-1]  # retention 1, end 1
    streak = 0
    for s in skipped:
        streak = streak + 1 if s else 0
        assert streak <= 2  # max_consecutive_cached 2
    # a higher threshold skips at least as often
    ksample(apply_sea(tiny.patcher, 1.0), tiny, cfg=cfg)
    assert run_log.last()["skipped_calls"] >= run["skipped_calls"]


def test_off_and_never_skipping_are_bit_identical(fam):
    _, tiny, cfg, ref = fam
    assert apply_sea(tiny.patcher, 0.0) is tiny.patcher  # 0 disables: the model is returned untouched
    out = ksample(apply_sea(tiny.patcher, 1e-9), tiny, cfg=cfg)  # patched, nothing skips
    assert run_log.last()["skipped_calls"] == 0 and torch.equal(out, ref)
    ksample(apply_sea(tiny.patcher, MODERATE), tiny, cfg=cfg)
    assert torch.equal(ksample(tiny.patcher, tiny, cfg=cfg), ref)  # the input model is unchanged


def test_retention_end_steps_and_no_limit():
    tiny = tiny_models.build("flux")
    ksample(apply_sea(tiny.patcher, 100.0, order=0, retention=5, end=3, limit=0), tiny)
    skipped = _runs(run_log.last()["records"])
    assert [i for i, s in enumerate(skipped) if s] == list(range(5, 17))


def test_residual_orders_and_window():
    tiny = tiny_models.build("flux")
    ref = ksample(tiny.patcher, tiny)
    quality = {}
    for order in (0, 1):
        out = ksample(apply_sea(tiny.patcher, 0.5, order=order), tiny)
        quality[order] = (run_log.last()["skipped_calls"], psnr(out, ref))
    log.info("SeaCache flux 0.5, order: (skipped, PSNR) %s", quality)
    assert quality[0][0] > 0 and quality[1][0] > 0 and min(p for _, p in quality.values()) > 30
    ksample(apply_sea(tiny.patcher, 100.0, start=0.25, stop=0.75), tiny)
    skipped = [i for i, s in enumerate(_runs(run_log.last()["records"])) if s]
    assert skipped and min(skipped) >= 5 and max(skipped) <= 15


def test_separate_cfg_calls_and_a_two_call_sampler():
    tiny = tiny_models.build("wan21")
    neg = tiny.conditioning(2, tokens=3)  # another text length: cond and uncond run as separate calls
    ref = ksample(tiny.patcher, tiny, cfg=4.0, steps=16, negative=neg)
    out = ksample(apply_sea(tiny.patcher, MODERATE), tiny, cfg=4.0, steps=16, negative=neg)
    run = run_log.last()
    assert run["calls"] == 32
    per = {s: _runs(run["records"], s) for s in ("cond", "uncond")}
    assert all(len(v) == 16 and any(v) for v in per.values())
    assert psnr(out, ref) > 25
    ref = ksample(tiny.patcher, tiny, cfg=4.0, steps=10, sampler="heun")  # two model calls per step
    out = ksample(apply_sea(tiny.patcher, MODERATE), tiny, cfg=4.0, steps=10, sampler="heun")
    run = run_log.last()
    assert run["calls"] > 10 and run["skipped_calls"] > 0 and torch.isfinite(out).all() and psnr(out, ref) > 20
