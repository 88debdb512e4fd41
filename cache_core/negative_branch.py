"""CFG-aware reuse of the negative (unconditional) branch for step-level forecasting methods (TaylorSeer's
``uncond_interval``).

FasterCache (arXiv 2410.19355) observed that with CFG the difference between the unconditional and the
conditional outputs changes slowly over the steps. Here, per run, the negative branch is computed on fewer
steps than the positive one: on every ``interval``-th step on which the positive branch computes (plus the
warm-up and the final full steps). On every other step the host leaves it out of the batch
(``hosts/comfy/uncond.py``, so a batched CFG call runs on half its rows) and it is rebuilt as ``cond + D(t)``,
with ``D = uncond - cond`` of the model outputs forecast by the method's forecaster from the steps that
computed both (the sigma clock for Adams–Bashforth / FoCa / Hermite, the CFG step index for Taylor). The
positive branch keeps its own schedule and forecasts: decisions are per stream. Memory: the forecaster's
tensors of one model output. (Measured: keeping the negative branch in the batch on the positive branch's
predicted steps, predicted from its own sparser history, was worse on the trained models.)
"""
from __future__ import annotations

from typing import Callable

import torch

from .forecast import Forecaster
from .policy import RunInfo, StreamCall


class NegativeBranchState:
    """One run's negative-branch bookkeeping: CFG steps seen, the forecaster state of ``uncond - cond``."""

    def __init__(self, forecaster: Forecaster) -> None:
        self.forecaster = forecaster
        self.state = forecaster.new_state()
        self.step = 0  # CFG steps (calls of the CALC_COND_BATCH level) so far
        self.positive_computes = 0  # positive-branch compute steps after the warm-up so far
        self.sigma: float | None = None
        self.skip = False
        self.ready = False
        self.rebuilt = 0

    def tensors(self) -> list[torch.Tensor]:
        series = self.state.series.get(0)
        return series.tensors() if series is not None else []


class NegativeBranch:
    """The rule: ``positive_computes(step, run, sigma)`` says whether the positive branch computes at a step;
    ``final(run, call)`` whether the step is one of the final full steps."""

    def __init__(self, interval: int, warmup_steps: int, forecaster: Forecaster,
                 positive_computes: Callable[[int], bool], final: Callable[[RunInfo, StreamCall], bool]) -> None:
        self.interval, self.warmup_steps = interval, warmup_steps
        self.forecaster = forecaster
        self.positive_computes, self.final = positive_computes, final

    def new_state(self) -> NegativeBranchState:
        return NegativeBranchState(self.forecaster)

    def begin(self, st: NegativeBranchState, sigma: float | None, run: RunInfo) -> None:
        st.sigma = sigma
        s = st.step
        if s < self.warmup_steps or not st.ready or self.final(run, StreamCall(s, sigma, "uncond")):
            st.skip = False
        elif self.positive_computes(s):
            st.skip = st.positive_computes % self.interval != 0
            st.positive_computes += 1
        else:
            st.skip = True

    def observe(self, st: NegativeBranchState, cond: torch.Tensor, uncond: torch.Tensor) -> None:
        f = self.forecaster
        f.observe(st.state, 0, (uncond - cond).detach(), f.coordinate(st.step, st.sigma))
        st.ready = True
        st.step += 1

    def rebuild(self, st: NegativeBranchState, cond: torch.Tensor) -> torch.Tensor:
        f = self.forecaster
        diff = f.predict(st.state, 0, f.coordinate(st.step, st.sigma), cond.dtype)
        st.step += 1
        st.rebuilt += 1
        return cond + diff
