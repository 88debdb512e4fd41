"""The step-level forecasting/adaptive methods (DBCache, TaylorSeer, Adaptive Cache) through ComfyUI's real sampler
on tiny Flux and Wan models: the checks every such method passes."""
from __future__ import annotations

import logging

import pytest
import torch

import tiny_models
from comfy_step_methods import CFG, METHODS, ad, db, ts
from metrics import psnr
from sampling import ksample

from dit_cache.hosts.comfy import run_log

log = logging.getLogger("dit_cache.tests")

pytestmark = pytest.mark.usefixtures("one_thread")


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
