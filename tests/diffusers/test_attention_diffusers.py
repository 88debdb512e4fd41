"""PAB and FasterCache on the diffusers host against diffusers' own hooks, on tiny real diffusers transformers.

Each run is a pipeline-like loop over flow-matching Euler steps with CFG batched as [uncond; cond] in one
transformer call per step (what diffusers' FasterCache requires, and the case where diffusers' shared PAB
counter and our per-stream counters coincide). Which attention modules computed is seen the same way for both:
forward hooks on every attention module's query projection, which only run when that attention computes.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import pytest
import torch
from diffusers.hooks import FasterCacheConfig as DFasterCacheConfig
from diffusers.hooks import PyramidAttentionBroadcastConfig, apply_faster_cache, apply_pyramid_attention_broadcast

from tiny_diffusers import SHIFT, _reinit, tiny_flux, tiny_wan

from dit_cache.cache_core.config import SigmaWindow
from dit_cache.hosts.diffusers import apply_cache
from dit_cache.cache_core.methods.fastercache import FasterCacheConfig
from dit_cache.cache_core.methods.pab import PABConfig

log = logging.getLogger("dit_cache.tests")

STEPS = 13
CFG = 4.0
ATOL = RTOL = 1e-4


def _timesteps() -> list[float]:
    s = [1 - i / STEPS for i in range(STEPS + 1)]
    return [1000.0 * SHIFT * x / (1 + (SHIFT - 1) * x) for x in s]  # shifted, over 1000 (sigma * 1000)


def _window(lo: float, hi: float) -> SigmaWindow:
    """diffusers' timestep range lo < t < hi as our sigma window (sigma = t / 1000); no step lies on a bound."""
    assert all(abs(t - b) > 1e-3 for t in _timesteps() for b in (lo, hi))
    return SigmaWindow(hi / 1000.0, lo / 1000.0)


def _attention_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n.endswith((".attn", ".attn1", ".attn2"))]


def _batched(family: str) -> tuple[torch.nn.Module, torch.Tensor, Callable[[torch.Tensor, float], torch.Tensor]]:
    """A fresh tiny model (same weights every time) and a call running [uncond; cond] in one batch."""
    tiny = {"flux": tiny_flux, "wan": tiny_wan}[family]()
    model = tiny.model
    g = torch.Generator().manual_seed(7)
    if family == "wan":
        ctx = torch.randn(2, 8, 32, generator=g)

        def call(x: torch.Tensor, t: float) -> torch.Tensor:
            return model(hidden_states=torch.cat([x, x]), timestep=torch.tensor([t, t]), encoder_hidden_states=ctx,
                         return_dict=False)[0]
    else:
        ctx, pooled = torch.randn(2, 8, 32, generator=g), torch.randn(2, 32, generator=g)
        side = 8
        img_ids = torch.zeros(side * side, 3)
        img_ids[:, 1] = torch.arange(side * side) // side
        img_ids[:, 2] = torch.arange(side * side) % side

        def call(x: torch.Tensor, t: float) -> torch.Tensor:
            return model(hidden_states=torch.cat([x, x]), encoder_hidden_states=ctx, pooled_projections=pooled,
                         timestep=torch.tensor([t, t]) / 1000.0, img_ids=img_ids, txt_ids=torch.zeros(8, 3),
                         return_dict=False)[0]
    return model, tiny.x0, call


def _sample(model: torch.nn.Module, x: torch.Tensor, call: Callable, ctx: Callable[[float], Any],
            current: list[float]) -> tuple[torch.Tensor, list[list[str]]]:
    computed: list[list[str]] = []
    for name, m in _attention_modules(model):
        q = m.to_q
        q.register_forward_hook(lambda *_, name=name: computed[-1].append(name))
    ts = _timesteps()
    for i in range(STEPS):
        current[0] = ts[i]
        computed.append([])
        with ctx(ts[i]):
            uncond, cond = call(x, ts[i]).chunk(2)
        v = uncond + CFG * (cond - uncond)
        x = x + (ts[i + 1] - ts[i]) / 1000.0 * v
    return x, computed


def _compare(family: str, apply_theirs: Callable, ours: Any, windows: dict) -> tuple[list, list]:
    current = [1000.0]
    model, x0, call = _batched(family)
    apply_theirs(model, lambda: current[0])
    theirs, their_pattern = _sample(model, x0, call, lambda t: _nullctx(), current)

    model, x0, call = _batched(family)
    cache = apply_cache(model, ours, windows=windows)
    mine, my_pattern = _sample(model, x0, call, lambda t: cache.stream(("uncond", "cond"), sigma=t / 1000.0), current)
    stats = cache.reset()
    cache.remove()
    log.info("%s on tiny diffusers %s: %s", stats.method, family, stats.summary())
    assert my_pattern == their_pattern
    torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=RTOL)
    return my_pattern, stats


class _nullctx:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


@pytest.mark.parametrize("family", ["flux", "wan"])
@pytest.mark.parametrize("spatial,cross", [(2, 3), (3, 0)])
def test_pab_matches_diffusers(family: str, spatial: int, cross: int) -> None:
    def theirs(model: torch.nn.Module, timestep: Callable) -> None:
        apply_pyramid_attention_broadcast(model, PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=spatial, cross_attention_block_skip_range=cross or None,
            spatial_attention_timestep_skip_range=(100, 800), cross_attention_timestep_skip_range=(100, 800),
            current_timestep_callback=timestep))

    ours = PABConfig(spatial_skip=spatial, cross_skip=cross, temporal_skip=0)
    pattern, stats = _compare(family, theirs, ours, {"spatial": _window(100, 800), "cross": _window(100, 800)})
    n_attn = len(pattern[0])
    assert any(len(p) < n_attn for p in pattern), "PAB reused nothing"
    assert stats.reuse["attention"][0] > 0


@pytest.mark.parametrize("uncond_skip", [2, 5])
def test_fastercache_matches_diffusers(uncond_skip: int) -> None:
    def theirs(model: torch.nn.Module, timestep: Callable) -> None:
        apply_faster_cache(model, DFasterCacheConfig(
            spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 681),
            unconditional_batch_skip_range=uncond_skip, unconditional_batch_timestep_skip_range=(-1, 641),
            low_frequency_weight_update_timestep_range=(99, 901), high_frequency_weight_update_timestep_range=(-1, 301),
            alpha_low_frequency=1.1, alpha_high_frequency=1.1, attention_weight_callback=lambda _: 0.5,
            current_timestep_callback=timestep, tensor_format="BCFHW"))

    ours = FasterCacheConfig(spatial_skip=2, uncond_skip=uncond_skip, attention_weight=0.5)
    windows = {"spatial": _window(-1, 681), "uncond": _window(-1, 641), "low_freq": _window(99, 901),
               "high_freq": _window(-1, 301)}
    pattern, stats = _compare("wan", theirs, ours, windows)
    reused, total = stats.reuse["uncond"]
    assert 0 < reused < total == STEPS
    assert stats.reuse["attention"][0] > 0


def test_attention_policy_refuses_model_without_attention_modules() -> None:
    model = _reinit(torch.nn.Linear(2, 2), 0)
    with pytest.raises(ValueError):
        apply_cache(model, PABConfig())


def test_fastercache_separate_cfg_calls_warn_and_compute(caplog) -> None:
    """Pipelines that run cond and uncond as separate calls (diffusers' Flux and Wan pipelines): the uncond reuse
    cannot act; one warning, every call computed, no error in the middle of sampling; output equals FasterCache
    with the uncond reuse off (uncond_skip 0)."""
    model, x0, _ = _batched("wan")
    g = torch.Generator().manual_seed(7)
    ctx = torch.randn(2, 8, 32, generator=g)

    def run(config: FasterCacheConfig) -> tuple[torch.Tensor, Any]:
        cache = apply_cache(model, config)
        x = x0
        ts = _timesteps()
        for i in range(STEPS):
            out = {}
            for j, name in enumerate(("cond", "uncond")):
                with cache.stream(name, sigma=ts[i] / 1000.0):
                    out[name] = model(hidden_states=x, timestep=torch.tensor([ts[i]]),
                                      encoder_hidden_states=ctx[j:j + 1], return_dict=False)[0]
            x = x + (ts[i + 1] - ts[i]) / 1000.0 * (out["uncond"] + CFG * (out["cond"] - out["uncond"]))
        stats = cache.reset()
        cache.remove()
        return x, stats

    with caplog.at_level(logging.WARNING, logger="dit_cache"):
        out, stats = run(FasterCacheConfig(spatial_skip=2, uncond_skip=2))
    assert caplog.text.count("came in a separate call") == 1
    assert "uncond" not in stats.reuse or stats.reuse["uncond"][0] == 0
    ref, _ = run(FasterCacheConfig(spatial_skip=2, uncond_skip=0))
    assert torch.equal(out, ref)
