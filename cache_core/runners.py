"""The runner family: a policy names the runner it needs (``policy.runner``), the host asks for it here.

``"block"``: :class:`~cache_core.block_runner.BlockCacheRunner` (step-level methods: skip or forecast block
ranges). ``"component"``: :class:`~cache_core.component_runner.ComponentCacheRunner` (attention and feed-forward
sites inside the blocks). Both share the stream bookkeeping of :class:`~cache_core.streams.StreamRunner`.
"""
from __future__ import annotations

from typing import Any, Sequence

from .block_runner import BlockCacheRunner
from .component_runner import ComponentCacheRunner
from .layout import BlockLayout
from .policy import RunInfo
from .stats import RunStats
from .streams import ResolveWindow, StreamRunner

RUNNERS: dict[str, Any] = {"block": BlockCacheRunner, "component": ComponentCacheRunner}


def make_runner(policy: Any, layout: BlockLayout, block_counts: Sequence[int], stats: RunStats,
                resolve: ResolveWindow, run: RunInfo = RunInfo()) -> StreamRunner:
    """The runner ``policy`` needs for one run; ``resolve(name, window)`` turns each of the policy's schedule
    windows into sigmas of the host's schedule."""
    return RUNNERS[policy.runner].for_policy(layout, block_counts, policy, stats, resolve, run)


def uses_components(policy: Any) -> bool:
    """Whether the host must route attention computations (and feed-forward modules) through the runner."""
    return policy.runner == "component"
