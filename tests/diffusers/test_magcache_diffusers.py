"""MagCache on the diffusers host against diffusers' own MagCache hook, on a tiny real diffusers Flux (CPU).

Same loop as tests/diffusers/test_fbc_diffusers.py (flow-matching Euler, cond and uncond as separate transformer
calls in cache_context("cond"/"uncond")). Skips are seen the same way for both: a forward hook on a child of
the second double block runs only when a call computes the blocks.
"""
from __future__ import annotations

import ast
import logging

import pytest
import torch
from diffusers.hooks import MagCacheConfig as DiffusersMagCacheConfig
from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

from dit_cache.hosts.diffusers import apply_cache
from dit_cache.cache_core.methods.magcache import MagCacheCalibratePolicy, MagCacheConfig

from tiny_diffusers import (ATOL, RTOL, STEPS, STREAMS, run_plain, run_with_diffusers_cache, run_with_our_cache,
                            sample, tiny_flux)

log = logging.getLogger("dit_cache.tests")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return tiny_flux()


def run_diffusers(tiny, **kw):
    return run_with_diffusers_cache(tiny, DiffusersMagCacheConfig(num_inference_steps=STEPS, **kw))


run_ours = run_with_our_cache


# FLUX_MAG_RATIOS has 28 values: mapped to 12 steps by nearest index (diffusers) = interpolation "nearest".
@pytest.mark.parametrize("threshold,max_skip,retention", [(0.0, 3, 0.2), (0.06, 3, 0.2), (0.3, 2, 0.1), (1.0, 5, 0.0)])
def test_same_skips_and_latents_as_diffusers(tiny, threshold, max_skip, retention):
    ratios = FLUX_MAG_RATIOS.tolist()
    ref, ref_skips = run_diffusers(tiny, threshold=threshold, max_skip_steps=max_skip, retention_ratio=retention,
                                   mag_ratios=FLUX_MAG_RATIOS)
    out, skips, stats = run_ours(tiny, MagCacheConfig(
        ratios=ratios, threshold=threshold, max_skip_steps=max_skip, retention_ratio=retention,
        num_inference_steps=STEPS, interpolation="nearest"))
    diff = (out - ref).abs().max().item()
    log.info("MagCache thr %.2f K %d ret %.1f: skipped %d/%d, max |ours - diffusers| %.3g", threshold, max_skip,
             retention, stats.skipped_calls, stats.calls, diff)
    assert skips == ref_skips
    if threshold > 0:
        assert stats.skipped_calls > 0
    assert torch.allclose(out, ref, atol=ATOL, rtol=RTOL), diff


def calibrate_ours(tiny) -> dict[str, list[float]]:
    """Our calibration of the tiny model through the diffusers host: ratios per stream."""
    policy = MagCacheCalibratePolicy()
    cache = apply_cache(tiny.model, policy)
    try:
        sample(tiny, lambda name, sigma: cache.stream(name, sigma=sigma))
        cache.reset()
    finally:
        cache.remove()
    return {s.label: s.ratios for s in policy.last}


def test_calibration_equals_diffusers_calibrate(tiny, capsys):
    run_diffusers(tiny, calibrate=True)
    printed = capsys.readouterr().out
    # diffusers prints "[MagCache] Calibration Complete ..." then the list, once per cache context
    lists = [ast.literal_eval(line.strip()) for line in printed.splitlines() if line.strip().startswith("[1.0")]
    assert len(lists) == len(STREAMS), printed
    ours = calibrate_ours(tiny)
    assert set(ours) == set(STREAMS)
    assert all(len(v) == STEPS for v in ours.values())
    # diffusers prints the contexts in the order their last step ended: cond then uncond
    for name, theirs in zip(STREAMS, lists):
        assert ours[name] == pytest.approx(theirs, rel=1e-4, abs=1e-5), (name, ours[name], theirs)
    # and the ratios really describe the model: not all 1
    assert any(abs(r - 1.0) > 1e-3 for r in ours["cond"])


def test_our_calibration_drives_our_magcache(tiny):
    """The measured ratios (per stream) feed MagCache; close to the uncached result."""
    ratios = calibrate_ours(tiny)
    ref, _ = run_plain(tiny)
    out, _, stats = run_ours(tiny, MagCacheConfig(ratios=ratios,
                                                  threshold=0.3, max_skip_steps=1, num_inference_steps=STEPS))
    rel = ((out - ref).norm() / ref.norm()).item()
    log.info("MagCache (own calibration) thr 0.3 K 1: skipped %d/%d, relative error %.3g", stats.skipped_calls,
             stats.calls, rel)
    assert stats.skipped_calls > 0 and rel < 0.25
