"""Hints added by the host between blocks (ComfyUI's ControlNet and Wan VACE), outside the block calls: a skipped
call adds this call's hints once, never the cached call's again (``CallInfo.hints``). Closed forms on toy blocks."""
from __future__ import annotations

import torch

from dit_cache.cache_core import BlockCacheRunner, FirstBlockCacheConfig, FirstBlockCachePolicy
from dit_cache.cache_core.methods.taylorseer import TaylorSeerConfig, TaylorSeerPolicy

from toy_blocks import call_one, make

W = [1.0, 2.0, 3.0, 5.0]  # block i adds W[i] (block 0 adds the call's head value instead)


def call(runner: BlockCacheRunner, head: float, hints: list[float], flag: bool = True) -> tuple[torch.Tensor, list]:
    """One call of the 1-segment toy: block 0 adds ``head``, block i > 0 adds W[i]; after block i the host adds
    ``hints[i]`` in place to the stream, outside the block call (as ComfyUI's Flux / SD3 / VACE forwards do)."""
    return call_one(runner, 0.0, [head, *W[1:]], after=hints, hints=flag)


def fbc() -> BlockCacheRunner:
    return make(FirstBlockCachePolicy(FirstBlockCacheConfig(threshold=0.5)))[0]


def test_skipped_call_adds_this_calls_hints_once():
    runner = fbc()
    out, ran = call(runner, 1.0, [0.1, 0.2, 0.3, 0.4])
    assert ran == [0, 1, 2, 3]
    assert torch.allclose(out, torch.full_like(out, 1.0 + 2 + 3 + 5 + 0.1 + 0.2 + 0.3 + 0.4))
    hints = [10.0, 20.0, 30.0, 40.0]
    out, ran = call(runner, 1.0, hints)
    assert ran == [0]  # skipped: blocks 1..3 reuse the cached residual (2 + 3 + 5 = 10, the blocks' work only)
    assert torch.allclose(out, torch.full_like(out, 1.0 + 10.0 + sum(hints)))


def test_without_the_hint_flag_the_cached_hints_count_twice():
    """What the fix removes: a residual measured without the flag holds the cached call's hints 1 and 2."""
    runner = fbc()
    call(runner, 1.0, [0.1, 0.2, 0.3, 0.4], flag=False)
    hints = [10.0, 20.0, 30.0, 40.0]
    out, ran = call(runner, 1.0, hints, flag=False)
    assert ran == [0]
    assert torch.allclose(out, torch.full_like(out, 1.0 + 10.0 + sum(hints) + 0.2 + 0.3))


def test_calls_without_hints_are_unchanged_by_the_flag():
    a, b = fbc(), fbc()
    for head in (1.0, 1.01, 1.5, 1.51):
        out_a, ran_a = call(a, head, [0.0] * 4, flag=True)
        out_b, ran_b = call(b, head, [0.0] * 4, flag=False)
        assert ran_a == ran_b and torch.equal(out_a, out_b)


def test_output_forecaster_adds_this_calls_hints():
    """TaylorSeer forecasts the last cached block's output: it learns the output without the hints and a
    forecast call adds its own hints between the passed-through blocks (order 0: the last output reused)."""
    policy = TaylorSeerPolicy(TaylorSeerConfig(cache_interval=2, warmup_steps=1, max_order=0,
                                               factor_dtype="float32"))
    runner, _ = make(policy)
    out, ran = call(runner, 1.0, [0.1, 0.2, 0.3, 0.4])
    assert ran == [0, 1, 2, 3]
    hints = [10.0, 20.0, 30.0, 40.0]
    out, ran = call(runner, 1.0, hints)
    assert ran == []  # forecast: no block ran (TaylorSeer caches every block)
    # the learnt output without call 1's hints 0, 1, 2 (1 + 2 + 3 + 5 = 11), plus this call's hints
    assert torch.allclose(out, torch.full_like(out, 11.0 + sum(hints)))
