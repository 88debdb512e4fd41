"""SeaCache's indicator and decision rule, with results known in closed form (no ComfyUI, no diffusers)."""
from __future__ import annotations

import pytest
import torch

from dit_cache.cache_core import (BlockCacheRunner, BlockLayout, CallInfo, RunStats, SeaCacheConfig,
                                  SeaCachePolicy, Segment)
from dit_cache.cache_core.methods.seacache_signals import flow_sigma, relative_l1, sea_gain, sea_indicator
from dit_cache.cache_core.policy import RunInfo, StreamCall

LAYOUT = BlockLayout("toy", ("Toy",), (Segment("single", "s", ("img",)),))


# ------------------------------------------------------------------------------------------------ the indicator
def test_gain_on_a_2x2_grid_closed_form():
    # sigma 0.5: s = n = 0.5; per-axis gain s / (s^2 + n^2 |f|^3) at |f| = 0 and 0.5: 2 and 0.5 / 0.28125
    g0, g1 = 2.0, 0.5 / 0.28125
    grid = torch.tensor([[g0 * g0, g0 * g1], [g1 * g0, g1 * g1]])
    expected = grid / grid.mean()  # unit mean; the one-frame time axis only scales
    gain = sea_gain((1, 2, 2), 0.5, 3.0, torch.device("cpu"))
    assert gain.shape == (1, 2, 2)
    assert torch.allclose(gain[0], expected, rtol=1e-6)
    assert gain.mean().item() == pytest.approx(1.0, rel=1e-6)


def test_constant_latent_keeps_only_its_dc_component_scaled():
    x = torch.full((1, 3, 2, 2), 2.5)  # image latent (B, C, H, W): one frame
    gain = sea_gain((1, 2, 2), 0.5, 3.0, torch.device("cpu"))
    ind = sea_indicator(x, 0.5, 3.0)
    assert ind.shape == (1, 3, 1, 2, 2)
    assert torch.allclose(ind, torch.full_like(ind, 2.5 * gain[0, 0, 0].item()), rtol=1e-6)


def test_clean_latent_passes_unfiltered_and_high_noise_keeps_low_frequencies():
    x = torch.randn(1, 4, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(sea_indicator(x, 0.0, 3.0), x, atol=1e-5)  # s = 1, n = 0: gain 1 everywhere
    def ac_share(t: torch.Tensor) -> float:  # energy outside the mean (DC) relative to the mean's
        dc = t.mean(dim=(-3, -2, -1), keepdim=True)
        return ((t - dc).norm() / dc.expand_as(t).norm()).item()

    # at high noise the gain falls steeply with frequency: the indicator keeps mostly the low frequencies
    assert ac_share(sea_indicator(x, 0.9, 3.0)) < 0.5 * ac_share(sea_indicator(x, 0.1, 3.0)) < ac_share(x)


def test_sigma_mapping_and_shapes():
    assert flow_sigma(0.3) == 0.3 and flow_sigma(0.0) == 1e-6 and flow_sigma(1.0) == 1 - 1e-6
    assert flow_sigma(3.0) == pytest.approx(0.75)  # x0 + 3 eps has the SNR of the flow sigma 0.75
    x = torch.randn(2, 4, 5, 6)
    assert torch.allclose(sea_indicator(x, 3.0, 3.0), sea_indicator(x, 0.75, 3.0))
    assert sea_indicator(torch.randn(1, 64, 16), 0.5, 3.0) is None  # packed tokens: no indicator


def test_relative_l1_is_averaged_over_samples():
    prev = torch.ones(2, 3, 1, 2, 2)
    cur = prev * torch.tensor([2.0, 1.5]).view(2, 1, 1, 1, 1)
    assert relative_l1(cur, prev) == pytest.approx((1.0 + 0.5) / 2)


# ------------------------------------------------------------------------------------------------ the rule
def make(**kw) -> tuple[BlockCacheRunner, RunStats]:
    policy = SeaCachePolicy(SeaCacheConfig(**kw))
    stats = RunStats("SeaCache", policy.settings(), "toy")
    return BlockCacheRunner(LAYOUT, [2], policy, stats), stats


def call(runner: BlockCacheRunner, scale: float, residual: float) -> tuple[float, bool]:
    """One model call at sigma 0.5 whose latent is ``scale`` everywhere (distance = relative change of
    ``scale``) and whose two blocks add ``residual`` / 2 each. Returns (output, computed)."""
    ran = []

    def block(st):
        ran.append(1)
        return {"img": st["img"] + residual / 2}

    runner.begin_call(CallInfo([("c", "cond")], 0.5, torch.full((1, 2, 2, 2), scale)))
    x = {"img": torch.zeros(1, 3, 2)}
    x = runner.block(0, 0, x, block)
    x = runner.block(0, 1, x, block)
    runner.end_call(0.0)
    return x["img"][0, 0, 0].item(), bool(ran)


SCALES = [1.0, 1.1, 1.2, 1.5, 1.55, 1.6, 1.62, 1.64, 2.0, 2.1]
# relative changes: -, 0.1, 0.0909, 0.25, 0.0333, 0.0323, 0.0125, 0.0123, 0.2195, 0.05


@pytest.mark.parametrize("limit,expected", [
    # limit 2: s1, s2 skip (acc 0.19), s3 computes (2 in a row), s4 s5 skip, s6 computes, s7 s8 skip (acc 0.232),
    # s9 computes (the last step)
    (2, [True, False, False, True, False, False, True, False, False, True]),
    # no limit: s3 computes (acc 0.191 + 0.25 >= 0.25), s4-s7 skip (acc 0.090), s8 computes (0.310), s9 the end
    (0, [True, False, False, True, False, False, False, False, True, True]),
])
def test_accumulated_distance_retention_end_and_consecutive_limit(limit, expected):
    runner, stats = make(threshold=0.25, residual_order=0, retention_steps=1, cache_end_steps=1,
                         max_consecutive_cached=limit, num_inference_steps=len(SCALES))
    computed = [call(runner, a, 1.0)[1] for a in SCALES]
    assert computed == expected
    assert stats.records[0].metric is None
    # the reference moves on every call (skipped or not): the metric accumulates each call's own change
    acc, metrics = 0.0, []
    for i in range(1, len(SCALES)):
        acc += abs(SCALES[i] - SCALES[i - 1]) / SCALES[i - 1]
        metrics.append(acc)
        if expected[i]:
            acc = 0.0
    assert [r.metric for r in stats.records[1:]] == pytest.approx(metrics, rel=1e-5)


@pytest.mark.parametrize("order,expected", [(0, [3.0, 3.0, 3.0]), (1, [4.0, 5.0, 6.0])])
def test_skipped_calls_reuse_or_extrapolate_the_stack_residual(order, expected):
    runner, _ = make(threshold=0.25, residual_order=order, retention_steps=1, cache_end_steps=0,
                     max_consecutive_cached=0, num_inference_steps=10)
    scales = [1.0, 1.5, 2.25, 2.3, 2.35, 2.4]  # changes 0.5, 0.5 (compute), then ~0.02 each (skip)
    results = [call(runner, a, float(t + 1)) for t, a in enumerate(scales)]
    assert [c for _, c in results] == [True, True, True, False, False, False]
    # computed: residual t + 1; skipped at t: order 0 -> 3 (step 2's); order 1 -> 3 + (3 - 2)(t - 2)
    assert [out for out, _ in results[3:]] == pytest.approx(expected)


def test_threshold_zero_never_skips_and_missing_latent_computes(caplog):
    runner, stats = make(threshold=0.0, num_inference_steps=10)
    assert all(call(runner, 1.0, 1.0)[1] for _ in range(5))
    runner, stats = make(threshold=10.0, num_inference_steps=10)
    for _ in range(4):
        runner.begin_call(CallInfo([("c", "cond")], None, torch.ones(1, 2, 2, 2)))  # no sigma: no indicator
        runner.block(0, 0, {"img": torch.zeros(1, 3, 2)}, lambda st: st)
        runner.block(0, 1, {"img": torch.zeros(1, 3, 2)}, lambda st: st)
        runner.end_call(0.0)
    assert stats.skipped_calls == 0
    assert caplog.text.count("SeaCache: the model call has no sigma") == 1


def test_steps_from_the_schedule_decide_retention_and_end():
    policy = SeaCachePolicy(SeaCacheConfig(retention_steps=1, cache_end_steps=2))
    run = RunInfo((1.0, 0.8, 0.6, 0.4, 0.2, 0.0))  # 5 steps
    state = policy.new_run_state(run)
    forced = []
    for i, sigma in enumerate((1.0, 0.8, 0.7, 0.6, 0.4, 0.2)):  # 0.7: a second call inside step 1 (step 1.5)
        policy.begin_stream_call(state, StreamCall(i, sigma, "cond"))
        forced.append((state.step, policy.forced(state)))
    assert [s for s, _ in forced] == pytest.approx([0.0, 1.0, 1.5, 2.0, 3.0, 4.0])
    assert [f for _, f in forced] == [True, False, False, False, True, True]
    state = policy.new_run_state(RunInfo())  # no schedule (diffusers): call index, num_inference_steps (28)
    policy.begin_stream_call(state, StreamCall(26, 0.1, "cond"))
    assert (state.step, policy.forced(state)) == (26.0, True)


@pytest.mark.parametrize("kw,field", [
    ({"threshold": -0.1}, "threshold"), ({"threshold": float("nan")}, "threshold"),
    ({"residual_order": 2}, "residual_order"), ({"residual_order": True}, "residual_order"),
    ({"retention_steps": -1}, "retention_steps"), ({"cache_end_steps": 1.5}, "cache_end_steps"),
    ({"max_consecutive_cached": -1}, "max_consecutive_cached"), ({"power_exp": 0.0}, "power_exp"),
    ({"num_inference_steps": 0}, "num_inference_steps"), ({"start_percent": 0.6, "end_percent": 0.5}, "start_percent"),
])
def test_config_errors_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        SeaCacheConfig(**kw)


def test_defaults_are_diffusers_and_the_limit_maps_to_the_gate():
    c = SeaCacheConfig()
    assert (c.threshold, c.residual_order, c.retention_steps, c.cache_end_steps, c.max_consecutive_cached,
            c.power_exp) == (0.25, 1, 1, 1, 2, 3.0)
    assert c.gate.max_consecutive_skips == 2
    assert SeaCacheConfig(max_consecutive_cached=0).gate.max_consecutive_skips == -1
    assert SeaCachePolicy(c).forecaster is not None and SeaCachePolicy(SeaCacheConfig(residual_order=0)).forecaster is None
    assert "num_inference_steps" not in SeaCachePolicy(c).settings()
