"""Apply TeaCache through ComfyUI's real sampler on tiny Flux / Wan / Qwen-Image, with PSNR reported."""
from __future__ import annotations

import logging

import pytest
import torch

import tiny_models
from metrics import psnr
from sampling import ksample

from dit_cache.cache_core.methods.teacache import (AUTO_THRESHOLD, CHOICES, COEFFICIENTS, RETIRED, TeaCacheConfig,
                                                   resolve_coefficients)
from dit_cache.hosts.comfy import run_log
from dit_cache.nodes.teacache_node import ApplyTeaCache

log = logging.getLogger("dit_cache.tests")

# family: (cfg, expected coefficients, mild threshold, aggressive threshold). Measured accumulated metric per
# step of the tiny models (20 euler steps): Flux (rescaled) ~0.2 per step, Wan/Qwen raw ~0.02-0.05 per step.
CASES = {"flux": (1.0, "flux", 0.2, 0.5), "wan21": (4.0, "raw", 0.05, 0.2), "qwen_image": (4.0, "raw", 0.05, 0.2)}


def apply_tea(model, thr, coeffs="auto", start=0.0, end=1.0, max_skips=-1):
    return ApplyTeaCache.execute(model, rel_l1_threshold=thr, coefficients=coeffs, start_percent=start,
                                 end_percent=end, max_consecutive_skips=max_skips).result[0]


@pytest.mark.parametrize("family", list(CASES))
def test_skips_and_stays_close(family):
    tiny = tiny_models.build(family)
    cfg, coeffs, mild, aggressive = CASES[family]
    ref = ksample(tiny.patcher, tiny, cfg=cfg)
    results = {}
    for thr in (mild, aggressive):
        out = ksample(apply_tea(tiny.patcher, thr), tiny, cfg=cfg)
        run = run_log.last()
        assert run["method"] == "TeaCache" and run["settings"]["coefficients"] == coeffs
        assert torch.isfinite(out).all()
        recs = run["records"]
        first = min(r["call_index"] for r in recs)
        last = max(r["call_index"] for r in recs)
        assert not any(r["skipped"] for r in recs if r["call_index"] in (first, last))  # first/last compute
        results[thr] = (run["skipped_calls"], run["calls"], psnr(out, ref))
    log.info("TeaCache %s: %s", family, {t: f"skipped {s}/{c}, PSNR {p:.1f} dB" for t, (s, c, p) in results.items()})
    assert 0 < results[aggressive][0] < results[aggressive][1]
    assert results[mild][0] <= results[aggressive][0]
    assert results[mild][2] > 30


def test_per_stream_accumulators_with_separate_cfg_calls():
    tiny = tiny_models.build("wan21")
    neg = tiny.conditioning(2, tokens=3)  # another text length: cond and uncond run as separate calls
    ref = ksample(tiny.patcher, tiny, cfg=4.0, steps=16, negative=neg)
    out = ksample(apply_tea(tiny.patcher, 0.2), tiny, cfg=4.0, steps=16, negative=neg)
    run = run_log.last()
    assert run["calls"] == 32
    per = {s: [r for r in run["records"] if r["stream"] == s] for s in ("cond", "uncond")}
    assert all(len(v) == 16 and any(r["skipped"] for r in v) for v in per.values())
    assert psnr(out, ref) > 25


def test_window_limits_threshold_zero_and_raw_choice():
    tiny = tiny_models.build("flux")
    ref = ksample(tiny.patcher, tiny)
    assert apply_tea(tiny.patcher, 0.0) is tiny.patcher
    out = ksample(apply_tea(tiny.patcher, 1e-9), tiny)
    assert run_log.last()["skipped_calls"] == 0 and torch.equal(out, ref)
    ksample(apply_tea(tiny.patcher, 100.0, start=0.25, end=0.75, max_skips=2), tiny)
    recs = run_log.last()["records"]
    skipped = [r["call_index"] for r in recs if r["skipped"]]
    assert skipped and min(skipped) >= 5 and max(skipped) <= 15
    run = 0
    for r in recs:
        run = run + 1 if r["skipped"] else 0
        assert run <= 2
    ksample(apply_tea(tiny.patcher, 0.05, coeffs="raw"), tiny)
    assert run_log.last()["settings"]["coefficients"] == "raw"


def test_coefficients_and_config():
    assert resolve_coefficients("auto", "flux") == ("flux", COEFFICIENTS["flux"])
    assert resolve_coefficients("auto", "wan") == ("raw", None)
    assert resolve_coefficients("hunyuan_video", "flux")[0] == "flux"  # retired choices run "auto"
    assert resolve_coefficients("raw", "flux") == ("raw", None)
    with pytest.raises(ValueError):
        resolve_coefficients("nope", "flux")
    c = TeaCacheConfig(coefficients=[1.0, 2.0, 3.0])
    assert c.rescale(2.0) == 1 * 4 + 2 * 2 + 3
    assert TeaCacheConfig().rescale(0.3) == 0.3
    with pytest.raises(ValueError):
        TeaCacheConfig(coefficients=[float("nan")])


def test_only_applicable_coefficients_offered():
    """Issue 20 item 9: the node offers the sets of families TeaCache acts on (Flux's; raw elsewhere)."""
    options = next(i for i in ApplyTeaCache.define_schema().inputs if i.id == "coefficients").options
    assert list(options) == list(CHOICES) == ["auto", "flux", "raw"]
    assert not set(RETIRED) & set(options)


@pytest.mark.parametrize("family,coeffs", [("flux", "flux"), ("wan21", "raw"), ("qwen_image", "raw")])
def test_auto_threshold_follows_the_coefficients(family, coeffs):
    """rel_l1_threshold -1 (the default) runs 0.4 with Flux's coefficients and 0.1 raw, and skips."""
    default = next(i for i in ApplyTeaCache.define_schema().inputs if i.id == "rel_l1_threshold").default
    assert default == -1
    tiny = tiny_models.build(family)
    ksample(apply_tea(tiny.patcher, -1.0), tiny, cfg=CASES[family][0])
    run = run_log.last()
    assert run["settings"]["coefficients"] == coeffs
    assert run["settings"]["threshold"] == AUTO_THRESHOLD[coeffs]
    assert run["skipped_calls"] > 0


def test_retired_choice_from_a_saved_workflow_warns_and_runs_auto(caplog):
    assert ApplyTeaCache.validate_inputs(rel_l1_threshold=-1.0, coefficients="hunyuan_video") is True
    assert "not one of the listed choices" in ApplyTeaCache.validate_inputs(coefficients="nope")
    assert "-1 (auto)" in ApplyTeaCache.validate_inputs(rel_l1_threshold=-0.5, coefficients="auto")
    tiny = tiny_models.build("flux")
    with caplog.at_level(logging.WARNING, logger="dit_cache"):
        ksample(apply_tea(tiny.patcher, -1.0, coeffs="mochi"), tiny)
    assert run_log.last()["settings"]["coefficients"] == "flux"
    assert any("'mochi' are no longer offered" in r.getMessage() and "using 'auto'" in r.getMessage()
               for r in caplog.records)
