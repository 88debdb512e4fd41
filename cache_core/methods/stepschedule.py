"""Step Schedule: compute a fixed set of steps chosen offline, for a budget, by dynamic programming over the
errors measured in one calibration run; every other step reuses the whole stack's last residual or forecasts it.

Calibration (:class:`StepScheduleCalibratePolicy`, "StepSchedule Calibrate") computes every step and keeps per
CFG stream a bounded reduction of the block stack's residual (``stepschedule_calibration.py``). From it
:func:`plan` builds the error table for the chosen way of filling skipped steps (reuse or a forecaster of
``cache_core/forecasters.py``, the apply nodes' own classes) and picks, per stream, the computed steps that
minimise the accumulated error, one schedule for every stream of a batch (a call skips only when all its streams
skip; the DP minimises the streams' mean error) (``cache_core/schedule_dp.py``: CacheQuant's DP, arXiv 2503.01323, over pairs of
computed steps; O(N T^3)). With ``max_error`` > 0 instead of a budget, the smallest budget whose optimal error is
at most ``max_error``.

Other step counts and samplers (as MagCache's "schedule" mapping): each chosen step is a schedule position
``p = k / (T - 1)`` (from its sigma on the calibrated schedule); in a run, a call computes when a chosen position
lies in ``(previous call's position, this call's position]`` (positions from the call's sigma on the run's
schedule, :func:`~cache_core.methods.magcache.schedule_position`), and the stream's first call always computes.
At the calibrated step count with one call per step this computes exactly the chosen steps; with fewer steps
or several calls per step at most the budget's calls compute.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from ..config import HIDDEN, check_int, check_range
from ..forecasters import FORECASTERS, make_forecaster
from ..policy import Policy, Probe, RunInfo, StreamCall, schedule_step
from ..registry import MethodSpec, register
from ..schedule_dp import (ErrorTable, error_table, forecast_weights, optimal_schedules, schedule_error,
                           step_weights)
from ..text import shown
from .magcache import schedule_position
from .stepschedule_calibration import FORMAT as CALIBRATION_FORMAT
from .stepschedule_calibration import StepCalibration, reduce_feature

log = logging.getLogger("dit_cache")

REUSE = "reuse"
ON_SKIPPED = (REUSE, *FORECASTERS)
EPS = 1e-6


def history_points(on_skipped: str, order: int) -> int:
    """Computed values the way of filling skipped steps uses (1: reuse)."""
    if on_skipped == REUSE:
        return 1
    from ..forecasters import memory_tensors

    return memory_tensors(on_skipped, order)


def skip_forecaster(on_skipped: str, order: int, dtype: torch.dtype | None = torch.float32) -> Any:
    return None if on_skipped == REUSE else make_forecaster(on_skipped, order, dtype, target="residual")


@dataclass
class StreamPlan:
    steps: list[int]  # computed steps of the calibrated run
    positions: list[float]  # their schedule positions in [0, 1]
    error: float  # accumulated error with the full forecaster history (schedule_dp.schedule_error)
    dp_error: float  # the DP's own value
    uniform_error: float  # a uniform schedule of as many steps, for comparison


def calibrated_positions(cal: StepCalibration, label: str) -> list[float]:
    run = RunInfo(tuple(cal.sigmas) if cal.sigmas else None)
    sig = cal.call_sigmas.get(label, [])
    out = []
    for k in range(cal.steps):
        s = schedule_step(run, sig[k]) if k < len(sig) else None
        out.append(s / (cal.steps - 1) if s is not None else k / (cal.steps - 1))
    return out


def uniform_steps(steps: int, budget: int) -> list[int]:
    """``budget`` steps spread evenly over ``steps`` (step 0 first)."""
    if budget >= steps:
        return list(range(steps))
    return sorted({round(j * steps / budget) for j in range(budget)})


def plan(cal: StepCalibration, computed_steps: int, max_error: float, on_skipped: str, order: int
         ) -> dict[str, StreamPlan]:
    """The optimal schedule for the budget (or the fewest steps meeting ``max_error``), per CFG stream of
    ``cal``. A model call skips only when every stream of its batch skips, so the streams share one schedule:
    the DP runs on the mean of the streams' error tables; each stream's own errors are reported."""
    points = history_points(on_skipped, order)
    per: dict[str, tuple[Any, Any, list[float]]] = {}
    tables = []
    for label, feats in cal.features.items():
        t = feats.shape[0]
        sig = cal.call_sigmas.get(label, [])
        ds = step_weights(sig, t, cal.sigmas[-1] if cal.sigmas else None)
        times = list(sig) if sig and None not in sig else []
        weights = forecast_weights(skip_forecaster(on_skipped, order, torch.float64), times)
        tables.append(error_table(feats, weights, ds, points).err)
        per[label] = (feats, weights, ds)
    t = cal.steps
    table = ErrorTable(torch.stack(tables).mean(dim=0), points)
    if max_error > 0:
        found = optimal_schedules(table)
        n = min((k for k, s in found.items() if s.error <= max_error), default=t)
        chosen = found[n]
    else:
        n = min(max(computed_steps, 1), t)
        chosen = optimal_schedules(table, n)[n]
    uni = uniform_steps(t, len(chosen.steps))
    out: dict[str, StreamPlan] = {}
    for label, (feats, weights, ds) in per.items():
        pos = calibrated_positions(cal, label)
        out[label] = StreamPlan(list(chosen.steps), [pos[k] for k in chosen.steps],
                                schedule_error(chosen.steps, feats, weights, ds, points), chosen.error,
                                schedule_error(uni, feats, weights, ds, points))
    return out


@dataclass(frozen=True)
class StepScheduleConfig:
    """positions: per CFG stream the schedule positions (0-1) of the computed steps (:func:`plan`); a stream
    without its own uses "cond"'s (or the only one). on_skipped: "reuse" or a forecaster of ``FORECASTERS``;
    order: Taylor / Hermite order. calibrated_steps: the calibration run's steps (positions of calls when the
    host gives no sigmas). chosen: per stream the calibrated steps chosen (the run record shows them)."""

    positions: Mapping[str, Sequence[float]] = field(metadata=HIDDEN)
    on_skipped: str = REUSE
    order: int = 1
    calibrated_steps: int = field(default=20, metadata=HIDDEN)
    chosen: Mapping[str, Sequence[int]] = field(default_factory=dict)
    note: str = field(default="", metadata=HIDDEN, compare=False)  # the plan in words (the node's text)

    def __post_init__(self) -> None:
        if self.on_skipped not in ON_SKIPPED:
            raise ValueError(f"on_skipped must be one of {ON_SKIPPED}, got {shown(self.on_skipped)}")
        check_int("order", self.order, 0, 3)
        check_int("calibrated_steps", self.calibrated_steps, 2)
        if not self.positions:
            raise ValueError("Step Schedule needs the computed positions of at least one stream")
        for label, ps in self.positions.items():
            for p in ps:
                check_range(f"positions[{label}]", p, 0.0, 1.0)

    def positions_for(self, label: str) -> Sequence[float]:
        p = self.positions
        if label in p:
            return p[label]
        base = label.rstrip("0123456789")
        return p.get(base) or p.get("cond") or next(iter(p.values()))


class _State:
    def __init__(self, run: RunInfo) -> None:
        self.run = run
        self.label = ""
        self.position = 0.0
        self.prev: float | None = None
        self.computed: list[int] = []  # call indices computed
        self.call = 0


class StepSchedulePolicy(Policy):
    """Decides before any block runs: compute where the schedule says (see the module docstring)."""

    name = "StepSchedule"
    probe = Probe.NONE

    def __init__(self, config: StepScheduleConfig) -> None:
        super().__init__(config)
        self.forecaster = skip_forecaster(config.on_skipped, config.order)

    def new_run_state(self, run: RunInfo) -> _State:
        return _State(run)

    def begin_stream_call(self, state: _State, info: StreamCall) -> None:
        state.label, state.call = info.label, info.call_index
        state.position = schedule_position(state.run, info, self.config.calibrated_steps)

    def scheduled(self, state: _State) -> bool:
        if state.prev is None:
            return True
        lo, hi = state.prev, state.position + EPS
        return any(lo + EPS < p <= hi for p in self.config.positions_for(state.label))

    def metric(self, state: _State, probe_residual: torch.Tensor | None) -> float | None:
        return None

    def wants_skip(self, state: _State, metric: float | None) -> bool:
        return not self.scheduled(state)

    def commit(self, state: _State, probe_residual: torch.Tensor | None, computed: bool) -> None:
        if computed:
            state.computed.append(state.call)
        state.prev = state.position

    def run_details(self, streams: list[tuple[str, Any]]) -> dict[str, Any]:
        return {"computed_calls": {label: list(s.computed) for label, s in streams}}


# ------------------------------------------------------------------------------------------------ calibration
class _CalibState:
    def __init__(self, run: RunInfo) -> None:
        self.run = run
        self.sigma: float | None = None
        self.features: list[torch.Tensor] = []
        self.sigmas: list[float | None] = []


class StepScheduleCalibratePolicy(Policy):
    """Never skips; keeps each stream's reduced whole-stack residual per call. ``on_finish(streams, completed)``
    gets ``[(label, features (calls x D), sigmas, run schedule)]`` at the end of every run. Single process only
    (no decision-group reduction of the features)."""

    name = "StepScheduleCalibrate"
    probe = Probe.STACK

    def __init__(self, on_finish: Callable[[list[tuple[str, torch.Tensor, list, tuple | None]], bool], None]
                 | None = None) -> None:
        self.on_finish = on_finish
        self.last: list[tuple[str, torch.Tensor, list, tuple | None]] = []

    def new_run_state(self, run: RunInfo) -> _CalibState:
        return _CalibState(run)

    def check_run(self, run: RunInfo) -> None:
        if run.steps is not None and run.steps < 2:
            raise ValueError(f"Step Schedule calibration needs at least 2 sampling steps, this run has {run.steps}")

    def begin_stream_call(self, state: _CalibState, info: StreamCall) -> None:
        state.sigma = info.sigma

    def observe_stack_residual(self, state: _CalibState, residual: torch.Tensor) -> None:
        f = reduce_feature(residual)
        if state.features and state.features[0].shape != f.shape:
            state.features.clear()  # a new shape starts afresh
            state.sigmas.clear()
        state.features.append(f)
        state.sigmas.append(state.sigma)

    def finish_run(self, streams: list[tuple[str, Any]], completed: bool) -> None:
        self.last = [(label, torch.stack(st.features), list(st.sigmas), st.run.sigmas)
                     for label, st in streams if st.features]
        if self.on_finish is not None:
            self.on_finish(self.last, completed)

    def settings(self) -> dict[str, Any]:
        return {"calibrate": True}


register(MethodSpec(
    key="stepschedule", label="Step Schedule", config=StepScheduleConfig, policy=StepSchedulePolicy,
    nodes=("stepschedule_node:ApplyStepSchedule", "stepschedule_node:StepScheduleCalibrate"),
    calibration=CALIBRATION_FORMAT, exports=("StepScheduleCalibratePolicy",)))
