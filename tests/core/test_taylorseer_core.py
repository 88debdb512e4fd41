"""Unit tests of TaylorSeer (whole-step and attention+MLP modes) and its Taylor series, on toy blocks whose results
are known in closed form (support/toy_blocks.py)."""
from __future__ import annotations

import pytest
import torch

from toy_blocks import TWO, call_one, make

from dit_cache.cache_core import BlockLayout, CallInfo, RunStats, Segment
from dit_cache.cache_core.forecast import TaylorSeries
from dit_cache.cache_core.component_runner import ComponentCacheRunner, SiteCall
from dit_cache.cache_core.methods.taylorseer import (TaylorSeerComponentPolicy, TaylorSeerConfig, TaylorSeerPolicy,
                                             is_final_step, taylorseer_policy)
from dit_cache.cache_core.policy import RunInfo, StreamCall


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
