"""First Block Cache: run the first block; if its residual barely changed since the last fully computed
call, skip the other blocks and reuse their cached residual.

Rule as in diffusers ``hooks/first_block_cache.py`` (ParaAttention's FBC): with r the first block's
hidden-state residual and r_ref the one of the last computed call of the same CFG stream,
``diff = mean|r - r_ref| / mean|r_ref|``; the call computes when there is no r_ref or ``diff > threshold``
(equal skips), and r_ref is replaced on computed calls only. Our extras (warm-up, consecutive-skip limit,
schedule window) default to off, which keeps decisions identical to diffusers.
On UNets (SD1.5 / SD2 / SDXL) the "first block" is the first input block after the stem convolution and the
reused part is everything after it up to the last output block (``cache_core/unet_runner.py``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import GatedConfig, check_range
from ..policy import Policy, Probe
from ..registry import MethodSpec, register
from ..unet_runner import UNetPlan


@dataclass(frozen=True)
class FirstBlockCacheConfig(GatedConfig):
    """threshold: largest relative change of the first block's residual that still reuses the cache
    (0.05 is diffusers' default; 0.08-0.12 for Flux at 28 steps per ParaAttention/WaveSpeed docs)."""

    threshold: float = 0.05

    def __post_init__(self) -> None:
        check_range("threshold", self.threshold, 0.0, 10.0)
        super().__post_init__()


class _FBCState:
    def __init__(self) -> None:
        self.ref: torch.Tensor | None = None


class FirstBlockCachePolicy(Policy):
    name = "FirstBlockCache"
    probe = Probe.BLOCKS
    probe_blocks = 1

    def unet_plan(self) -> UNetPlan:
        """On a UNet: the stem convolution plus the first ``probe_blocks`` input blocks decide (block 0 is a
        plain convolution, its change is the input's), the rest is reused as the residual from the head's output
        to the last output block's (both at full resolution, ``model_channels`` wide)."""
        return UNetPlan(head=1 + self.probe_blocks, tail=0, reuse="residual")

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



register(MethodSpec(
    key="fbc", label="First Block Cache", config=FirstBlockCacheConfig, policy=FirstBlockCachePolicy,
    nodes=("fbc_node:ApplyFirstBlockCache",)))
