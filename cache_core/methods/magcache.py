"""MagCache: skip the whole block stack while the calibrated magnitude ratios say its residual barely changed.

Rule (MagCache paper, arXiv 2506.09045; diffusers ``hooks/mag_cache.py``, the parity reference): per CFG stream,
at every call from the retention step on, ``acc_ratio *= ratio[step]``, ``acc_steps += 1``,
``acc_err += |1 - acc_ratio|``; the call skips (output = input + the last computed whole-stack residual) while
a residual exists, ``acc_err <= threshold`` and ``acc_steps <= K``; a computed call resets the accumulators to
(1, 0, 0). The first ``int(retention_ratio * steps + 0.5)`` steps always compute.

Ratios for another number of steps (see :class:`MagRatioCurve`): diffusers maps by nearest index
``round(i * (L - 1) / (N - 1))`` ("nearest", used for parity). Our default "schedule" reads the curve as a
cumulative log-magnitude over schedule position p in [0, 1] (calibrated step i at p = i / (L - 1)),
interpolates it linearly and takes the ratio between the positions of two consecutive calls:
``exp(C(p_now) - C(p_prev))``. With N = L it returns the calibrated ratios exactly; with other N the product
of the ratios over the run (the total magnitude change) is preserved, and a sampler calling the model more
than once per step (positions from its sigmas) gets the change over the part of the schedule it covers.

Calibration (:class:`MagCacheCalibratePolicy`) never skips and records, per stream, the ratio of the mean over
tokens of ``||r_t|| / ||r_{t-1}||`` (norm over the last dim, first value 1.0) as diffusers' ``calibrate=True``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from .. import distributed
from ..config import HIDDEN, CacheWindow, Gate, check_int, check_range
from ..policy import Policy, Probe, RunInfo, StreamCall, schedule_step
from ..registry import MethodSpec, register
from ..text import shown
from .magcache_calibration import FORMAT as CALIBRATION_FORMAT

INTERPOLATIONS = ("schedule", "nearest")


class MagRatioCurve:
    """One stream's calibrated per-step magnitude ratios, readable at any number of steps."""

    def __init__(self, ratios: Sequence[float]) -> None:
        values = [float(r) for r in ratios]
        if len(values) < 2:
            raise ValueError(f"a magnitude-ratio curve needs at least 2 values, got {len(values)}")
        if not all(math.isfinite(r) and r > 0 for r in values):
            raise ValueError("magnitude ratios must be finite and positive")
        self.ratios = values
        # cumulative log magnitude at positions i / (L - 1); C(0) = 0 (the first ratio is the 1.0 pad)
        self._cum = [0.0]
        for r in values[1:]:
            self._cum.append(self._cum[-1] + math.log(r))

    def __len__(self) -> int:
        return len(self.ratios)

    def nearest(self, step: int, steps: int) -> float:
        """diffusers' ``nearest_interp``: the ratio at index ``round(step * (L - 1) / (steps - 1))``."""
        n = len(self.ratios)
        if steps == n:
            return self.ratios[step] if step < n else 1.0
        if steps <= 1:
            return self.ratios[-1]
        if step >= steps:
            return 1.0
        # diffusers computes the grid in float32 and rounds half to even (torch.round)
        idx = int(torch.round(torch.tensor(step, dtype=torch.float32) * ((n - 1) / (steps - 1))).item())
        return self.ratios[min(idx, n - 1)]

    def cumulative(self, position: float) -> float:
        """Linear interpolation of the cumulative log magnitude at schedule position ``position`` in [0, 1]."""
        p = min(max(position, 0.0), 1.0) * (len(self._cum) - 1)
        i = min(int(p), len(self._cum) - 2)
        f = p - i
        return self._cum[i] * (1.0 - f) + self._cum[i + 1] * f

    def between(self, p_prev: float, p_now: float) -> float:
        """The magnitude ratio between two schedule positions."""
        return math.exp(self.cumulative(p_now) - self.cumulative(p_prev))


@dataclass(frozen=True)
class MagCacheConfig:
    """MagCache settings.

    ratios: per CFG stream label ("cond", "uncond", ...) the calibrated curve; a stream without its own curve
    uses the "cond" curve (or the only one). A plain sequence means one curve for every stream.
    threshold: error budget (diffusers default 0.06; the MagCache repo uses 0.12-0.24 for Flux).
    max_skip_steps: K, most consecutive skips. retention_ratio: the first share of steps always computes.
    num_inference_steps: steps of a run when the host does not know them (diffusers); ComfyUI reads them from
    the run's sigmas. interpolation: "schedule" (ours, see the module docstring) or "nearest" (diffusers).
    """

    ratios: Mapping[str, Sequence[float]] | Sequence[float] = field(metadata=HIDDEN)  # summarised as "curves"
    threshold: float = 0.06
    max_skip_steps: int = 3
    retention_ratio: float = 0.2
    num_inference_steps: int = field(default=28, metadata=HIDDEN)
    interpolation: str = "schedule"
    start_percent: float = 0.0
    end_percent: float = 1.0
    curves: dict[str, MagRatioCurve] = field(init=False, repr=False, compare=False)
    gate: Gate = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_range("threshold", self.threshold, 0.0, 10.0)
        check_int("max_skip_steps", self.max_skip_steps, 0)
        check_range("retention_ratio", self.retention_ratio, 0.0, 1.0)
        check_int("num_inference_steps", self.num_inference_steps, 1)
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {shown(self.interpolation)}")
        raw = self.ratios
        if isinstance(raw, torch.Tensor):
            raw = raw.tolist()
        if isinstance(raw, Mapping):
            if not raw:
                raise ValueError("MagCache needs at least one ratio curve")
            curves = {str(k): MagRatioCurve(v.tolist() if isinstance(v, torch.Tensor) else v)
                      for k, v in raw.items()}
        else:
            curves = {"*": MagRatioCurve(raw)}
        object.__setattr__(self, "curves", curves)
        object.__setattr__(self, "gate", Gate(window=CacheWindow(self.start_percent, self.end_percent)))

    def curve_for(self, label: str) -> MagRatioCurve:
        c = self.curves
        if label in c:
            return c[label]
        base = label.rstrip("0123456789")  # "cond2" (a second positive) -> "cond"
        return c.get(base) or c.get("*") or c.get("cond") or next(iter(c.values()))


class _MagState:
    def __init__(self, run: RunInfo) -> None:
        self.run = run
        self.label: str | None = None
        self.step = 0  # calls of this stream so far
        self.position: float | None = None  # schedule position of the current call
        self.prev_position: float | None = None
        self.acc_ratio = 1.0
        self.acc_err = 0.0
        self.acc_steps = 0


def schedule_position(run: RunInfo, call: StreamCall, fallback_steps: int) -> float:
    """Position of a call in [0, 1]: from its sigma on the run's schedule (fractional between two steps, for
    samplers that call the model more than once per step, :func:`~cache_core.policy.schedule_step`), else from
    the call index."""
    step = schedule_step(run, call.sigma)
    if step is not None:
        return step / (len(run.sigmas) - 2)
    steps = run.steps or fallback_steps
    return min(call.call_index / (steps - 1), 1.0) if steps > 1 else 1.0


class MagCachePolicy(Policy):
    """Decides before any block runs (probe_blocks 0); skipping reuses the whole stack's cached residual."""

    name = "MagCache"
    probe = Probe.NONE

    def new_run_state(self, run: RunInfo) -> _MagState:
        return _MagState(run)

    def steps_of(self, state: _MagState) -> int:
        return state.run.steps or self.config.num_inference_steps

    def begin_stream_call(self, state: _MagState, info: StreamCall) -> None:
        state.step = info.call_index
        state.label = info.label
        state.position = schedule_position(state.run, info, self.config.num_inference_steps)

    def ratio(self, state: _MagState, label: str) -> float:
        curve = self.config.curve_for(label)
        if self.config.interpolation == "nearest":
            return curve.nearest(state.step, self.steps_of(state))
        prev = state.prev_position if state.prev_position is not None else state.position
        return curve.between(prev, state.position)

    def metric(self, state: _MagState, probe_residual: torch.Tensor | None) -> float | None:
        steps = self.steps_of(state)
        retention = int(self.config.retention_ratio * steps + 0.5)
        if state.step < retention:
            return None
        state.acc_ratio *= self.ratio(state, state.label or "cond")
        state.acc_steps += 1
        state.acc_err += abs(1.0 - state.acc_ratio)
        return state.acc_err

    def wants_skip(self, state: _MagState, metric: float | None) -> bool:
        return (metric is not None and metric <= self.config.threshold
                and state.acc_steps <= self.config.max_skip_steps)

    def commit(self, state: _MagState, probe_residual: torch.Tensor | None, computed: bool) -> None:
        if computed:
            state.acc_ratio, state.acc_err, state.acc_steps = 1.0, 0.0, 0
        state.prev_position = state.position

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "curves": {k: len(v) for k, v in self.config.curves.items()}}


@dataclass
class StreamCalibration:
    """What calibration measured for one CFG stream."""

    label: str
    ratios: list[float] = field(default_factory=list)
    sigmas: list[float | None] = field(default_factory=list)  # sigma of each calibrated call
    schedule: tuple[float, ...] | None = None  # the run's sigma schedule (steps + 1 values), if known


class _CalibState:
    def __init__(self, run: RunInfo) -> None:
        self.run = run
        self.prev: torch.Tensor | None = None
        self.ratios: list[float] = []
        self.sigmas: list[float | None] = []
        self.sigma: float | None = None


class MagCacheCalibratePolicy(Policy):
    """Never skips; measures each stream's per-call whole-stack residual magnitude ratio.

    ``on_finish(streams, completed)`` gets one :class:`StreamCalibration` per stream at the end of every run.
    """

    name = "MagCacheCalibrate"
    probe = Probe.STACK

    def __init__(self, on_finish: Callable[[list[StreamCalibration], bool], None] | None = None) -> None:
        self.on_finish = on_finish
        self.last: list[StreamCalibration] = []

    def new_run_state(self, run: RunInfo) -> _CalibState:
        return _CalibState(run)

    def check_run(self, run: RunInfo) -> None:
        """A ratio curve needs at least 2 steps (its first value is the 1.0 pad): fewer is an error before the
        run samples, not a failed save after it."""
        if run.steps is not None and run.steps < 2:
            raise ValueError(f"MagCache calibration needs at least 2 sampling steps, this run has {run.steps}; "
                             f"set the sampler's steps to the count you will use with Apply MagCache")

    def begin_stream_call(self, state: _CalibState, info: StreamCall) -> None:
        state.sigma = info.sigma

    @staticmethod
    def _token_ratios(state: _CalibState, residual: torch.Tensor) -> torch.Tensor | None:
        """Per token ``||r_t|| / ||r_{t-1}||`` (diffusers MagCacheBlockHook._perform_calibration_step), None for
        the stream's first call or a changed shape."""
        if state.prev is None or state.prev.shape != residual.shape:
            return None
        cur = torch.linalg.norm(residual.float(), dim=-1)
        prev = torch.linalg.norm(state.prev.float(), dim=-1)
        return cur / (prev + 1e-8)

    def _record(self, state: _CalibState, residual: torch.Tensor, ratio: float) -> None:
        state.ratios.append(ratio)
        state.sigmas.append(state.sigma)
        state.prev = residual.detach()

    def observe_stack_residual(self, state: _CalibState, residual: torch.Tensor) -> None:
        ratios = self._token_ratios(state, residual)
        self._record(state, residual, 1.0 if ratios is None else ratios.mean().item())

    # several ranks: the mean over every rank's tokens, (sum of the token ratios, tokens) reduced
    observe_width = 2

    def observe_sums(self, state: _CalibState, residual: torch.Tensor) -> torch.Tensor | None:
        ratios = self._token_ratios(state, residual)
        return None if ratios is None else torch.stack([ratios.double().sum(),
                                                        torch.tensor(float(ratios.numel()), dtype=torch.float64)])

    def observe_from_sums(self, state: _CalibState, residual: torch.Tensor, sums: torch.Tensor | None) -> None:
        self._record(state, residual, 1.0 if sums is None else distributed.mean_at(sums, 0))

    def finish_run(self, streams: list[tuple[str, Any]], completed: bool) -> None:
        self.last = [StreamCalibration(label, list(st.ratios), list(st.sigmas), st.run.sigmas)
                     for label, st in streams if st.ratios]
        if self.on_finish is not None:
            self.on_finish(self.last, completed)

    def settings(self) -> dict[str, Any]:
        return {"calibrate": True}


register(MethodSpec(
    key="magcache", label="MagCache", config=MagCacheConfig, policy=MagCachePolicy,
    nodes=("magcache_nodes:ApplyMagCache", "magcache_nodes:MagCacheCalibrate"), calibration=CALIBRATION_FORMAT,
    exports=("MagCacheCalibratePolicy", "MagRatioCurve")))
