"""What every step-level caching method shares: the policy interface, the probe a policy decides on, and what
a host knows about a run. The gate (warm-up, consecutive-skip limit, window) is in ``config.py``."""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch

from . import distributed
from .config import CacheWindow, Gate, GatedConfig, config_settings  # noqa: F401 - Gate, GatedConfig: part of this interface
from .forecast import Forecaster


@dataclass(frozen=True)
class RunInfo:
    """What the host knows about a sampling run: its sigma schedule (steps + 1 values, the last one the
    end), or None (e.g. diffusers pipelines driven without sigmas)."""

    sigmas: tuple[float, ...] | None = None

    @property
    def steps(self) -> int | None:
        return len(self.sigmas) - 1 if self.sigmas else None


def schedule_step(run: RunInfo, sigma: float | None) -> float | None:
    """The step of a call on the run's schedule, from its sigma: ``k + f`` for a sigma between the start sigmas of
    steps k and k + 1 (fractional for samplers calling the model more than once per step), within
    [0, steps - 1]. None without a sigma or without a schedule of at least 2 steps."""
    sig = run.sigmas
    if not sig or sigma is None or len(sig) < 3:
        return None
    steps = len(sig) - 1
    # sigmas decrease; find k with sig[k] >= sigma >= sig[k+1] over the steps' start sigmas sig[0..steps-1]
    k = bisect.bisect_right([-x for x in sig[:steps]], -sigma) - 1
    if k < 0:
        return 0.0
    if k >= steps - 1:
        return float(steps - 1)
    a, b = sig[k], sig[k + 1]
    f = 0.0 if a == b else (a - sigma) / (a - b)
    return k + min(max(f, 0.0), 1.0)


@dataclass(frozen=True)
class StreamCall:
    """One CFG stream's part in a model call: how many calls of this stream came before, the sigma and the
    stream's label ("cond", "uncond", ...)."""

    call_index: int
    sigma: float | None
    label: str = ""
    frames: int | None = None  # latent frames of the call's input (video models; 1 = an image), None if unknown


class Probe(str, Enum):
    """What a step-level policy decides on, i.e. what the block runner hands :meth:`Policy.metric` and
    :meth:`Policy.commit` as the probe tensor, per CFG stream.

    NONE: nothing (schedules, calibrated curves). BLOCKS: the hidden residual of the first ``probe_blocks``
    blocks, which always run (FBC, DBCache). SIGNAL: a per-call signal the host computes at the first block
    (TeaCache's modulated input, ``methods/teacache_signals.py``). STACK: nothing to decide on, but the whole
    stack's hidden residual (last block output minus first block input) of each computed call goes to
    :meth:`Policy.observe_stack_residual` (calibration). INPUT_AND_STACK: the first block's hidden input as the
    probe, and the whole-stack residual as with STACK (the adaptive cache). LATENT: the model call's input latent
    (the noisy sample the host's model receives, ``CallInfo.latent``), before any block runs (SeaCache).
    """

    NONE = "none"
    BLOCKS = "blocks"
    SIGNAL = "signal"
    STACK = "stack"
    INPUT_AND_STACK = "input_and_stack"
    LATENT = "latent"


class Policy:
    """A step-level method's decision rule, run by :class:`~cache_core.block_runner.BlockCacheRunner`.

    The runner runs the first ``probe_blocks`` blocks, then asks :meth:`metric` and :meth:`wants_skip` for
    every CFG stream of the call, and either runs the remaining blocks (except the last ``tail_blocks``,
    which always run) or fills them from the cache: the cached residuals, or with a ``forecaster`` its
    prediction. :meth:`commit` is told what really happened.
    """

    runner = "block"  # the runner kind this policy needs (cache_core/streams.py make_runner)
    name: str = "policy"
    probe: Probe = Probe.NONE
    probe_blocks: int = 0  # blocks that always run first (probe BLOCKS decides on their residual)
    tail_blocks: int = 0  # blocks that always run last
    threshold: float = 0.0
    gate: Gate = Gate()
    # predicts what the cached blocks produce instead of reusing it (cache_core/forecast.py); None = plain reuse
    forecaster: Forecaster | None = None
    config: Any = None
    observed = False  # True: the runner hands one block's residual to observe_block_residual (see there)

    def __init__(self, config: Any = None) -> None:
        """A policy for ``config``: its ``threshold`` (what the run records show beside each metric) and ``gate``
        are taken from it where it has them."""
        self.config = config
        self.threshold = getattr(config, "threshold", self.threshold)
        self.gate = getattr(config, "gate", self.gate)

    def new_state(self) -> Any:
        return None

    def metric(self, state: Any, probe_residual: torch.Tensor | None) -> float | None:
        return None

    def wants_skip(self, state: Any, metric: float | None) -> bool:
        return False

    def commit(self, state: Any, probe_residual: torch.Tensor | None, computed: bool) -> None:
        pass

    # Several ranks (cache_core/distributed.py): with a decision group the runner asks a policy whose metric reads
    # data (``metric_width`` > 0) for its metric's local sums instead of :meth:`metric`, reduces them over the
    # group and hands the sums back; likewise for what it observes on computed calls (``observe_width``).
    metric_width = 0  # values metric_sums returns
    observe_width = 0  # values observe_sums returns

    def metric_sums(self, state: Any, probe_residual: torch.Tensor | None) -> torch.Tensor | None:
        """The local sums (and element counts) the metric is made of, ``metric_width`` float64 values; None where
        there is nothing to compare (the metric is None)."""
        return None

    def metric_from_sums(self, state: Any, sums: torch.Tensor | None) -> float | None:
        """The metric from the group's sums (None where some rank had nothing to compare); same side effects on
        ``state`` as :meth:`metric`."""
        return None

    def observe_sums(self, state: Any, residual: torch.Tensor) -> torch.Tensor | None:
        """What :meth:`observe_stack_residual` / :meth:`observe_block_residual` measure, as ``observe_width`` local
        sums; None where it measures nothing this call."""
        return None

    def observe_from_sums(self, state: Any, residual: torch.Tensor, sums: torch.Tensor | None) -> None:
        """The observation, from the group's sums (None where some rank measured nothing)."""

    def settings(self) -> dict[str, Any]:
        """What a run record shows: the config's fields (:func:`~cache_core.config.config_settings`)."""
        return config_settings(self.config) if self.config is not None else {}

    def window_names(self) -> frozenset[str]:
        """The schedule windows a host resolves against its schedule: the gate's (named "gate")."""
        return frozenset({"gate"})

    def window(self, name: str) -> CacheWindow:
        return self.gate.window

    def new_run_state(self, run: "RunInfo") -> Any:
        """State of one CFG stream for a run; ``run`` says what the host knows about the run's schedule."""
        return self.new_state()

    def begin_stream_call(self, state: Any, info: "StreamCall") -> None:
        """Called for every stream of a call before :meth:`metric`."""

    def observe_stack_residual(self, state: Any, residual: torch.Tensor) -> None:
        """The stream's whole-stack hidden residual of a computed call (probes STACK and INPUT_AND_STACK)."""

    def observed_block(self, total_blocks: int) -> int:
        """With ``observed`` True: the flat index (0 .. ``total_blocks`` - 1) of the block whose residual
        :meth:`observe_block_residual` gets."""
        return total_blocks // 2

    def observe_block_residual(self, state: Any, residual: torch.Tensor) -> None:
        """With ``observed`` True: the stream's hidden residual (output minus input; the first block's tokens
        where the host joined others to them) of block :meth:`observed_block`, on every computed call (AdaCache)."""

    def check_run(self, run: RunInfo) -> None:
        """Before a run samples: raise ValueError if this run cannot work (e.g. too few steps to calibrate)."""

    def finish_run(self, streams: list[tuple[str, Any]], completed: bool) -> None:
        """End of a run: every stream's (label, state), in first-seen order."""

    def run_details(self, streams: list[tuple[str, Any]]) -> dict[str, Any]:
        """End of a run: the method's own figures for the run record (``RunStats.details``), from every stream's
        (label, state); JSON-ready values."""
        return {}

    @staticmethod
    def state_bytes(state: Any) -> int:
        """Bytes of the tensors a stream state holds: its attributes, and tensors inside dicts, lists, tuples
        and objects with a ``tensors()`` method among them (e.g. forecasting factors)."""
        def size(v: Any, depth: int) -> int:
            if isinstance(v, torch.Tensor):
                return v.numel() * v.element_size()
            if depth > 3:
                return 0
            if isinstance(v, dict):
                return sum(size(x, depth + 1) for x in v.values())
            if isinstance(v, (list, tuple)):
                return sum(size(x, depth + 1) for x in v)
            if callable(getattr(v, "tensors", None)):
                return sum(size(x, depth + 1) for x in v.tensors())
            return 0

        if state is None or not hasattr(state, "__dict__"):
            return 0
        return sum(size(v, 0) for v in vars(state).values())


class _RefState:
    def __init__(self) -> None:
        self.ref: torch.Tensor | None = None  # the probe of the stream's last computed call


class ResidualChangePolicy(Policy):
    """Decides on ``mean|probe - ref| / mean|ref|``, the relative L1 change of the probe since the stream's last
    computed call (First Block Cache, DBCache); each method keeps its own comparison with the threshold."""

    metric_width = 4

    def new_state(self) -> _RefState:
        return _RefState()

    @staticmethod
    def comparable(state: _RefState, probe: torch.Tensor | None) -> bool:
        return state.ref is not None and probe is not None and state.ref.shape == probe.shape

    def metric(self, state: _RefState, probe_residual: torch.Tensor | None) -> float | None:
        if not self.comparable(state, probe_residual):
            return None
        return ((probe_residual - state.ref).abs().mean() / state.ref.abs().mean()).item()

    def metric_sums(self, state: _RefState, probe_residual: torch.Tensor | None) -> torch.Tensor | None:
        return distributed.relative_l1_sums(probe_residual, state.ref) if self.comparable(state, probe_residual) else None

    def metric_from_sums(self, state: _RefState, sums: torch.Tensor | None) -> float | None:
        return None if sums is None else distributed.ratio(distributed.mean_at(sums, 0), distributed.mean_at(sums, 2))

    def commit(self, state: _RefState, probe_residual: torch.Tensor | None, computed: bool) -> None:
        if computed:
            state.ref = probe_residual
