"""First Block Cache: run the first block; if its residual barely changed since the last fully computed
call, skip the other blocks and reuse their cached residual.

Rule as in diffusers ``hooks/first_block_cache.py`` (ParaAttention's FBC): with r the first block's
hidden-state residual and r_ref the one of the last computed call of the same CFG stream,
``diff = mean|r - r_ref| / mean|r_ref|``; the call computes when there is no r_ref or ``diff > threshold``
(equal skips), and r_ref is replaced on computed calls only. Our extras (warm-up, consecutive-skip limit,
schedule window) default to off, which keeps decisions identical to diffusers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import CacheWindow, check_range
from ..policy import Gate, Policy
from ..registry import MethodSpec, register


@dataclass(frozen=True)
class FirstBlockCacheConfig:
    """threshold: largest relative change of the first block's residual that still reuses the cache
    (0.05 is diffusers' default; 0.08-0.12 for Flux at 28 steps per ParaAttention/WaveSpeed docs)."""

    threshold: float = 0.05
    warmup_steps: int = 0
    max_consecutive_skips: int = -1
    start_percent: float = 0.0
    end_percent: float = 1.0
    gate: Gate = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_range("threshold", self.threshold, 0.0, 10.0)
        gate = Gate(self.warmup_steps, self.max_consecutive_skips, CacheWindow(self.start_percent, self.end_percent))
        object.__setattr__(self, "gate", gate)


class _FBCState:
    def __init__(self) -> None:
        self.ref: torch.Tensor | None = None


class FirstBlockCachePolicy(Policy):
    name = "FirstBlockCache"
    probe_blocks = 1
    tail_blocks = 0

    def __init__(self, config: FirstBlockCacheConfig) -> None:
        self.config = config
        self.threshold = config.threshold
        self.gate = config.gate

    def new_state(self) -> _FBCState:
        return _FBCState()

    def metric(self, state: _FBCState, probe_residual: torch.Tensor | None) -> float | None:
        if state.ref is None or probe_residual is None or state.ref.shape != probe_residual.shape:
            return None
        return ((probe_residual - state.ref).abs().mean() / state.ref.abs().mean()).item()

    def wants_skip(self, state: _FBCState, metric: float | None) -> bool:
        return metric is not None and math.isfinite(metric) and metric <= self.threshold

    def commit(self, state: _FBCState, probe_residual: torch.Tensor | None, computed: bool) -> None:
        if computed:
            state.ref = probe_residual

    def settings(self) -> dict[str, Any]:
        c = self.config
        return {
            "threshold": c.threshold,
            "warmup_steps": c.warmup_steps,
            "max_consecutive_skips": c.max_consecutive_skips,
            "start_percent": c.start_percent,
            "end_percent": c.end_percent,
        }


register(MethodSpec(
    key="fbc", label="First Block Cache", config=FirstBlockCacheConfig, policy=FirstBlockCachePolicy,
    nodes=("fbc_node:ApplyFirstBlockCache",)))
