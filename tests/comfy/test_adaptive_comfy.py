"""The adaptive cache through ComfyUI's real sampler on tiny models."""
from __future__ import annotations

import logging

import pytest

import tiny_models
from comfy_step_methods import ad
from sampling import ksample

from dit_cache.hosts.comfy import run_log

log = logging.getLogger("dit_cache.tests")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_adaptive_last_step_and_warmup_window_compute():
    tiny = tiny_models.build("flux")
    ksample(ad(tiny.patcher, 100.0, start=0.3), tiny)
    recs = run_log.last()["records"]
    skipped = [r["call_index"] for r in recs if r["skipped"]]
    assert skipped and min(skipped) >= 6 and 19 not in skipped
    assert recs[-1]["reason"] == "metric" and not recs[-1]["skipped"]
