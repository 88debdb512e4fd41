"""TaylorSeer: on a fixed schedule, skipped calls predict the cached blocks' outputs with a Taylor expansion of
the outputs of earlier computed calls instead of reusing the last one (arXiv 2503.06923; Shenyi-Z/TaylorSeer).

Schedule as diffusers ``TaylorSeerCacheConfig`` (the parity reference), per CFG stream with s its call index:
compute when ``s < warmup_steps``, or ``(s - warmup_steps - 1) % cache_interval == 0``, or within the last
``final_full_steps`` steps; otherwise forecast (cache_core/forecast.py) from the factors of the computed calls.
diffusers' defaults: interval 5, 3 warm-up steps, no final full steps, order 1, bfloat16 factors.

What is predicted ("predict"): "block outputs" = the output of the last block of each segment, per stream
(the runner passes the other blocks through). With every block cached this equals diffusers' TaylorSeer with
whole blocks as ``cache_identifiers``; the factors take ``(max_order + 1)`` tensors of each segment's output
size per stream (see :meth:`TaylorSeerPolicy.factor_bytes`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .config import check_int
from .forecast import TaylorSeries
from .policy import Gate, Policy, RunInfo, StreamCall

PREDICT_TARGETS = ("block outputs",)  # room for "attention outputs" (component-level caching)
FACTOR_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16,
                                         "float32": torch.float32}


@dataclass(frozen=True)
class TaylorSeerConfig:
    """cache_interval: one computed call every this many (5 = compute 1, predict 4). warmup_steps: first calls
    that always compute (diffusers' disable_cache_before_step). final_full_steps: the last steps always compute
    (read from the run's sigmas; without them from ``num_inference_steps``). max_order: Taylor order (0 = reuse
    the last output). factor_dtype: storage dtype of the factors."""

    cache_interval: int = 5
    warmup_steps: int = 3
    final_full_steps: int = 0
    max_order: int = 1
    predict: str = "block outputs"
    factor_dtype: str = "bfloat16"
    num_inference_steps: int = 0  # steps of a run when the host has no sigmas (0 = unknown)
    gate: Gate = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_int("cache_interval", self.cache_interval, 1)
        check_int("warmup_steps", self.warmup_steps, 1)  # the first call has nothing to predict from
        check_int("final_full_steps", self.final_full_steps, 0)
        check_int("max_order", self.max_order, 0, 2)
        check_int("num_inference_steps", self.num_inference_steps, 0)
        if self.predict not in PREDICT_TARGETS:
            raise ValueError(f"predict must be one of {PREDICT_TARGETS}, got {self.predict!r}")
        if self.factor_dtype not in FACTOR_DTYPES:
            raise ValueError(f"factor_dtype must be one of {tuple(FACTOR_DTYPES)}, got {self.factor_dtype!r}")
        object.__setattr__(self, "gate", Gate(warmup_steps=self.warmup_steps))


def is_final_step(run: RunInfo, info: StreamCall, final_steps: int, fallback_steps: int) -> bool:
    """Whether a call lies in the last ``final_steps`` steps: by sigma on the run's schedule (any number of
    calls per step), else by call index against ``fallback_steps`` (0 = unknown: never)."""
    if final_steps <= 0:
        return False
    sig = run.sigmas
    if sig and len(sig) >= 2 and info.sigma is not None:
        steps = len(sig) - 1
        return info.sigma <= sig[max(steps - final_steps, 0)]
    return fallback_steps > 0 and info.call_index >= fallback_steps - final_steps


class _SeerState:
    def __init__(self, run: RunInfo) -> None:
        self.run = run
        self.step = 0
        self.final = False
        self.last_computed: int | None = None
        self.series: dict[tuple[int, str], TaylorSeries] = {}


class TaylorSeerPolicy(Policy):
    name = "TaylorSeer"
    probe_blocks = 0
    tail_blocks = 0
    forecasts = "output"

    def __init__(self, config: TaylorSeerConfig) -> None:
        self.config = config
        self.threshold = float(config.cache_interval)
        self.gate = config.gate
        self.dtype = FACTOR_DTYPES[config.factor_dtype]

    def new_run_state(self, run: RunInfo) -> _SeerState:
        return _SeerState(run)

    def begin_stream_call(self, state: _SeerState, info: StreamCall) -> None:
        state.step = info.call_index
        state.final = is_final_step(state.run, info, self.config.final_full_steps, self.config.num_inference_steps)

    def metric(self, state: _SeerState, probe: torch.Tensor | None) -> float | None:
        """Calls since the last computed one (the Taylor offset of a forecast now)."""
        return None if state.last_computed is None else float(state.step - state.last_computed)

    def wants_skip(self, state: _SeerState, metric: float | None) -> bool:
        c = self.config
        return not state.final and (state.step - c.warmup_steps - 1) % c.cache_interval != 0

    def observe_segments(self, state: _SeerState, values: dict[tuple[int, str], torch.Tensor]) -> None:
        for key, value in values.items():
            series = state.series.get(key)
            if series is None:
                series = state.series[key] = TaylorSeries(self.config.max_order, self.dtype)
            series.update(value.detach(), state.step)

    def forecast(self, state: _SeerState, key: tuple[int, str], seg_input: torch.Tensor) -> torch.Tensor:
        return state.series[key].predict(state.step, seg_input.dtype)

    def commit(self, state: _SeerState, probe: torch.Tensor | None, computed: bool) -> None:
        if computed:
            state.last_computed = state.step

    @staticmethod
    def factor_bytes(state: _SeerState) -> int:
        """Bytes of one stream's Taylor factors."""
        return sum(s.nbytes() for s in state.series.values())

    def settings(self) -> dict[str, Any]:
        c = self.config
        return {"cache_interval": c.cache_interval, "warmup_steps": c.warmup_steps,
                "final_full_steps": c.final_full_steps, "max_order": c.max_order, "predict": c.predict,
                "factor_dtype": c.factor_dtype}
