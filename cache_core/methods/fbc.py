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

from ..config import GatedConfig, check_range
from ..policy import Probe, ResidualChangePolicy
from ..registry import MethodSpec, TuneKnob, register
from ..unet_runner import UNetPlan


@dataclass(frozen=True)
class FirstBlockCacheConfig(GatedConfig):
    """threshold: largest relative change of the first block's residual that still reuses the cache
    (0.05 is diffusers' default; 0.08-0.12 for Flux at 28 steps per ParaAttention/WaveSpeed docs)."""

    threshold: float = 0.05

    def __post_init__(self) -> None:
        check_range("threshold", self.threshold, 0.0, 10.0)
        super().__post_init__()


class FirstBlockCachePolicy(ResidualChangePolicy):
    name = "FirstBlockCache"
    probe = Probe.BLOCKS
    probe_blocks = 1

    def unet_plan(self) -> UNetPlan:
        """On a UNet: the stem convolution plus the first ``probe_blocks`` input blocks decide (block 0 is a
        plain convolution, its change is the input's), the rest is reused as the residual from the head's output
        to the last output block's (both at full resolution, ``model_channels`` wide)."""
        return UNetPlan(head=1 + self.probe_blocks, tail=0, reuse="residual")

    def wants_skip(self, state: object, metric: float | None) -> bool:
        return metric is not None and math.isfinite(metric) and metric <= self.threshold


register(MethodSpec(
    key="fbc", label="First Block Cache", config=FirstBlockCacheConfig, policy=FirstBlockCachePolicy,
    nodes=("fbc_node:ApplyFirstBlockCache",),
    tune=TuneKnob("threshold", 0.02, 0.8)))
