"""FasterCache: extrapolate attention outputs, and rebuild the unconditional (CFG) branch from the conditional one.

Rules (FasterCache paper, arXiv 2410.19355; diffusers ``hooks/faster_cache.py``):

- Attention, per site: outside the kind's window compute; inside, compute when ``iteration > 0`` and
  ``iteration % N == 0``, otherwise approximate ``F1 + (F1 - F2) * w`` from the last two outputs (F1 newest) --
  but only in calls that carry no unconditional branch (CFG off, or its uncond branch is being rebuilt), as in
  diffusers, where the approximation needs the halved batch. The output used becomes F1.
- Unconditional branch, per run: skip it when ``iteration > 0``, the step is in the uncond window and
  ``iteration % N_uncond != 0``; rebuild it as ``iFFT2(dLF + LF(cond) + dHF + HF(cond))`` with LF the part of
  the centred 2-D spectrum (last two dims: H, W of every channel/frame) within radius ``min(H, W) // 5`` and
  HF the rest; before each rebuild dLF and dHF are multiplied (in place, so it compounds) by ``alpha_low`` /
  ``alpha_high`` inside their windows, else by 1. On computed steps ``dLF = LF(uncond) - LF(cond)``, same for HF.

Defaults are diffusers' (timestep ranges over 1000 turned into schedule fractions ``p = 1 - t/1000``): spatial
attention N 2 in (-1, 681) -> from 0.319; uncond N 5 in (-1, 641) -> from 0.359; low-frequency weight window
(99, 901) -> 0.099-0.901; high-frequency (-1, 301) -> from 0.699; alpha 1.1 both; attention weight 0.5.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..component_runner import ComponentPolicy, SiteCall
from ..config import CacheWindow, check_int, check_range
from ..registry import MethodSpec, register


@dataclass(frozen=True)
class FasterCacheConfig:
    spatial_skip: int = 2
    temporal_skip: int = 0  # 0 = temporal attention always computes
    attention_window: CacheWindow = CacheWindow(0.319, 1.0)
    attention_weight: float = 0.5
    uncond_skip: int = 5  # 0 = never rebuild the unconditional branch
    uncond_window: CacheWindow = CacheWindow(0.359, 1.0)
    alpha_low: float = 1.1
    alpha_high: float = 1.1
    low_freq_window: CacheWindow = CacheWindow(0.099, 0.901)
    high_freq_window: CacheWindow = CacheWindow(0.699, 1.0)

    def __post_init__(self) -> None:
        check_int("spatial_skip", self.spatial_skip, 0, 1000)
        check_int("temporal_skip", self.temporal_skip, 0, 1000)
        check_int("uncond_skip", self.uncond_skip, 0, 1000)
        check_range("attention_weight", self.attention_weight, -10.0, 10.0)
        check_range("alpha_low", self.alpha_low, 0.0, 10.0)
        check_range("alpha_high", self.alpha_high, 0.0, 10.0)
        for name in ("attention_window", "uncond_window", "low_freq_window", "high_freq_window"):
            if not isinstance(getattr(self, name), CacheWindow):
                raise ValueError(f"{name} must be a CacheWindow")

    @property
    def enabled(self) -> bool:
        return self.spatial_skip >= 2 or self.temporal_skip >= 2 or self.uncond_skip >= 2


class _Site:
    def __init__(self) -> None:
        self.cache: list[torch.Tensor] | None = None  # [F2, F1], F1 the newest
        self.iteration = 0


class FasterCachePolicy(ComponentPolicy):
    name = "FasterCache"

    def __init__(self, config: FasterCacheConfig) -> None:
        self.config = config
        self._skips = {"spatial": config.spatial_skip, "temporal": config.temporal_skip}
        self.uncond_reuse = config.uncond_skip >= 2

    def kinds(self) -> frozenset[str]:
        return frozenset(k for k, n in self._skips.items() if n >= 2)

    def window(self, name: str) -> CacheWindow:
        c = self.config
        return {"uncond": c.uncond_window, "low_freq": c.low_freq_window,
                "high_freq": c.high_freq_window}.get(name, c.attention_window)

    def window_names(self) -> frozenset[str]:
        return self.kinds() | ({"uncond", "low_freq", "high_freq"} if self.uncond_reuse else set())

    def new_uncond_state(self) -> "UncondState":
        return UncondState()

    def new_site_state(self) -> _Site:
        return _Site()

    def reuse(self, state: _Site, call: SiteCall) -> bool:
        if not call.in_window or state.cache is None or not call.cond_only:
            return False
        n = self._skips[call.kind]
        return not (state.iteration > 0 and state.iteration % n == 0)

    def cached(self, state: _Site, call: SiteCall) -> torch.Tensor:
        f2, f1 = state.cache
        return f1 + (f1 - f2) * self.config.attention_weight

    def store(self, state: _Site, output: torch.Tensor, computed: bool, call: SiteCall) -> None:
        state.cache = [output, output] if state.cache is None else [state.cache[1], output]
        state.iteration += 1

    # the unconditional-branch rebuild, driven by ComponentCacheRunner.reuse_uncond (every host)
    def uncond_skips(self, state: UncondState, in_window: bool) -> bool:
        return uncond_should_skip(self.config, state, in_window)

    def uncond_observe(self, state: UncondState, cond: torch.Tensor, uncond: torch.Tensor) -> None:
        uncond_observe(state, cond, uncond)

    def uncond_rebuild(self, state: UncondState, cond: torch.Tensor, windows: Callable[[str], bool]) -> torch.Tensor:
        return uncond_rebuild(state, cond, *frequency_weights(self.config, windows("low_freq"), windows("high_freq")))


# ------------------------------------------------------------------------------------ unconditional branch
def _low_freq_mask(h: int, w: int, device: torch.device) -> torch.Tensor:
    radius = min(h, w) // 5
    y = torch.arange(h, device=device).view(h, 1)
    x = torch.arange(w, device=device).view(1, w)
    return (x - w // 2) ** 2 + (y - h // 2) ** 2 <= radius ** 2


def split_frequencies(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) parts of the centred 2-D spectrum over the last two dims of ``x`` (as float32)."""
    spec = torch.fft.fftshift(torch.fft.fft2(x.float()), dim=(-2, -1))
    mask = _low_freq_mask(x.shape[-2], x.shape[-1], x.device)
    return spec * mask, spec * ~mask


class UncondState:
    """Per-run state of the unconditional-branch rebuild: the step counter and the stored spectra differences."""

    def __init__(self) -> None:
        self.iteration = 0
        self.delta_low: torch.Tensor | None = None
        self.delta_high: torch.Tensor | None = None


def uncond_should_skip(config: FasterCacheConfig, state: UncondState, in_window: bool) -> bool:
    """Whether this step rebuilds the unconditional branch: every step but each ``uncond_skip``-th inside the
    window, once a step computed both branches."""
    n = config.uncond_skip
    return (n >= 2 and state.iteration > 0 and in_window and state.iteration % n != 0
            and state.delta_low is not None)


def uncond_observe(state: UncondState, cond: torch.Tensor, uncond: torch.Tensor) -> None:
    """A step that computed both branches: remember their spectra differences."""
    low_u, high_u = split_frequencies(uncond)
    low_c, high_c = split_frequencies(cond)
    state.delta_low, state.delta_high = low_u - low_c, high_u - high_c
    state.iteration += 1


def uncond_rebuild(state: UncondState, cond: torch.Tensor, weight_low: float, weight_high: float) -> torch.Tensor:
    """A step that skipped the unconditional branch: the approximation from ``cond`` (same shape and dtype)."""
    if state.delta_low.shape != cond.shape:
        raise ValueError(f"FasterCache: stored spectra {tuple(state.delta_low.shape)} do not match {tuple(cond.shape)}")
    state.delta_low = state.delta_low * weight_low
    state.delta_high = state.delta_high * weight_high
    low_c, high_c = split_frequencies(cond)
    spec = state.delta_low + low_c + state.delta_high + high_c
    state.iteration += 1
    return torch.fft.ifft2(torch.fft.ifftshift(spec, dim=(-2, -1))).real.to(cond.dtype)


def frequency_weights(config: FasterCacheConfig, in_low: bool, in_high: bool) -> tuple[float, float]:
    return (config.alpha_low if in_low else 1.0, config.alpha_high if in_high else 1.0)


register(MethodSpec(
    key="fastercache", label="FasterCache", config=FasterCacheConfig, policy=FasterCachePolicy,
    nodes=("fastercache_node:ApplyFasterCache",)))
