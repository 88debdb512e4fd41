"""SmoothCache: a static per-layer-type schedule from a calibration run (Roblox SmoothCache, arXiv 2411.10510).

Calibration (one full run): for every component type -- "spatial" (self/joint attention), "cross" (text
cross-attention), "ffn" (feed-forward modules) -- record, per step s and lag k = 1..K, the relative L1 change of
each component's output ``mean|y_s - y_(s-k)| / mean|y_s|``, averaged over the components of that type (every
block, every CFG stream). That is the error a component makes when it returns the output computed k steps
earlier instead of computing.

Schedule (per type, built from an error budget alpha): the first step computes; after a computed step i the
next k steps reuse its output for the largest k <= K such that every reuse stays within the budget,
``err_j(i + j) <= alpha`` for j = 1..k (the paper's rule tests only the last one, err_k; testing every lag is
our stricter reading, it never skips more); the last step always computes. Applying the schedule, a component
of that type returns its last computed output on exactly the scheduled steps.

Steps are model calls per CFG stream (one per step for one-call samplers). A run with another number of steps
than calibrated maps the errors by nearest index (as diffusers maps MagCache ratios) before building.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .. import feedback
from ..component_runner import COMPONENT_KINDS, ComponentPolicy, SiteCall
from ..config import check_int, check_range
from ..policy import RunInfo
from ..registry import MethodSpec, register
from ..text import shown

CALIBRATION_FORMAT = "dit-cache.smoothcache.v1"  # the ``format`` header of its calibration files

log = logging.getLogger("dit_cache")

MAX_LAG = 3  # K: lags recorded by a calibration (the paper's schedules use k <= 3)
DEFAULT_ALPHA = 0.15  # the SmoothCache authors' example budget (DiT-XL, 50 DDIM steps)

Errors = dict[str, list[list[float]]]  # kind -> [lag k-1][step] (NaN where s < k)
Schedule = dict[str, list[bool]]  # kind -> per step: True = compute, False = reuse the last output


def check_errors(errors: Errors) -> int:
    """Validate an error table (every kind: MAX_LAG-or-fewer rows of one common length); returns the steps."""
    if not errors:
        raise ValueError("SmoothCache: the calibration has no component errors")
    lengths = {len(row) for rows in errors.values() for row in rows}
    if len(lengths) != 1 or not all(rows for rows in errors.values()):
        raise ValueError(f"SmoothCache: error rows of unequal lengths {sorted(lengths)}")
    steps = lengths.pop()
    if steps < 2:
        raise ValueError(f"SmoothCache: a calibration needs at least 2 steps, got {steps}")
    for kind, rows in errors.items():
        if kind not in COMPONENT_KINDS:
            raise ValueError(f"SmoothCache: unknown component type {shown(kind)}")
        if not 1 <= len(rows) <= MAX_LAG:
            raise ValueError(f"SmoothCache: {kind} has {len(rows)} lags, expected 1-{MAX_LAG}")
        if any(not (math.isnan(v) or v >= 0) or math.isinf(v) for row in rows for v in row):
            raise ValueError(f"SmoothCache: {kind} has negative or infinite errors")
    return steps


def resample(errors: Errors, steps: int) -> Errors:
    """The error table mapped to ``steps`` steps by nearest index (``idx = round(i (L-1) / (N-1))``)."""
    out: Errors = {}
    for kind, rows in errors.items():
        n = len(rows[0])
        idx = [0] * steps if steps == 1 else [round(i * (n - 1) / (steps - 1)) for i in range(steps)]
        out[kind] = [[row[j] for j in idx] for row in rows]
    return out


def build_schedule(errors: Errors, alpha: float) -> Schedule:
    """Per type and step, whether the component computes (see the module docstring)."""
    schedule: Schedule = {}
    for kind, rows in errors.items():
        n, lags = len(rows[0]), len(rows)
        compute = [True] * n
        i = 0
        while i < n - 1:
            k = next((k for k in range(lags, 0, -1)
                      if i + k < n - 1 and all(rows[j - 1][i + j] <= alpha for j in range(1, k + 1))), 0)
            for j in range(1, k + 1):
                compute[i + j] = False
            i += k + 1
        schedule[kind] = compute
    return schedule


def schedule_strings(schedule: Schedule) -> dict[str, str]:
    """Per type, the schedule as a string: ``#`` computed, ``.`` reused."""
    return {kind: "".join("#" if c else "." for c in steps) for kind, steps in schedule.items()}


def schedule_text(schedule: Schedule) -> str:
    """One line per type (see :func:`schedule_strings`)."""
    return "\n".join(f"{kind:>8} {line}" for kind, line in schedule_strings(schedule).items())


@dataclass(frozen=True)
class SmoothCacheConfig:
    """errors: a calibration's error table (:data:`Errors`). alpha: the error budget (0 = never reuse). A
    ``schedule`` given explicitly (e.g. the one saved with a calibration) is used as it is for runs of its
    length; otherwise and for other step counts it is built from the errors with ``alpha``."""

    errors: Errors
    alpha: float = DEFAULT_ALPHA
    schedule: Schedule | None = None
    calibrated_steps: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "calibrated_steps", check_errors(self.errors))
        check_range("alpha", self.alpha, 0.0, 10.0)
        if self.schedule is not None:
            if set(self.schedule) - set(self.errors):
                raise ValueError(f"SmoothCache: schedule types {sorted(self.schedule)} not in the errors "
                                 f"{sorted(self.errors)}")
            if any(len(v) != self.calibrated_steps for v in self.schedule.values()):
                raise ValueError(f"SmoothCache: schedule lengths differ from the {self.calibrated_steps} "
                                 f"calibrated steps")

    def schedule_for(self, steps: int) -> Schedule:
        if steps == self.calibrated_steps:
            return self.schedule if self.schedule is not None else build_schedule(self.errors, self.alpha)
        return build_schedule(resample(self.errors, steps), self.alpha)


class _Site:
    def __init__(self) -> None:
        self.cache: torch.Tensor | None = None


class SmoothCachePolicy(ComponentPolicy):
    """Applies a schedule: a component reuses its last output on the steps its type's schedule marks."""

    name = "SmoothCache"
    part = "component"

    def __init__(self, config: SmoothCacheConfig) -> None:
        self.config = config
        self.threshold = config.alpha
        self._schedules: dict[int, Schedule] = {}

    def kinds(self) -> frozenset[str]:
        return frozenset(self.config.errors)

    def window_names(self) -> frozenset[str]:
        return frozenset()  # the schedule is the window

    def schedule(self, steps: int | None) -> Schedule:
        n = steps or self.config.calibrated_steps
        sched = self._schedules.get(n)
        if sched is None:
            if n != self.config.calibrated_steps:
                # the cache node's warning while its run samples (feedback.running)
                feedback.warn(f"the run has {n} steps, the calibration {self.config.calibrated_steps}; "
                              f"its errors are mapped by nearest step (calibrate at this step count for an exact "
                              f"schedule)")
            sched = self._schedules[n] = self.config.schedule_for(n)
        return sched

    def new_site_state(self) -> _Site:
        return _Site()

    def reuse(self, state: _Site, call: SiteCall) -> bool:
        plan = self.schedule(call.steps).get(call.kind)
        return (state.cache is not None and plan is not None and call.call_index < len(plan)
                and not plan[call.call_index])

    def cached(self, state: _Site, call: SiteCall) -> torch.Tensor:
        return state.cache

    def store(self, state: _Site, output: torch.Tensor, computed: bool, call: SiteCall) -> None:
        if computed:
            state.cache = output

    def settings(self) -> dict[str, Any]:
        return {"alpha": self.config.alpha, "calibrated_steps": self.config.calibrated_steps,
                "schedule": schedule_strings(self.schedule(None))}


class _CalSite:
    def __init__(self) -> None:
        self.history: list[tuple[int, torch.Tensor]] = []  # (call index, output) of the last MAX_LAG calls


class SmoothCacheCalibratePolicy(ComponentPolicy):
    """Computes everything and measures the error table; ``on_finish(errors, streams, completed)`` gets it."""

    name = "SmoothCache Calibrate"
    part = "component"

    def __init__(self, on_finish: Callable[[Errors, list[str], bool], None] | None = None,
                 kinds: tuple[str, ...] = ("spatial", "cross", "ffn"), sample_stride: int = 8) -> None:
        check_int("sample_stride", sample_stride, 1)
        self.on_finish = on_finish
        # the errors are measured on every n-th value of each output: the kept history (MAX_LAG outputs per
        # component, float32) is 1/n of the outputs' size -- 1/16 of bfloat16 outputs at n = 8
        self.sample_stride = sample_stride
        self._kinds = frozenset(kinds)
        # (kind, lag, step) -> [sum of relative errors, count]
        self._sums: dict[tuple[str, int, int], list[float]] = {}
        self._steps = 0
        self.errors: Errors = {}

    def kinds(self) -> frozenset[str]:
        return self._kinds

    def check_run(self, run: RunInfo) -> None:
        """The error table needs at least 2 steps: fewer is an error before the run samples."""
        if run.steps is not None and run.steps < 2:
            raise ValueError(f"SmoothCache calibration needs at least 2 sampling steps, this run has {run.steps}; "
                             f"set the sampler's steps to the count you will use with Apply SmoothCache")

    def window_names(self) -> frozenset[str]:
        return frozenset()

    def new_site_state(self) -> _CalSite:
        return _CalSite()

    def store(self, state: _CalSite, output: torch.Tensor, computed: bool, call: SiteCall) -> None:
        s = call.call_index
        y = output.detach().reshape(-1)[::self.sample_stride].float()
        denom = float(y.abs().mean())
        for s_prev, y_prev in state.history:
            k = s - s_prev
            if 1 <= k <= MAX_LAG and denom > 0:
                acc = self._sums.setdefault((call.kind, k, s), [0.0, 0])
                acc[0] += float((y - y_prev).abs().mean()) / denom
                acc[1] += 1
        state.history = [(p, t) for p, t in state.history if s - p < MAX_LAG] + [(s, y)]
        self._steps = max(self._steps, s + 1)

    def table(self) -> Errors:
        kinds = sorted({k for k, _, _ in self._sums})
        return {kind: [[(self._sums[(kind, k, s)][0] / self._sums[(kind, k, s)][1])
                        if (kind, k, s) in self._sums else math.nan for s in range(self._steps)]
                       for k in range(1, MAX_LAG + 1)] for kind in kinds}

    def finish_run(self, streams: list[tuple[str, dict]], completed: bool) -> None:
        self.errors = self.table()
        labels = [label for label, _ in streams]
        self._sums, self._steps = {}, 0
        if self.on_finish is not None:
            self.on_finish(self.errors, labels, completed)


register(MethodSpec(
    key="smoothcache", label="SmoothCache", config=SmoothCacheConfig, policy=SmoothCachePolicy,
    nodes=("smoothcache_nodes:SmoothCacheCalibrate", "smoothcache_nodes:ApplySmoothCache"), hosts=("comfy",),
    calibration=CALIBRATION_FORMAT, exports=("SmoothCacheCalibratePolicy",)))
