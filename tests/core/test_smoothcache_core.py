"""SmoothCache core: schedule rule, error measurement and calibration files, with closed-form expectations."""
from __future__ import annotations

import math

import pytest
import torch

from dit_cache.cache_core.methods import smoothcache_calibration as smooth_io
from dit_cache.cache_core.component_runner import SiteCall
from dit_cache.cache_core.methods.magcache_calibration import CalibrationError
from dit_cache.cache_core.methods.smoothcache import (SmoothCacheCalibratePolicy, SmoothCacheConfig, SmoothCachePolicy,
                                              build_schedule, resample)

NAN = math.nan


def table(lag1, lag2=None, lag3=None):
    n = len(lag1)
    return [lag1, lag2 or [NAN] * n, lag3 or [NAN] * n]


def test_schedule_takes_the_longest_run_within_budget():
    # lag-1 errors small everywhere, lag 2 small from step 2 on, lag 3 never: runs of 2 reuses after each compute
    errors = {"ffn": table([NAN] + [0.1] * 9, [NAN, NAN] + [0.1] * 8, [NAN] * 3 + [0.5] * 7)}
    sched = build_schedule(errors, alpha=0.15)["ffn"]
    # step 0 computes; 1,2 reuse (err1[1], err2[2] <= a); 3 computes; 4,5 reuse; 6; 7,8 reuse; 9 is the last
    assert sched == [True, False, False, True, False, False, True, False, False, True]


def test_schedule_checks_every_lag_and_keeps_last_step():
    # lag 3 within budget but lag 1 at step 1 is not: the stricter rule computes step 1
    errors = {"spatial": table([NAN, 0.9, 0.1, 0.1, 0.1, 0.1], [NAN, NAN, 0.1, 0.1, 0.1, 0.1],
                               [NAN, NAN, NAN, 0.1, 0.1, 0.1])}
    sched = build_schedule(errors, 0.15)["spatial"]
    # 0 compute; k=3 needs err1[1] <= a: no; k=2, k=1 too: 1 computes; from 1: k=3 -> 4 < 5 ok: 2,3,4 reuse; 5 last
    assert sched == [True, True, False, False, False, True]
    assert build_schedule(errors, 0.0)["spatial"] == [True] * 6  # alpha 0 never reuses (errors > 0)


def test_resample_nearest_index():
    errors = {"ffn": [[0.0, 1.0, 2.0, 3.0, 4.0]]}
    assert resample(errors, 3)["ffn"] == [[0.0, 2.0, 4.0]]
    assert resample(errors, 9)["ffn"][0] == [0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 3.0, 4.0, 4.0]  # round() ties to even


def test_calibration_measures_relative_l1_per_lag():
    """y_s = 1 + s everywhere: err_k(s) = |y_s - y_(s-k)| / |y_s| = k / (1 + s), averaged over two sites."""
    got = {}
    pol = SmoothCacheCalibratePolicy(lambda errors, streams, ok: got.update(errors=errors, streams=streams),
                                     sample_stride=1)
    sites = [pol.new_site_state(), pol.new_site_state()]
    for s in range(6):
        for site in sites:
            pol.store(site, torch.full((2, 3), 1.0 + s), True, SiteCall("ffn", s, True, True, 6))
    pol.finish_run([("cond", {})], True)
    rows = got["errors"]["ffn"]
    for k in (1, 2, 3):
        for s in range(6):
            want = k / (1 + s) if s >= k else NAN
            assert (math.isnan(rows[k - 1][s]) and math.isnan(want)) or rows[k - 1][s] == pytest.approx(want)
    assert got["streams"] == ["cond"]


def test_policy_reuses_on_scheduled_steps_only():
    errors = {"ffn": table([NAN] + [0.01] * 5), "spatial": table([NAN] + [1.0] * 5)}
    pol = SmoothCachePolicy(SmoothCacheConfig(errors=errors, alpha=0.1))
    assert pol.schedule(6)["spatial"] == [True] * 6
    assert pol.schedule(6)["ffn"] == [True, False, True, False, True, True]  # lag 2/3 unknown (NaN): k = 1
    site = pol.new_site_state()
    decisions = []
    for s in range(6):
        call = SiteCall("ffn", s, True, True, 6)
        reuse = pol.reuse(site, call)
        decisions.append(reuse)
        pol.store(site, torch.tensor([float(s)]), not reuse, call)
        if reuse:
            assert pol.cached(site, call).item() == s - 1  # the last computed output
    assert decisions == [False, True, False, True, False, False]


def test_saved_schedule_used_for_its_length_rebuilt_otherwise():
    errors = {"ffn": table([NAN] + [0.01] * 5)}
    saved = {"ffn": [True, True, True, True, False, True]}  # not what alpha would build
    cfg = SmoothCacheConfig(errors=errors, alpha=0.1, schedule=saved)
    assert cfg.schedule_for(6) == saved
    assert cfg.schedule_for(11)["ffn"][:4] == [True, True, False, True]  # step 1 maps to step 0 (NaN): computes


@pytest.mark.parametrize("bad", [
    dict(errors={}), dict(errors={"mlp": [[0.1, 0.1]]}), dict(errors={"ffn": [[0.1, 0.1], [0.1]]}),
    dict(errors={"ffn": [[0.1, 0.1]]}, alpha=-0.1), dict(errors={"ffn": [[0.1, -1.0]]}),
    dict(errors={"ffn": [[0.1, 0.1]]}, schedule={"ffn": [True]}),
])
def test_config_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        SmoothCacheConfig(**bad)


def test_file_round_trip_and_errors(tmp_path):
    errors = {"ffn": table([NAN, 0.05, 0.2, 0.05]), "spatial": table([NAN, 0.3, 0.3, 0.3])}
    cal = smooth_io.SmoothCalibration(errors=errors, alpha=0.1, family="flux", block_hash="abc")
    path = smooth_io.save(tmp_path / "s.safetensors", cal)
    back = smooth_io.load(path)
    assert back.family == "flux" and back.alpha == 0.1 and back.steps == 4 and back.block_hash == "abc"
    assert back.schedule == build_schedule(errors, 0.1) == cal.schedule
    assert back.errors["ffn"][0][1] == pytest.approx(0.05) and math.isnan(back.errors["ffn"][0][0])
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CalibrationError, match="corrupt"):
        smooth_io.load(tmp_path / "bad.safetensors")
    from dit_cache.cache_core.methods import magcache_calibration as mag_io
    with pytest.raises(CalibrationError, match="not a dit-cache MagCache"):
        mag_io.load(path)
    assert mag_io.file_format(path) == smooth_io.FORMAT


def test_calibrating_needs_two_steps_before_the_run():
    from dit_cache.cache_core.policy import RunInfo

    policy = SmoothCacheCalibratePolicy()
    policy.check_run(RunInfo(sigmas=(1.0, 0.5, 0.0)))
    policy.check_run(RunInfo())
    with pytest.raises(ValueError, match="SmoothCache calibration needs at least 2 sampling steps, this run has 1"):
        policy.check_run(RunInfo(sigmas=(1.0, 0.0)))
