"""Unit tests of the host-agnostic core with toy blocks whose results are known in closed form."""
from __future__ import annotations

import math

import pytest
import torch

from dit_cache.cache_core import (BlockCacheRunner, BlockLayout, CallInfo, FirstBlockCacheConfig,
                                  FirstBlockCachePolicy, RunStats, Segment)
from dit_cache.cache_core.config import SigmaWindow

# Two segments like Flux: "double" blocks return img and txt, "single" blocks return img only.
LAYOUT = BlockLayout("toy", ("Toy",), (Segment("double", "d", ("img", "txt")), Segment("single", "s", ("img",))))
W = [0.0, 2.0, 3.0, 5.0]  # constant residuals of blocks 1..3 (block 0's residual is the per-call probe value)


def run_model(runner: BlockCacheRunner, head: list[float], streams=(("c", "cond"),), sigma=None, n_tok=4):
    """One model call: block 0 adds head[j] to stream j's chunk, later blocks add constants."""
    b = len(streams)
    img = torch.zeros(b, n_tok, 2)
    txt = torch.zeros(b, 3, 2)
    runner.begin_call(CallInfo(list(streams), sigma))
    calls = []

    def block(idx):
        def run(st):
            calls.append(idx)
            out = {k: v.clone() for k, v in st.items()}
            add = torch.tensor(head).view(b, 1, 1) if idx == 0 else W[idx]
            out["img"] = out["img"] + add
            if "txt" in out:
                out["txt"] = out["txt"] + (0.5 if idx == 0 else 1.0)
            return out
        return run

    st = runner.block(0, 0, {"img": img, "txt": txt}, block(0))
    st = runner.block(0, 1, st, block(1))
    x = {"img": torch.cat([st["txt"], st["img"]], dim=1)}  # the host joins the streams (Flux concatenates)
    x = runner.block(1, 0, x, block(2))
    x = runner.block(1, 1, x, block(3))
    runner.end_call(0.0)
    return x["img"], calls


def make(threshold=0.05, **kw):
    policy = FirstBlockCachePolicy(FirstBlockCacheConfig(threshold=threshold, **kw))
    stats = RunStats("FirstBlockCache", policy.settings(), "toy")
    window = kw.pop("_window", SigmaWindow())
    return BlockCacheRunner(LAYOUT, [2, 2], policy, stats, window), stats


def test_fbc_decisions_and_outputs_closed_form():
    runner, stats = make(0.05)
    heads = [1.0, 1.01, 1.2, 1.21, 1.26]
    # metric vs last computed reference: -, 0.01, 0.2, 0.0083(ref 1.2), 0.05 (ref 1.2: |1.26-1.2|/1.2 = 0.05 -> equal skips)
    expected_skip = [False, True, False, True, True]
    for h, skip in zip(heads, expected_skip):
        out, calls = run_model(runner, [h])
        assert (calls == [0]) == skip
        img = out[:, 3:]
        txt = out[:, :3]
        # skipped or not: img gets blocks 1..3 (2+3+5), txt gets 0.5 + 1 in the double blocks, then 3+5
        assert torch.allclose(img, torch.full_like(img, h + sum(W))), (h, img)
        assert torch.allclose(txt, torch.full_like(txt, 0.5 + 1.0 + W[2] + W[3]))
    assert [r.skipped for r in stats.records] == expected_skip
    assert stats.records[2].metric == pytest.approx(0.2, rel=1e-5)
    assert stats.calls == 5 and stats.skipped_calls == 3


def test_skip_reuses_cached_residual_not_recomputed():
    # blocks' residual changes between calls (W modified), a skipped call must still use the old one
    runner, _ = make(0.5)
    run_model(runner, [1.0])
    W[1] = 100.0
    try:
        out, calls = run_model(runner, [1.0])
    finally:
        W[1] = 2.0
    assert calls == [0]
    assert torch.allclose(out[:, 3:], torch.full_like(out[:, 3:], 1.0 + 10.0))


def test_warmup_max_consecutive_and_window():
    runner, stats = make(0.5, warmup_steps=2, max_consecutive_skips=2)
    for _ in range(7):
        run_model(runner, [1.0])
    assert [r.skipped for r in stats.records] == [False, False, True, True, False, True, True]
    assert [r.reason for r in stats.records][:2] == ["no_cache", "warmup"]
    assert stats.records[4].reason == "max_skips"

    policy = FirstBlockCachePolicy(FirstBlockCacheConfig(threshold=0.5))
    stats = RunStats("FirstBlockCache", {}, "toy")
    runner = BlockCacheRunner(LAYOUT, [2, 2], policy, stats, SigmaWindow(start_sigma=0.8, end_sigma=0.2))
    for sigma in [1.0, 0.9, 0.8, 0.5, 0.2, 0.1]:
        run_model(runner, [1.0], sigma=sigma)
    # inside (0.2, 0.8]: 0.8 and 0.5 may skip; 0.2 is the (exclusive) end
    assert [r.skipped for r in stats.records] == [False, False, True, True, False, False]
    assert stats.records[1].reason == "window"


def test_batched_streams_decide_together_and_keep_their_own_residuals():
    runner, stats = make(0.05)
    streams = (("c", "cond"), ("u", "uncond"))
    run_model(runner, [1.0, 2.0], streams)
    out, calls = run_model(runner, [1.0, 2.0], streams)  # both unchanged -> skip
    assert calls == [0]
    assert torch.allclose(out[0, 3:], torch.full((4, 2), 1.0 + 10.0))
    assert torch.allclose(out[1, 3:], torch.full((4, 2), 2.0 + 10.0))
    out, calls = run_model(runner, [1.0, 3.0], streams)  # uncond changed by 50 % -> whole batch computes
    assert calls == [0, 1, 2, 3]
    last = stats.records[-2:]
    assert [(r.stream, r.skipped, r.reason) for r in last] == [("cond", False, "batch"), ("uncond", False, "metric")]
    # the streams can also arrive in the other order, or alone
    out, calls = run_model(runner, [3.0, 1.0], (("u", "uncond"), ("c", "cond")))
    assert calls == [0]
    assert torch.allclose(out[0, 3:], torch.full((4, 2), 3.0 + 10.0))
    out, calls = run_model(runner, [1.0], (("c", "cond"),))
    assert calls == [0]


def test_shape_change_resets_stream():
    runner, stats = make(0.5)
    run_model(runner, [1.0], n_tok=4)
    run_model(runner, [1.0], n_tok=4)
    run_model(runner, [1.0], n_tok=6)  # e.g. an upscale pass: new shape, nothing reusable
    assert [r.skipped for r in stats.records] == [False, True, False]
    assert stats.records[2].reason == "no_cache"


def test_interrupted_call_commits_nothing():
    runner, stats = make(0.5)
    run_model(runner, [1.0])
    runner.begin_call(CallInfo([("c", "cond")]))
    runner.abort_call()
    out, calls = run_model(runner, [1.0])
    assert calls == [0] and stats.calls == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(threshold=-0.1), "threshold"),
    (dict(threshold=math.nan), "threshold"),
    (dict(warmup_steps=-1), "warmup_steps"),
    (dict(max_consecutive_skips=-2), "max_consecutive_skips"),
    (dict(start_percent=0.5, end_percent=0.5), "start_percent"),
    (dict(end_percent=1.5), "end_percent"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FirstBlockCacheConfig(**kwargs)


def test_runner_rejects_layout_without_cacheable_blocks():
    policy = FirstBlockCachePolicy(FirstBlockCacheConfig())
    one = BlockLayout("one", ("One",), (Segment("double", "d", ("img",)),))
    with pytest.raises(ValueError, match="nothing"):
        BlockCacheRunner(one, [1], policy, RunStats("x", {}, "one"))
