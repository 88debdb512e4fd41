"""PAB Config through ComfyUI's real sampler on tiny Flux, Wan and Lumina 2 (a family whose forward has no
``patches_replace["dit"]``: its block list is object-patched), with PSNR reported; and, for PAB and FasterCache
together, disabled settings returning the model and bad input refused before sampling."""
from __future__ import annotations

import logging

import pytest
import torch

import tiny_models
from comfy_attention import STEPS, faster, pab, per_stream
from methods_registry import fastercache_inputs, pab_inputs
from metrics import psnr
from sampling import ksample

from dit_cache.cache_core.config import CacheWindow
from dit_cache.cache_core.methods.fastercache import FasterCacheConfig
from dit_cache.cache_core.methods.pab import PABConfig
from dit_cache.hosts.comfy import run_log
from dit_cache.nodes.fastercache_node import ApplyFasterCache
from dit_cache.nodes.pab_node import PABConfigNode

log = logging.getLogger("dit_cache.tests")
pytestmark = pytest.mark.usefixtures("one_thread")


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
