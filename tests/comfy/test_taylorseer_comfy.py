"""TaylorSeer "attention+MLP outputs" through ComfyUI's real sampler on tiny Flux (CFG 1) and Wan (CFG 4):
every attention computation and feed-forward module is predicted on exactly the scheduled calls, the result
stays close to uncached, the prediction is not plain reuse, and the factors take the closed-form memory."""
from __future__ import annotations

import logging

import pytest
import torch

import tiny_models
from metrics import psnr
from sampling import ksample
from comfy_step_methods import ts as ts_blocks

from dit_cache.hosts.comfy import run_log
from dit_cache.nodes.taylorseer_node import ApplyTaylorSeer

from test_smoothcache_comfy import sites_per_kind

log = logging.getLogger("dit_cache.tests")
pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 20
CFG = {"flux": 1.0, "wan21": 4.0}
COMPONENTS = "attention+MLP outputs"
# Values of every site output per stream and model call (attention core outputs are tokens x hidden):
# tiny Flux (64 image + 8 text tokens, hidden 64): 2 double blocks x (joint attention 72 + img_mlp 64 +
# txt_mlp 8 tokens) + 4 single blocks x joint attention 72 tokens; tiny Wan (2 x 4 x 4 = 32 tokens, dim 64):
# 4 blocks x (self-attention + cross-attention + ffn) x 32 tokens.
SITE_VALUES = {"flux": (2 * (72 + 64 + 8) + 4 * 72) * 64, "wan21": 4 * 3 * 32 * 64}
# "block outputs" for comparison: the last block output of each block group (Flux img + txt, joint; Wan img)
BLOCK_VALUES = {"flux": (64 + 8 + 72) * 64, "wan21": 32 * 64}


def ts(model, interval=5, warmup=3, final=0, order=1, dtype="bfloat16", predict=COMPONENTS):
    return ApplyTaylorSeer.execute(model, cache_interval=interval, warmup_steps=warmup, final_full_steps=final,
                                   max_order=order, predict=predict, factor_dtype=dtype).result[0]


def computes(s: int, interval: int, warmup: int, final: int, steps: int = STEPS) -> bool:
    """The schedule in closed form (diffusers' TaylorSeerCacheConfig, plus the last ``final`` steps)."""
    return s < warmup or (s - warmup - 1) % interval == 0 or s >= steps - final


@pytest.fixture(scope="module", params=list(CFG))
def fam(request):
    tiny = tiny_models.build(request.param)
    return request.param, tiny, ksample(tiny.patcher, tiny, cfg=CFG[request.param], steps=STEPS)


@pytest.mark.parametrize("interval,warmup,final", [(5, 3, 0), (3, 2, 2)])
def test_predicts_exactly_the_schedule_close_to_uncached(fam, interval, warmup, final):
    name, tiny, ref = fam
    cfg = CFG[name]
    out = ksample(ts(tiny.patcher, interval, warmup, final), tiny, cfg=cfg, steps=STEPS)
    run = run_log.last()
    assert run["method"] == "TaylorSeer" and run["completed"] and torch.isfinite(out).all()
    assert run["settings"]["predict"] == COMPONENTS
    streams = {"cond"} if cfg == 1.0 else {"cond", "uncond"}
    per_stream: dict[str, list[float]] = {}
    for r in run["records"]:
        per_stream.setdefault(r["stream"], []).append(r["metric"])
    assert set(per_stream) == streams
    # every site of a call is predicted, or none: the reused fraction per call is 0 or 1
    expected = [0.0 if computes(s, interval, warmup, final) else 1.0 for s in range(STEPS)]
    for fractions in per_stream.values():
        assert fractions == expected
    sites = sum(sites_per_kind(tiny).values())
    reused, total = run["reuse"]["component"]
    assert total == STEPS * len(streams) * sites and reused == expected.count(1.0) * len(streams) * sites
    quality = psnr(out, ref)
    log.info("TaylorSeer %s on tiny %s, interval %d warm-up %d final %d: predicted %d/%d components, "
             "PSNR %.1f dB, cache %d bytes", COMPONENTS, name, interval, warmup, final, reused, total, quality,
             run["cache_bytes"])
    assert quality > 30


def test_prediction_is_not_plain_reuse_and_differs_from_block_mode(fam):
    name, tiny, ref = fam
    cfg = CFG[name]
    outs = {order: ksample(ts(tiny.patcher, order=order, dtype="float32"), tiny, cfg=cfg, steps=STEPS)
            for order in (0, 1)}
    block = ksample(ts(tiny.patcher, order=1, dtype="float32", predict="block outputs"), tiny, cfg=cfg,
                    steps=STEPS)
    assert not torch.allclose(outs[0], outs[1], atol=1e-4)  # order 1 extrapolates, order 0 reuses
    assert not torch.allclose(outs[1], block, atol=1e-4)  # another thing is predicted than in block mode
    assert not torch.allclose(outs[1], ref, atol=1e-4)  # something was predicted at all
    log.info("tiny %s: PSNR vs uncached order 0 %.1f dB, order 1 %.1f dB, block outputs order 1 %.1f dB", name,
             psnr(outs[0], ref), psnr(outs[1], ref), psnr(block, ref))


def test_factor_memory_closed_form(fam):
    """cache bytes = (order + 1) x the per-stream site output values x streams x the factor dtype's size."""
    name, tiny, _ = fam
    cfg = CFG[name]
    streams = 1 if cfg == 1.0 else 2
    sizes = {}
    for order in (0, 1, 2):
        for dtype, size in (("bfloat16", 2), ("float32", 4)):
            ksample(ts(tiny.patcher, 3, order=order, dtype=dtype), tiny, cfg=cfg, steps=STEPS)
            sizes[(order, dtype)] = n = run_log.last()["cache_bytes"]
            assert n == (order + 1) * SITE_VALUES[name] * streams * size, (order, dtype)
    ksample(ts(tiny.patcher, 3, order=1, predict="block outputs"), tiny, cfg=cfg, steps=STEPS)
    block = run_log.last()["cache_bytes"]
    log.info("TaylorSeer %s factor bytes on tiny %s (%d streams): %s; block outputs order 1 bfloat16: %d (%.1fx)",
             COMPONENTS, name, streams, sizes, block, sizes[(1, "bfloat16")] / block)
    assert block == 2 * BLOCK_VALUES[name] * streams * 2
    assert sizes[(1, "bfloat16")] / block == SITE_VALUES[name] / BLOCK_VALUES[name]  # Flux 4x, Wan 12x


def test_node_offers_both_targets():
    options = ApplyTaylorSeer.define_schema().inputs[5].options
    assert options == ["block outputs", COMPONENTS]


def test_taylorseer_schedule_final_steps_and_memory_per_order():
    tiny = tiny_models.build("flux")
    ksample(ts_blocks(tiny.patcher, 3, warmup=2, final=3), tiny)
    run = run_log.last()
    computed = [r["call_index"] for r in run["records"] if not r["skipped"]]
    assert computed == [0, 1, 3, 6, 9, 12, 15, 17, 18, 19]  # warm-up, every 3rd, the final 3
    # Taylor factors per stream: (order + 1) x (double img + txt + single joint outputs) x dtype size.
    # Tiny Flux: img 64 tokens, txt 8, hidden 64 -> (64 + 8 + 72) x 64 = 9216 values per factor.
    sizes = {}
    for order in (0, 1, 2):
        for dtype in ("bfloat16", "float32"):
            ksample(ts_blocks(tiny.patcher, 3, order=order, dtype=dtype), tiny)
            sizes[(order, dtype)] = run_log.last()["cache_bytes"]
    log.info("TaylorSeer factor bytes per stream (tiny Flux): %s", sizes)
    for (order, dtype), n in sizes.items():
        assert n == (order + 1) * 9216 * (2 if dtype == "bfloat16" else 4)
