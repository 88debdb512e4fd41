"""PAB Config and Apply FasterCache through ComfyUI's real sampler on tiny Flux, Wan and Lumina 2 (a family whose
forward has no ``patches_replace["dit"]``: its block list is object-patched), with PSNR reported."""
from __future__ import annotations

import logging

import pytest
import torch

import tiny_models
from methods_registry import fastercache_inputs, pab_inputs
from metrics import psnr
from sampling import ksample

from dit_cache.cache_core.config import CacheWindow
from dit_cache.cache_core.methods.fastercache import (FasterCacheConfig, UncondState, split_frequencies, uncond_observe,
                                              uncond_rebuild)
from dit_cache.cache_core.methods.pab import PABConfig
from dit_cache.hosts.comfy import run_log
from dit_cache.nodes.fastercache_node import ApplyFasterCache
from dit_cache.nodes.pab_node import PABConfigNode

log = logging.getLogger("dit_cache.tests")
pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 20


def pab(model, spatial=2, cross=6, start=0.2, end=0.9):
    return PABConfigNode.execute(model, **pab_inputs(spatial, cross, start, end)).result[0]


def faster(model, **kw):
    return ApplyFasterCache.execute(model, **fastercache_inputs(**kw)).result[0]


def per_stream(run: dict) -> dict[str, list[float]]:
    """Reused fraction of each call's attention, per stream, in call order."""
    out: dict[str, list[float]] = {}
    for r in run["records"]:
        out.setdefault(r["stream"], []).append(r["metric"])
    return out


@pytest.mark.parametrize("family,cfg", [("flux", 1.0), ("wan21", 4.0), ("lumina2", 4.0)])
def test_pab_reuses_and_stays_close(family, cfg):
    tiny = tiny_models.build(family)
    ref = ksample(tiny.patcher, tiny, cfg=cfg, steps=STEPS)
    out = ksample(pab(tiny.patcher), tiny, cfg=cfg, steps=STEPS)
    run = run_log.last()
    assert run["method"] == "PAB" and run["completed"]
    reused, total = run["reuse"]["attention"]
    quality = psnr(out, ref)
    log.info("PAB defaults on tiny %s: reused %d/%d attention computations, PSNR %.1f dB", family, reused, total,
             quality)
    assert 0 < reused < total
    assert quality > 30
    # outside the 0.2-0.9 window nothing is reused: the first and last steps compute every attention
    for fractions in per_stream(run).values():
        assert len(fractions) == STEPS and fractions[0] == 0 and fractions[-1] == 0


def test_pab_every_other_call_closed_form():
    """spatial N=2 over the whole schedule: on Flux (only spatial attention) every odd call reuses everything."""
    tiny = tiny_models.build("flux")
    ksample(pab(tiny.patcher, 2, 0, 0.0, 1.0), tiny, steps=STEPS)
    fractions = per_stream(run_log.last())["cond"]
    assert fractions == [float(i % 2) for i in range(STEPS)]


def test_pab_per_stream_state_same_with_batched_and_separate_cfg():
    tiny = tiny_models.build("wan21")
    ksample(pab(tiny.patcher, 2, 3), tiny, cfg=4.0, steps=STEPS)
    batched = per_stream(run_log.last())
    neg = tiny.conditioning(2, tokens=3)  # another text length: cond and uncond run as separate model calls
    ref = ksample(tiny.patcher, tiny, cfg=4.0, steps=STEPS, negative=neg)
    out = ksample(pab(tiny.patcher, 2, 3), tiny, cfg=4.0, steps=STEPS, negative=neg)
    run = run_log.last()
    assert run["calls"] == 2 * STEPS
    separate = per_stream(run)
    assert batched["cond"] == batched["uncond"] == separate["cond"] == separate["uncond"]
    assert psnr(out, ref) > 30


def test_disabled_pab_and_fastercache_return_the_model():
    tiny = tiny_models.build("flux")
    assert pab(tiny.patcher, 0, 1) is tiny.patcher
    assert faster(tiny.patcher, spatial=1, uncond=0) is tiny.patcher


def test_an_earlier_attention_override_is_kept():
    """Another node's optimized_attention_override (e.g. a SageAttention patch) still runs when we compute."""
    tiny = tiny_models.build("flux")
    seen = []

    def other(func, *args, **kwargs):
        seen.append(1)
        return func(*args, **kwargs)

    m = tiny.patcher.clone()
    m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = other
    ref = ksample(m, tiny, steps=STEPS)
    n_uncached = len(seen)
    seen.clear()
    ksample(pab(m, 2, 0, 0.0, 1.0), tiny, steps=STEPS)
    reused, total = run_log.last()["reuse"]["attention"]
    assert total == n_uncached and len(seen) == total - reused > 0
    seen.clear()
    assert torch.equal(ksample(m, tiny, steps=STEPS), ref) and len(seen) == n_uncached  # m itself unchanged


@pytest.mark.parametrize("separate", [False, True])
def test_fastercache_rebuilds_the_uncond_branch(separate):
    tiny = tiny_models.build("wan21")
    neg = tiny.conditioning(2, tokens=3) if separate else None
    ref = ksample(tiny.patcher, tiny, cfg=4.0, steps=STEPS, negative=neg)
    out = ksample(faster(tiny.patcher, uncond=3, attention_start=0.0, uncond_start=0.0), tiny, cfg=4.0, steps=STEPS,
                  negative=neg)
    run = run_log.last()
    reused, total = run["reuse"]["uncond"]
    # skipped at every step i > 0 with i % 3 != 0 (window from the first step)
    assert (reused, total) == (sum(1 for i in range(1, STEPS) if i % 3), STEPS)
    streams = per_stream(run)
    assert len(streams["cond"]) == STEPS and len(streams["uncond"]) == STEPS - reused
    # attention is extrapolated only in calls without an uncond branch: the cond calls of rebuilt steps
    assert 0 < run["reuse"]["attention"][0]
    assert all(f == 0 for f in streams["uncond"])
    quality = psnr(out, ref)
    log.info("FasterCache on tiny Wan (%s CFG): uncond rebuilt %d/%d, attention %s, PSNR %.1f dB",
             "separate" if separate else "batched", reused, total, run["reuse"]["attention"], quality)
    assert quality > 25


def test_fastercache_at_cfg_1_logs_and_extrapolates_attention_only(caplog):
    tiny = tiny_models.build("flux")
    ref = ksample(tiny.patcher, tiny, steps=STEPS)
    with caplog.at_level(logging.INFO, logger="dit_cache"):
        out = ksample(faster(tiny.patcher), tiny, steps=STEPS)
    run = run_log.last()
    assert "CFG is 1" in caplog.text
    assert "uncond" not in run["reuse"] and run["reuse"]["attention"][0] > 0
    assert psnr(out, ref) > 30


def test_frequency_split_and_rebuild_closed_form():
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 4, 3, 10, 12, generator=g), torch.randn(2, 4, 3, 10, 12, generator=g)
    low, high = split_frequencies(cond)
    assert torch.allclose(torch.fft.ifft2(torch.fft.ifftshift(low + high, dim=(-2, -1))).real, cond, atol=1e-5)
    state = UncondState()
    uncond_observe(state, cond, uncond)
    assert torch.allclose(uncond_rebuild(state, cond, 1.0, 1.0), uncond, atol=1e-5)  # same cond -> same uncond
    shifted = cond + 0.5
    rebuilt = uncond_rebuild(state, shifted, 1.0, 1.0)
    assert torch.allclose(rebuilt, uncond + 0.5, atol=1e-5)  # the difference carries over
    # weights compound: delta_low scaled twice after two rebuilds at alpha 2
    state2 = UncondState()
    uncond_observe(state2, cond, uncond)
    d0 = state2.delta_low.clone()
    uncond_rebuild(state2, cond, 2.0, 1.0)
    uncond_rebuild(state2, cond, 2.0, 1.0)
    assert torch.allclose(state2.delta_low, 4 * d0)


def test_bad_input_is_refused_before_sampling():
    # ComfyUI passes validate_inputs the inputs it names: the windows
    def windows(inputs: dict) -> dict:
        return {k: v for k, v in inputs.items() if k.endswith("_percent")}

    assert PABConfigNode.validate_inputs(**windows(pab_inputs(2, 6, 0.9, 0.2))) != True  # noqa: E712
    assert ApplyFasterCache.validate_inputs(**windows(fastercache_inputs(uncond_start=1.0))) != True  # noqa: E712
    assert PABConfigNode.validate_inputs(**windows(pab_inputs(2, 6))) is True
    with pytest.raises(ValueError):
        PABConfig(spatial_skip=-1)
    with pytest.raises(ValueError):
        FasterCacheConfig(attention_window=CacheWindow(0.5, 0.4))
