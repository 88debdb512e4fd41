"""DBCache (cache-dit's "dual block cache"): always run the first Fn and the last Bn blocks; skip the middle
blocks while the residual of the first Fn blocks barely changed since the last computed call.

Rule (vipshop/cache-dit ``DBCacheConfig``), per CFG stream: R_F = output of block Fn-1 minus the first block's
input; ``diff = mean|R_prev - R_F| / mean|R_prev|`` with R_prev the R_F of the last computed call; the call
caches when ``diff < threshold`` (strict), after the warm-up and within the cached-step limits. A cached call
adds the middle blocks' residual to the Fn blocks' output and then runs the Bn blocks. With the TaylorSeer
calibrator (``taylorseer_order`` > 0) the middle residual is not reused but predicted by a Taylor expansion of
the residuals of the computed calls (cache_core/forecast.py), at the offset in calls since the last one.
cache-dit defaults: Fn 8, Bn 0, threshold 0.08, 8 warm-up steps, no cached-step limits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import CacheWindow, check_int, check_range
from ..forecast import TaylorSeries
from ..policy import Gate, Policy, RunInfo, StreamCall
from ..registry import MethodSpec, register


@dataclass(frozen=True)
class DBCacheConfig:
    """front_blocks (Fn) / back_blocks (Bn): blocks that always run at the start / end of the stack.
    threshold: largest relative change of the Fn blocks' residual that still caches (strict).
    max_cached_steps: most cached calls per stream in a run (-1 = no limit). taylorseer_order: 0 reuses the
    middle residual, 1 or 2 predicts it."""

    front_blocks: int = 8
    back_blocks: int = 0
    threshold: float = 0.08
    warmup_steps: int = 8
    max_cached_steps: int = -1
    max_consecutive_skips: int = -1
    taylorseer_order: int = 0
    start_percent: float = 0.0
    end_percent: float = 1.0
    gate: Gate = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_int("front_blocks (Fn)", self.front_blocks, 1)
        check_int("back_blocks (Bn)", self.back_blocks, 0)
        check_range("threshold", self.threshold, 0.0, 10.0)
        check_int("taylorseer_order", self.taylorseer_order, 0, 2)
        gate = Gate(self.warmup_steps, self.max_consecutive_skips, CacheWindow(self.start_percent, self.end_percent),
                    max_cached_steps=self.max_cached_steps)
        object.__setattr__(self, "gate", gate)

    def check_blocks(self, total_blocks: int) -> None:
        """ValueError (before sampling) unless Fn + Bn leave at least one block of ``total_blocks`` to cache."""
        if self.front_blocks + self.back_blocks >= total_blocks:
            raise ValueError(
                f"DBCache: Fn {self.front_blocks} + Bn {self.back_blocks} blocks leave nothing to cache in a model "
                f"with {total_blocks} transformer blocks; use Fn + Bn <= {total_blocks - 1}"
            )


class _DBState:
    def __init__(self) -> None:
        self.ref: torch.Tensor | None = None
        self.step = 0
        self.series: dict[tuple[int, str], TaylorSeries] = {}


class DBCachePolicy(Policy):
    name = "DBCache"

    def __init__(self, config: DBCacheConfig) -> None:
        self.config = config
        self.probe_blocks = config.front_blocks
        self.tail_blocks = config.back_blocks
        self.threshold = config.threshold
        self.gate = config.gate
        self.forecasts = "residual" if config.taylorseer_order > 0 else ""

    def new_run_state(self, run: RunInfo) -> _DBState:
        return _DBState()

    def begin_stream_call(self, state: _DBState, info: StreamCall) -> None:
        state.step = info.call_index

    def metric(self, state: _DBState, probe_residual: torch.Tensor | None) -> float | None:
        if state.ref is None or probe_residual is None or state.ref.shape != probe_residual.shape:
            return None
        return ((state.ref - probe_residual).abs().mean() / state.ref.abs().mean()).item()

    def wants_skip(self, state: _DBState, metric: float | None) -> bool:
        return metric is not None and math.isfinite(metric) and metric < self.threshold

    def commit(self, state: _DBState, probe_residual: torch.Tensor | None, computed: bool) -> None:
        if computed:
            state.ref = probe_residual

    def observe_segments(self, state: _DBState, values: dict[tuple[int, str], torch.Tensor]) -> None:
        for key, residual in values.items():
            series = state.series.get(key)
            if series is None:
                series = state.series[key] = TaylorSeries(self.config.taylorseer_order)
            series.update(residual.detach(), state.step)

    def forecast(self, state: _DBState, key: tuple[int, str], seg_input: torch.Tensor) -> torch.Tensor:
        return seg_input + state.series[key].predict(state.step, seg_input.dtype)

    def settings(self) -> dict[str, Any]:
        c = self.config
        return {"Fn": c.front_blocks, "Bn": c.back_blocks, "threshold": c.threshold,
                "warmup_steps": c.warmup_steps, "max_cached_steps": c.max_cached_steps,
                "max_consecutive_skips": c.max_consecutive_skips, "taylorseer_order": c.taylorseer_order,
                "start_percent": c.start_percent, "end_percent": c.end_percent}


register(MethodSpec(
    key="dbcache", label="DBCache", config=DBCacheConfig, policy=DBCachePolicy, nodes=("dbcache_node:ApplyDBCache",)))
