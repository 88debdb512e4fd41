"""The tuner's search (cache_core/tune.py) on a synthetic method whose error grows with its knob: it finds the
fastest passing value within the bisection's resolution, judges the worst seed with the margin, skips a method
whose slow end misses, stops integer knobs at adjacent values, and the tune file round-trips."""
from __future__ import annotations

import math

import pytest
import torch

from dit_cache.cache_core import tune
from dit_cache.cache_core.registry import MethodSpec, TuneKnob

REF = torch.linspace(0, 1, 256).reshape(1, 1, 16, 16)


def spec(key: str, knob: TuneKnob) -> MethodSpec:
    return MethodSpec(key=key, label=key, config=type(key, (), {}), policy=lambda c: c, tune=knob)


def run_with(error_of, rows_of):
    calls = []

    def run(method, value, seed):
        calls.append((method, value, seed))
        if method is None:
            return tune.Measured(REF.clone(), 100)
        # PSNR of REF + e (peak 1): 10 log10(1 / e^2) = -20 log10(e); seed 1 a little worse
        e = error_of(value) * (1.2 if seed == 1 else 1.0)
        return tune.Measured(REF + e * torch.sign(torch.randn(REF.shape, generator=torch.Generator().manual_seed(seed))),
                             rows_of(value))
    return run, calls


def test_float_knob_finds_the_fastest_passing_value_on_the_worst_seed():
    # error 0.01 * value: PSNR(value) = 40 - 20 log10(value) (seed 0); seed 1 is 1.58 dB worse
    run, calls = run_with(lambda v: 0.01 * v, lambda v: max(1, int(100 / (1 + v))))
    res = tune.tune({"x": spec("x", TuneKnob("k", 0.1, 10.0, steps=8))}, run, [0, 1], "PSNR", 30.0)
    # worst seed passes 31 dB: 40 - 20 log10(1.2 v) >= 31  <=>  v <= 10**(9/20) / 1.2 = 2.345
    limit = 10 ** (9 / 20) / 1.2
    assert res.winner is not None and res.winner.method == "x"
    assert res.winner.value <= limit and res.winner.value > limit * 0.85
    assert res.winner.quality >= 31.0 and all(p.passed == (p.quality >= 31.0) for p in res.points)
    assert sum(1 for c in calls if c[0] is None) == 2  # one reference per seed
    assert len(res.points) <= 2 + 8 and res.curve()["x"][0][1] <= res.curve()["x"][-1][1]


def test_integer_knob_stops_at_adjacent_values_and_a_hopeless_method_is_skipped():
    run, _ = run_with(lambda v: 0.004 * v, lambda v: max(1, int(100 / v)))
    knobs = {"i": spec("i", TuneKnob("n", 2, 40, integer=True)),
             "bad": spec("bad", TuneKnob("t", 0.5, 1.0))}
    def run2(method, value, seed):
        if method == "bad":  # hopeless: misses even at its slow end
            return tune.Measured(REF + 0.5, 50)
        return run(method, value, seed)
    res = tune.tune(knobs, run2, [0], "PSNR", 30.0)
    # PSNR = 20 log10(1 / (0.004 n)) >= 31  <=>  n <= 7.05
    assert res.winner.method == "i" and res.winner.value == 7.0
    assert {p.value for p in res.points if p.method == "i"} >= {7.0, 8.0}
    assert "bad" in res.skipped and all(not p.passed for p in res.points if p.method == "bad")


def test_metric_checks_and_file_round_trip(tmp_path):
    assert tune.quality("PSNR", REF, REF) == tune.IDENTICAL_PSNR
    assert tune.quality("SSIM", REF, REF) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown metric"):
        tune.quality("LPIPS", REF, REF)
    with pytest.raises(ValueError, match="low"):
        TuneKnob("k", 1.0, 1.0)
    tf = tune.TuneFile(method="x", knob="k", value=2.0, inputs={"k": 2.0}, speedup=2.5, quality=31.2, metric="PSNR",
                       target=30.0, margin=1.0, seeds=[0, 1], family="flux", model_class="Flux", block_hash="ab",
                       weights_hint="cd", steps=20, sampler="euler", scheduler="simple", cfg=1.0, denoise=1.0,
                       measured_on="latent", curve={"x": [[1.0, 1.5, 40.0], [2.0, 2.5, 31.2], [3.0, 3.0, 28.0]]},
                       knobs={"x": {"input": "k", "fixed": {"f": 1}}}, skipped={})
    path = tune.write(tmp_path / "a.json", tf)
    back = tune.read(path)
    assert back == tf and back.name == "a.json"
    assert tune.best_at(back, 30.0)[:2] == ("x", 2.0) and tune.best_at(back, 36.0)[:2] == ("x", 1.0)
    assert tune.best_at(back, 45.0) is None and tune.point_inputs(back, "x", 3.0) == {"f": 1, "k": 3.0}
    (tmp_path / "b.json").write_text('{"format": "other"}', encoding="utf-8")
    with pytest.raises(ValueError, match="not a dit-cache.tune.v1"):
        tune.read(tmp_path / "b.json")
    assert math.isfinite(tune.count_runs({"x": spec("x", TuneKnob("k", 0.1, 1.0))}, 2))
