"""The diffusers host against diffusers' own First Block Cache, on tiny real diffusers transformers (CPU).

Each run is a pipeline-like loop (flow-matching Euler steps, cond and uncond as separate transformer calls,
CFG combine, as diffusers' Flux/Wan pipelines do), once with ``transformer.enable_cache(diffusers FBC)`` +
``cache_context(...)`` and once with our ``apply_cache`` + ``cache.stream(...)``. Whether a call skipped is
seen the same way for both: a forward hook on a child of the second block, which only runs when the call
computes the blocks after the first.
"""
from __future__ import annotations

import logging

import pytest
import torch
from diffusers.hooks import FirstBlockCacheConfig as DiffusersFBCConfig
from tiny_diffusers import (ATOL, BUILDERS, RTOL, STEPS, Tiny, run_plain, run_with_diffusers_cache,
                            run_with_our_cache, sample, skips_of)

from dit_cache.hosts.diffusers import DiffusersCache, apply_cache
from dit_cache.cache_core.methods.fbc import FirstBlockCacheConfig
from dit_cache.cache_core.stats import RunStats

log = logging.getLogger("dit_cache.tests")

# The tiny models have random weights, so their first-block residual changes much more between steps than a
# trained model's (measured FBC metric per call: Flux ~0.15-0.55, Wan ~0.25-0.6) and the standard 0.05-0.12
# would skip nothing. The thresholds are picked from those measurements, each more than 3e-3 away from every
# metric value its run produces (the test checks > MIN_MARGIN), so float noise cannot flip a decision.
# "none": nothing may skip; "some": some but not all calls must skip.
THRESHOLDS = {
    "flux": [(1e-6, "none"), (0.21, "some"), (0.34, "some"), (0.5, "some")],
    "wan": [(1e-6, "none"), (0.31, "some"), (0.45, "some"), (0.5, "some")],
}
MIN_MARGIN = 1e-3

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=list(BUILDERS))
def fam(request) -> tuple[str, Tiny]:
    return request.param, BUILDERS[request.param]()


def run_diffusers(tiny: Tiny, threshold: float) -> tuple[torch.Tensor, dict[str, list[bool]]]:
    return run_with_diffusers_cache(tiny, DiffusersFBCConfig(threshold=threshold))


def run_ours(tiny: Tiny, threshold: float) -> tuple[torch.Tensor, dict[str, list[bool]], RunStats]:
    return run_with_our_cache(tiny, FirstBlockCacheConfig(threshold=threshold))


def _metrics(stats: RunStats) -> str:
    return " ".join(f"{r.stream[0]}{r.call_index}:{r.metric:.3f}{'S' if r.skipped else ''}"
                    for r in stats.records if r.metric is not None)


def test_layouts_match_installed_diffusers(fam):
    """apply_cache checks every block's forward signature against the layout; a clean apply/remove is the test."""
    name, tiny = fam
    cache = apply_cache(tiny.model, FirstBlockCacheConfig())
    assert cache.layout.family == name
    assert cache.block_counts == ([2, 3] if name == "flux" else [3])
    cache.remove()


@pytest.mark.parametrize("case", range(4))
def test_same_skips_and_latents_as_diffusers(fam, case):
    name, tiny = fam
    if case >= len(THRESHOLDS[name]):
        pytest.skip("no such threshold for this family")
    threshold, expect = THRESHOLDS[name][case]
    ref, ref_skips = run_diffusers(tiny, threshold)
    out, skips, stats = run_ours(tiny, threshold)
    diff = (out - ref).abs().max().item()
    log.info("%s FBC %.3g: skipped %d/%d, max |ours - diffusers| = %.3g; metrics %s",
             name, threshold, stats.skipped_calls, stats.calls, diff, _metrics(stats))
    margin = min(abs(r.metric - threshold) for r in stats.records if r.metric is not None)
    assert margin > MIN_MARGIN, f"threshold {threshold} is too close to a metric value ({margin:.2g}): pick another"
    assert skips == ref_skips
    assert stats.calls == 2 * STEPS
    if expect == "none":
        assert stats.skipped_calls == 0
    else:
        assert 0 < stats.skipped_calls < stats.calls
    assert torch.allclose(out, ref, atol=ATOL, rtol=RTOL), diff


def test_skipping_stays_close_to_uncached(fam):
    name, tiny = fam
    ref, ref_skips = run_plain(tiny)
    assert not any(any(v) for v in ref_skips.values())
    threshold = THRESHOLDS[name][1][0]  # the mildest threshold that skips
    out, _, stats = run_ours(tiny, threshold)
    rel = ((out - ref).norm() / ref.norm()).item()
    log.info("%s FBC %.3g: skipped %d/%d, relative L2 error vs uncached %.3g",
             name, threshold, stats.skipped_calls, stats.calls, rel)
    assert stats.skipped_calls > 0
    assert torch.isfinite(out).all()
    assert rel < 0.25


def test_pipeline_cache_context_and_reset_drive_the_cache(fam):
    """A diffusers pipeline only calls cache_context(name, ...) and, at the end, _reset_stateful_cache()."""
    name, tiny = fam
    threshold = THRESHOLDS[name][2][0]
    explicit, explicit_skips, explicit_stats = run_ours(tiny, threshold)
    model = tiny.model
    cache = apply_cache(model, FirstBlockCacheConfig(threshold=threshold))
    try:
        for _ in range(2):  # a second pipeline call starts from a clean cache
            out, skips = sample(tiny, lambda stream, sigma: model.cache_context(stream, sigma=sigma))
            model._reset_stateful_cache()
            assert cache.stats.calls == 0
            assert cache.last_stats is not None and cache.last_stats.calls == 2 * STEPS
            assert skips == explicit_skips == skips_of(cache.last_stats)
            assert torch.equal(out, explicit)
    finally:
        cache.remove()


def test_remove_restores_the_transformer_exactly(fam):
    name, tiny = fam
    model = tiny.model
    blocks = [b for attr in ("transformer_blocks", "single_transformer_blocks", "blocks")
              for b in getattr(model, attr, [])]
    before = set(model.__dict__), [set(b.__dict__) for b in blocks]
    ref, _ = run_plain(tiny)
    cache = apply_cache(model, FirstBlockCacheConfig(threshold=THRESHOLDS[name][-1][0]))
    with torch.no_grad(), cache.stream("cond"):
        tiny.call(tiny.x0, 1.0, "cond")
        tiny.call(tiny.x0, 0.9, "cond")
    assert cache.reset().skipped_calls == 1  # the patch was live
    cache.remove()
    assert (set(model.__dict__), [set(b.__dict__) for b in blocks]) == before
    out, _ = run_plain(tiny)
    assert torch.equal(out, ref)
    with pytest.raises(RuntimeError):
        cache.remove()
    apply_cache(model, FirstBlockCacheConfig()).remove()  # can be applied again


def test_refuses_unsupported_and_double_application(fam):
    _, tiny = fam
    with pytest.raises(ValueError, match="not a supported"):
        apply_cache(torch.nn.Linear(2, 2), FirstBlockCacheConfig())
    with pytest.raises(TypeError):
        apply_cache(tiny.model, DiffusersFBCConfig())  # diffusers' config is not ours
    cache = apply_cache(tiny.model, FirstBlockCacheConfig())
    try:
        with pytest.raises(ValueError, match="already has a dit-cache"):
            apply_cache(tiny.model, FirstBlockCacheConfig())
    finally:
        cache.remove()
    tiny.model.enable_cache(DiffusersFBCConfig())
    try:
        with pytest.raises(ValueError, match="diffusers cache enabled"):
            apply_cache(tiny.model, FirstBlockCacheConfig())
    finally:
        tiny.model.disable_cache()


def test_failed_call_commits_nothing(fam, caplog):
    _, tiny = fam
    cache: DiffusersCache = apply_cache(tiny.model, FirstBlockCacheConfig(threshold=10.0))  # skip whenever allowed

    def boom(*_):
        raise RuntimeError("boom")

    try:
        with torch.no_grad(), cache.stream("cond"):
            handle = tiny.probe.register_forward_pre_hook(boom)  # fails after the first block ran
            with pytest.raises(RuntimeError, match="boom"):
                tiny.call(tiny.x0, 1.0, "cond")
            handle.remove()
            assert cache.stats.calls == 0
            before = tiny.computed
            tiny.call(tiny.x0, 1.0, "cond")  # no residuals were committed: must compute
            tiny.call(tiny.x0, 0.9, "cond")
        assert tiny.computed == before + 1
        with caplog.at_level(logging.INFO, logger="dit_cache"):
            stats = cache.reset()
        assert (stats.calls, stats.skipped_calls) == (2, 1)
        assert "[dit-cache] FirstBlockCache: skipped 1/2 model calls" in caplog.text
    finally:
        cache.remove()


def test_schedule_window_uses_the_stream_sigma(fam):
    """start_percent=0.5 maps to flow-matching sigma 0.5: calls above it always compute."""
    _, tiny = fam
    cache = apply_cache(tiny.model, FirstBlockCacheConfig(threshold=10.0, start_percent=0.5))
    try:
        with torch.no_grad():
            for sigma in (1.0, 0.9, 0.6, 0.4, 0.3):
                with cache.stream("cond", sigma=torch.tensor(sigma)):
                    tiny.call(tiny.x0, sigma, "cond")
        stats = cache.reset()
    finally:
        cache.remove()
    assert [(r.reason, r.skipped) for r in stats.records] == [
        ("no_cache", False), ("window", False), ("window", False), ("metric", True), ("metric", True)]
    assert [r.sigma for r in stats.records] == pytest.approx([1.0, 0.9, 0.6, 0.4, 0.3])
