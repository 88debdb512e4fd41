"""Taylor-series forecasting of a tensor observed at integer steps (TaylorSeer, arXiv 2503.06923).

After an observation ``y`` at step ``s`` the factors are ``F_0 = y`` and ``F_{j+1} = (F_j - F_j^prev) / d``
with ``d = s - s_prev`` (divided differences up to ``max_order``; an order is dropped while there is no
earlier factor of the same shape). The prediction at step ``t`` is ``sum_k F_k (t - s)^k / k!``.
As diffusers' ``hooks/taylorseer_cache.py`` (the parity reference): differences are taken in the observed
tensor's dtype against the stored factors converted to it, the factors are then stored in ``dtype`` (None =
as observed), and predictions are summed in the requested dtype.
"""
from __future__ import annotations

import math

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
