"""What every caching method shares: the gating before a method's own rule, and the policy interface."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .config import CacheWindow, check_int


@dataclass(frozen=True)
class RunInfo:
    """What the host knows about a sampling run: its sigma schedule (steps + 1 values, the last one the
    end), or None (e.g. diffusers pipelines driven without sigmas)."""

    sigmas: tuple[float, ...] | None = None

    @property
    def steps(self) -> int | None:
        return len(self.sigmas) - 1 if self.sigmas else None


@dataclass(frozen=True)
class StreamCall:
    """One CFG stream's part in a model call: how many calls of this stream came before, the sigma and the
    stream's label ("cond", "uncond", ...)."""

    call_index: int
    sigma: float | None
    label: str = ""


@dataclass(frozen=True)
class Gate:
    """Settings that decide when a method may skip at all.

    warmup_steps: the first calls of each CFG stream always compute. max_consecutive_skips: after that many
    skips in a row the next call computes (-1 = no limit). window: the part of the schedule where skipping
    is allowed.
    """

    warmup_steps: int = 0
    max_consecutive_skips: int = -1
    window: CacheWindow = CacheWindow()

    def __post_init__(self) -> None:
        check_int("warmup_steps", self.warmup_steps, 0)
        check_int("max_consecutive_skips", self.max_consecutive_skips, -1)


class Policy:
    """A caching method's decision rule, plugged into :class:`~cache_core.runner.BlockCacheRunner`.

    The runner runs the first ``probe_blocks`` blocks, then asks :meth:`metric` and :meth:`wants_skip` for
    every CFG stream of the call, and either runs the remaining blocks (except the last ``tail_blocks``,
    which always run) or applies the cached residuals. :meth:`commit` is told what really happened.
    """

    name: str = "policy"
    probe_blocks: int = 1
    tail_blocks: int = 0
    threshold: float = 0.0
    gate: Gate = Gate()

    def new_state(self) -> Any:
        return None

    def metric(self, state: Any, probe_residual: torch.Tensor | None) -> float | None:
        return None

    def wants_skip(self, state: Any, metric: float | None) -> bool:
        return False

    def commit(self, state: Any, probe_residual: torch.Tensor | None, computed: bool) -> None:
        pass

    def settings(self) -> dict[str, Any]:
        return {}

    # ---- optional hooks (defaults do nothing; FBC needs none of them) -------------------------------------
    # Methods that decide before any block runs (probe_blocks = 0) may read a per-call signal that the host
    # extracts at the first block (see cache_core/signals.py); the runner passes it to metric/commit as
    # the probe tensor.
    wants_signal: bool = False
    # Methods that need the residual of the whole block stack (last block's hidden output minus the first
    # block's hidden input, per CFG stream) on computed calls get it in :meth:`observe_stack_residual`.
    wants_stack_residual: bool = False

    def new_run_state(self, run: "RunInfo") -> Any:
        """State of one CFG stream for a run; ``run`` says what the host knows about the run's schedule."""
        return self.new_state()

    def begin_stream_call(self, state: Any, info: "StreamCall") -> None:
        """Called for every stream of a call before :meth:`metric`."""

    def observe_stack_residual(self, state: Any, residual: torch.Tensor) -> None:
        """The stream's whole-stack hidden residual of a computed call (only if ``wants_stack_residual``)."""

    def finish_run(self, streams: list[tuple[str, Any]], completed: bool) -> None:
        """End of a run: every stream's (label, state), in first-seen order."""

    @staticmethod
    def state_bytes(state: Any) -> int:
        total = 0
        for v in vars(state).values() if state is not None and hasattr(state, "__dict__") else ():
            if isinstance(v, torch.Tensor):
                total += v.numel() * v.element_size()
        return total
