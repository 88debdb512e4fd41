"""Forecasting skipped values: the forecaster slot every method shares, and Taylor series (TaylorSeer).

A :class:`Forecaster` is a small plug-in (as cache-dit's calibrators): per CFG stream it keeps a state, is shown
the values of every computed call (:meth:`Forecaster.observe`) and predicts them for a skipped call
(:meth:`Forecaster.predict`). The block runner asks a policy's ``forecaster`` for each segment's cached range:
its residual (``target = "residual"``, DBCache's TaylorSeer calibrator) or its last block's output
(``target = "output"``, TaylorSeer). Steps are the stream's call indices, or what the forecaster's
:meth:`Forecaster.coordinate` makes of them and the call's sigma (the sigma-clock forecasters of
``forecasters.py``: Adams–Bashforth, FoCa, Hermite).

Taylor-series forecasting of a tensor observed at integer steps (TaylorSeer, arXiv 2503.06923):

After an observation ``y`` at step ``s`` the factors are ``F_0 = y`` and ``F_{j+1} = (F_j - F_j^prev) / d``
with ``d = s - s_prev`` (divided differences up to ``max_order``; an order is dropped while there is no
earlier factor of the same shape). The prediction at step ``t`` is ``sum_k F_k (t - s)^k / k!``.
As diffusers' ``hooks/taylorseer_cache.py`` (the parity reference): differences are taken in the observed
tensor's dtype against the stored factors converted to it, the factors are then stored in ``dtype`` (None =
as observed), and predictions are summed in the requested dtype.
"""
from __future__ import annotations

import math
from typing import Any, Hashable

import torch


class TaylorSeries:
    """Taylor factors of one tensor sequence (one block output or residual of one CFG stream)."""

    def __init__(self, max_order: int, dtype: torch.dtype | None = None) -> None:
        if max_order < 0:
            raise ValueError(f"max_order must be >= 0, got {max_order}")
        self.max_order = max_order
        self.dtype = dtype
        self.factors: list[torch.Tensor] = []
        self.step: int | None = None  # step of the last observation
        self.out_dtype: torch.dtype | None = None

    def update(self, value: torch.Tensor, step: int) -> None:
        new = [value]
        if self.step is not None:
            delta = step - self.step
            if delta <= 0:
                raise ValueError(f"TaylorSeries: step {step} is not after the last observed step {self.step}")
            for j in range(self.max_order):
                if j >= len(self.factors) or self.factors[j].shape != new[j].shape:
                    break
                new.append((new[j] - self.factors[j].to(value.dtype)) / delta)
        self.factors = [f.to(self.dtype) if self.dtype is not None else f for f in new]
        self.step = step
        self.out_dtype = value.dtype

    def predict(self, step: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        if self.step is None:
            raise ValueError("TaylorSeries: nothing observed yet")
        dtype = dtype or self.out_dtype
        offset = step - self.step
        out = torch.zeros_like(self.factors[0], dtype=dtype)
        for k, f in enumerate(self.factors):
            out = out + f.to(dtype) * ((offset ** k) / math.factorial(k))
        return out

    @property
    def order(self) -> int:
        """The order the next prediction uses (fewer factors than max_order right after the first steps)."""
        return len(self.factors) - 1

    def tensors(self) -> list[torch.Tensor]:
        return list(self.factors)

    def nbytes(self) -> int:
        return sum(f.numel() * f.element_size() for f in self.factors)


TARGETS = ("residual", "output")


class Forecaster:
    """Predicts a value observed on computed calls at a later step (the slot forecasting methods fill)."""

    target: str = "residual"  # what the block runner observes and asks for: "residual" or "output"

    def coordinate(self, step: int, sigma: float | None) -> float:
        """The time a stream's call is observed / predicted at: its call index (Taylor), or e.g. its sigma
        (cache_core/forecasters.py)."""
        return step

    def new_state(self) -> Any:
        """One CFG stream's state (a fresh one after the stream's inputs change shape)."""
        return None

    def observe(self, state: Any, key: Hashable, value: torch.Tensor, step: int) -> None:
        """A computed call's value of ``key`` (segment, stream name) at ``step``."""
        raise NotImplementedError

    def predict(self, state: Any, key: Hashable, step: int, dtype: torch.dtype) -> torch.Tensor:
        """The value of ``key`` at ``step``, in ``dtype``."""
        raise NotImplementedError


class SeriesByKey:
    """A forecaster's per-stream state: one series per key (``series``)."""

    def __init__(self) -> None:
        self.series: dict[Hashable, Any] = {}


class TaylorForecaster(Forecaster):
    """Taylor expansion of each key's values up to ``max_order`` (:class:`TaylorSeries`); factors stored in
    ``dtype`` (None = as observed). Memory per stream: ``max_order + 1`` tensors of each key's size."""

    def __init__(self, max_order: int, dtype: torch.dtype | None = None, target: str = "residual") -> None:
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        TaylorSeries(max_order)  # validates the order
        self.max_order, self.dtype, self.target = max_order, dtype, target

    def new_state(self) -> SeriesByKey:
        return SeriesByKey()

    def observe(self, state: SeriesByKey, key: Hashable, value: torch.Tensor, step: int) -> None:
        series = state.series.get(key)
        if series is None:
            series = state.series[key] = TaylorSeries(self.max_order, self.dtype)
        series.update(value.detach(), step)

    def predict(self, state: SeriesByKey, key: Hashable, step: int, dtype: torch.dtype) -> torch.Tensor:
        return state.series[key].predict(step, dtype)
