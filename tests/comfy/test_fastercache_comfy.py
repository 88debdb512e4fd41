"""Apply FasterCache through ComfyUI's real sampler on tiny Wan and Flux (uncond branch rebuilt, attention
extrapolated), with PSNR reported; its frequency split and rebuild in closed form."""
from __future__ import annotations

import logging

import pytest
import torch

import tiny_models
from comfy_attention import STEPS, faster, per_stream
from metrics import psnr
from sampling import ksample

from dit_cache.cache_core.methods.fastercache import UncondState, split_frequencies, uncond_observe, uncond_rebuild
from dit_cache.hosts.comfy import run_log

log = logging.getLogger("dit_cache.tests")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("separate", [False, True])
def test_fastercache_rebuilds_the_uncond_branch(separate):
    tiny = tiny_models.build("wan21")
    neg = tiny.conditioning(2, tokens=3) if separate else None
    ref = ksample(tiny.patcher, tiny, cfg=4.0, steps=STEPS, negative=neg)
    out = ksample(faster(tiny.patcher, uncond=3, attention_start=0.0, uncond_start=0.0), tiny, cfg=4.0, steps=STEPS,
                  negative=neg)
    run = run_log.last()
    reused, total = run["reuse"]["uncond"]
    # skipped at every step i > 0 with i % 3 != 0 (window from the first step)
    assert (reused, total) == (sum(1 for i in range(1, STEPS) if i % 3), STEPS)
    streams = per_stream(run)
    assert len(streams["cond"]) == STEPS and len(streams["uncond"]) == STEPS - reused
    # attention is extrapolated only in calls without an uncond branch: the cond calls of rebuilt steps
    assert 0 < run["reuse"]["attention"][0]
    assert all(f == 0 for f in streams["uncond"])
    quality = psnr(out, ref)
    log.info("FasterCache on tiny Wan (%s CFG): uncond rebuilt %d/%d, attention %s, PSNR %.1f dB",
             "separate" if separate else "batched", reused, total, run["reuse"]["attention"], quality)
    assert quality > 25


def test_fastercache_at_cfg_1_logs_and_extrapolates_attention_only(caplog):
    tiny = tiny_models.build("flux")
    ref = ksample(tiny.patcher, tiny, steps=STEPS)
    with caplog.at_level(logging.INFO, logger="dit_cache"):
        out = ksample(faster(tiny.patcher), tiny, steps=STEPS)
    run = run_log.last()
    assert "CFG is 1" in caplog.text
    assert "uncond" not in run["reuse"] and run["reuse"]["attention"][0] > 0
    assert psnr(out, ref) > 30


def test_frequency_split_and_rebuild_closed_form():
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 4, 3, 10, 12, generator=g), torch.randn(2, 4, 3, 10, 12, generator=g)
    low, high = split_frequencies(cond)
    assert torch.allclose(torch.fft.ifft2(torch.fft.ifftshift(low + high, dim=(-2, -1))).real, cond, atol=1e-5)
    state = UncondState()
    uncond_observe(state, cond, uncond)
    assert torch.allclose(uncond_rebuild(state, cond, 1.0, 1.0), uncond, atol=1e-5)  # same cond -> same uncond
    shifted = cond + 0.5
    rebuilt = uncond_rebuild(state, shifted, 1.0, 1.0)
    assert torch.allclose(rebuilt, uncond + 0.5, atol=1e-5)  # the difference carries over
    # weights compound: delta_low scaled twice after two rebuilds at alpha 2
    state2 = UncondState()
    uncond_observe(state2, cond, uncond)
    d0 = state2.delta_low.clone()
    uncond_rebuild(state2, cond, 2.0, 1.0)
    uncond_rebuild(state2, cond, 2.0, 1.0)
    assert torch.allclose(state2.delta_low, 4 * d0)
