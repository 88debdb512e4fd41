"""TaylorSeer on the diffusers host against diffusers' own TaylorSeer hook, on tiny real diffusers Flux and Wan.

Equivalent settings: diffusers predicts the output of every module its ``cache_identifiers`` match; with every
transformer block matched, a predicted call's result is the prediction of the last block's output(s), which is
what our "block outputs" forecast produces (the output of each segment's last block; every block cached).
Same loop as tests/diffusers/test_fbc_diffusers.py (flow-matching Euler, cond and uncond as separate transformer calls
in cache_context("cond"/"uncond")); skips are seen on both sides by a forward hook inside the second block.

"attention+MLP outputs" on the diffusers host predicts the blocks' attention modules (the layout's
``attention_modules``; no feed-forward modules are hooked there), which is what diffusers' default identifiers
match on Flux (``transformer_blocks.N.attn``, ``single_transformer_blocks.N.attn``). On Wan the defaults
(``^blocks.*attn``, fullmatch) match no module (they are named attn1/attn2), so the Wan case names them.
A predicted call is seen on both sides by a forward hook on the second block's first attention's ``to_q``.
"""
from __future__ import annotations

import contextlib
import logging
import re

import pytest
import torch
from diffusers.hooks import TaylorSeerCacheConfig as DiffusersTaylorSeerConfig

from dit_cache.hosts.diffusers import apply_cache
from dit_cache.cache_core.methods.taylorseer import FACTOR_DTYPES, TaylorSeerConfig

from tiny_diffusers import ATOL, RTOL, STEPS, STREAMS, run_plain, sample, skips_of, tiny_flux, tiny_wan

log = logging.getLogger("dit_cache.tests")

pytestmark = pytest.mark.usefixtures("one_thread")

# every transformer block of the model, as diffusers module names (re.fullmatch)
BLOCKS = {"flux": [r"transformer_blocks\.\d+", r"single_transformer_blocks\.\d+"], "wan": [r"blocks\.\d+"]}
BUILDERS = {"flux": tiny_flux, "wan": tiny_wan}
# (cache_interval, warm-up = disable_cache_before_step, max_order, factor dtype, disable_cache_after_step)
CASES = [(5, 3, 1, "float32", None), (3, 2, 2, "float32", None), (2, 1, 1, "bfloat16", None),
         (4, 3, 0, "float32", None), (3, 2, 1, "float32", 9)]


@pytest.fixture(scope="module", params=list(BUILDERS))
def fam(request):
    return request.param, BUILDERS[request.param]()


def run_diffusers(tiny, name, interval, before, order, dtype, after):
    model = tiny.model
    model.enable_cache(DiffusersTaylorSeerConfig(
        cache_interval=interval, disable_cache_before_step=before, disable_cache_after_step=after,
        max_order=order, taylor_factors_dtype=FACTOR_DTYPES[dtype], cache_identifiers=BLOCKS[name]))
    try:
        return sample(tiny, lambda stream, sigma: model.cache_context(stream))
    finally:
        model._reset_stateful_cache()
        model.disable_cache()


def run_ours(tiny, interval, before, order, dtype, after):
    final = 0 if after is None else STEPS - after  # diffusers' absolute step -> our "final full steps"
    cache = apply_cache(tiny.model, TaylorSeerConfig(cache_interval=interval, warmup_steps=before,
                                                     final_full_steps=final, max_order=order, factor_dtype=dtype,
                                                     num_inference_steps=STEPS))
    try:
        out, observed = sample(tiny, lambda stream, sigma: cache.stream(stream, sigma=sigma))
        stats = cache.reset()
    finally:
        cache.remove()
    assert skips_of(stats) == observed  # the records say what the blocks really did
    return out, observed, stats


@pytest.mark.parametrize("case", CASES, ids=[f"i{c[0]}-w{c[1]}-o{c[2]}-{c[3]}-after{c[4]}" for c in CASES])
def test_same_skips_and_latents_as_diffusers(fam, case):
    name, tiny = fam
    ref, ref_skips = run_diffusers(tiny, name, *case)
    out, skips, stats = run_ours(tiny, *case)
    diff = (out - ref).abs().max().item()
    plain, _ = run_plain(tiny)
    rel = ((out - plain).norm() / plain.norm()).item()
    log.info("%s TaylorSeer %s: skipped %d/%d, max |ours - diffusers| = %.3g, relative L2 vs uncached %.3g, "
             "cache %d bytes", name, case, stats.skipped_calls, stats.calls, diff, rel, stats.cache_bytes)
    assert skips == ref_skips
    assert 0 < stats.skipped_calls < stats.calls
    assert torch.allclose(out, ref, atol=ATOL, rtol=RTOL), diff
    assert not torch.allclose(out, plain, atol=ATOL, rtol=RTOL)  # the forecast really replaced computation


def test_factor_memory_per_order(fam):
    """Our factors: (order + 1) tensors per stream of each segment's last-block output(s), in the factor dtype."""
    name, tiny = fam
    # last-block outputs per stream: Flux (64 image + 8 text tokens) x 32 channels in both segments, Wan 32 x 32
    values = {"flux": 2 * (64 + 8) * 32, "wan": 32 * 32}[name]
    for order in (0, 1, 2):
        for dtype, size in (("bfloat16", 2), ("float32", 4)):
            _, _, stats = run_ours(tiny, 3, 3, order, dtype, None)
            assert stats.cache_bytes == 2 * (order + 1) * values * size  # two streams (cond, uncond)


# ------------------------------------------------------------------------------------ attention+MLP outputs
# the attention modules our diffusers host hooks, as diffusers identifiers (None = diffusers' defaults)
ATTENTION = {"flux": None, "wan": [r"blocks\.\d+\.attn1", r"blocks\.\d+\.attn2"]}
ATTENTION_NAMES = {"flux": r"(single_)?transformer_blocks\.\d+\.attn", "wan": r"blocks\.\d+\.attn[12]"}
# attention-module output values per stream and call: Flux 2 joint (64 image + 8 text tokens) + 3 single (72
# tokens) attentions x 32 channels; Wan 3 blocks x 2 attentions x 32 tokens x 32 channels
ATTENTION_VALUES = {"flux": 5 * 72 * 32, "wan": 3 * 2 * 32 * 32}


def sample_observed(tiny, name, ctx):
    """The Euler/CFG loop; per stream and call, whether the probed attention module was predicted."""
    blocks = tiny.model.transformer_blocks if name == "flux" else tiny.model.blocks
    probe = (blocks[1].attn if name == "flux" else blocks[1].attn1).to_q
    ran = [0]
    handle = probe.register_forward_hook(lambda *_: ran.__setitem__(0, ran[0] + 1))
    predicted: dict[str, list[bool]] = {s: [] for s in STREAMS}

    @contextlib.contextmanager
    def observe(stream, sigma):
        before = ran[0]
        with ctx(stream, sigma):
            yield
        predicted[stream].append(ran[0] == before)

    try:
        out, _ = sample(tiny, observe)
    finally:
        handle.remove()
    return out, predicted


@pytest.mark.parametrize("case", CASES, ids=[f"i{c[0]}-w{c[1]}-o{c[2]}-{c[3]}-after{c[4]}" for c in CASES])
def test_attention_outputs_same_predictions_and_latents_as_diffusers(fam, case):
    name, tiny = fam
    interval, before, order, dtype, after = case
    model = tiny.model
    hooked = [n for n, _ in model.named_modules() if re.fullmatch(ATTENTION_NAMES[name], n)]
    if ATTENTION[name] is None:  # diffusers' defaults hook exactly the modules we hook
        from diffusers.hooks.taylorseer_cache import _TRANSFORMER_BLOCK_IDENTIFIERS
        assert [n for n, _ in model.named_modules()
                if any(re.fullmatch(p, n) for p in _TRANSFORMER_BLOCK_IDENTIFIERS)] == hooked
    model.enable_cache(DiffusersTaylorSeerConfig(
        cache_interval=interval, disable_cache_before_step=before, disable_cache_after_step=after,
        max_order=order, taylor_factors_dtype=FACTOR_DTYPES[dtype], cache_identifiers=ATTENTION[name]))
    try:
        ref, ref_predicted = sample_observed(tiny, name, lambda stream, sigma: model.cache_context(stream))
    finally:
        model._reset_stateful_cache()
        model.disable_cache()

    final = 0 if after is None else STEPS - after
    cache = apply_cache(model, TaylorSeerConfig(cache_interval=interval, warmup_steps=before,
                                                final_full_steps=final, max_order=order, factor_dtype=dtype,
                                                predict="attention+MLP outputs", num_inference_steps=STEPS))
    try:
        out, predicted = sample_observed(tiny, name, lambda stream, sigma: cache.stream(stream, sigma=sigma))
        stats = cache.reset()
    finally:
        cache.remove()
    # the records: every hooked attention module predicted on exactly the calls the probe saw predicted
    for stream in STREAMS:
        assert [r.metric for r in stats.records if r.stream == stream] == [float(p) for p in predicted[stream]]
    assert stats.reuse["component"][1] == STEPS * len(STREAMS) * len(hooked)
    plain, _ = run_plain(tiny)
    diff = (out - ref).abs().max().item()
    log.info("%s TaylorSeer attention outputs %s: predicted %d/%d attention calls, max |ours - diffusers| = "
             "%.3g, relative L2 vs uncached %.3g, cache %d bytes", name, case, *stats.reuse["component"], diff,
             ((out - plain).norm() / plain.norm()).item(), stats.cache_bytes)
    assert predicted == ref_predicted and any(predicted["cond"]) and not all(predicted["cond"])
    assert torch.allclose(out, ref, atol=ATOL, rtol=RTOL), diff
    assert not torch.allclose(out, plain, atol=ATOL, rtol=RTOL)
    size = torch.empty(0, dtype=FACTOR_DTYPES[dtype]).element_size()
    assert stats.cache_bytes == len(STREAMS) * (order + 1) * ATTENTION_VALUES[name] * size
