"""Toy block stacks whose results are known in closed form, for the core's unit tests of the step-level methods
(tests/core/test_taylorseer_core.py, test_dbcache_core.py, test_adaptive_core.py): a 1-segment layout (``ONE``), a
Flux-like 2-segment one (``TWO``), one model call of the 1-segment toy (``call_one``) and a runner (``make``)."""
from __future__ import annotations

from typing import Any

import torch

from dit_cache.cache_core import BlockCacheRunner, BlockLayout, CallInfo, RunStats, Segment
from dit_cache.cache_core.policy import Policy, RunInfo

ONE = BlockLayout("toy1", ("Toy1",), (Segment("blocks", "b", ("img",)),))
# Two segments like Flux: "double" blocks return img and txt, then the host joins cat(txt, img) for "single".
TWO = BlockLayout("toy2", ("Toy2",), (Segment("double", "d", ("img", "txt")), Segment("single", "s", ("img",))))


def call_one(runner: BlockCacheRunner, x: float | list[float], adds: list[float], streams=(("c", "cond"),),
             after: list[float] | None = None, **info: Any):
    """One model call of a 1-segment toy: the hidden input is ``x`` (per stream), block i adds ``adds[i]``; with
    ``after``, the host then adds ``after[i]`` to the stream in place, outside the block call (as ComfyUI's
    ControlNet / VACE hints are added). ``info``: further CallInfo fields (hints, weights)."""
    xs = x if isinstance(x, list) else [x]
    img = torch.tensor(xs).view(len(xs), 1, 1).expand(len(xs), 4, 2).clone()
    runner.begin_call(CallInfo(list(streams), **info))
    ran = []
    for i, a in enumerate(adds):
        def run(st, i=i, a=a):
            ran.append(i)
            return {"img": st["img"] + a}
        img = runner.block(0, i, {"img": img}, run)["img"]
        if after is not None:
            img += after[i]  # in place, like `x += add`
    runner.end_call(0.0)
    return img, ran


def make(policy: Policy, layout=ONE, counts=(4,), run=RunInfo()):
    stats = RunStats(policy.name, policy.settings(), "toy")
    return BlockCacheRunner(layout, list(counts), policy, stats, run=run), stats

