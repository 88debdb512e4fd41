"""The diffusers host against diffusers' own First Block Cache, on tiny real diffusers transformers (CPU).

Each run is a pipeline-like loop (flow-matching Euler steps, cond and uncond as separate transformer calls,
CFG combine, as diffusers' Flux/Wan pipelines do), once with ``transformer.enable_cache(diffusers FBC)`` +
``cache_context(...)`` and once with our ``apply_cache`` + ``cache.stream(...)``. Whether a call skipped is
seen the same way for both: a forward hook on a child of the second block, which only runs when the call
computes the blocks after the first.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Callable, ContextManager

import pytest
import torch
from diffusers import FluxTransformer2DModel, WanTransformer3DModel
from diffusers.hooks import FirstBlockCacheConfig as DiffusersFBCConfig

from dit_cache.hosts.diffusers import DiffusersCache, apply_cache
from dit_cache.cache_core.methods.fbc import FirstBlockCacheConfig
from dit_cache.cache_core.stats import RunStats

log = logging.getLogger("dit_cache.tests")

STEPS = 12
SHIFT = 3.0  # Flux/Wan-style time shift of the flow-matching sigmas
CFG = 3.0
STREAMS = ("cond", "uncond")
ATOL = RTOL = 1e-4

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
# Context factory: (stream name, sigma) -> context manager around one transformer call.
Ctx = Callable[[str, float], ContextManager]


def _reinit(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded init of every parameter from our own generator: the outputs then depend neither on the global RNG
    nor on how a diffusers version initialises its layers (some zero-init output projections or gates)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)  # fan-in scaled
            elif "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval().float()


@dataclass
class Tiny:
    model: torch.nn.Module
    x0: torch.Tensor
    call: Callable[[torch.Tensor, float, str], torch.Tensor]  # (latents, sigma, stream) -> velocity
    probe: torch.nn.Module  # runs exactly when a call computes the blocks after the first
    computed: int = field(default=0)

    def __post_init__(self) -> None:
        self.probe.register_forward_hook(lambda *_: setattr(self, "computed", self.computed + 1))


def tiny_flux() -> Tiny:
    model = _reinit(FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=3, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6),
        guidance_embeds=False,
    ), seed=0)
    g = torch.Generator().manual_seed(1)
    side, txt = 8, 8
    x0 = torch.randn(1, side * side, 16, generator=g)  # packed latents: (batch, tokens, channels)
    ctx = {s: torch.randn(1, txt, 32, generator=g) for s in STREAMS}
    pooled = {s: torch.randn(1, 32, generator=g) for s in STREAMS}
    img_ids = torch.zeros(side * side, 3)
    img_ids[:, 1] = torch.arange(side * side) // side
    img_ids[:, 2] = torch.arange(side * side) % side
    txt_ids = torch.zeros(txt, 3)

    def call(x: torch.Tensor, sigma: float, stream: str) -> torch.Tensor:
        # FluxPipeline passes timestep / 1000, which for its flow-matching scheduler is sigma
        return model(hidden_states=x, encoder_hidden_states=ctx[stream], pooled_projections=pooled[stream],
                     timestep=torch.tensor([sigma]), img_ids=img_ids, txt_ids=txt_ids, return_dict=False)[0]

    return Tiny(model, x0, call, next(model.transformer_blocks[1].children()))


def tiny_wan() -> Tiny:
    model = _reinit(WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=32, ffn_dim=64, num_layers=3, rope_max_seq_len=32,
    ), seed=0)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, 16, 2, 8, 8, generator=g)  # (batch, channels, frames, height, width)
    ctx = {s: torch.randn(1, 8, 32, generator=g) for s in STREAMS}

    def call(x: torch.Tensor, sigma: float, stream: str) -> torch.Tensor:
        # WanPipeline passes the scheduler timestep, sigma * 1000
        return model(hidden_states=x, timestep=torch.tensor([sigma * 1000.0]), encoder_hidden_states=ctx[stream],
                     return_dict=False)[0]

    return Tiny(model, x0, call, next(model.blocks[1].children()))


BUILDERS = {"flux": tiny_flux, "wan": tiny_wan}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=list(BUILDERS))
def fam(request) -> tuple[str, Tiny]:
    return request.param, BUILDERS[request.param]()


def sample(tiny: Tiny, ctx: Ctx) -> tuple[torch.Tensor, dict[str, list[bool]]]:
    """Run the Euler/CFG loop; returns the final latents and, per stream, whether each call skipped."""
    sig = torch.linspace(1.0, 0.0, STEPS + 1, dtype=torch.float64)
    sig = SHIFT * sig / (1.0 + (SHIFT - 1.0) * sig)
    x = tiny.x0.clone()
    skipped: dict[str, list[bool]] = {s: [] for s in STREAMS}
    with torch.no_grad():
        for i in range(STEPS):
            s, s_next = float(sig[i]), float(sig[i + 1])
            v = {}
            for stream in STREAMS:
                before = tiny.computed
                with ctx(stream, s):
                    v[stream] = tiny.call(x, s, stream)
                skipped[stream].append(tiny.computed == before)
            x = x + (s_next - s) * (v["uncond"] + CFG * (v["cond"] - v["uncond"]))
    return x, skipped


def run_plain(tiny: Tiny) -> tuple[torch.Tensor, dict[str, list[bool]]]:
    return sample(tiny, lambda name, sigma: contextlib.nullcontext())


def run_diffusers(tiny: Tiny, threshold: float) -> tuple[torch.Tensor, dict[str, list[bool]]]:
    model = tiny.model
    model.enable_cache(DiffusersFBCConfig(threshold=threshold))
    try:
        return sample(tiny, lambda name, sigma: model.cache_context(name))
    finally:
        model._reset_stateful_cache()  # what DiffusionPipeline.maybe_free_model_hooks does after each call
        model.disable_cache()


def skips_of(stats: RunStats) -> dict[str, list[bool]]:
    out: dict[str, list[bool]] = {s: [] for s in stats.streams()}
    for r in stats.records:
        assert r.call_index == len(out[r.stream])
        out[r.stream].append(r.skipped)
    return out


def run_ours(tiny: Tiny, threshold: float) -> tuple[torch.Tensor, dict[str, list[bool]], RunStats]:
    cache = apply_cache(tiny.model, FirstBlockCacheConfig(threshold=threshold))
    try:
        out, observed = sample(tiny, lambda name, sigma: cache.stream(name, sigma=sigma))
        stats = cache.reset()
    finally:
        cache.remove()
    assert skips_of(stats) == observed  # the records say what the blocks really did
    return out, observed, stats


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
