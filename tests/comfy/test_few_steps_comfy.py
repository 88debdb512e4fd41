"""Few-step (distilled) schedules through ComfyUI's sampler: a run of at most 8 steps warns once, naming the step
count and the method, and says so in its run record; longer runs and calibration runs do not. Per method, at 4, 6
and 8 steps the metric-driven methods skip little or nothing on their own (docs/nodes.md, "Few-step models")."""
from __future__ import annotations

import logging

import pytest

import methods_registry
import tiny_models
from sampling import ksample

from dit_cache.cache_core.few_steps import FEW_STEPS, few_step_note
from dit_cache.hosts.comfy import run_log

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return tiny_models.build("flux")


@pytest.mark.parametrize("steps", (4, 8, 9, 20))
def test_warns_at_few_steps_only(tiny, steps, caplog):
    with caplog.at_level(logging.WARNING, logger="dit_cache"):
        ksample(methods_registry.METHODS["taylorseer"].apply(tiny.patcher, "mild", "flux"), tiny, steps=steps)
    warned = [r.getMessage() for r in caplog.records if "few-step" in r.getMessage()]
    details = run_log.last()["details"]
    if steps <= FEW_STEPS:
        assert len(warned) == 1 and f"{steps} sampling steps" in warned[0] and "TaylorSeer" in warned[0]
        assert warned[0].startswith("[dit-cache] ")
        assert details["few_steps"] == steps
    else:
        assert not warned and "few_steps" not in details


@pytest.mark.parametrize("method", ("fbc", "dbcache", "adaptive", "seacache"))
def test_metric_methods_skip_little_at_four_steps(tiny, method):
    """At 4 steps the metric-driven methods at their mild settings skip nothing: they limit themselves."""
    ksample(methods_registry.METHODS[method].apply(tiny.patcher, "mild", "flux"), tiny, steps=4)
    run = run_log.last()
    assert run["details"]["few_steps"] == 4 and run["skipped_calls"] == 0


def test_no_warning_for_calibrations_or_unknown_schedules():
    assert few_step_note("MagCacheCalibrate", [1.0, 0.5, 0.0]) is None
    assert few_step_note("SmoothCache Calibrate", [1.0, 0.5, 0.0]) is None
    assert few_step_note("First Block Cache", None) is None
    assert "fixed schedule" in few_step_note("DeepCache", [1.0, 0.5, 0.0])
