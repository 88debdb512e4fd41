"""The runner family: a policy names the runner it needs (``policy.runner``), the host asks for it here.

``"block"``: :class:`~cache_core.block_runner.BlockCacheRunner` (step-level methods: skip or forecast block
ranges). ``"component"``: :class:`~cache_core.component_runner.ComponentCacheRunner` (attention and feed-forward
sites inside the blocks). ``"unet"``: :class:`~cache_core.unet_runner.UNetCacheRunner` (a step-level method on a
UNet; the host asks for it, whatever the policy's kind). All share the stream bookkeeping of :class:`~cache_core.streams.StreamRunner`.
"""
from __future__ import annotations

from typing import Any, Sequence

from .block_runner import BlockCacheRunner
from .component_runner import ComponentCacheRunner
from .layout import BlockLayout
from .policy import RunInfo
from .stats import RunStats
from .streams import ResolveWindow, StreamRunner
from .unet_runner import UNetCacheRunner

RUNNERS: dict[str, Any] = {"block": BlockCacheRunner, "component": ComponentCacheRunner, "unet": UNetCacheRunner}


def make_runner(policy: Any, layout: BlockLayout, block_counts: Sequence[int], stats: RunStats,
                resolve: ResolveWindow, run: RunInfo = RunInfo(), kind: str | None = None) -> StreamRunner:
    """The runner ``policy`` needs for one run (``kind``: the one the host's model needs instead, e.g. "unet");
    ``resolve(name, window)`` turns each of the policy's schedule windows into sigmas of the host's schedule."""
    return RUNNERS[kind or policy.runner].for_policy(layout, block_counts, policy, stats, resolve, run)


def uses_components(policy: Any) -> bool:
    """Whether the host must route attention computations (and feed-forward modules) through the runner."""
    return policy.runner == "component"
