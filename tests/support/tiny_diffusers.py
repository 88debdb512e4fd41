"""Tiny real diffusers transformers (Flux, Wan) with seeded weights, and a pipeline-like sampling loop, shared by
the diffusers host's tests (tests/diffusers/).

The loop runs flow-matching Euler steps with cond and uncond as separate transformer calls and the CFG combine,
as diffusers' Flux/Wan pipelines do. Whether a call skipped is seen through a forward hook on a child of the
second block (``Tiny.probe``), which only runs when the call computes the blocks after the first.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ContextManager

import pytest
import torch
from diffusers import FluxTransformer2DModel, WanTransformer3DModel

from dit_cache.cache_core.stats import RunStats
from dit_cache.hosts.diffusers import apply_cache

STEPS = 12
SHIFT = 3.0  # Flux/Wan-style time shift of the flow-matching sigmas
CFG = 3.0
STREAMS = ("cond", "uncond")
ATOL = RTOL = 1e-4

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


@pytest.fixture(scope="module", params=list(BUILDERS), name="fam")
def uncached_family(request):
    """The fixture ``fam`` of the step-method tests (tests/diffusers/test_step_methods_diffusers.py,
    test_dbcache_diffusers.py): (family name, its tiny model, its uncached latents), once per module and family."""
    tiny = BUILDERS[request.param]()
    return request.param, tiny, run_plain(tiny)[0]


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


def skips_of(stats: RunStats) -> dict[str, list[bool]]:
    out: dict[str, list[bool]] = {s: [] for s in stats.streams()}
    for r in stats.records:
        assert r.call_index == len(out[r.stream])
        out[r.stream].append(r.skipped)
    return out


def run_with_diffusers_cache(tiny: Tiny, config: object, ctx: Ctx | None = None
                             ) -> tuple[torch.Tensor, dict[str, list[bool]]]:
    """The loop with diffusers' own cache hook ``config`` enabled; ``ctx`` (default: ``cache_context(name)``)
    wraps each call. The hook is reset (as a pipeline does at its end) and disabled afterwards."""
    model = tiny.model
    model.enable_cache(config)
    try:
        return sample(tiny, ctx or (lambda name, sigma: model.cache_context(name)))
    finally:
        model._reset_stateful_cache()  # what DiffusionPipeline.maybe_free_model_hooks does after each call
        model.disable_cache()


def run_with_our_cache(tiny: Tiny, config: object) -> tuple[torch.Tensor, dict[str, list[bool]], RunStats]:
    """The loop with our ``config`` applied through the diffusers host (streams and sigmas by ``cache.stream``);
    checks the run's records say what the blocks really did."""
    cache = apply_cache(tiny.model, config)
    try:
        out, observed = sample(tiny, lambda name, sigma: cache.stream(name, sigma=sigma))
        stats = cache.reset()
    finally:
        cache.remove()
    assert skips_of(stats) == observed
    return out, observed, stats
