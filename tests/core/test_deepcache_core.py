"""DeepCache's schedule and the UNet runner on a toy UNet whose blocks are known in closed form: the skip stack
(input blocks push, output blocks pop and concatenate), placeholders of the right shape on reused calls, the
cached deep feature per CFG stream, and First Block Cache's UNet plan."""
from __future__ import annotations

import pytest
import torch

from dit_cache.cache_core import CallInfo, DeepCacheConfig, DeepCachePolicy, FirstBlockCacheConfig, RunStats
from dit_cache.cache_core.config import SigmaWindow
from dit_cache.cache_core.methods.fbc import FirstBlockCachePolicy
from dit_cache.cache_core.unet_runner import INPUT, MIDDLE, OUTPUT, UNetCacheRunner, UNetPlan

N = 4  # input blocks (block 0: the stem, block 2 halves the resolution), 1 middle, 4 output blocks


class ToyUNet:
    """Blocks that record their calls; the forward mirrors UNetModel._forward's skip stack."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def block(self, seg: int, i: int, x: torch.Tensor, t: float) -> torch.Tensor:
        self.calls.append((seg, i))
        if seg == INPUT:
            y = x.mean(1, keepdim=True).expand(-1, 3, -1, -1) if i == 0 else x * (1 + 0.1 * i) + t * i
            return torch.nn.functional.avg_pool2d(y, 2) if i == 2 else y
        if seg == MIDDLE:
            return x * 0.9 + t
        y = x[:, :3] + x[:, 3:] * 0.5 + t * (i + 1)  # cat(h, skip) -> 3 channels
        return torch.nn.functional.interpolate(y, scale_factor=2.0) if i == 1 else y

    def forward(self, runner: UNetCacheRunner | None, x: torch.Tensor, t: float) -> torch.Tensor:
        def run(seg: int, i: int, h: torch.Tensor) -> torch.Tensor:
            if runner is None:
                return self.block(seg, i, h, t)
            return runner.block(seg, i, {"x": h}, lambda s: {"x": self.block(seg, i, s["x"], t)})["x"]

        hs, h = [], x
        for i in range(N):
            h = run(INPUT, i, h)
            hs.append(h)
        h = run(MIDDLE, 0, h)
        for i in range(N):
            h = run(OUTPUT, i, torch.cat([h, hs.pop()], dim=1))
        return h


def sample(model: ToyUNet, runner, steps: int, streams=(("c", "cond"),), x0=None) -> list[torch.Tensor]:
    x = x0 if x0 is not None else torch.randn(len(streams), 1, 8, 8, generator=torch.Generator().manual_seed(0))
    outs = []
    for s in range(steps):
        t = 1.0 - s / steps
        if runner is not None:
            runner.begin_call(CallInfo(list(streams), t))
        outs.append(model.forward(runner, x, t))
        if runner is not None:
            runner.end_call(0.01)
    return outs


def deepcache_runner(interval: int, depth: int = 1, **gate) -> UNetCacheRunner:
    policy = DeepCachePolicy(DeepCacheConfig(interval=interval, branch_depth=depth, **gate))
    return UNetCacheRunner([N, 1, N], policy, RunStats("DeepCache", {}, "toy"))


@pytest.mark.parametrize("interval,steps", [(2, 10), (3, 20), (5, 12), (1, 6)])
def test_one_full_call_in_every_interval(interval: int, steps: int) -> None:
    runner = deepcache_runner(interval)
    model = ToyUNet()
    sample(model, runner, steps)
    skipped = [r.skipped for r in runner.stats.records]
    assert skipped == [i % interval != 0 for i in range(steps)]
    full = -(-steps // interval)
    # depth 1: input blocks 0-1 and output blocks 2-3 run every call, the rest only on full calls
    assert model.calls.count((INPUT, 1)) == model.calls.count((OUTPUT, 2)) == steps
    assert model.calls.count((INPUT, 2)) == model.calls.count((MIDDLE, 0)) == model.calls.count((OUTPUT, 1)) == full


def test_warmup_and_window_compute_and_restart_the_count() -> None:
    runner = deepcache_runner(3, warmup_steps=2)
    sample(ToyUNet(), runner, 8)
    assert [r.skipped for r in runner.stats.records] == [False, False, True, True, False, True, True, False]
    assert [r.reason for r in runner.stats.records][:2] == ["no_cache", "warmup"]
    runner = deepcache_runner(2)
    runner.window = SigmaWindow(0.75, 0.25)
    sample(ToyUNet(), runner, 8)  # sigma 1 - s/8: inside the window for s = 2..5
    assert [r.skipped for r in runner.stats.records] == [False, False, True, False, True, False, False, False]


def test_shallow_calls_reuse_the_deep_feature_exactly() -> None:
    """A reused call equals the full forward with output block 1's output replaced by the cached one."""
    runner = deepcache_runner(2)
    model = ToyUNet()
    outs = sample(model, runner, 2)
    ref = sample(ToyUNet(), None, 2)
    assert torch.equal(outs[0], ref[0])
    # step 1 by hand: input blocks 0-1 and output blocks 2-3 at t = 0.5, deep feature from step 0 (t = 1)
    plain, x, t = ToyUNet(), torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)), 0.5
    h0 = plain.block(INPUT, 0, x, t)
    h1 = plain.block(INPUT, 1, h0, t)
    deep = x
    hs = []
    for i in range(N):
        deep = plain.block(INPUT, i, deep, 1.0)
        hs.append(deep)
    deep = plain.block(MIDDLE, 0, deep, 1.0)
    for i in range(2):
        deep = plain.block(OUTPUT, i, torch.cat([deep, hs.pop()], dim=1), 1.0)
    h = plain.block(OUTPUT, 2, torch.cat([deep, h1], dim=1), t)
    h = plain.block(OUTPUT, 3, torch.cat([h, h0], dim=1), t)
    assert torch.allclose(outs[1], h)
    assert not torch.allclose(outs[1], ref[1])


def test_streams_keep_their_own_deep_features() -> None:
    """Batched cond/uncond: each stream's cached feature goes back to its own batch rows."""
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    both = sample(ToyUNet(), deepcache_runner(3), 3, (("c", "cond"), ("u", "uncond")), x)
    alone = sample(ToyUNet(), deepcache_runner(3), 3, (("u", "uncond"),), x[1:])
    assert torch.allclose(both[2][1:], alone[2])


def test_branch_depth_must_leave_blocks_to_cache() -> None:
    with pytest.raises(ValueError, match="leaves nothing to cache"):
        deepcache_runner(2, depth=N - 1)
    with pytest.raises(ValueError, match="branch_depth"):
        DeepCacheConfig(branch_depth=0)
    with pytest.raises(ValueError, match="interval"):
        DeepCacheConfig(interval=0)
    assert "max_consecutive_skips" not in DeepCachePolicy(DeepCacheConfig()).settings()


def test_first_block_cache_plan_on_unets() -> None:
    """FBC decides on input block 1's residual; a skip returns the head output plus the cached residual."""
    policy = FirstBlockCachePolicy(FirstBlockCacheConfig(threshold=10.0))
    assert policy.unet_plan() == UNetPlan(head=2, tail=0, reuse="residual")
    runner = UNetCacheRunner([N, 1, N], policy, RunStats("FBC", {}, "toy"))
    model = ToyUNet()
    outs = sample(model, runner, 3)
    assert [r.skipped for r in runner.stats.records] == [False, True, True]
    assert runner.stats.records[1].metric is not None
    assert model.calls.count((INPUT, 2)) == 1 and model.calls.count((OUTPUT, 3)) == 1
    assert all(o.shape == (1, 3, 8, 8) for o in outs)
    assert 0.0 < runner.stats.skipped_cost <= 1.0 and runner.stats.ideal_speedup > 1.0
