"""TaylorSeer: on a fixed schedule, skipped calls predict the cached blocks' outputs with a Taylor expansion of
the outputs of earlier computed calls instead of reusing the last one (arXiv 2503.06923; Shenyi-Z/TaylorSeer).

Schedule as diffusers ``TaylorSeerCacheConfig`` (the parity reference), per CFG stream with s its call index:
compute when ``s < warmup_steps``, or ``(s - warmup_steps - 1) % cache_interval == 0``, or within the last
``final_full_steps`` steps; otherwise forecast (cache_core/forecast.py) from the factors of the computed calls.
diffusers' defaults: interval 5, 3 warm-up steps, no final full steps, order 1, bfloat16 factors.

What is predicted ("predict"):

- "block outputs": the output of the last block of each segment, per stream (the runner passes the other
  blocks through). With every block cached this equals diffusers' TaylorSeer with whole blocks as
  ``cache_identifiers``; the factors (a :class:`~cache_core.forecast.TaylorForecaster` with target "output")
  take ``(max_order + 1)`` tensors of each segment's output size per stream.
- "attention+MLP outputs" (the TaylorSeer paper's default): every attention computation and feed-forward
  module inside every block is a site (cache_core/attention.py) with its own Taylor factors per stream; on a
  predicted call each site returns its forecast and the rest of the block (projections, modulation, norms,
  residual adds) still runs (:class:`TaylorSeerComponentPolicy`). The factors take ``(max_order + 1)`` tensors
  of every site's output per stream: usually tens of times the block-output mode. On the diffusers host the
  sites are the blocks' attention modules (``Segment.attention_modules``, what diffusers' default identifiers
  match); it hooks no feed-forward modules.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from ..component_runner import COMPONENT_KINDS, ComponentPolicy, SiteCall
from ..config import HIDDEN, Gate, check_int
from ..forecast import TaylorForecaster, TaylorSeries
from ..policy import Policy, Probe, RunInfo, StreamCall
from ..registry import MethodSpec, register
from ..text import shown

log = logging.getLogger("dit_cache")

BLOCK_OUTPUTS = "block outputs"
COMPONENT_OUTPUTS = "attention+MLP outputs"
PREDICT_TARGETS = (BLOCK_OUTPUTS, COMPONENT_OUTPUTS)
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
    predict: str = BLOCK_OUTPUTS
    factor_dtype: str = "bfloat16"
    num_inference_steps: int = field(default=0, metadata=HIDDEN)  # steps of a run when the host has no sigmas (0 = unknown)
    gate: Gate = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_int("cache_interval", self.cache_interval, 1)
        check_int("warmup_steps", self.warmup_steps, 1)  # the first call has nothing to predict from
        check_int("final_full_steps", self.final_full_steps, 0)
        check_int("max_order", self.max_order, 0, 2)
        check_int("num_inference_steps", self.num_inference_steps, 0)
        if self.predict not in PREDICT_TARGETS:
            raise ValueError(f"predict must be one of {PREDICT_TARGETS}, got {shown(self.predict)}")
        if self.factor_dtype not in FACTOR_DTYPES:
            raise ValueError(f"factor_dtype must be one of {tuple(FACTOR_DTYPES)}, got {shown(self.factor_dtype)}")
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


def computes(config: TaylorSeerConfig, step: int) -> bool:
    """The schedule without the final steps: warm-up, then one computed call in every ``cache_interval``."""
    return step < config.warmup_steps or (step - config.warmup_steps - 1) % config.cache_interval == 0


class TaylorSeerPolicy(Policy):
    name = "TaylorSeer"
    probe = Probe.NONE

    def __init__(self, config: TaylorSeerConfig) -> None:
        super().__init__(config)
        self.threshold = float(config.cache_interval)
        self.forecaster = TaylorForecaster(config.max_order, FACTOR_DTYPES[config.factor_dtype], target="output")

    def new_run_state(self, run: RunInfo) -> _SeerState:
        return _SeerState(run)

    def begin_stream_call(self, state: _SeerState, info: StreamCall) -> None:
        state.step = info.call_index
        state.final = is_final_step(state.run, info, self.config.final_full_steps, self.config.num_inference_steps)

    def metric(self, state: _SeerState, probe: torch.Tensor | None) -> float | None:
        """Calls since the last computed one (the Taylor offset of a forecast now)."""
        return None if state.last_computed is None else float(state.step - state.last_computed)

    def wants_skip(self, state: _SeerState, metric: float | None) -> bool:
        return not state.final and not computes(self.config, state.step)

    def commit(self, state: _SeerState, probe: torch.Tensor | None, computed: bool) -> None:
        if computed:
            state.last_computed = state.step


class TaylorSeerComponentPolicy(ComponentPolicy):
    """TaylorSeer on attention and feed-forward outputs ("attention+MLP outputs", see the module docstring).

    Each site (one attention computation or feed-forward module of one block, per CFG stream) holds a
    :class:`TaylorSeries`; the schedule is block mode's, by the stream's call index. The final full steps are
    the calls with ``call_index >= steps - final_full_steps``, ``steps`` being the run's step count from the
    host's sigmas (``SiteCall.steps``), else ``num_inference_steps``; with neither known no final step is forced
    (a warning says so once). Counting calls, this is exact for samplers that call the model once per step
    (euler, dpmpp_2m, ...); two-call samplers (heun, dpmpp_2s) get more computed calls at the end than asked.
    """

    name = "TaylorSeer"
    part = "component"

    def __init__(self, config: TaylorSeerConfig) -> None:
        if config.predict != COMPONENT_OUTPUTS:
            raise ValueError(f"TaylorSeerComponentPolicy predicts {COMPONENT_OUTPUTS!r}, not {config.predict!r}")
        self.config = config
        self.threshold = float(config.cache_interval)
        self.dtype = FACTOR_DTYPES[config.factor_dtype]
        self._warned_steps = False

    def kinds(self) -> frozenset[str]:
        return frozenset(COMPONENT_KINDS)

    def window_names(self) -> frozenset[str]:
        return frozenset()  # the schedule is by call index, not by sigma window

    def computes(self, call: SiteCall) -> bool:
        c = self.config
        if computes(c, call.call_index):
            return True
        if c.final_full_steps <= 0:
            return False
        steps = call.steps or c.num_inference_steps
        if not steps:
            if not self._warned_steps:
                self._warned_steps = True
                log.warning("[dit-cache] TaylorSeer: the run's step count is unknown, final_full_steps %d is "
                            "ignored (set num_inference_steps)", c.final_full_steps)
            return False
        return call.call_index >= steps - c.final_full_steps

    def new_site_state(self) -> TaylorSeries:
        return TaylorSeries(self.config.max_order, self.dtype)

    def reuse(self, state: TaylorSeries, call: SiteCall) -> bool:
        return state.step is not None and not self.computes(call)

    def cached(self, state: TaylorSeries, call: SiteCall) -> torch.Tensor:
        return state.predict(call.call_index)  # in the dtype of the computed outputs

    def store(self, state: TaylorSeries, output: torch.Tensor, computed: bool, call: SiteCall) -> None:
        if computed:
            state.update(output.detach(), call.call_index)


def taylorseer_policy(config: TaylorSeerConfig) -> TaylorSeerPolicy | TaylorSeerComponentPolicy:
    """The policy for ``config.predict``: block outputs (block runner) or attention+MLP outputs (sites)."""
    if config.predict == COMPONENT_OUTPUTS:
        return TaylorSeerComponentPolicy(config)
    return TaylorSeerPolicy(config)


register(MethodSpec(
    key="taylorseer", label="TaylorSeer", config=TaylorSeerConfig, policy=taylorseer_policy,
    nodes=("taylorseer_node:ApplyTaylorSeer",), exports=("TaylorSeerPolicy", "TaylorSeerComponentPolicy")))
