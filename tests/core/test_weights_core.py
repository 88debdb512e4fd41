"""Weights that change within a run (``CallInfo.weights``; ComfyUI's hook LoRAs at a keyframe): a stream whose
weights key differs from its previous call's starts afresh, so nothing computed under other weights is reused.
Toy blocks; the real host's test is tests/comfy/test_hooks_comfy.py."""
from __future__ import annotations

from typing import Hashable

import torch

from dit_cache.cache_core import BlockCacheRunner, CallInfo, FirstBlockCacheConfig, FirstBlockCachePolicy
from dit_cache.cache_core.methods.taylorseer import TaylorSeerConfig, TaylorSeerPolicy

from toy_blocks import call_one, make

W = [1.0, 2.0, 3.0, 5.0]  # block i > 0 adds W[i] * scale (its weights), block 0 adds the call's head value


def call(runner: BlockCacheRunner, head: float, scale: float, weights: Hashable | None,
         streams=(("c", "cond"),)) -> tuple[torch.Tensor, list[int]]:
    return call_one(runner, [0.0] * len(streams), [head, *(w * scale for w in W[1:])], streams, weights=weights)


def fbc() -> BlockCacheRunner:
    return make(FirstBlockCachePolicy(FirstBlockCacheConfig(threshold=0.5)))[0]


def test_a_weights_change_computes_and_later_calls_reuse_the_new_weights_work():
    runner = fbc()
    call(runner, 1.0, 1.0, ("lora", 0.0))
    out, ran = call(runner, 1.0, 1.0, ("lora", 0.0))
    assert ran == [0]  # same weights: skipped
    out, ran = call(runner, 1.0, 2.0, ("lora", 1.0))
    assert ran == [0, 1, 2, 3]  # new weights: computed, although block 0 did not change
    assert torch.allclose(out, torch.full_like(out, 1.0 + 2 * 10.0))
    out, ran = call(runner, 1.0, 2.0, ("lora", 1.0))
    assert ran == [0] and torch.allclose(out, torch.full_like(out, 1.0 + 2 * 10.0))
    records = runner.stats.records
    assert [r.reason for r in records][:3] == ["no_cache", "metric", "weights"]
    assert [r.weights for r in records] == [0, 0, 1, 1]
    assert runner.stats.details["weight_resets"] == 1


def test_without_a_key_the_old_weights_work_is_reused():
    """What the key prevents: the same calls without weights keys skip the change and keep the old residual."""
    runner = fbc()
    call(runner, 1.0, 1.0, None)
    out, ran = call(runner, 1.0, 2.0, None)
    assert ran == [0] and torch.allclose(out, torch.full_like(out, 1.0 + 10.0))
    assert all(r.weights is None for r in runner.stats.records)
    assert "weight_resets" not in runner.stats.details


def test_streams_reset_apart():
    """Cond and uncond with different hooks run as separate calls: only the stream whose weights changed resets."""
    runner = fbc()
    for _ in range(2):
        call(runner, 1.0, 1.0, ("lora", 0.0), streams=(("c", "cond"),))
        call(runner, 1.0, 1.0, None, streams=(("u", "uncond"),))
    _, ran_cond = call(runner, 1.0, 2.0, ("lora", 1.0), streams=(("c", "cond"),))
    _, ran_uncond = call(runner, 1.0, 1.0, None, streams=(("u", "uncond"),))
    assert ran_cond == [0, 1, 2, 3] and ran_uncond == [0]
    assert runner.stats.details["weight_resets"] == 1


def test_forecaster_history_is_dropped():
    """TaylorSeer: after a weights change the forecaster starts again from the new weights' computed calls."""
    policy = TaylorSeerPolicy(TaylorSeerConfig(cache_interval=2, warmup_steps=1, max_order=0, factor_dtype="float32"))
    runner, _ = make(policy)
    call(runner, 1.0, 1.0, "a")
    out, ran = call(runner, 1.0, 1.0, "a")
    assert ran == [] and torch.allclose(out, torch.full_like(out, 11.0))
    out, ran = call(runner, 1.0, 2.0, "b")
    assert ran == [0, 1, 2, 3] and torch.allclose(out, torch.full_like(out, 21.0))
    out, ran = call(runner, 1.0, 2.0, "b")
    assert ran == [] and torch.allclose(out, torch.full_like(out, 21.0))


def test_unconditional_branch_reuse_computes_uncond_when_the_weights_change():
    """TaylorSeer's uncond_interval decides before the step's model calls: when the cond-only call meets new weights,
    the stored branch differences (old weights) are dropped and the uncond branch is computed alone after all."""
    from dit_cache.cache_core.policy import RunInfo

    policy = TaylorSeerPolicy(TaylorSeerConfig(cache_interval=2, warmup_steps=1, uncond_interval=2,
                                               forecaster="adams-bashforth 1"))
    run = RunInfo(sigmas=tuple(1.0 - i / 10 for i in range(11)))
    runner, _ = make(policy, run=run)
    paths: list[str] = []
    new_diffs: list[torch.Tensor] = []  # branch differences computed under the new weights
    for s in range(10):
        sigma, weights = run.sigmas[s], ("lora", 0.0 if s < 4 else 1.0)
        cond = torch.full((2,), 2.0 * sigma + (s >= 4))
        uncond = cond + (0.5 - sigma) * (1 if s < 4 else 3)  # the branch difference changes with the weights

        def model_call(streams, path):
            paths.append(path)
            runner.begin_call(CallInfo(streams, sigma=sigma, weights=weights))
            runner.end_call(0.0)

        def full():
            model_call([("u", "uncond"), ("c", "cond")], f"{s}:full")
            return cond, uncond

        def cond_only():
            model_call([("c", "cond")], f"{s}:cond")
            return cond

        def uncond_only():
            model_call([("u", "uncond")], f"{s}:uncond")
            return uncond

        got_cond, got_uncond, rebuilt = runner.reuse_uncond(sigma, full, cond_only, uncond_only)
        if not rebuilt:
            torch.testing.assert_close(got_uncond, uncond)
            if s >= 4:
                new_diffs.append(uncond - cond)
        elif s >= 4:  # from the new weights' differences only: one is reused, two extrapolate the line exactly
            assert new_diffs
            torch.testing.assert_close(got_uncond, cond + new_diffs[-1] if len(new_diffs) == 1 else uncond)
    # steps 0-3 as without weights (warm-up, computed at 0 and 2); at 4 the cond-only call met the new weights
    assert paths[:6] == ["0:full", "1:cond", "2:full", "3:cond", "4:cond", "4:uncond"]
    assert runner.stats.details["weight_resets"] == 2  # cond at step 4, then uncond
