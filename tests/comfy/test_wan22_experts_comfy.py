"""Wan 2.2 A14B's two experts in one graph, as its workflows wire them: the high-noise expert samples the first
steps (KSamplerAdvanced, leftover noise returned), the low-noise expert the rest from the switch step, each with its
own cache node. Each expert's cache has its own state, each sampling run starts afresh (the first call of each run
computes), the low-noise run's calls start at the switch step's sigma, and repeated runs of the graph give the
same bits (nothing carries over between runs or experts)."""
from __future__ import annotations

import logging

import pytest
import torch

import methods_registry
import tiny_models
from metrics import psnr

from dit_cache.hosts.comfy import run_log

log = logging.getLogger("dit_cache.tests")

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS, SWITCH, CFG = 12, 5, 4.0


def _two_experts(high, low, tiny_high) -> torch.Tensor:
    """The Wan 2.2 two-sampler graph: KSamplerAdvanced(high, 0..SWITCH, leftover noise) -> KSamplerAdvanced(low,
    SWITCH..STEPS, no new noise)."""
    import nodes

    positive, negative = tiny_high.conditioning(1), tiny_high.conditioning(2)
    latent = {"samples": tiny_high.latent()}
    ks = nodes.KSamplerAdvanced()
    mid = ks.sample(high, "enable", 0, STEPS, CFG, "euler", "simple", positive, negative, latent, 0, SWITCH,
                    "enable")[0]
    return ks.sample(low, "disable", 0, STEPS, CFG, "euler", "simple", positive, negative, mid, SWITCH, 10000,
                     "disable")[0]["samples"]


@pytest.mark.parametrize("method", ("fbc", "magcache", "taylorseer"))
def test_two_experts_keep_their_own_state_per_run(method):
    high, low = tiny_models.build("wan21", seed=0), tiny_models.build("wan21", seed=1)
    ref = _two_experts(high.patcher, low.patcher, high)
    cached_high = methods_registry.METHODS[method].apply(high.patcher, "mild", "wan21")
    cached_low = methods_registry.METHODS[method].apply(low.patcher, "mild", "wan21")
    run_log.clear()
    out = _two_experts(cached_high, cached_low, high)
    runs = [r for r in run_log.recent() if "Calibrat" not in r["method"]]
    assert len(runs) == 2
    first, second = runs
    assert first["spec_id"] != second["spec_id"]  # one cache per expert
    assert first["calls"] == SWITCH and second["calls"] == STEPS - SWITCH  # the switch step splits the calls
    for run in runs:  # each run starts afresh: its first call computes, with nothing cached
        head = [r for r in run["records"] if r["call_index"] == 0]
        assert head and all(not r["skipped"] for r in head), head
    # the low-noise run's first call is at the schedule's sigma of the switch step, the high-noise run's last
    # call one step before it
    sigmas = [r["sigma"] for r in first["records"]] + [r["sigma"] for r in second["records"]]
    assert max(r["sigma"] for r in second["records"]) < min(r["sigma"] for r in first["records"])
    assert sigmas == sorted(sigmas, reverse=True)
    assert first["skipped_calls"] + second["skipped_calls"] > 0
    quality = psnr(out, ref)
    log.info("Wan 2.2 experts, %s mild: high %d/%d skipped, low %d/%d skipped, PSNR %.1f dB", method,
             first["skipped_calls"], first["calls"], second["skipped_calls"], second["calls"], quality)
    assert quality > 30.0
    # the same graph again: the same bits, nothing carried over between runs or experts
    assert torch.equal(_two_experts(cached_high, cached_low, high), out)
    # the experts swapped (each cache now meets the other half of the schedule): still fresh per run
    run_log.clear()
    _two_experts(cached_low, cached_high, high)
    for run in [r for r in run_log.recent() if "Calibrat" not in r["method"]]:
        assert not [r for r in run["records"] if r["call_index"] == 0][0]["skipped"]
