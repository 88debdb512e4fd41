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

The forecaster (``forecaster``, cache_core/forecasters.py): "taylor" (the above, diffusers' parity), Adams–
Bashforth of order 1-3, FoCa's predictor–corrector or a scaled-Hermite expansion (order ``max_order``), the
last three on the sampler's sigmas. Memory per key and stream: Taylor max_order + 1 tensors, AB-k k + 1, FoCa
3, Hermite max_order + 1 (at least 2).

Checked predictions (``check_blocks`` > 0, after SpeCa, arXiv 2509.11628: forecast, then verify): the first
``check_blocks`` blocks always run; on a step the schedule would predict, their residual is compared with its own
forecast (the same forecaster, float32) and the step computes in full when the relative L1 error
``mean|pred - actual| / mean|actual|`` exceeds ``check_threshold``. The schedule then counts from the last
computed call: predict while fewer than ``cache_interval`` calls passed (the interval adapts per sample, at
most ``cache_interval``). The check costs ``check_blocks`` of the model's blocks on every predicted step.

CFG-aware (``uncond_interval`` >= 2, block outputs only): the negative branch is computed on one in
``uncond_interval`` of the positive branch's computed steps and rebuilt in between from the positive one and a
forecast of their difference (cache_core/negative_branch.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..component_runner import COMPONENT_KINDS, ComponentPolicy, SiteCall
from ..config import HIDDEN, Gate, check_int, check_range
from ..forecast import Forecaster, TaylorSeries
from ..forecasters import FORECASTERS, ForecastSite, make_forecaster
from .. import distributed
from ..policy import Policy, Probe, RunInfo, StreamCall
from ..registry import MethodSpec, TuneKnob, register
from ..text import shown
from ..negative_branch import NegativeBranch, NegativeBranchState

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
    the last output). factor_dtype: storage dtype of the factors. forecaster: one of ``FORECASTERS``.
    check_blocks / check_threshold: checked predictions (0 blocks = off). uncond_interval: the negative CFG
    branch computes on one in this many of the positive branch's computed steps (0 = as the positive one)."""

    cache_interval: int = 5
    warmup_steps: int = 3
    final_full_steps: int = 0
    max_order: int = 1
    predict: str = BLOCK_OUTPUTS
    factor_dtype: str = "bfloat16"
    forecaster: str = "taylor"
    check_blocks: int = 0
    check_threshold: float = 0.1
    uncond_interval: int = 0
    num_inference_steps: int = field(default=0, metadata=HIDDEN)  # steps of a run when the host has no sigmas (0 = unknown)
    gate: Gate = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_int("cache_interval", self.cache_interval, 1)
        check_int("warmup_steps", self.warmup_steps, 1)  # the first call has nothing to predict from
        check_int("final_full_steps", self.final_full_steps, 0)
        check_int("max_order", self.max_order, 0, 2)
        check_int("num_inference_steps", self.num_inference_steps, 0)
        check_int("check_blocks", self.check_blocks, 0, 16)
        check_range("check_threshold", self.check_threshold, 0.0, 10.0)
        check_int("uncond_interval", self.uncond_interval, 0, 100)
        if self.forecaster not in FORECASTERS:
            raise ValueError(f"forecaster must be one of {FORECASTERS}, got {shown(self.forecaster)}")
        if self.check_blocks and self.uncond_interval >= 2:
            # the negative branch follows the fixed schedule, the checked positive branch its own: together the
            # batch would compute whenever either does and the check's adaptivity would be lost
            raise ValueError("check_blocks and uncond_interval cannot be combined: use one of them")
        if self.predict == COMPONENT_OUTPUTS and (self.check_blocks or self.uncond_interval >= 2):
            raise ValueError(f"check_blocks and uncond_interval need predict {BLOCK_OUTPUTS!r}")
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
    def __init__(self, run: RunInfo, check: Forecaster | None = None) -> None:
        self.run = run
        self.step = 0
        self.sigma: float | None = None
        self.label = ""
        self.final = False
        self.last_computed: int | None = None
        self.check = check.new_state() if check is not None else None  # the check's forecast of the probe
        self.check_ready = False
        self.rejected = 0  # predictions the check turned down

    def tensors(self) -> list[torch.Tensor]:
        return [t for s in (self.check.series.values() if self.check is not None else ()) for t in s.tensors()]


def computes(config: TaylorSeerConfig, step: int) -> bool:
    """The schedule without the final steps: warm-up, then one computed call in every ``cache_interval``."""
    return step < config.warmup_steps or (step - config.warmup_steps - 1) % config.cache_interval == 0


class TaylorSeerPolicy(Policy):
    name = "TaylorSeer"
    probe = Probe.NONE

    def __init__(self, config: TaylorSeerConfig) -> None:
        super().__init__(config)
        self.threshold = float(config.cache_interval)
        dtype = FACTOR_DTYPES[config.factor_dtype]
        self.forecaster = make_forecaster(config.forecaster, config.max_order, dtype, target="output")
        self.check: Forecaster | None = None
        if config.check_blocks > 0:
            self.probe, self.probe_blocks = Probe.BLOCKS, config.check_blocks
            self.threshold = config.check_threshold
            self.check = make_forecaster(config.forecaster, config.max_order, torch.float32, target="residual")
            self.metric_width = 4  # the check's error as sums: one decision on every rank of a decision group
        self.uncond_reuse = config.uncond_interval >= 2
        self.negative = NegativeBranch(
            config.uncond_interval, config.warmup_steps,
            make_forecaster(config.forecaster, config.max_order, torch.float32),
            lambda s: computes(config, s),
            lambda run, call: is_final_step(run, call, config.final_full_steps, config.num_inference_steps),
        ) if self.uncond_reuse else None

    def new_run_state(self, run: RunInfo) -> _SeerState:
        return _SeerState(run, self.check)

    def begin_stream_call(self, state: _SeerState, info: StreamCall) -> None:
        state.step, state.sigma, state.label = info.call_index, info.sigma, info.label
        state.final = is_final_step(state.run, info, self.config.final_full_steps, self.config.num_inference_steps)

    def _scheduled_skip(self, state: _SeerState) -> bool:
        c = self.config
        if state.final or (self.uncond_reuse and state.label.startswith("uncond")):
            return False  # the negative branch is only in the batch on the steps it computes
        if self.check is None or state.last_computed is None:
            return not computes(c, state.step)
        # checked: at most cache_interval - 1 predicted calls after the last computed one
        return state.step >= c.warmup_steps and state.step - state.last_computed < c.cache_interval

    def metric(self, state: _SeerState, probe: torch.Tensor | None) -> float | None:
        """Without the check: calls since the last computed one (the Taylor offset of a forecast now). With it:
        the check's relative error on a step the schedule would predict (None on the others)."""
        if self.check is None or (self.uncond_reuse and state.label.startswith("uncond")):
            return None if state.last_computed is None else float(state.step - state.last_computed)
        pair = self._checked_pair(state, probe)
        if pair is None:
            return None
        pred, actual = pair
        return ((pred - actual).abs().mean() / actual.abs().mean().clamp_min(1e-12)).item()

    def _checked_pair(self, state: _SeerState, probe: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(prediction, actual) of the checked blocks on a step the schedule would predict, else None."""
        if self.check is None or (self.uncond_reuse and state.label.startswith("uncond")):
            return None
        if probe is None or not state.check_ready or not self._scheduled_skip(state):
            return None
        t = self.check.coordinate(state.step, state.sigma)
        pred = self.check.predict(state.check, 0, t, torch.float32)
        actual = probe.float()
        return (pred, actual) if pred.shape == actual.shape else None

    def metric_sums(self, state: _SeerState, probe: torch.Tensor | None) -> torch.Tensor | None:
        """The check's error as sums (a decision group reduces them: every rank accepts or rejects alike)."""
        pair = self._checked_pair(state, probe)
        return None if pair is None else distributed.relative_l1_sums(*pair)

    def metric_from_sums(self, state: _SeerState, sums: torch.Tensor | None) -> float | None:
        return None if sums is None else distributed.ratio(distributed.mean_at(sums, 0), distributed.mean_at(sums, 2))

    def wants_skip(self, state: _SeerState, metric: float | None) -> bool:
        if not self._scheduled_skip(state):
            return False
        if self.check is None or (self.uncond_reuse and state.label.startswith("uncond")):
            return True
        ok = metric is not None and metric <= self.config.check_threshold
        state.rejected += not ok
        return ok

    def commit(self, state: _SeerState, probe: torch.Tensor | None, computed: bool) -> None:
        if computed:
            state.last_computed = state.step
            if self.check is not None and probe is not None:
                self.check.observe(state.check, 0, probe.detach().float(), self.check.coordinate(state.step, state.sigma))
                state.check_ready = True

    def run_details(self, streams: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.check is not None:
            out["check_rejected"] = sum(getattr(s, "rejected", 0) for _, s in streams)
        return out

    # ---- the negative CFG branch (uncond_interval), driven by the runner's reuse_uncond
    def new_uncond_state(self) -> NegativeBranchState:
        return self.negative.new_state()

    def uncond_begin(self, state: NegativeBranchState, sigma: float | None, run: RunInfo = RunInfo()) -> None:
        self.negative.begin(state, sigma, run)

    def uncond_skips(self, state: NegativeBranchState, in_window: bool) -> bool:
        return state.skip

    def uncond_observe(self, state: NegativeBranchState, cond: torch.Tensor, uncond: torch.Tensor) -> None:
        self.negative.observe(state, cond, uncond)

    def uncond_rebuild(self, state: NegativeBranchState, cond: torch.Tensor,
                       windows: Callable[[str], bool]) -> torch.Tensor:
        return self.negative.rebuild(state, cond)


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
        self._taylor = config.forecaster == "taylor"  # TaylorSeries per site (diffusers' parity) or ForecastSite
        self._forecaster = make_forecaster(config.forecaster, config.max_order, self.dtype)
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

    def new_site_state(self) -> TaylorSeries | ForecastSite:
        return TaylorSeries(self.config.max_order, self.dtype) if self._taylor else ForecastSite(self._forecaster)

    def reuse(self, state: TaylorSeries | ForecastSite, call: SiteCall) -> bool:
        return state.step is not None and not self.computes(call)

    def cached(self, state: TaylorSeries | ForecastSite, call: SiteCall) -> torch.Tensor:
        if isinstance(state, ForecastSite):
            return state.predict(call.call_index, call.sigma)
        return state.predict(call.call_index)  # in the dtype of the computed outputs

    def store(self, state: TaylorSeries | ForecastSite, output: torch.Tensor, computed: bool, call: SiteCall) -> None:
        if computed:
            if isinstance(state, ForecastSite):
                state.update(output.detach(), call.call_index, call.sigma)
            else:
                state.update(output.detach(), call.call_index)


def taylorseer_policy(config: TaylorSeerConfig) -> TaylorSeerPolicy | TaylorSeerComponentPolicy:
    """The policy for ``config.predict``: block outputs (block runner) or attention+MLP outputs (sites)."""
    if config.predict == COMPONENT_OUTPUTS:
        return TaylorSeerComponentPolicy(config)
    return TaylorSeerPolicy(config)


register(MethodSpec(
    key="taylorseer", label="TaylorSeer", config=TaylorSeerConfig, policy=taylorseer_policy,
    nodes=("taylorseer_node:ApplyTaylorSeer",), exports=("TaylorSeerPolicy", "TaylorSeerComponentPolicy"),
    # the last two steps computed: at the default 0 trained Flux at CFG 3.5 fell to 23 dB min (bench/sweep_methods.py)
    tune=TuneKnob("cache_interval", 2, 10, integer=True, fixed=(("final_full_steps", 2),))))
