"""What the diffusers-host tests of PAB (tests/diffusers/test_pab_diffusers.py) and FasterCache
(test_fastercache_diffusers.py) share: running ours and diffusers' own hooks side by side on tiny real diffusers
transformers.

Each run is a pipeline-like loop over flow-matching Euler steps with CFG batched as [uncond; cond] in one
transformer call per step (what diffusers' FasterCache requires, and the case where diffusers' shared PAB
counter and our per-stream counters coincide). Which attention modules computed is seen the same way for both:
forward hooks on every attention module's query projection, which only run when that attention computes.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from tiny_diffusers import SHIFT, tiny_flux, tiny_wan

from dit_cache.cache_core.config import SigmaWindow
from dit_cache.hosts.diffusers import apply_cache

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
