"""Apply AdaCache through ComfyUI's real sampler on tiny real Wan 2.1 (video) and Flux (image) models: it skips,
reports its rates, leaves the output bit-identical when off, and the rate follows the content (a static clip is
cached longer than a moving one)."""
from __future__ import annotations

import logging

import pytest
import torch

import tiny_models
from metrics import psnr
from sampling import ksample

from dit_cache.cache_core.methods.adacache import FAST_30
from dit_cache.hosts.comfy import run_log
from dit_cache.nodes.adacache_node import ApplyAdaCache

log = logging.getLogger("dit_cache.tests")

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = {"flux": 1.0, "wan21": 4.0}


def ada(model, codebook=FAST_30, scale=1.0, moreg=True, block=-1):
    return ApplyAdaCache.execute(model, codebook=codebook, threshold_scale=scale, motion_regularization=moreg,
                                 block=block, start_percent=0.0, end_percent=1.0, max_consecutive_skips=-1,
                                 warmup_steps=0).result[0]


def clip(moving: bool, frames: int = 6) -> torch.Tensor:
    """Wan's starting latent (the sampler's noise at denoise 1): one random frame repeated, or shifted by half the
    frame's width from frame to frame."""
    frame = torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return torch.cat([frame.roll(4 * f if moving else 0, dims=-1) for f in range(frames)], dim=2)


@pytest.fixture(scope="module", params=list(CFG))
def fam(request):
    return request.param, tiny_models.build(request.param)


def test_skips_with_the_paper_codebook_and_reports_its_rates(fam):
    name, tiny = fam
    cfg = CFG[name]
    ref = ksample(tiny.patcher, tiny, cfg=cfg)
    out = ksample(ada(tiny.patcher), tiny, cfg=cfg)
    run = run_log.last()
    quality = psnr(out, ref)
    log.info("AdaCache %s: skipped %d/%d, PSNR %.1f dB, %s", name, run["skipped_calls"], run["calls"], quality,
             run["details"])
    assert torch.isfinite(out).all() and 0 < run["skipped_calls"] < run["calls"]
    assert run["method"] == "AdaCache" and run["node"] == "Apply AdaCache"
    assert run["settings"]["codebook"] == FAST_30 and run["settings"]["motion_regularization"] is True
    streams = ["cond"] if cfg == 1.0 else ["uncond", "cond"]
    details = run["details"]
    assert sorted(details["rates"]) == sorted(streams)
    for s in streams:
        rates = details["rates"][s]
        assert rates and all(1 <= r <= 6 for r in rates)
        assert details["mean_rate"][s] == pytest.approx(sum(rates) / len(rates), abs=1e-3)
        assert len(details["distances"][s]) == len(details["motion_factors"][s]) == len(rates)
    records = run["records"]
    assert {r["threshold"] for r in records} == {0.08}  # the longest caching's threshold, the panel's line
    assert any(r["metric"] is not None for r in records)
    assert all(r["reason"] in ("no_cache", "metric", "batch") for r in records)


def test_off_and_never_skipping_are_bit_identical(fam):
    name, tiny = fam
    cfg = CFG[name]
    ref = ksample(tiny.patcher, tiny, cfg=cfg)
    assert ada(tiny.patcher, scale=0.0) is tiny.patcher  # threshold_scale 0: the model is returned untouched
    out = ksample(ada(tiny.patcher, codebook="1000:1"), tiny, cfg=cfg)  # rate 1: every step computes
    assert run_log.last()["skipped_calls"] == 0
    assert torch.equal(out, ref)


def test_the_rate_follows_the_content_of_the_clip():
    """The same prompt and model on a static clip and a moving one: motion regularisation (frame differences of the
    observed residual) gives the static clip longer caching. The tiny random model's frame differences stay below
    the paper's 0.385 pivot, so its regulariser is below 1 for both clips and the paper's thresholds are scaled down
    (threshold_scale 0.001) to where the two clips' regularised distances fall."""
    tiny = tiny_models.build("wan21")
    runs = {}
    for moreg in (True, False):
        for moving in (False, True):
            ksample(ada(tiny.patcher, scale=0.001, moreg=moreg), tiny, noise=clip(moving))
            runs[moreg, moving] = run_log.last()
    details = {k: r["details"] for k, r in runs.items()}
    log.info("AdaCache static vs moving clip: %s", {k: (d["rates"], d["motion_factors"]) for k, d in details.items()})
    static, moving = details[True, False], details[True, True]
    assert static["mean_rate"]["cond"] > moving["mean_rate"]["cond"]
    assert runs[True, False]["skipped_calls"] > runs[True, True]["skipped_calls"]
    # inside the motion window (10-90 % of the schedule) the static clip's regulariser is far below the moving one's
    inside = [(s, m) for s, m in zip(static["motion_factors"]["cond"], moving["motion_factors"]["cond"]) if s != 1.0]
    assert inside and all(s < 0.01 < m for s, m in inside)
    # without motion regularisation both clips get the same rates: the difference is the motion term's
    assert details[False, False]["rates"] == details[False, True]["rates"]


def test_an_image_has_no_motion_term():
    tiny = tiny_models.build("flux")
    ksample(ada(tiny.patcher, moreg=True), tiny)
    factors = run_log.last()["details"]["motion_factors"]["cond"]
    assert factors and set(factors) == {1.0}
