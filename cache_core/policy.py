"""What every caching method shares: the gating before a method's own rule, and the policy interface."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .config import CacheWindow, check_int


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

    @staticmethod
    def state_bytes(state: Any) -> int:
        total = 0
        for v in vars(state).values() if state is not None and hasattr(state, "__dict__") else ():
            if isinstance(v, torch.Tensor):
                total += v.numel() * v.element_size()
        return total
