"""SeaCache on the diffusers host against diffusers' own SeaCache hook, on a tiny real diffusers Wan (CPU).

Same loop as tests/diffusers/test_fbc_diffusers.py (flow-matching Euler, cond and uncond as separate transformer
calls). diffusers' hook needs each call's step, sigma and step count in ``cache_context``; ours reads the sigma
from ``cache.stream`` and the step count from the config. Wan is the family diffusers' hook has a built-in
latent adapter for (its 5-D ``hidden_states``); on Flux (packed tokens) both compute every call.
"""
from __future__ import annotations

import logging

import pytest
import torch
from diffusers.hooks import SeaCacheConfig as DiffusersSeaCacheConfig

from dit_cache.cache_core.methods.seacache import SeaCacheConfig
from dit_cache.hosts.diffusers import apply_cache

from tiny_diffusers import (ATOL, RTOL, SHIFT, STEPS, run_plain, run_with_diffusers_cache, run_with_our_cache,
                            sample, skips_of, tiny_flux, tiny_wan)

log = logging.getLogger("dit_cache.tests")

pytestmark = pytest.mark.usefixtures("one_thread")


def _step_of() -> dict[float, int]:
    """The loop's sigma -> step index (tiny_diffusers.sample's schedule)."""
    sig = torch.linspace(1.0, 0.0, STEPS + 1, dtype=torch.float64)
    sig = SHIFT * sig / (1.0 + (SHIFT - 1.0) * sig)
    return {float(s): i for i, s in enumerate(sig[:STEPS])}


@pytest.fixture(scope="module")
def tiny():
    return tiny_wan()


def _context(tiny):
    """diffusers' SeaCache needs each call's step, sigma and step count in cache_context (as WanPipeline passes)."""
    steps = _step_of()
    return lambda name, sigma: tiny.model.cache_context(name, step_index=steps[sigma], sigma=sigma,
                                                        num_inference_steps=STEPS)


def run_diffusers(tiny, **kw):
    return run_with_diffusers_cache(tiny, DiffusersSeaCacheConfig(**kw), _context(tiny))


run_ours = run_with_our_cache


# (threshold, residual_order, retention_steps, cache_end_steps, max_consecutive_cached). The tiny Wan's SEA
# distances run 0.14-0.76 per step (cond and uncond share the latent, so their indicators are equal); each
# threshold is more than MIN_MARGIN away from every accumulated value its run produces (checked below).
CASES = [
    (0.0, 1, 1, 1, 2),  # nothing skips
    (0.25, 1, 1, 1, 2),  # diffusers' defaults
    (0.5, 1, 1, 1, 2),
    (1.0, 0, 0, 0, 0),  # order 0, no retention, no end steps, no consecutive limit
    (2.0, 1, 2, 1, 3),
]
MIN_MARGIN = 1e-3


@pytest.mark.parametrize("case", CASES, ids=lambda c: "thr{}-o{}-r{}-e{}-m{}".format(*c))
def test_same_skips_and_latents_as_diffusers(tiny, case):
    threshold, order, retention, end, limit = case
    kw = {"threshold": threshold, "residual_order": order, "retention_steps": retention, "cache_end_steps": end,
          "max_consecutive_cached": limit}
    ref, ref_skips = run_diffusers(tiny, **kw)
    out, skips, stats = run_ours(tiny, SeaCacheConfig(num_inference_steps=STEPS, **kw))
    diff = (out - ref).abs().max().item()
    log.info("SeaCache %s: skipped %d/%d, max |ours - diffusers| %.3g", kw, stats.skipped_calls, stats.calls, diff)
    metrics = [r.metric for r in stats.records if r.metric is not None]
    if threshold > 0:
        margin = min(abs(m - threshold) for m in metrics)
        assert margin > MIN_MARGIN, f"threshold {threshold} is too close to a metric value ({margin:.2g})"
    assert skips == ref_skips
    assert stats.calls == 2 * STEPS
    if threshold == 0:
        assert stats.skipped_calls == 0
    else:
        assert 0 < stats.skipped_calls < stats.calls
        for stream in skips.values():  # retention and end steps computed, the consecutive limit kept
            assert not any(stream[:retention]) and not any(stream[STEPS - end:])
            run = 0
            for skipped in stream:
                run = run + 1 if skipped else 0
                assert limit == 0 or run <= limit
    assert torch.allclose(out, ref, atol=ATOL, rtol=RTOL), diff


def test_skipping_stays_close_to_uncached(tiny):
    ref, _ = run_plain(tiny)
    out, _, stats = run_ours(tiny, SeaCacheConfig(num_inference_steps=STEPS))
    rel = ((out - ref).norm() / ref.norm()).item()
    log.info("SeaCache defaults: skipped %d/%d, relative L2 error vs uncached %.3g", stats.skipped_calls,
             stats.calls, rel)
    assert stats.skipped_calls > 0 and torch.isfinite(out).all() and rel < 0.25


def test_pipeline_cache_context_drives_the_cache(tiny):
    """A pipeline passes step, sigma and step count to cache_context and resets the cache at the end."""
    explicit, explicit_skips, _ = run_ours(tiny, SeaCacheConfig(threshold=0.5, num_inference_steps=STEPS))
    model = tiny.model
    cache = apply_cache(model, SeaCacheConfig(threshold=0.5, num_inference_steps=STEPS))
    try:
        out, skips = sample(tiny, _context(tiny))
        model._reset_stateful_cache()
        assert skips == explicit_skips == skips_of(cache.last_stats)
        assert torch.equal(out, explicit)
    finally:
        cache.remove()


def test_packed_flux_tokens_compute_every_call_as_diffusers(caplog):
    """diffusers' Flux takes packed (batch, tokens, channels) latents: no SEA indicator, both compute every call."""
    tiny = tiny_flux()
    ref, _ = run_plain(tiny)
    with caplog.at_level(logging.WARNING, logger="dit_cache"):
        out, skips, stats = run_ours(tiny, SeaCacheConfig(threshold=10.0, num_inference_steps=STEPS))
    assert stats.skipped_calls == 0 and torch.equal(out, ref)
    assert caplog.text.count("[dit-cache] SeaCache: the model call has an input latent of shape (1, 64, 16)") == 1
    theirs, their_skips = run_with_diffusers_cache(tiny, DiffusersSeaCacheConfig(threshold=10.0), _context(tiny))
    assert their_skips == skips and torch.equal(theirs, ref)
