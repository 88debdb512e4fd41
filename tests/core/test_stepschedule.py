"""Step Schedule without a host: the DP against brute force, forecast weights, the feature reduction, the
calibration file and the mapping of chosen steps to other step counts."""
from __future__ import annotations

import math
import random

import pytest
import torch

from dit_cache.cache_core.forecasters import make_forecaster
from dit_cache.cache_core.methods import stepschedule_calibration as cal_io
from dit_cache.cache_core.methods.stepschedule import (StepScheduleConfig, StepSchedulePolicy, plan, uniform_steps)
from dit_cache.cache_core.policy import RunInfo, StreamCall
from dit_cache.cache_core.schedule_dp import (ErrorTable, brute_force, error_table, forecast_weights,
                                              optimal_schedules)


def random_table(t: int, seed: int, points: int) -> ErrorTable:
    """A hand-made table: random errors (with a dependence on the previous computed step when points > 1)."""
    rng = random.Random(seed)
    err = torch.full((t + 1, t, t), math.inf, dtype=torch.float64)
    for b in range(t):
        for a in [t, *range(b)]:
            for i in range(b + 1, t):
                base = (i - b) * rng.random()
                err[a, b, i] = base if points == 1 or a == t else base * (0.5 + rng.random())
        if points == 1:
            err[:b, b, b + 1:] = err[t, b, b + 1:]
    return ErrorTable(err, points)


@pytest.mark.parametrize("points", [1, 2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dp_equals_brute_force_on_small_tables(points, seed):
    t = 8
    table = random_table(t, seed, points)
    found = optimal_schedules(table)
    for n in range(1, t + 1):
        best = brute_force(table, n)
        assert found[n].error == pytest.approx(best.error, abs=1e-12), n
        assert len(found[n].steps) == n and found[n].steps[0] == 0
        # the DP's steps really have the error it reports
        assert brute_force_error(table, found[n].steps) == pytest.approx(found[n].error, abs=1e-12)
    assert found[t].error == 0.0


def brute_force_error(table: ErrorTable, steps: list[int]) -> float:
    t, err, (a, b) = table.steps, 0.0, (table.steps, 0)
    for i in range(1, t):
        if i in steps:
            a, b = b, i
        else:
            err += float(table.err[a, b, i])
    return err


def test_forecast_weights_are_the_forecasters_own():
    times = [1.0, 0.9, 0.75, 0.5, 0.3]
    w = forecast_weights(make_forecaster("adams-bashforth 1", 1, torch.float64), times)
    # linear extrapolation on sigmas through (0.9, F1) and (1.0, F0), at 0.75
    assert w([1, 0], 2) == pytest.approx([1 + 0.15 / 0.1, -0.15 / 0.1])
    assert forecast_weights(None, times)([3, 1], 4) == [1.0, 0.0]
    taylor = forecast_weights(make_forecaster("taylor", 1, torch.float64), [])
    assert taylor([2, 0], 3) == pytest.approx([1.5, -0.5])  # index clock: F2 + (F2 - F0) / 2


def test_a_linear_trajectory_costs_nothing_with_a_linear_forecaster():
    t, d = 10, 6
    feats = torch.stack([torch.ones(d) * (1 + 0.1 * k) for k in range(t)])
    weights = forecast_weights(make_forecaster("taylor", 1, torch.float64), [])
    table = error_table(feats, weights, [1.0] * t, 2)
    found = optimal_schedules(table)
    assert found[2].error == pytest.approx(0.0, abs=1e-6)
    reuse = error_table(feats, forecast_weights(None, []), [1.0] * t, 1)
    assert optimal_schedules(reuse)[2].error > 0.01


def test_reduction_is_bounded_and_linear():
    x = torch.randn(1, 4096, 3072 // 8)
    y = torch.randn(1, 4096, 3072 // 8)
    fx = cal_io.reduce_feature(x)
    assert fx.numel() == cal_io.MAX_TOKENS * cal_io.PROJ_DIM
    assert torch.allclose(cal_io.reduce_feature(2 * x - y), 2 * fx - cal_io.reduce_feature(y), atol=1e-3)
    small = torch.randn(2, 3, 5)
    assert torch.equal(cal_io.reduce_feature(small), small.reshape(-1, 5).reshape(-1))


def make_cal(t: int = 12) -> cal_io.StepCalibration:
    g = torch.Generator().manual_seed(0)
    sigmas = [1.0 - k / t for k in range(t + 1)]
    base = torch.randn(64, generator=g)
    feats = torch.stack([base * (1 + 0.2 * math.sin(k)) + 0.05 * torch.randn(64, generator=g) for k in range(t)])
    return cal_io.StepCalibration(features={"cond": feats, "uncond": feats * 0.9},
                                  call_sigmas={"cond": sigmas[:t], "uncond": sigmas[:t]}, family="flux", steps=t,
                                  sigmas=sigmas)


def test_calibration_file_round_trip(tmp_path):
    cal = make_cal()
    path = cal_io.save(tmp_path / "s.safetensors", cal)
    back = cal_io.load(path)
    assert back.steps == cal.steps and set(back.features) == {"cond", "uncond"}
    assert torch.equal(back.features["cond"], cal.features["cond"])
    assert back.call_sigmas["cond"] == pytest.approx(cal.call_sigmas["cond"])
    with pytest.raises(cal_io.CalibrationError):
        cal_io.save(tmp_path / "bad.safetensors", cal_io.StepCalibration({}, {}, "flux", 12))


@pytest.mark.parametrize("on_skipped", ["reuse", "adams-bashforth 1", "taylor"])
def test_plan_beats_uniform_and_meets_budget_or_error(on_skipped):
    cal = make_cal()
    plans = plan(cal, 5, 0.0, on_skipped, 1)
    for p in plans.values():
        assert len(p.steps) == 5 and p.steps[0] == 0
        assert p.error <= p.uniform_error + 1e-12
        assert p.positions == pytest.approx([k / 11 for k in p.steps])
    loose = plan(cal, 0, 0.5, on_skipped, 1)["cond"]
    tight = plan(cal, 0, 0.01, on_skipped, 1)["cond"]
    assert len(tight.steps) >= len(loose.steps) and tight.dp_error <= 0.01 + 1e-12


def run_policy(config: StepScheduleConfig, steps: int, calls_per_step: int = 1) -> list[int]:
    """Call indices the policy computes for one stream over a run of ``steps`` evenly spaced steps."""
    sig = tuple(1.0 - k / steps for k in range(steps + 1))
    policy = StepSchedulePolicy(config)
    state = policy.new_run_state(RunInfo(sig))
    out, call = [], 0
    for k in range(steps):
        for c in range(calls_per_step):
            s = sig[k] + (sig[k + 1] - sig[k]) * c / calls_per_step
            policy.begin_stream_call(state, StreamCall(call, s, "cond"))
            skip = policy.wants_skip(state, policy.metric(state, None))
            policy.commit(state, None, not skip)
            if not skip:
                out.append(call)
            call += 1
    return out


def test_mapping_is_exact_at_the_calibrated_steps_and_bounded_elsewhere():
    chosen = [0, 1, 3, 7, 12, 19]
    config = StepScheduleConfig(positions={"cond": [k / 19 for k in chosen]}, calibrated_steps=20,
                                chosen={"cond": chosen})
    assert run_policy(config, 20) == chosen
    assert run_policy(config, 40) == [0, 3, 7, 15, 25, 39]  # positions k/19 -> first call at or after them
    ten = run_policy(config, 10)
    assert ten[0] == 0 and len(ten) <= len(chosen)
    heun = run_policy(config, 20, calls_per_step=2)
    assert len(heun) == len(chosen) and heun[0] == 0


def test_uniform_steps():
    assert uniform_steps(20, 5) == [0, 4, 8, 12, 16]
    assert uniform_steps(4, 9) == [0, 1, 2, 3]
