"""Forecasters on the sampler's own clock: Adams–Bashforth, FoCa's predictor–corrector and a scaled-Hermite
predictor (the forecaster slot of ``forecast.py``; TaylorSeer's Taylor forecaster stays there).

Each keeps, per key and CFG stream, the last few computed values ``F_i`` with their times ``t_i`` and predicts
a linear combination ``sum_i w_i F_i`` whose weights come from the times alone (computed in float64 on
scalars, so the tensors are touched once per prediction). The time is the call's sigma when the host knows it,
else the stream's call index (:meth:`SigmaClockForecaster.coordinate`): so the coefficients follow the actual,
non-uniform steps of the schedule (Flux's shifted schedule, Wan's), not a uniform grid in calls.

- **Adams–Bashforth, order k** (AB-Cache, arXiv 2504.10540: the k-step AB update ``F(t) = F_n + int_{t_n}^t
  q(s) ds``). Here ``q`` is the degree-(k-1) polynomial through the slopes of the last k+1 computed values,
  i.e. the derivative of their interpolating polynomial, so the update is that polynomial's value at ``t``
  (Lagrange weights on the actual sigmas): exact on polynomials of degree k on any grid; AB-Cache's
  uniform-step coefficients (order 2: ``2 F_n - F_{n-1}``) are the special case of equal steps.
  Memory per key and stream: k + 1 tensors.
- **FoCa** (Forecast then Calibrate, arXiv 2508.16211; cache-dit's FoCa calibrator): the feature trajectory as
  an ODE. Forecast: the BDF2 slope at ``t_n`` (the derivative of the quadratic through the last three values,
  non-uniform BDF2) and the explicit step ``F_p = F_n + h f_n + h^2 D_2`` (``D_2`` the second divided
  difference). Calibrate: one Heun (trapezoidal) step ``F = F_n + h/2 (f_n + f_p)`` with the slope at the
  target taken from the forecast itself, ``f_p = (F_p - F_n) / h``; so ``F = F_n + h f_n + h^2 D_2 / 2``:
  exact on linear trajectories on any grid, with half the quadratic's curvature term (the calibration damps the
  forecast where a full second-order extrapolation overshoots over long intervals). Memory: 3 tensors.
- **Hermite** (HiCache, arXiv 2508.16984): the Taylor monomials ``x^k / k!`` replaced by scaled physicists'
  Hermite polynomials ``s^k H_k(s x) / k!`` (HiCache's dual scaling, ``s`` = ``hermite_scale``, 0.5 in its
  code), applied to the derivatives of the polynomial through the last K+1 values (exact derivatives on any
  grid, in units of the last computed interval: ``x = (t - t_n) / (t_n - t_{n-1})``). With ``s = 1/sqrt(2)``
  the order-1 term is Taylor's; with a smaller ``s`` the extrapolation is damped. Exact closed form:
  ``sum_k p^(k)(t_n) D^k s^k H_k(s x) / k!`` for a polynomial ``p`` of degree <= K. Memory: K + 1 tensors.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Hashable, Sequence

import torch

from .forecast import TARGETS, Forecaster, SeriesByKey

FORECASTERS = ("taylor", "adams-bashforth 1", "adams-bashforth 2", "adams-bashforth 3", "foca", "hermite")


def lagrange_weights(ts: Sequence[float], t: float) -> list[float]:
    """Weights w_i with ``p(t) = sum_i w_i p(t_i)`` for every polynomial of degree < len(ts) (distinct ts)."""
    out = []
    for i, ti in enumerate(ts):
        w = 1.0
        for j, tj in enumerate(ts):
            if j != i:
                w *= (t - tj) / (ti - tj)
        out.append(w)
    return out


def taylor_coefficients(ts: Sequence[float], ys: Sequence[float]) -> list[float]:
    """Coefficients c_k of the interpolating polynomial of (ts, ys) in powers of ``u = t - ts[0]``
    (so ``c_k k!`` is its k-th derivative at ``ts[0]``), from Newton's divided differences."""
    n = len(ts)
    table = list(ys)
    diffs = [table[0]]
    for level in range(1, n):
        table = [(table[i] - table[i + 1]) / (ts[i] - ts[i + level]) for i in range(n - level)]
        diffs.append(table[0])
    coeffs = [0.0] * n  # Newton form sum_k diffs[k] prod_{j<k} (u - u_j), expanded in powers of u
    basis = [1.0]  # prod_{j<k} (u - u_j) in powers of u
    for k in range(n):
        for p, b in enumerate(basis):
            coeffs[p] += diffs[k] * b
        uk = ts[k] - ts[0]
        basis = [(basis[p - 1] if p > 0 else 0.0) - uk * (basis[p] if p < len(basis) else 0.0)
                 for p in range(len(basis) + 1)]
    return coeffs


def hermite(n: int, x: float) -> float:
    """Physicists' Hermite polynomial H_n(x): H_0 = 1, H_1 = 2x, H_{k+1} = 2x H_k - 2k H_{k-1}."""
    prev, cur = 1.0, 2.0 * x
    if n == 0:
        return prev
    for k in range(1, n):
        prev, cur = cur, 2.0 * x * cur - 2.0 * k * prev
    return cur


class History:
    """The last ``size`` computed values of one key, newest first, with their times."""

    def __init__(self, size: int, dtype: torch.dtype | None) -> None:
        self.values: deque[torch.Tensor] = deque(maxlen=size)
        self.times: deque[float] = deque(maxlen=size)
        self.dtype = dtype
        self.out_dtype: torch.dtype | None = None

    def add(self, value: torch.Tensor, t: float) -> None:
        if self.values and self.values[0].shape != value.shape:
            self.values.clear()  # a new shape starts afresh
            self.times.clear()
        elif self.values and math.isclose(self.times[0], t, abs_tol=1e-12):
            self.values.popleft()  # a repeated time replaces its value, the older ones stay
            self.times.popleft()
        self.values.appendleft(value.to(self.dtype) if self.dtype is not None else value)
        self.times.appendleft(float(t))
        self.out_dtype = value.dtype

    def combine(self, weights: Sequence[float], dtype: torch.dtype | None) -> torch.Tensor:
        dtype = dtype or self.out_dtype
        out = torch.zeros_like(self.values[0], dtype=dtype)
        for w, v in zip(weights, self.values):
            if w != 0.0:
                out = out + v.to(dtype) * w
        return out

    def tensors(self) -> list[torch.Tensor]:
        return list(self.values)


class SigmaClockForecaster(Forecaster):
    """A forecaster predicting ``sum_i w_i F_i`` over the last ``points`` computed values, the weights from their
    times (:meth:`weights`); times are sigmas where known, else call indices."""

    points = 1

    def __init__(self, dtype: torch.dtype | None = None, target: str = "residual") -> None:
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        self.dtype, self.target = dtype, target

    def coordinate(self, step: int, sigma: float | None) -> float:
        return float(sigma) if sigma is not None else float(step)

    def new_state(self) -> SeriesByKey:
        return SeriesByKey()

    def observe(self, state: SeriesByKey, key: Hashable, value: torch.Tensor, step: float) -> None:
        hist = state.series.get(key)
        if hist is None:
            hist = state.series[key] = History(self.points, self.dtype)
        hist.add(value.detach(), step)

    def predict(self, state: SeriesByKey, key: Hashable, step: float, dtype: torch.dtype) -> torch.Tensor:
        hist = state.series[key]
        return hist.combine(self.weights(list(hist.times), float(step)), dtype)

    def weights(self, ts: list[float], t: float) -> list[float]:
        """Weights of the stored values (newest first, times ``ts``) for the prediction at ``t``."""
        raise NotImplementedError


class AdamsBashforthForecaster(SigmaClockForecaster):
    """Adams–Bashforth of order k (1-3) on the actual steps (see the module docstring)."""

    def __init__(self, order: int, dtype: torch.dtype | None = None, target: str = "residual") -> None:
        if not 1 <= order <= 3:
            raise ValueError(f"Adams-Bashforth order must be 1-3, got {order}")
        super().__init__(dtype, target)
        self.order, self.points = order, order + 1

    def weights(self, ts: list[float], t: float) -> list[float]:
        return lagrange_weights(ts, t)


class FoCaForecaster(SigmaClockForecaster):
    """FoCa's forecast (BDF2 slope) then calibrate (Heun step) (see the module docstring)."""

    points = 3

    def weights(self, ts: list[float], t: float) -> list[float]:
        n = len(ts)
        h = t - ts[0]
        out = []
        for i in range(n):  # the formula is linear in the values: apply it to each unit vector
            c = taylor_coefficients(ts, [1.0 if j == i else 0.0 for j in range(n)])
            f_n = c[1] if n > 1 else 0.0  # BDF2 slope at t_n (quadratic's derivative; secant with 2 values)
            d2 = c[2] if n > 2 else 0.0  # second divided difference
            forecast = c[0] + h * f_n + h * h * d2
            slope_p = (forecast - c[0]) / h if h != 0 else f_n
            out.append(c[0] + 0.5 * h * (f_n + slope_p))  # Heun
        return out


class HermiteForecaster(SigmaClockForecaster):
    """HiCache's scaled-Hermite expansion of order K (1-3) (see the module docstring)."""

    def __init__(self, order: int = 2, scale: float = 0.5, dtype: torch.dtype | None = None,
                 target: str = "residual") -> None:
        if not 1 <= order <= 3:
            raise ValueError(f"Hermite order must be 1-3, got {order}")
        if not 0.0 < scale <= 2.0:
            raise ValueError(f"Hermite scale must be in (0, 2], got {scale}")
        super().__init__(dtype, target)
        self.order, self.scale, self.points = order, scale, order + 1

    def weights(self, ts: list[float], t: float) -> list[float]:
        n = len(ts)
        if n == 1:
            return [1.0]
        unit = ts[0] - ts[1]  # the last computed interval: Hermite's argument is in these units
        x = (t - ts[0]) / unit
        s = self.scale
        basis = [s ** k * hermite(k, s * x) / math.factorial(k) for k in range(n)]
        out = []
        for i in range(n):
            c = taylor_coefficients(ts, [1.0 if j == i else 0.0 for j in range(n)])
            # c_k u^k with u = unit * x: the k-th derivative times unit^k over k! is c_k unit^k
            out.append(c[0] + sum(c[k] * unit ** k * math.factorial(k) * basis[k] for k in range(1, n)))
        return out


class ForecastSite:
    """One tensor sequence forecast by any forecaster (an attention / feed-forward site of TaylorSeer's
    "attention+MLP outputs" mode): ``update`` on computed calls, ``predict`` on the others."""

    def __init__(self, forecaster: Forecaster) -> None:
        self.forecaster = forecaster
        self.state = forecaster.new_state()
        self.step: int | None = None  # call index of the last observation

    def update(self, value: torch.Tensor, step: int, sigma: float | None = None) -> None:
        self.forecaster.observe(self.state, 0, value, self.forecaster.coordinate(step, sigma))
        self.step = step

    def predict(self, step: int, sigma: float | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self.forecaster.predict(self.state, 0, self.forecaster.coordinate(step, sigma), dtype)

    def tensors(self) -> list[torch.Tensor]:
        series = self.state.series.get(0)
        return series.tensors() if series is not None else []


def make_forecaster(name: str, order: int, dtype: torch.dtype | None = None, target: str = "residual",
                    hermite_scale: float = 0.5) -> Forecaster:
    """The forecaster ``name`` (one of :data:`FORECASTERS`); ``order`` is Taylor's / Hermite's order (AB's is in
    its name, FoCa's is fixed)."""
    from .forecast import TaylorForecaster

    if name == "taylor":
        return TaylorForecaster(order, dtype, target=target)
    if name.startswith("adams-bashforth "):
        return AdamsBashforthForecaster(int(name.rsplit(" ", 1)[1]), dtype, target)
    if name == "foca":
        return FoCaForecaster(dtype, target)
    if name == "hermite":
        return HermiteForecaster(max(order, 1), hermite_scale, dtype, target)
    raise ValueError(f"forecaster must be one of {FORECASTERS}, got {name!r}")


def memory_tensors(name: str, order: int) -> int:
    """Tensors kept per key and CFG stream by the forecaster ``name`` at ``order``."""
    if name == "taylor":
        return order + 1
    if name.startswith("adams-bashforth "):
        return int(name.rsplit(" ", 1)[1]) + 1
    if name == "foca":
        return 3
    return max(order, 1) + 1
