"""Errors of skipped steps from one calibration run, and the optimal schedule by dynamic programming.

**Error table.** A calibration run computes every step and keeps, per CFG stream, a reduced copy ``f_k`` of the
block stack's residual at each step ``k`` (``methods/stepschedule_calibration.py``: a linear reduction, so a
forecast of the reduced features is the reduction of the forecast). For a skipped step ``i`` whose newest
computed steps are ``b`` (and before it ``a``), the value the apply node would use is ``sum_m w_m f_{h_m}``: the
weights come from the forecaster alone (:func:`forecast_weights`: the same forecaster classes the apply nodes
use, run on one-hot values) or are ``[1]`` for plain reuse. The error of step ``i`` is
``e(i | b, a) = dsigma_i * ||pred - f_i|| / Z``: the step's share of the trajectory (``dsigma_i`` =
``|sigma_i - sigma_{i+1}|``, the weight the sampler gives the model's output at that step; 1 without sigmas)
times the distance, over ``Z = sum_k dsigma_k ||f_k||`` so that the accumulated error is a fraction of the
trajectory's whole feature motion (0.05 = 5 %).

**Schedule.** As CacheQuant (Liu et al., CVPR 2025, arXiv 2503.01323) the schedule is the choice of the
computed steps, every other step using what the last computed ones give; CacheQuant partitions the steps into
groups, each computing its first step and reusing it on the rest, and finds the partition minimising the summed
error by dynamic programming. Here the cost of a skipped step may depend on the last *two* computed steps (a
forecaster): the DP state is the pair (previous computed step ``a``, last computed step ``b``)::

    best_1(none, 0) = 0                                        (step 0 always computes)
    best_n(b, c)    = min_a best_{n-1}(a, b) + C(a, b, c),     C(a, b, c) = sum_{b<i<c} e(i | b, a)
    total_n         = min_{a,b} best_n(a, b) + C(a, b, T)

for T steps and n = 1..N computed steps. Cost: the table has O(T^3) entries (each a forecast over the reduced
features, O(T^3 D) to fill), each budget level is one min over a (T+1) x T x (T+1) array: O(N T^3) time and
O(T^3) memory (T = 28: 22k entries, milliseconds). Exact for plain reuse (where ``e`` ignores ``a``; CacheQuant's
case) and for forecasters of at most two points (taylor order 1, Adams-Bashforth 1, Hermite order 1); a
forecaster of more points is optimised with its two newest points (what it has after two computed steps) and
the chosen schedule's error with its full history is then evaluated (:func:`schedule_error`).

Nothing here imports ComfyUI.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

Weights = Callable[[Sequence[int], int], Sequence[float]]  # (history newest first, target step) -> weights


def forecast_weights(forecaster: object | None, times: Sequence[float]) -> Weights:
    """``weights(history, i)``: the coefficients of the values at steps ``history`` (newest first) in the
    prediction at step ``i``, by ``forecaster`` (a ``cache_core.forecast.Forecaster``; None: plain reuse).
    The forecaster is run on one-hot values: its prediction is linear in the values, so it returns the weights."""
    cache: dict[tuple[tuple[int, ...], int], list[float]] = {}

    def weights(history: Sequence[int], i: int) -> Sequence[float]:
        key = (tuple(history), i)
        if key not in cache:
            if forecaster is None:
                cache[key] = [1.0] + [0.0] * (len(history) - 1)
            else:
                n = len(history)
                state = forecaster.new_state()  # type: ignore[attr-defined]
                for pos, step in enumerate(reversed(history)):  # oldest first
                    value = torch.zeros(n, dtype=torch.float64)
                    value[n - 1 - pos] = 1.0
                    forecaster.observe(state, 0, value, _coord(forecaster, step, times))  # type: ignore[attr-defined]
                out = forecaster.predict(state, 0, _coord(forecaster, i, times), torch.float64)  # type: ignore[attr-defined]
                cache[key] = [float(x) for x in out]
        return cache[key]

    return weights


def _coord(forecaster: object, step: int, times: Sequence[float]) -> float:
    sigma = times[step] if times else None
    return forecaster.coordinate(step, sigma)  # type: ignore[attr-defined]


def step_weights(sigmas: Sequence[float | None], steps: int, end_sigma: float | None = None) -> list[float]:
    """``dsigma_k``: how much of the trajectory step k's model output moves (1 each without sigmas)."""
    if len(sigmas) < steps or any(s is None for s in sigmas[:steps]):
        return [1.0] * steps
    nxt = list(sigmas[1:steps]) + [end_sigma if end_sigma is not None else 0.0]
    out = [abs(float(s) - float(n)) for s, n in zip(sigmas[:steps], nxt)]
    return out if sum(out) > 0 else [1.0] * steps


@dataclass
class ErrorTable:
    """``err[a, b, i]``: the error of step i (i > b) when b is the last computed step and a the one before
    (a = T: none). Built by :func:`error_table`."""

    err: torch.Tensor  # float64, (T + 1, T, T)
    points: int  # history points the forecaster uses (1: reuse)

    @property
    def steps(self) -> int:
        return self.err.shape[1]


def error_table(features: torch.Tensor, weights: Weights, dsigma: Sequence[float], points: int) -> ErrorTable:
    """The table of :class:`ErrorTable` from one stream's reduced features (T x D), ``weights`` of
    :func:`forecast_weights`, the step weights and the forecaster's history points (2 are used at most)."""
    f = features.double()
    t = f.shape[0]
    norms = f.norm(dim=1)
    ds = torch.tensor(list(dsigma), dtype=torch.float64)
    z = float((ds * norms).sum()) or 1.0
    err = torch.full((t + 1, t, t), math.inf, dtype=torch.float64)
    for b in range(t):
        prevs = [t] + (list(range(b)) if points > 1 else [])
        for a in prevs:
            hist = [b] if a == t else [b, a]
            rows = []
            for i in range(b + 1, t):
                w = weights(hist, i)
                pred = sum(wm * f[h] for wm, h in zip(w, hist))
                rows.append(float(ds[i] * (pred - f[i]).norm() / z))
            if rows:
                err[a, b, b + 1:] = torch.tensor(rows, dtype=torch.float64)
        if points <= 1:  # reuse: the previous step does not matter
            err[:b, b, b + 1:] = err[t, b, b + 1:]
    return ErrorTable(err, points)


@dataclass
class Schedule:
    steps: list[int]  # the computed steps, ascending (step 0 first)
    error: float  # the DP's accumulated error of this schedule


def optimal_schedules(table: ErrorTable, max_budget: int | None = None) -> dict[int, Schedule]:
    """The optimal schedule for every budget n = 1..max_budget (default T): {n: Schedule}."""
    e = table.err
    t = table.steps
    nmax = min(max_budget or t, t)
    # cost[a, b, c] = sum_{b < i < c} e(i | b, a), c in 0..T (c = T: the run's end)
    zero = torch.zeros((t + 1, t, 1), dtype=torch.float64)
    fin = torch.where(torch.isfinite(e), e, torch.zeros_like(e))
    cost = torch.cat([zero, fin.cumsum(dim=2)], dim=2)  # sum_{i < c}; entries i <= b are 0
    idx = torch.arange(t + 1)
    valid = idx.view(1, 1, -1) > torch.arange(t).view(1, t, 1)  # c > b
    allowed = torch.ones((t + 1, t), dtype=torch.bool)
    for b in range(t):  # a < b or a = none
        allowed[b:t, b] = False
    cost = torch.where(valid & allowed.unsqueeze(2), cost.clamp(min=0.0), torch.full_like(cost, math.inf))
    best = torch.full((t + 1, t), math.inf, dtype=torch.float64)
    best[t, 0] = 0.0
    backs: list[torch.Tensor] = []
    layers = [best]
    out: dict[int, Schedule] = {}
    for n in range(1, nmax + 1):
        if n > 1:
            cand = best.unsqueeze(2) + cost[:, :, :t]  # (a, b, c)
            val, arg = cand.min(dim=0)  # (b, c)
            best = torch.full((t + 1, t), math.inf, dtype=torch.float64)
            best[:t, :] = val
            backs.append(arg)
            layers.append(best)
        total = best + cost[:, :, t]
        flat = int(torch.argmin(total))
        a, b = divmod(flat, t)
        if not math.isfinite(float(total[a, b])):
            break
        steps = [b]
        for k in range(n - 1, 0, -1):  # walk back: layer k+1's state (a, b) came from (back[a, b], a)
            prev = int(backs[k - 1][a, b])
            steps.append(a)
            a, b = prev, a
        out[n] = Schedule(sorted(set(steps)), float(total.view(-1)[flat]))
    return out


def schedule_error(steps: Sequence[int], features: torch.Tensor, weights: Weights, dsigma: Sequence[float],
                   points: int) -> float:
    """The accumulated error of a schedule with the forecaster's full history (``points`` newest computed)."""
    f = features.double()
    t = f.shape[0]
    norms = f.norm(dim=1)
    ds = torch.tensor(list(dsigma), dtype=torch.float64)
    z = float((ds * norms).sum()) or 1.0
    chosen = set(steps)
    hist: list[int] = []
    total = 0.0
    for i in range(t):
        if i in chosen or not hist:
            hist = ([i] + hist)[:max(points, 1)]
            continue
        w = weights(hist, i)
        pred = sum(wm * f[h] for wm, h in zip(w, hist))
        total += float(ds[i] * (pred - f[i]).norm() / z)
    return total


def brute_force(table: ErrorTable, budget: int) -> Schedule:
    """The best schedule of ``budget`` steps by trying every one (tests; small T only)."""
    from itertools import combinations

    t = table.steps
    best: Schedule | None = None
    for rest in combinations(range(1, t), budget - 1):
        steps = [0, *rest]
        err = 0.0
        a, b = t, 0
        for i in range(1, t):
            if i in rest:
                a, b = b, i
            else:
                err += float(table.err[a, b, i])
        if best is None or err < best.error - 1e-12:
            best = Schedule(steps, err)
    assert best is not None
    return best
