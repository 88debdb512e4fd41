"""DBCache (cache-dit's "dual block cache"): always run the first Fn and the last Bn blocks; skip the middle
blocks while the residual of the first Fn blocks barely changed since the last computed call.

Rule (vipshop/cache-dit ``DBCacheConfig``), per CFG stream: R_F = output of block Fn-1 minus the first block's
input; ``diff = mean|R_prev - R_F| / mean|R_prev|`` with R_prev the R_F of the last computed call; the call
caches when ``diff < threshold`` (strict), after the warm-up and within the cached-step limits. A cached call
adds the middle blocks' residual to the Fn blocks' output and then runs the Bn blocks. With the TaylorSeer
calibrator (``taylorseer_order`` > 0) the middle residual is not reused but predicted by a Taylor expansion of
the residuals of the computed calls (cache_core/forecast.py), at the offset in calls since the last one; the
``calibrator`` input picks another forecaster of cache_core/forecasters.py (Adams–Bashforth 1-3, FoCa, Hermite
of order ``taylorseer_order``) on the sampler's sigmas.
cache-dit defaults: Fn 8, Bn 0, threshold 0.08, 8 warm-up steps, no cached-step limits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..config import SETTING, GatedConfig, check_int, check_range
from ..forecasters import FORECASTERS, make_forecaster
from ..policy import Probe, ResidualChangePolicy
from ..registry import MethodSpec, register
from ..text import shown


@dataclass(frozen=True)
class DBCacheConfig(GatedConfig):
    """front_blocks (Fn) / back_blocks (Bn): blocks that always run at the start / end of the stack.
    threshold: largest relative change of the Fn blocks' residual that still caches (strict).
    max_cached_steps: most cached calls per stream in a run (-1 = no limit). taylorseer_order: 0 reuses the
    middle residual, 1 or 2 predicts it. calibrator: the forecaster that predicts it (``FORECASTERS``; "taylor" =
    cache-dit's TaylorSeer calibrator)."""

    front_blocks: int = field(default=8, metadata={SETTING: "Fn"})
    back_blocks: int = field(default=0, metadata={SETTING: "Bn"})
    threshold: float = 0.08
    max_cached_steps: int = -1
    taylorseer_order: int = 0
    calibrator: str = "taylor"
    warmup_steps: int = field(default=8, kw_only=True)  # cache-dit's default

    def __post_init__(self) -> None:
        check_int("front_blocks (Fn)", self.front_blocks, 1)
        check_int("back_blocks (Bn)", self.back_blocks, 0)
        check_range("threshold", self.threshold, 0.0, 10.0)
        check_int("taylorseer_order", self.taylorseer_order, 0, 2)
        if self.calibrator not in FORECASTERS:
            raise ValueError(f"calibrator must be one of {FORECASTERS}, got {shown(self.calibrator)}")
        super().__post_init__()

    def check_blocks(self, total_blocks: int) -> None:
        """ValueError (before sampling) unless Fn + Bn leave at least one block of ``total_blocks`` to cache."""
        if self.front_blocks + self.back_blocks >= total_blocks:
            raise ValueError(
                f"DBCache: Fn {self.front_blocks} + Bn {self.back_blocks} blocks leave nothing to cache in a model "
                f"with {total_blocks} transformer blocks; use Fn + Bn <= {total_blocks - 1}"
            )


class DBCachePolicy(ResidualChangePolicy):
    name = "DBCache"
    probe = Probe.BLOCKS

    def __init__(self, config: DBCacheConfig) -> None:
        super().__init__(config)
        self.probe_blocks = config.front_blocks
        self.tail_blocks = config.back_blocks
        # the TaylorSeer calibrator: the middle blocks' residual predicted from the computed calls' residuals
        self.forecaster = (make_forecaster(config.calibrator, config.taylorseer_order)
                           if config.taylorseer_order > 0 else None)

    def wants_skip(self, state: object, metric: float | None) -> bool:
        return metric is not None and math.isfinite(metric) and metric < self.threshold


register(MethodSpec(key="dbcache", label="DBCache", config=DBCacheConfig, policy=DBCachePolicy,
                    nodes=("dbcache_node:ApplyDBCache",)))
