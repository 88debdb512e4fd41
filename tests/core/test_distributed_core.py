"""The decision group's rules without several processes (cache_core/distributed.py); the multi-process runs are in
tests/comfy/test_distributed_comfy.py."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from toy_blocks import call_one, make

from dit_cache.cache_core import CallInfo, FirstBlockCacheConfig, distributed
from dit_cache.cache_core.methods.fbc import FirstBlockCachePolicy


@pytest.fixture(autouse=True)
def _no_process_wide_group():
    yield
    distributed.set_decision_group(None)


def test_without_an_initialised_process_group_there_is_no_decision_group(monkeypatch):
    assert not dist.is_initialized()
    assert distributed.resolve() is None
    distributed.set_decision_group("world")  # asked for, but torch.distributed is not initialised
    assert distributed.resolve() is None
    monkeypatch.setenv(distributed.ENV, "world")
    assert distributed.resolve() is None
    assert distributed.resolve(distributed.OFF) is None


def test_a_run_without_a_group_calls_no_collective_and_decides_as_before(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a collective was called without a decision group")

    monkeypatch.setattr(dist, "all_reduce", refuse)
    monkeypatch.setattr(distributed.DecisionGroup, "all_reduce", refuse)
    policy = FirstBlockCachePolicy(FirstBlockCacheConfig(threshold=0.5))
    runner, stats = make(policy)
    assert runner.group is None
    for first in (1.0, 1.05, 1.1, 3.0):  # the first block's residual: the metric is its change
        call_one(runner, 1.0, [first, 1.0, 1.0, 1.0])
    runner.finish(True)
    assert "decision_group" not in stats.details
    assert [r.skipped for r in stats.records] == [False, True, True, False]


class _OneRank:
    """A decision group of one rank: all_reduce returns its input (what a SUM over one rank is)."""

    size, rank = 1, 0

    def __init__(self) -> None:
        self.collectives = self.bytes = 0

    def all_reduce(self, values: torch.Tensor) -> torch.Tensor:
        self.collectives += 1
        self.bytes += values.numel() * 8
        return values.to(torch.float64)

    def cost(self) -> dict[str, int]:
        return {"ranks": self.size, "collectives": self.collectives, "bytes": self.bytes}


def test_a_group_of_one_rank_takes_the_local_decisions_with_one_collective_per_call():
    local, stats_local = make(FirstBlockCachePolicy(FirstBlockCacheConfig(threshold=0.5)))
    grouped, stats_grouped = make(FirstBlockCachePolicy(FirstBlockCacheConfig(threshold=0.5)))
    grouped.group = _OneRank()
    for first in (1.0, 1.05, 1.1, 3.0, 3.2):
        for runner in (local, grouped):
            call_one(runner, [1.0, 2.0], [first, 2.0, 0.5, 1.0], streams=(("c", "cond"), ("u", "uncond")))
    grouped.finish(True)
    assert [r.skipped for r in stats_local.records[::2]] == [False, True, True, False, True]
    assert [(r.stream, r.skipped, r.reason) for r in stats_grouped.records] == \
        [(r.stream, r.skipped, r.reason) for r in stats_local.records]
    for a, b in zip(stats_grouped.records, stats_local.records):
        assert (a.metric is None) == (b.metric is None)
        if a.metric is not None:
            assert a.metric == pytest.approx(b.metric, rel=1e-6)
    width = distributed.HEADER + FirstBlockCachePolicy.metric_width
    assert stats_grouped.details["decision_group"] == {"ranks": 1, "collectives": 5,
                                                       "bytes": 5 * distributed.MAX_SLOTS * width * 8}


def test_stream_slots_keep_streams_apart():
    assert [distributed.stream_slot(s) for s in ("cond", "uncond", "cond2", "uncond2")] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="no slot"):
        distributed.stream_slot("cond9")
    # diffusers' cache_context names: slots from the top, first seen first, stable afterwards
    first, second = distributed.stream_slot("cond_uncond_test"), distributed.stream_slot("uncond_stg_test")
    assert first > second >= 4 and distributed.stream_slot("cond_uncond_test") == first
    width = 2
    # rank 0 holds cond, rank 1 uncond (CFG parallelism): the sum of their vectors keeps each stream's sums
    a = distributed.pack([("cond", False, torch.tensor([1.0, 2.0]))], width)
    b = distributed.pack([("uncond", True, torch.tensor([3.0, 4.0]))], width)
    table = distributed.unpack(a + b, width)
    assert distributed.slot_sums(table, "cond").tolist() == [1.0, 2.0]
    assert distributed.slot_sums(table, "uncond").tolist() == [3.0, 4.0]
    assert distributed.split_streams(table, 2) and distributed.forced_anywhere(table)
    # two shards of one stream (sequence parallelism): sums add up; a rank that measured nothing voids them
    c = distributed.pack([("cond", False, torch.tensor([5.0, 6.0]))], width)
    table = distributed.unpack(a + c, width)
    assert distributed.slot_sums(table, "cond").tolist() == [6.0, 8.0]
    assert not distributed.split_streams(table, 2) and not distributed.forced_anywhere(table)
    table = distributed.unpack(a + distributed.pack([("cond", False, None)], width), width)
    assert distributed.slot_sums(table, "cond") is None


def test_sums_give_the_mean_over_the_whole_tensor_not_a_mean_of_shard_means():
    cur, ref = torch.randn(1, 10, 4), torch.randn(1, 10, 4)
    whole = ((cur - ref).abs().mean() / ref.abs().mean()).item()
    parts = [distributed.relative_l1_sums(c, r) for c, r in zip(cur.split([3, 7], 1), ref.split([3, 7], 1))]
    s = parts[0] + parts[1]
    assert distributed.ratio(distributed.mean_at(s, 0), distributed.mean_at(s, 2)) == pytest.approx(whole, rel=1e-6)
    assert distributed.ratio(0.0, 0.0) != distributed.ratio(0.0, 0.0)  # NaN, as the local 0 / 0
    assert distributed.ratio(1.0, 0.0) == float("inf")


def test_a_batch_split_inside_the_model_is_refused_clearly():
    runner, _ = make(FirstBlockCachePolicy(FirstBlockCacheConfig(threshold=0.5)))
    runner.begin_call(CallInfo([("c", "cond"), ("u", "uncond")]))  # two CFG streams, but the blocks see one sample
    with pytest.raises(ValueError, match="splits the batch inside the model"):
        runner.block(0, 0, {"img": torch.ones(1, 4, 2)}, lambda st: st)
