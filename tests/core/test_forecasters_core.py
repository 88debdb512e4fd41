"""The forecasters of cache_core/forecasters.py in closed form, on non-uniform grids; checked predictions and the
negative-branch rule of TaylorSeer."""
from __future__ import annotations

import math

import pytest
import torch

from dit_cache.cache_core.forecasters import (AdamsBashforthForecaster, FoCaForecaster, ForecastSite,
                                              HermiteForecaster, hermite, lagrange_weights, make_forecaster,
                                              memory_tensors, taylor_coefficients)
from dit_cache.cache_core.methods.taylorseer import TaylorSeerConfig, TaylorSeerPolicy
from dit_cache.cache_core.policy import Policy, RunInfo, StreamCall

# a shifted-schedule-like, non-uniform grid of sigmas (decreasing, as a sampler's)
GRID = [1.0, 0.93, 0.81, 0.6, 0.42, 0.2]
BASE = torch.linspace(-1.0, 1.0, 12).reshape(3, 4).double()


def poly(coeffs: list[float], t: float) -> torch.Tensor:
    """A tensor-valued polynomial: sum_k coeffs[k] t^k times (BASE + k)."""
    return sum(c * t ** k * (BASE + k) for k, c in enumerate(coeffs))


def feed(f, ts: list[float]) -> object:
    state = f.new_state()
    for t in ts:
        f.observe(state, "k", poly(COEFFS[:f.points], t), t)
    return state


COEFFS = [0.7, -1.3, 2.1, -0.9, 1.7]


@pytest.mark.parametrize("order", [1, 2, 3])
def test_adams_bashforth_is_exact_on_polynomials_of_its_order_on_non_uniform_steps(order: int):
    f = AdamsBashforthForecaster(order, dtype=torch.float64)
    coeffs = COEFFS[:order + 1]
    state = f.new_state()
    for t in GRID[:4]:
        f.observe(state, "k", poly(coeffs, t), t)
    for t in (0.5, 0.3, 0.05):  # steps of unequal size past the last observation
        torch.testing.assert_close(f.predict(state, "k", t, torch.float64), poly(coeffs, t), rtol=1e-10, atol=1e-10)
    # one order more is not exact (the check is not vacuous)
    higher = COEFFS[:order + 2]
    state = f.new_state()
    for t in GRID[:4]:
        f.observe(state, "k", poly(higher, t), t)
    assert not torch.allclose(f.predict(state, "k", 0.3, torch.float64), poly(higher, 0.3))


def test_adams_bashforth_uniform_steps_are_ab_caches_coefficients():
    assert lagrange_weights([2.0, 1.0], 3.0) == pytest.approx([2.0, -1.0])  # order 1 (2 F_n - F_{n-1})
    assert lagrange_weights([3.0, 2.0, 1.0], 4.0) == pytest.approx([3.0, -3.0, 1.0])


def test_taylor_coefficients_are_the_derivatives_at_the_newest_point():
    ts = [0.42, 0.6, 0.81, 0.93]
    c = taylor_coefficients(ts, [2 - 3 * t + 5 * t ** 2 - t ** 3 for t in ts])
    t0 = ts[0]
    assert c[0] == pytest.approx(2 - 3 * t0 + 5 * t0 ** 2 - t0 ** 3)
    assert c[1] == pytest.approx(-3 + 10 * t0 - 3 * t0 ** 2)
    assert c[2] == pytest.approx((10 - 6 * t0) / 2)
    assert c[3] == pytest.approx(-1.0)


def test_foca_is_exact_on_linear_and_halves_the_curvature_of_a_quadratic():
    f = FoCaForecaster(dtype=torch.float64)
    ts = [1.0, 0.81, 0.6]  # non-uniform
    state = f.new_state()
    for t in ts:
        f.observe(state, "k", poly([0.7, -1.3], t), t)
    torch.testing.assert_close(f.predict(state, "k", 0.3, torch.float64), poly([0.7, -1.3], 0.3))
    a, b, c = 0.7, -1.3, 2.1
    state = f.new_state()
    for t in ts:
        f.observe(state, "k", torch.tensor(a + b * t + c * t * t, dtype=torch.float64), t)
    t_n, t = 0.6, 0.3
    h = t - t_n
    # F_n + h F'(t_n) + h^2 F''/4: the Heun calibration of the BDF2 forecast
    expected = a + b * t_n + c * t_n ** 2 + h * (b + 2 * c * t_n) + h * h * (2 * c) / 4
    assert f.predict(state, "k", t, torch.float64).item() == pytest.approx(expected)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("scale", [0.5, 1 / math.sqrt(2)])
def test_hermite_closed_form_on_polynomials_of_its_order(order: int, scale: float):
    f = HermiteForecaster(order, scale, dtype=torch.float64)
    coeffs = COEFFS[:order + 1]
    ts = GRID[:order + 1]
    state = f.new_state()
    for t in ts:
        f.observe(state, "k", poly(coeffs, t), t)
    t_n, unit = ts[-1], ts[-1] - ts[-2]
    for t in (0.35, 0.1):
        x = (t - t_n) / unit
        expected = poly(coeffs, t_n).clone()
        for k in range(1, order + 1):  # p^(k)(t_n) unit^k s^k H_k(s x) / k!
            deriv = sum(c * math.perm(j, k) * t_n ** (j - k) * (BASE + j) for j, c in enumerate(coeffs) if j >= k)
            expected = expected + deriv * unit ** k * scale ** k * hermite(k, scale * x) / math.factorial(k)
        torch.testing.assert_close(f.predict(state, "k", t, torch.float64), expected, rtol=1e-9, atol=1e-9)


def test_hermite_at_scale_one_over_sqrt2_is_exact_on_linear_trajectories():
    f = HermiteForecaster(1, 1 / math.sqrt(2), dtype=torch.float64)
    state = f.new_state()
    for t in (0.9, 0.7):
        f.observe(state, "k", poly([0.7, -1.3], t), t)
    torch.testing.assert_close(f.predict(state, "k", 0.2, torch.float64), poly([0.7, -1.3], 0.2))


@pytest.mark.parametrize("name,order,tensors", [("taylor", 2, 3), ("adams-bashforth 1", 1, 2),
                                                 ("adams-bashforth 3", 1, 4), ("foca", 1, 3), ("hermite", 2, 3)])
def test_memory_per_stream_is_the_stated_number_of_tensors(name: str, order: int, tensors: int):
    f = make_forecaster(name, order, torch.float32)
    assert memory_tensors(name, order) == tensors
    state = f.new_state()
    value = torch.ones(2, 3)
    for s, sigma in enumerate(GRID):
        f.observe(state, "k", value * s, f.coordinate(s, sigma))
    assert Policy.state_bytes(state) == tensors * value.numel() * 4


def test_sigma_clock_falls_back_to_call_index_and_repeated_time_replaces():
    f = make_forecaster("adams-bashforth 1", 1, torch.float64)
    assert f.coordinate(3, None) == 3.0 and f.coordinate(3, 0.25) == 0.25
    site = ForecastSite(f)
    site.update(torch.tensor(1.0, dtype=torch.float64), 0)
    site.update(torch.tensor(3.0, dtype=torch.float64), 1)
    assert site.predict(2).item() == pytest.approx(5.0)
    site.update(torch.tensor(4.0, dtype=torch.float64), 1)  # the same time again: replaces that value only
    assert site.predict(2).item() == pytest.approx(7.0)  # through (0, 1) and (1, 4)


def test_bad_forecaster_inputs_name_the_field():
    with pytest.raises(ValueError, match="forecaster"):
        TaylorSeerConfig(forecaster="bogus")
    with pytest.raises(ValueError, match="check_blocks"):
        TaylorSeerConfig(check_blocks=-1)
    with pytest.raises(ValueError, match="block outputs"):
        TaylorSeerConfig(predict="attention+MLP outputs", uncond_interval=2)
    with pytest.raises(ValueError):
        AdamsBashforthForecaster(4)


def test_checked_prediction_rejects_a_bad_forecast_and_accepts_a_good_one():
    policy = TaylorSeerPolicy(TaylorSeerConfig(cache_interval=4, warmup_steps=2, check_blocks=1, check_threshold=0.1,
                                               forecaster="adams-bashforth 1"))
    assert policy.probe_blocks == 1
    run = RunInfo(sigmas=tuple(1.0 - i / 10 for i in range(11)))
    state = policy.new_run_state(run)

    def call(step: int, probe: torch.Tensor) -> bool:
        policy.begin_stream_call(state, StreamCall(step, run.sigmas[step], "cond"))
        skip = policy.wants_skip(state, policy.metric(state, probe))
        policy.commit(state, probe, not skip)
        return skip

    line = lambda s: torch.full((2, 3), 1.0 + 0.5 * run.sigmas[s])  # noqa: E731 - linear in sigma
    assert not call(0, line(0)) and not call(1, line(1))  # warm-up
    assert call(2, line(2)) and call(3, line(3))  # exact forecasts pass the check
    assert not call(4, line(4) * 3)  # a far-off probe fails: computed
    assert state.rejected == 1 and state.last_computed == 4


def test_negative_branch_computes_on_every_nth_positive_compute_and_rebuilds_from_the_difference():
    policy = TaylorSeerPolicy(TaylorSeerConfig(cache_interval=2, warmup_steps=1, uncond_interval=2,
                                               forecaster="adams-bashforth 1"))
    assert policy.uncond_reuse
    st = policy.new_uncond_state()
    run = RunInfo(sigmas=tuple(1.0 - i / 10 for i in range(11)))
    computed = []
    for s in range(10):
        sigma = run.sigmas[s]
        policy.uncond_begin(st, sigma, run)
        cond = torch.full((2,), 2.0 * sigma)
        uncond = cond + (0.5 - sigma)  # the difference is linear in sigma: rebuilt exactly from two of them
        if policy.uncond_skips(st, True):
            # with one computed difference it is reused, from two on it is extrapolated (AB 1)
            expected = uncond if len(computed) >= 2 else cond + (0.5 - run.sigmas[computed[-1]])
            torch.testing.assert_close(policy.uncond_rebuild(st, cond, lambda name: True), expected)
        else:
            computed.append(s)
            policy.uncond_observe(st, cond, uncond)
    # warm-up (0), then positive computes at 2, 4, 6, 8 (schedule (s - 2) % 2 == 0): one in two -> 2, 6
    assert computed == [0, 2, 6]
    assert st.rebuilt == 7
