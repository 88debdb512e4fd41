"""Pyramid Attention Broadcast (PAB): reuse each attention's last output for N-1 of every N calls.

Rule (PAB paper, arXiv 2408.12588; diffusers ``hooks/pyramid_attention_broadcast.py``), per attention site:
compute when there is no cached output, on the site's first call, outside the kind's schedule window, or when
``iteration % N == 0``; otherwise return the cached output. The output used (computed or cached) becomes the
cache and the iteration advances. Attention kinds differ in how much they change between steps (cross least,
then temporal, then spatial), hence one N per kind: the "pyramid".

Our choice on CFG: diffusers keeps one counter per attention module, shared by the cond and uncond passes (with
separate passes it then advances twice per step and the pattern depends on how the host batches CFG). We keep
one state per CFG stream, so the schedule is per denoising step and the same whether ComfyUI batches cond and
uncond or runs them apart, and an uncond pass never reuses a cond output. With one pass per step (batched CFG
or no CFG) both rules give the same decisions, which the parity test checks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..component_runner import KINDS, ComponentPolicy, SiteCall
from ..config import CacheWindow, check_int
from ..registry import MethodSpec, register

# PAB's published Open-Sora settings (VideoSys): spatial 2, temporal 4, cross 6, timesteps 450-930 of 1000.
# diffusers' default window is timesteps (100, 800).


@dataclass(frozen=True)
class PABConfig:
    """N per attention kind (0 = never reuse that kind) and a schedule window per kind (fractions of the
    schedule, 0 = first step). ``spatial_skip=2`` computes every other call inside the window."""

    spatial_skip: int = 2
    temporal_skip: int = 0
    cross_skip: int = 6
    spatial_window: CacheWindow = CacheWindow(0.2, 0.9)
    temporal_window: CacheWindow = CacheWindow(0.2, 0.9)
    cross_window: CacheWindow = CacheWindow(0.2, 0.9)
    skips: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for kind in KINDS:
            check_int(f"{kind}_skip", getattr(self, f"{kind}_skip"), 0, 1000)
            if not isinstance(getattr(self, f"{kind}_window"), CacheWindow):
                raise ValueError(f"{kind}_window must be a CacheWindow")
        object.__setattr__(self, "skips", {k: getattr(self, f"{k}_skip") for k in KINDS})

    @property
    def enabled(self) -> bool:
        """Whether any kind reuses at all (N >= 2; N = 1 computes every call)."""
        return any(n >= 2 for n in self.skips.values())


class _PABSite:
    def __init__(self) -> None:
        self.cache: torch.Tensor | None = None
        self.iteration = 0


class PABPolicy(ComponentPolicy):
    name = "PAB"

    def __init__(self, config: PABConfig) -> None:
        self.config = config

    def kinds(self) -> frozenset[str]:
        return frozenset(k for k, n in self.config.skips.items() if n >= 2)

    def window(self, kind: str) -> CacheWindow:
        return getattr(self.config, f"{kind}_window")

    def new_site_state(self) -> _PABSite:
        return _PABSite()

    def reuse(self, state: _PABSite, call: SiteCall) -> bool:
        n = self.config.skips[call.kind]
        return (state.cache is not None and state.iteration != 0 and call.in_window
                and state.iteration % n != 0)

    def cached(self, state: _PABSite, call: SiteCall) -> torch.Tensor:
        return state.cache

    def store(self, state: _PABSite, output: torch.Tensor, computed: bool, call: SiteCall) -> None:
        state.cache = output
        state.iteration += 1



register(MethodSpec(key="pab", label="PAB", config=PABConfig, policy=PABPolicy, nodes=("pab_node:PABConfigNode",)))
