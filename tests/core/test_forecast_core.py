"""Unit tests of DBCache, TaylorSeer and the adaptive cache on toy blocks whose results are known in closed form."""
from __future__ import annotations

import pytest
import torch

from dit_cache.cache_core import BlockCacheRunner, BlockLayout, CallInfo, RunStats, Segment
from dit_cache.cache_core.methods.adaptive import AdaptiveCacheConfig, AdaptiveCachePolicy
from dit_cache.cache_core.methods.dbcache import DBCacheConfig, DBCachePolicy
from dit_cache.cache_core.forecast import TaylorSeries
from dit_cache.cache_core.policy import Policy
from dit_cache.cache_core.component_runner import ComponentCacheRunner, SiteCall
from dit_cache.cache_core.methods.taylorseer import (TaylorSeerComponentPolicy, TaylorSeerConfig, TaylorSeerPolicy,
                                             is_final_step, taylorseer_policy)
from dit_cache.cache_core.policy import RunInfo, StreamCall

ONE = BlockLayout("toy1", ("Toy1",), (Segment("blocks", "b", ("img",)),))
# Two segments like Flux: "double" blocks return img and txt, then the host joins cat(txt, img) for "single".
TWO = BlockLayout("toy2", ("Toy2",), (Segment("double", "d", ("img", "txt")), Segment("single", "s", ("img",))))


def call_one(runner: BlockCacheRunner, x: float | list[float], adds: list[float], streams=(("c", "cond"),)):
    """One model call of a 1-segment toy: the hidden input is ``x`` (per stream), block i adds ``adds[i]``."""
    xs = x if isinstance(x, list) else [x]
    img = torch.tensor(xs).view(len(xs), 1, 1).expand(len(xs), 4, 2).clone()
    runner.begin_call(CallInfo(list(streams)))
    ran = []
    for i, a in enumerate(adds):
        def run(st, i=i, a=a):
            ran.append(i)
            return {"img": st["img"] + a}
        img = runner.block(0, i, {"img": img}, run)["img"]
    runner.end_call(0.0)
    return img, ran


def make(policy: Policy, layout=ONE, counts=(4,), run=RunInfo()):
    stats = RunStats(policy.name, policy.settings(), "toy")
    return BlockCacheRunner(layout, list(counts), policy, stats, run=run), stats


# ------------------------------------------------------------------------------------------------- TaylorSeries
def test_taylor_series_closed_form():
    s = TaylorSeries(2, torch.float64)
    for step in (0, 2, 4):
        s.update(torch.tensor([float(step * step)], dtype=torch.float64), step)
    # F0 = 16, F1 = (16 - 4) / 2 = 6, F2 = (6 - (4 - 0) / 2) / 2 = 2 -> at 5: 16 + 6 + 2 / 2 = 23
    assert s.order == 2 and s.predict(5).item() == pytest.approx(23.0)
    lin = TaylorSeries(1, None)
    lin.update(torch.tensor([1.0]), 0)
    assert lin.order == 0 and lin.predict(3).item() == 1.0  # one observation: order 0 (reuse)
    lin.update(torch.tensor([4.0]), 3)
    assert lin.predict(7).item() == pytest.approx(8.0)  # linear: exact
    assert lin.nbytes() == 8
    with pytest.raises(ValueError):
        lin.update(torch.tensor([1.0]), 3)
    half = TaylorSeries(1, torch.bfloat16)
    half.update(torch.tensor([1.0, 2.0]), 0)
    assert half.factors[0].dtype == torch.bfloat16 and half.predict(1, torch.float32).dtype == torch.float32


# ------------------------------------------------------------------------------------------------- TaylorSeer
def test_taylorseer_schedule_and_exact_linear_forecast():
    policy = TaylorSeerPolicy(TaylorSeerConfig(cache_interval=3, warmup_steps=2, max_order=1, factor_dtype="float32"))
    runner, stats = make(policy)
    outs = []
    for s in range(8):
        # block outputs linear in the step: the order-1 forecast is exact
        out, ran = call_one(runner, 0.5 * s, [1.0 + s, 2.0, 3.0 * s, 4.0])
        outs.append(out)
        assert torch.allclose(out, torch.full_like(out, 0.5 * s + 1.0 + s + 2.0 + 3.0 * s + 4.0), atol=1e-5), s
    # compute while s < 2 or (s - 2 - 1) % 3 == 0: s = 0, 1, 3, 6
    assert [not r.skipped for r in stats.records] == [True, True, False, True, False, False, True, False]
    assert [r.reason for r in stats.records][:3] == ["no_cache", "warmup", "metric"]
    assert stats.records[5].metric == 2.0  # two calls since the last computed one


def test_taylorseer_two_segments_streams_and_factor_memory():
    for order, dtype, nbytes in ((0, "float32", 4), (1, "float32", 4), (2, "bfloat16", 2)):
        policy = TaylorSeerPolicy(TaylorSeerConfig(cache_interval=2, warmup_steps=1, max_order=order,
                                                   factor_dtype=dtype))
        runner, stats = make(policy, TWO, (2, 2))
        for s in range(6):
            b = 2
            img = torch.full((b, 4, 2), float(s))
            txt = torch.zeros(b, 3, 2)
            runner.begin_call(CallInfo([("c", "cond"), ("u", "uncond")]))
            st = runner.block(0, 0, {"img": img, "txt": txt}, lambda st: {"img": st["img"] + 1, "txt": st["txt"] + 1})
            st = runner.block(0, 1, st, lambda st: {"img": st["img"] + 1, "txt": st["txt"] + 1})
            x = runner.block(1, 0, {"img": torch.cat([st["txt"], st["img"]], 1)}, lambda st: {"img": st["img"] * 2})
            runner.block(1, 1, x, lambda st: {"img": st["img"] + 1})
            runner.end_call(0.0)
        # every stream: order + 1 factors (from the 3rd computed call) of img (4x2) + txt (3x2) + joint (7x2)
        per_stream = (order + 1) * (8 + 6 + 14) * nbytes
        factors = [sum(s.nbytes() for s in st.forecast.series.values()) for st in runner._streams.values()]
        assert factors == [per_stream, per_stream]
        assert stats.cache_bytes == 2 * per_stream
        assert stats.skipped_calls == 3  # warm-up 1: s = 0 computes; (s - 2) % 2 == 0: s = 2, 4 compute


def test_is_final_step_by_sigma_and_by_index():
    run = RunInfo((1.0, 0.8, 0.6, 0.4, 0.2, 0.0))
    assert [is_final_step(run, StreamCall(i, s), 2, 0) for i, s in enumerate(run.sigmas[:-1])] == [
        False, False, False, True, True]
    assert is_final_step(RunInfo(), StreamCall(8, None), 2, 10) and not is_final_step(RunInfo(), StreamCall(7, None), 2, 10)
    assert not is_final_step(RunInfo(), StreamCall(9, None), 2, 0)
    with pytest.raises(ValueError):
        TaylorSeerConfig(max_order=3)
    with pytest.raises(ValueError):
        TaylorSeerConfig(predict="attention outputs")
    with pytest.raises(ValueError, match="predicts"):
        TaylorSeerComponentPolicy(TaylorSeerConfig())
    with pytest.raises(ValueError):
        TaylorSeerConfig(warmup_steps=0)


# ------------------------------------------------------------------------------------------------- DBCache
def test_dbcache_decisions_strict_threshold_and_limits():
    policy = DBCachePolicy(DBCacheConfig(front_blocks=1, back_blocks=1, threshold=0.25, warmup_steps=2,
                                         max_cached_steps=2))
    runner, stats = make(policy)
    assert (policy.probe_blocks, policy.tail_blocks) == (1, 1)
    ran_all = []
    # Fn residual = block 0's add (exact in binary): diff vs the last computed one: -, (warm-up), 0.25 (equal:
    # computes, strict), 0 (cache), 0.2 (cache), then max_cached_steps 2 is reached
    for h in (1.0, 1.0, 1.25, 1.25, 1.5, 1.5):
        out, ran = call_one(runner, 0.0, [h, 2.0, 3.0, 4.0])
        ran_all.append(ran)
        assert torch.allclose(out, torch.full_like(out, h + 9.0))
    assert [r.reason for r in stats.records] == ["no_cache", "warmup", "metric", "metric", "metric", "max_cached"]
    assert [r.skipped for r in stats.records] == [False, False, False, True, True, False]
    assert [r.metric for r in stats.records][2:5] == pytest.approx([0.25, 0.0, 0.2])
    assert ran_all[3] == [0, 3] and ran_all[4] == [0, 3]  # Fn and Bn blocks always run
    with pytest.raises(ValueError, match="leave nothing to cache"):
        DBCacheConfig(front_blocks=3, back_blocks=1).check_blocks(4)
    with pytest.raises(ValueError):
        DBCacheConfig(front_blocks=0)


def test_dbcache_taylorseer_predicts_the_middle_residual():
    for order, expect_exact in ((0, False), (1, True)):
        policy = DBCachePolicy(DBCacheConfig(front_blocks=1, back_blocks=0, threshold=1.0, warmup_steps=2,
                                             taylorseer_order=order))
        runner, stats = make(policy)
        errs = []
        for s in range(6):
            out, _ = call_one(runner, 1.0, [1.0, 2.0 * s, 1.0, 0.5 * s])  # middle residual 1 + 2.5 s
            errs.append((out - (1.0 + 1.0 + 2.5 * s + 1.0)).abs().max().item())
        skipped = [r.skipped for r in stats.records]
        assert skipped == [False, False, True, True, True, True]
        if expect_exact:
            assert max(errs) < 1e-5  # linear residual: the order-1 forecast is exact
            assert stats.cache_bytes > 0
        else:
            assert errs[2:] == pytest.approx([2.5, 5.0, 7.5, 10.0])  # reuse of the step-1 residual


# ------------------------------------------------------------------------------------------------- adaptive
def test_adaptive_accumulates_scaled_input_change():
    policy = AdaptiveCachePolicy(AdaptiveCacheConfig(threshold=0.25, token_stride=1))
    runner, stats = make(policy, counts=(2,))
    # inputs x_t and stack residuals y_t (two blocks adding a_t each: y = 2 a_t)
    xs = [1.0, 1.2, 1.3, 1.4, 1.5, 1.6]
    a = [1.0, 1.5, 1.5, 1.5, 1.5, 1.5]
    for x, at in zip(xs, a):
        call_one(runner, x, [at, at])
    # calls 0, 1 compute (no k yet); k = |3 - 2| / |1.2 - 1| = 5, y_last = 3
    # call 2: acc = 5 * 0.1 / 3 = 0.1667 < 0.25 skip; call 3: 0.3333 -> compute, acc = 0
    # k from calls 1 and 3: |3 - 3| / 0.2 = 0 -> calls 4, 5 skip (acc stays 0)
    assert [r.skipped for r in stats.records] == [False, False, True, False, True, True]
    metrics = [r.metric for r in stats.records]
    assert metrics[:2] == [None, None]
    assert metrics[2] == pytest.approx(5 * 0.1 / 3, rel=1e-4) and metrics[3] == pytest.approx(2 * 5 * 0.1 / 3, rel=1e-4)
    assert metrics[4] == pytest.approx(0.0, abs=1e-6)


def test_adaptive_per_stream_state_and_batch_join():
    policy = AdaptiveCachePolicy(AdaptiveCacheConfig(threshold=0.25, token_stride=1))
    runner, stats = make(policy, counts=(2,))
    streams = (("c", "cond"), ("u", "uncond"))
    # cond as above; uncond's input jumps: its vote to compute makes the whole call compute ("batch")
    xs_c = [1.0, 1.2, 1.3, 1.4]
    xs_u = [1.0, 1.2, 3.0, 3.1]
    for xc, xu in zip(xs_c, xs_u):
        call_one(runner, [xc, xu], [1.5, 1.5] if xc > 1.0 else [1.0, 1.0], streams)
    recs = [(r.stream, r.call_index, r.skipped, r.reason) for r in stats.records]
    # call 2: cond's acc 5 * 0.1 / 3 < 0.25 would skip, uncond's 5 * 1.8 / 3 = 3 computes: the call computes;
    # both streams then measure k = 0 (same residual, input moved), so call 3 skips for both
    assert recs[4:] == [("cond", 2, False, "batch"), ("uncond", 2, False, "metric"),
                        ("cond", 3, True, "metric"), ("uncond", 3, True, "metric")]
    assert [r.metric for r in stats.records][4:6] == pytest.approx([5 * 0.1 / 3, 5 * 1.8 / 3], rel=1e-4)
    assert stats.skipped_calls == 1


# ------------------------------------------------------------------------------------ TaylorSeer, attention+MLP
def comp(interval=3, warmup=2, final=0, order=1, dtype="float32", steps=0):
    return taylorseer_policy(TaylorSeerConfig(cache_interval=interval, warmup_steps=warmup, final_full_steps=final,
                                              max_order=order, predict="attention+MLP outputs",
                                              factor_dtype=dtype, num_inference_steps=steps))


def test_taylorseer_component_schedule_final_steps_and_exact_linear_forecast():
    policy = comp(interval=3, warmup=2, final=2, order=2)
    assert isinstance(policy, TaylorSeerComponentPolicy) and isinstance(taylorseer_policy(TaylorSeerConfig()),
                                                                        TaylorSeerPolicy)
    site = policy.new_site_state()
    decisions = []
    for s in range(12):
        call = SiteCall("ffn", s, True, True, 12)
        y = torch.full((2, 3), 1.0 + 0.5 * s, dtype=torch.float64)  # linear in the step
        reuse = policy.reuse(site, call)
        decisions.append(reuse)
        if reuse:
            out = policy.cached(site, call)
            assert out.dtype == torch.float64
            assert site.order >= 1 and torch.allclose(out, y), s  # the 2nd difference is 0: exact
            policy.store(site, out, False, call)
        else:
            policy.store(site, y, True, call)
    # compute while s < 2, (s - 3) % 3 == 0, or s >= 12 - 2
    assert [not r for r in decisions] == [True, True, False, True, False, False, True, False, False, True, True,
                                          True]
    # without steps: num_inference_steps, else no final steps
    assert comp(final=2, steps=12).computes(SiteCall("spatial", 10, True, True, None))
    assert not comp(final=2).computes(SiteCall("spatial", 10, True, True, None))


def test_taylorseer_component_runner_predicts_per_stream_and_counts_factor_bytes():
    """Two streams batched, two sites per block (an attention slot and an ffn): outputs linear in the call index
    and different per stream, so an order-1 forecast is exact and any mix-up of streams shows."""
    layout = BlockLayout("toy", ("Toy",), (Segment("blocks", "b", ("img",), attention=("spatial",)),))
    for order, dtype, size in ((0, "float32", 4), (1, "float32", 4), (2, "bfloat16", 2)):
        policy = comp(interval=2, warmup=1, order=order, dtype=dtype)
        stats = RunStats(policy.name, policy.settings(), "toy")
        runner = ComponentCacheRunner(layout, [2], policy, stats)
        computed = []
        for s in range(7):
            runner.begin_call(CallInfo([("c", "cond"), ("u", "uncond")]))
            x = torch.stack([torch.full((4, 2), float(s)), torch.full((4, 2), 10.0 - 2 * s)])
            ran = []
            for i in range(2):
                def block(st, i=i):
                    a = runner.attention(lambda: ran.append("attn") or st["img"] * 1.0)
                    f = runner.attention(lambda: ran.append("ffn") or st["img"] + i, kind="ffn", slot=1000)
                    return {"img": a + f}
                x = out = runner.block(0, i, {"img": x}, block)["img"]
            computed.append(bool(ran))
            if order >= 1 and ran == [] and s >= 3:  # linear in s: exact once two computed calls are in
                x1 = torch.stack([torch.full((4, 2), float(s)), torch.full((4, 2), 10.0 - 2 * s)])
                want = 2 * (2 * x1) + 1  # block 0: x + x = 2x, block 1: 2x + 2x + 1
                assert torch.allclose(out, want, atol=1e-2 if dtype == "bfloat16" else 1e-5), (order, s)
            runner.end_call(0.0)
        assert computed == [True, False, True, False, True, False, True]  # s = 0 warm-up, (s - 2) % 2 == 0
        assert [r.metric for r in stats.records if r.stream == "cond"] == [0, 1, 0, 1, 0, 1, 0]
        # order + 1 factors of 4 sites x (4 x 2) values per stream, two streams
        assert stats.cache_bytes == 2 * (order + 1) * 4 * 8 * size
