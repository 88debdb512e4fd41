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
    # after this many skipped calls of a stream in the whole run, every later call computes (-1 = no limit)
    max_cached_steps: int = -1

    def __post_init__(self) -> None:
        check_int("warmup_steps", self.warmup_steps, 0)
        check_int("max_consecutive_skips", self.max_consecutive_skips, -1)
        check_int("max_cached_steps", self.max_cached_steps, -1)


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
    # Methods that decide before any block runs on the first block's hidden input (per CFG stream) get it as
    # the probe tensor of metric/commit (only with probe_blocks = 0 and no wants_signal).
    wants_head_input: bool = False
    # Forecasting methods predict what the cached blocks produce instead of reusing it: "residual" (the cached
    # range's residual per segment and stream) or "output" (the output of each segment's last cached block).
    # The runner hands the values of computed calls to :meth:`observe_segments` and, on skips, asks
    # :meth:`forecast` for the output of each segment's last cached block. "" = plain reuse.
    forecasts: str = ""

    def new_run_state(self, run: "RunInfo") -> Any:
        """State of one CFG stream for a run; ``run`` says what the host knows about the run's schedule."""
        return self.new_state()

    def begin_stream_call(self, state: Any, info: "StreamCall") -> None:
        """Called for every stream of a call before :meth:`metric`."""

    def observe_stack_residual(self, state: Any, residual: torch.Tensor) -> None:
        """The stream's whole-stack hidden residual of a computed call (only if ``wants_stack_residual``)."""

    def observe_segments(self, state: Any, values: dict[tuple[int, str], torch.Tensor]) -> None:
        """A computed call's residual or last-block output (per ``forecasts``) per (segment, stream) key."""

    def forecast(self, state: Any, key: tuple[int, str], seg_input: torch.Tensor) -> torch.Tensor:
        """On a skip: the predicted output of segment ``key[0]``'s last cached block for stream ``key[1]``,
        given the input of that block (``seg_input``, this CFG stream's part of the batch)."""
        raise NotImplementedError(f"{self.name} sets forecasts but does not forecast")

    def finish_run(self, streams: list[tuple[str, Any]], completed: bool) -> None:
        """End of a run: every stream's (label, state), in first-seen order."""

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
