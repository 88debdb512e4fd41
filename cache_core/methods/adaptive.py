"""Adaptive cache (EasyCache-style, arXiv 2507.02860; H-EmbodVis/EasyCache): decide before any block runs from
how much the input changed, scaled by how strongly the block stack last turned input changes into changes of
its result.

Per CFG stream, with x the first block's hidden input and y the whole stack's hidden residual (last block output
minus x, what a skipped call reuses): at every computed call after two computed calls,
``k = mean|y - y_c| / mean|x - x_c|`` (the ``_c`` values from the previous computed call); at every call
``acc += k * mean|x_t - x_{t-1}| / mean|y_last|`` with y_last the last computed y; the call skips while
``acc < threshold``, else it computes and ``acc = 0``. The last step always computes; the window's start
(default 15 % of the schedule, as ComfyUI core's EasyCache) is the warm-up.

Differences to ComfyUI core's EasyCache (which works on the model's input latent and output): x and y are
hidden states at the first block's input and last block's output, so caching runs inside the model call (no
second copy of the output), each CFG stream decides for itself (the call skips only if every stream of the batch
does) and keeps its own k and accumulator, ``x_{t-1}`` is the previous call's input (EasyCache paper, eq. 8)
and the stored tensors are token-subsampled by ``token_stride`` (core subsamples the latent ×8 spatially).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .. import distributed
from ..config import GatedConfig, check_int, check_range
from ..policy import Policy, Probe, RunInfo, StreamCall
from ..registry import MethodSpec, TuneKnob, register


@dataclass(frozen=True)
class AdaptiveCacheConfig(GatedConfig):
    """threshold: accumulated estimated relative change of the stack's residual that still skips.
    token_stride: the decision reads every n-th token (memory and time of the decision, not of the cache)."""

    threshold: float = 0.2
    token_stride: int = 8
    start_percent: float = field(default=0.15, kw_only=True)  # ComfyUI core EasyCache's default start

    def __post_init__(self) -> None:
        check_range("threshold", self.threshold, 0.0, 100.0)
        check_int("token_stride", self.token_stride, 1)
        super().__post_init__()


class _AdaptiveState:
    def __init__(self, run: RunInfo) -> None:
        self.run = run
        self.last_step = False
        self.x: torch.Tensor | None = None  # this call's (subsampled) input
        self.prev_x: torch.Tensor | None = None  # the previous call's input
        self.cx: torch.Tensor | None = None  # input and residual of the last computed call
        self.cy: torch.Tensor | None = None
        self.y_norm: float | None = None  # mean|y| of the last computed call
        self.k: float | None = None  # transformation rate between the last two computed calls
        self.acc = 0.0
        self.pending: float | None = None


def _mean_abs(t: torch.Tensor) -> float:
    return t.abs().mean().item()


class AdaptiveCachePolicy(Policy):
    name = "AdaptiveCache"
    probe = Probe.INPUT_AND_STACK

    def new_run_state(self, run: RunInfo) -> _AdaptiveState:
        return _AdaptiveState(run)

    def _sub(self, t: torch.Tensor) -> torch.Tensor:
        s = self.config.token_stride
        t = t.detach()
        return (t[:, ::s] if s > 1 and t.ndim >= 3 else t).float()

    def begin_stream_call(self, state: _AdaptiveState, info: StreamCall) -> None:
        sig = state.run.sigmas
        state.last_step = bool(sig and len(sig) >= 2 and info.sigma is not None and info.sigma <= sig[-2])

    # several ranks: the metric reduces (sum|x - x_prev|, n); the observation (sum|y|, n, sum|x - x_c|, n,
    # sum|y - y_c|, n), the pairs against the last computed call zero where there is none yet
    metric_width = 2
    observe_width = 6

    def _input_change(self, state: _AdaptiveState, probe: torch.Tensor | None) -> torch.Tensor | None:
        """This call's input minus the previous call's (subsampled), where the metric can be computed."""
        state.pending = None
        state.x = None if probe is None else self._sub(probe)
        x, prev = state.x, state.prev_x
        if x is None or prev is None or prev.shape != x.shape or state.k is None or not state.y_norm:
            return None
        return x - prev

    def _accumulate(self, state: _AdaptiveState, change: float) -> float:
        state.pending = state.acc + state.k * change / state.y_norm
        return state.pending

    def metric(self, state: _AdaptiveState, probe: torch.Tensor | None) -> float | None:
        dx = self._input_change(state, probe)
        return None if dx is None else self._accumulate(state, _mean_abs(dx))

    def metric_sums(self, state: _AdaptiveState, probe: torch.Tensor | None) -> torch.Tensor | None:
        dx = self._input_change(state, probe)
        return None if dx is None else distributed.abs_sums(dx)

    def metric_from_sums(self, state: _AdaptiveState, sums: torch.Tensor | None) -> float | None:
        return None if sums is None else self._accumulate(state, distributed.mean_at(sums, 0))

    def wants_skip(self, state: _AdaptiveState, metric: float | None) -> bool:
        return (metric is not None and math.isfinite(metric) and metric < self.config.threshold
                and not state.last_step)

    @staticmethod
    def _has_previous(state: _AdaptiveState, x: torch.Tensor, y: torch.Tensor) -> bool:
        return state.cx is not None and state.cx.shape == x.shape and state.cy.shape == y.shape

    def _observed(self, state: _AdaptiveState, x: torch.Tensor, y: torch.Tensor, dx: float | None, dy: float,
                  y_norm: float) -> None:
        if dx is not None and dx > 0:
            state.k = dy / dx
        state.cx, state.cy = x, y
        state.y_norm = y_norm

    def observe_stack_residual(self, state: _AdaptiveState, residual: torch.Tensor) -> None:
        y, x = self._sub(residual), state.x
        if x is None:
            return
        previous = self._has_previous(state, x, y)
        dx = _mean_abs(x - state.cx) if previous else None
        dy = _mean_abs(y - state.cy) if previous and dx > 0 else 0.0
        self._observed(state, x, y, dx, dy, _mean_abs(y))

    def observe_sums(self, state: _AdaptiveState, residual: torch.Tensor) -> torch.Tensor | None:
        y, x = self._sub(residual), state.x
        if x is None:
            return None
        if self._has_previous(state, x, y):
            return distributed.abs_sums(y, x - state.cx, y - state.cy)
        return torch.cat([distributed.abs_sums(y), torch.zeros(4, dtype=torch.float64)])

    def observe_from_sums(self, state: _AdaptiveState, residual: torch.Tensor, sums: torch.Tensor | None) -> None:
        x = state.x
        if sums is None or x is None:
            return
        dx = distributed.mean_at(sums, 2) if sums[3] > 0 else None
        self._observed(state, x, self._sub(residual), dx, distributed.mean_at(sums, 4), distributed.mean_at(sums, 0))

    def commit(self, state: _AdaptiveState, probe: torch.Tensor | None, computed: bool) -> None:
        state.acc = 0.0 if computed or state.pending is None else state.pending
        state.prev_x = state.x



register(MethodSpec(
    key="adaptive", label="Adaptive Cache", config=AdaptiveCacheConfig, policy=AdaptiveCachePolicy,
    nodes=("adaptive_node:ApplyAdaptiveCache",),
    tune=TuneKnob("threshold", 0.05, 1.5)))
