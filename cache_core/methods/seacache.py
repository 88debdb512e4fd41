"""SeaCache: skip the whole block stack while the spectrally filtered input latent barely changed.

Rule (SeaCache paper, arXiv 2602.18993; diffusers 0.42 ``SeaCacheConfig`` / ``hooks/sea_cache.py``, the parity
reference, whose defaults the config takes): per CFG stream, every call builds the SEA indicator of the model's
input latent at the call's sigma (``methods/seacache_signals.py``) and measures its relative L1 distance d to the
previous call's indicator (the reference moves on every call, skipped or not). With ``acc`` the distance
accumulated since the last computed call, the call skips while ``acc + d < threshold`` (then ``acc += d``);
otherwise it computes and ``acc = 0``. Always computed: the first ``retention_steps`` steps, the last
``cache_end_steps`` steps, a stream's first call, and the call after ``max_consecutive_cached`` skips in a row
(0 = no limit). A skipped call adds to its input the residual of the whole stack (last block output minus first
block input) of the last computed call (``residual_order`` 0) or its linear extrapolation from the last two
computed calls (order 1, :class:`~cache_core.forecast.TaylorForecaster` of order 1:
``r_last + (r_last - r_prev) (t - t_last) / (t_last - t_prev)`` over call indices).

Steps: on ComfyUI the call's step comes from its sigma on the run's schedule (:func:`schedule_step`) and the run's
step count from the schedule; the diffusers host has neither, so there the step is the stream's call index and
the count is ``num_inference_steps``. Where a call has no sigma or its latent is not an image or video latent
(diffusers' packed Flux tokens), there is no indicator and every call computes (one warning).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from ..config import HIDDEN, CacheWindow, Gate, check_int, check_range
from ..forecast import TaylorForecaster
from ..policy import Policy, Probe, RunInfo, StreamCall, schedule_step
from ..registry import MethodSpec, TuneKnob, register
from .seacache_signals import relative_l1, sea_indicator

log = logging.getLogger("dit_cache")


@dataclass(frozen=True)
class SeaCacheConfig:
    """SeaCache settings; the defaults are diffusers 0.42's ``SeaCacheConfig``.

    threshold: accumulated relative L1 change of the SEA indicator that still skips (0 = never skips).
    residual_order: 0 reuses the last computed residual, 1 extrapolates it linearly from the last two.
    retention_steps / cache_end_steps: the first / last steps always compute.
    max_consecutive_cached: skips in a row before a call must compute (0 = no limit).
    power_exp: exponent p of the clean-signal power prior 1 / |f|^p (3 for video features).
    num_inference_steps: steps of a run where the host does not know them (diffusers; for cache_end_steps).
    start_percent / end_percent: our schedule window (the whole schedule by default, as diffusers).
    """

    threshold: float = 0.25
    residual_order: int = 1
    retention_steps: int = 1
    cache_end_steps: int = 1
    max_consecutive_cached: int = 2
    power_exp: float = 3.0
    num_inference_steps: int = field(default=28, metadata=HIDDEN)
    start_percent: float = 0.0
    end_percent: float = 1.0

    def __post_init__(self) -> None:
        check_range("threshold", self.threshold, 0.0, 100.0)
        check_int("residual_order", self.residual_order, 0, 1)
        check_int("retention_steps", self.retention_steps, 0)
        check_int("cache_end_steps", self.cache_end_steps, 0)
        check_int("max_consecutive_cached", self.max_consecutive_cached, 0)
        check_range("power_exp", self.power_exp, 1e-3, 100.0)
        check_int("num_inference_steps", self.num_inference_steps, 1)
        self.gate  # noqa: B018 - validates the window

    @property
    def gate(self) -> Gate:
        limit = self.max_consecutive_cached if self.max_consecutive_cached > 0 else -1
        return Gate(max_consecutive_skips=limit, window=CacheWindow(self.start_percent, self.end_percent))


class _SeaState:
    def __init__(self, run: RunInfo) -> None:
        self.run = run
        self.step = 0.0  # the current call's step
        self.sigma: float | None = None
        self.indicator: torch.Tensor | None = None  # of the current call
        self.prev: torch.Tensor | None = None  # of the previous call
        self.acc = 0.0
        self.pending: float | None = None  # acc + d of the current call


class SeaCachePolicy(Policy):
    """Decides before any block runs (probe LATENT); skipping reuses or extrapolates the whole stack's residual."""

    name = "SeaCache"
    probe = Probe.LATENT

    def __init__(self, config: SeaCacheConfig) -> None:
        super().__init__(config)
        self.forecaster = TaylorForecaster(max_order=1) if config.residual_order == 1 else None
        self._warned = False

    def new_run_state(self, run: RunInfo) -> _SeaState:
        return _SeaState(run)

    def steps_of(self, state: _SeaState) -> int:
        return state.run.steps or self.config.num_inference_steps

    def begin_stream_call(self, state: _SeaState, info: StreamCall) -> None:
        step = schedule_step(state.run, info.sigma)
        state.step = float(info.call_index) if step is None else step
        state.sigma = info.sigma

    # several ranks: the group averages the ranks' distances ((distance, 1) summed). Parallel setups hand every
    # rank the whole input latent (they shard tokens inside the model), so the average is the distance itself
    metric_width = 2

    def _distance(self, state: _SeaState, latent: torch.Tensor | None) -> float | None:
        """This call's indicator distance to the previous call's (sets the indicator), None where there is none."""
        state.pending = None
        state.indicator = None
        if latent is not None and state.sigma is not None and math.isfinite(state.sigma):
            state.indicator = sea_indicator(latent, state.sigma, self.config.power_exp)
        if state.indicator is None:
            self._warn_once(latent, state.sigma)
            return None
        prev = state.prev
        if prev is None or prev.shape != state.indicator.shape or prev.device != state.indicator.device:
            return None
        distance = relative_l1(state.indicator, prev)
        return distance if math.isfinite(distance) else None

    def _accumulate(self, state: _SeaState, distance: float | None) -> float | None:
        if distance is not None:
            state.pending = state.acc + distance
        return state.pending

    def metric(self, state: _SeaState, latent: torch.Tensor | None) -> float | None:
        return self._accumulate(state, self._distance(state, latent))

    def metric_sums(self, state: _SeaState, latent: torch.Tensor | None) -> torch.Tensor | None:
        distance = self._distance(state, latent)
        return None if distance is None else torch.tensor([distance, 1.0], dtype=torch.float64)

    def metric_from_sums(self, state: _SeaState, sums: torch.Tensor | None) -> float | None:
        return self._accumulate(state, None if sums is None else float(sums[0] / sums[1]))

    def forced(self, state: _SeaState) -> bool:
        """The step always computes: a retention step or one of the last ``cache_end_steps``."""
        return (state.step < self.config.retention_steps
                or state.step >= self.steps_of(state) - self.config.cache_end_steps)

    def wants_skip(self, state: _SeaState, metric: float | None) -> bool:
        return metric is not None and metric < self.config.threshold and not self.forced(state)

    def commit(self, state: _SeaState, latent: torch.Tensor | None, computed: bool) -> None:
        state.acc = 0.0 if computed or state.pending is None else state.pending
        state.prev, state.indicator = state.indicator, None

    def _warn_once(self, latent: torch.Tensor | None, sigma: float | None) -> None:
        if self._warned:
            return
        self._warned = True
        what = "no sigma" if sigma is None else (
            "no input latent" if latent is None else f"an input latent of shape {tuple(latent.shape)}")
        log.warning("[dit-cache] SeaCache: the model call has %s; SeaCache needs the call's sigma and an image "
                    "(B, C, H, W) or video (B, C, T, H, W) latent, so every such call computes", what)


register(MethodSpec(
    key="seacache", label="SeaCache", config=SeaCacheConfig, policy=SeaCachePolicy,
    nodes=("seacache_node:ApplySeaCache",),
    tune=TuneKnob("threshold", 0.05, 2.0)))
