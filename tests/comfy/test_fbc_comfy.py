"""Apply FirstBlockCache through ComfyUI's real sampler on tiny real Flux / Wan / Qwen-Image models."""
from __future__ import annotations

import logging

import pytest
import torch

import tiny_models
from metrics import psnr
from sampling import ksample

from dit_cache.hosts.comfy import run_log
from dit_cache.nodes.fbc_node import ApplyFirstBlockCache

log = logging.getLogger("dit_cache.tests")

# Measured FBC metric per step of the tiny models (random weights, time embedding smoothed like a trained
# model's, see tiny_models.smooth_time_embedding), 20 Euler steps: Flux 0.04 -> 0.16, Wan 0.01 -> 0.18,
# Qwen-Image 0.09 -> 0.31, rising towards the end as in trained models' traces.
CASES = {  # family: (cfg, aggressive threshold, mild threshold)
    "flux": (1.0, 0.12, 0.06),
    "wan21": (4.0, 0.08, 0.03),
    "qwen_image": (4.0, 0.15, 0.1),
}


def apply_fbc(model, threshold, start=0.0, end=1.0, max_skips=-1, warmup=0):
    return ApplyFirstBlockCache.execute(model, threshold=threshold, start_percent=start, end_percent=end,
                                        max_consecutive_skips=max_skips, warmup_steps=warmup).result[0]


@pytest.fixture(scope="module", params=list(CASES))
def fam(request):
    return request.param, tiny_models.build(request.param)


def test_skips_and_stays_close(fam):
    name, tiny = fam
    cfg, aggressive, mild = CASES[name]
    ref = ksample(tiny.patcher, tiny, cfg=cfg)
    results = {}
    for threshold in (aggressive, mild):
        out = ksample(apply_fbc(tiny.patcher, threshold), tiny, cfg=cfg)
        run = run_log.last()
        assert torch.isfinite(out).all()
        results[threshold] = (run["skipped_calls"], run["calls"], psnr(out, ref))
    log.info("FBC %s: %s", name, {t: f"skipped {s}/{c}, PSNR {p:.1f} dB" for t, (s, c, p) in results.items()})
    skipped, calls, quality = results[aggressive]
    assert 0 < skipped < calls
    assert results[mild][0] <= skipped
    assert results[mild][2] >= 25.0, results  # close to uncached at the mild setting


def test_threshold_zero_and_nothing_skipped_are_bit_identical(fam):
    name, tiny = fam
    cfg = CASES[name][0]
    ref = ksample(tiny.patcher, tiny, cfg=cfg)
    disabled = apply_fbc(tiny.patcher, 0.0)
    assert disabled is tiny.patcher  # 0 disables: the model is returned untouched
    assert torch.equal(ksample(disabled, tiny, cfg=cfg), ref)
    # patched, but a threshold nothing meets: every block runs through our replacements, same bits
    out = ksample(apply_fbc(tiny.patcher, 1e-9), tiny, cfg=cfg)
    assert run_log.last()["skipped_calls"] == 0
    assert torch.equal(out, ref)
    # the original model is not changed by patching a clone
    assert torch.equal(ksample(tiny.patcher, tiny, cfg=cfg), ref)


def test_batched_and_separate_cfg_streams():
    tiny = tiny_models.build("wan21")
    cfg, aggressive, _ = CASES["wan21"]
    model = apply_fbc(tiny.patcher, aggressive)
    # same text length: ComfyUI batches cond and uncond into one call
    ref = ksample(tiny.patcher, tiny, cfg=cfg, steps=16)
    out = ksample(model, tiny, cfg=cfg, steps=16)
    batched = run_log.last()
    assert batched["calls"] == 16 and set(batched_streams(batched)) == {"cond", "uncond"}
    assert 0 < batched["skipped_calls"] < 16
    assert psnr(out, ref) > 20
    # a 3-token negative cannot be concatenated with an 8-token positive: separate calls per stream
    neg = tiny.conditioning(2, tokens=3)
    ref = ksample(tiny.patcher, tiny, cfg=cfg, steps=16, negative=neg)
    out = ksample(model, tiny, cfg=cfg, steps=16, negative=neg)
    separate = run_log.last()
    assert separate["calls"] == 32
    per_stream = {s: [r for r in separate["records"] if r["stream"] == s] for s in ("cond", "uncond")}
    assert all(len(v) == 16 for v in per_stream.values())
    assert all(any(r["skipped"] for r in v) for v in per_stream.values())
    assert torch.isfinite(out).all() and psnr(out, ref) > 20


def batched_streams(run):
    return {r["stream"] for r in run["records"]}


def test_batch_decisions_are_per_stream_and_samples_do_not_mix():
    """Decisions are made per CFG stream for the whole batch; each sample keeps its own residuals."""
    tiny = tiny_models.build("flux")
    model = apply_fbc(tiny.patcher, CASES["flux"][1])
    single = ksample(model, tiny)
    skipped_single = run_log.last()["skipped_calls"]
    noise = tiny.noise(1)
    twin = ksample(model, tiny, noise=torch.cat([noise, noise]))
    assert run_log.last()["skipped_calls"] == skipped_single > 0
    assert torch.allclose(twin[0], single[0], atol=1e-4) and torch.allclose(twin[1], single[0], atol=1e-4)
    pair = torch.cat([tiny.noise(1, seed=5), tiny.noise(1, seed=6)])
    a = ksample(model, tiny, noise=pair)
    b = ksample(model, tiny, noise=pair.flip(0))
    assert run_log.last()["skipped_calls"] > 0
    assert torch.allclose(a, b.flip(0), atol=1e-4)
    assert not torch.allclose(a[0], a[1], atol=1e-2)


def test_two_samplers_resolution_change_and_interrupt_leave_no_stale_state():
    import comfy.model_management

    tiny = tiny_models.build("flux")
    model = apply_fbc(tiny.patcher, CASES["flux"][1])
    small = tiny.noise(1)
    big = torch.randn((1, 16, 24, 24), generator=torch.Generator().manual_seed(3))
    fresh_big = ksample(apply_fbc(tiny.patcher, CASES["flux"][1]), tiny, noise=big)
    # two samplers on the same patched model in one graph, the second at another resolution
    ksample(model, tiny, noise=small)
    assert torch.equal(ksample(model, tiny, noise=big), fresh_big)
    first_call = run_log.last()["records"][0]
    assert first_call["reason"] == "no_cache" and not first_call["skipped"]

    def interrupt(step, x0, x, total):
        if step == 6:
            raise comfy.model_management.InterruptProcessingException()

    with pytest.raises(comfy.model_management.InterruptProcessingException):
        ksample(model, tiny, noise=small, callback=interrupt)
    assert run_log.last()["completed"] is False
    assert torch.equal(ksample(model, tiny, noise=big), fresh_big)


def test_window_and_limits_are_respected():
    tiny = tiny_models.build("flux")
    steps = 20
    ksample(apply_fbc(tiny.patcher, 10.0, start=0.25, end=0.75, max_skips=2, warmup=3), tiny, steps=steps)
    recs = run_log.last()["records"]
    skipped = [r["call_index"] for r in recs if r["skipped"]]
    assert skipped and min(skipped) >= 5 and max(skipped) <= 15  # inside 25 %..75 % of 20 steps
    runs = 0
    for r in recs:
        runs = runs + 1 if r["skipped"] else 0
        assert runs <= 2
    assert not any(r["skipped"] for r in recs[:3])


def test_second_cache_node_is_a_clear_error_and_lora_style_clones_keep_working():
    tiny = tiny_models.build("flux")
    model = apply_fbc(tiny.patcher, 0.5)
    with pytest.raises(ValueError, match="already has FirstBlockCache"):
        apply_fbc(model, 0.3)
    # a weight patch on a clone (what a LoRA loader does) keeps the cache and changes the result
    lora = model.clone()
    key = "diffusion_model.double_blocks.0.img_attn.qkv.weight"
    w = lora.get_model_object(key)
    lora.add_patches({key: (torch.ones_like(w) * 0.05,)}, 1.0)
    out_lora = ksample(lora, tiny)
    assert run_log.last()["skipped_calls"] > 0
    assert not torch.equal(out_lora, ksample(model, tiny))


def test_existing_block_patch_of_another_pack_is_kept():
    tiny = tiny_models.build("flux")
    seen = []
    other = tiny.patcher.clone()

    def other_patch(args, extra):
        seen.append(1)
        return extra["original_block"](args)

    other.set_model_patch_replace(other_patch, "dit", "double_block", 1)
    ref = ksample(other, tiny)
    n_uncached = len(seen)
    seen.clear()
    out = ksample(apply_fbc(other, 1e-9), tiny)
    assert len(seen) == n_uncached == 20 and torch.equal(out, ref)


def test_unsupported_model_is_returned_unchanged_with_a_warning(caplog):
    """A diffusion model that is neither a known DiT nor a UNet (here: the SD1.5 UNet's model with its network
    swapped for a plain module) comes back unchanged, with a warning naming it. (UNets themselves take First
    Block Cache: tests/comfy/test_deepcache_comfy.py.)"""
    model = tiny_models.build_sd15_unet()
    model.model.diffusion_model = torch.nn.Identity()
    with caplog.at_level(logging.WARNING, logger="dit_cache"):
        out = apply_fbc(model, 0.1)
    assert out is model
    assert "Identity is not a supported DiT model" in caplog.text


def test_blocks_that_bypass_the_cache_are_reported(caplog):
    """If the blocks never reach the cache (a forward that ignores patches_replace, or a node that replaced
    the block patches after ours), the run says so instead of silently skipping nothing."""
    tiny = tiny_models.build("flux")
    model = apply_fbc(tiny.patcher, 0.5).clone()
    for kind, n in (("double_block", 2), ("single_block", 4)):
        for i in range(n):
            model.set_model_patch_replace(lambda args, extra: extra["original_block"](args), "dit", kind, i)
    with caplog.at_level(logging.WARNING, logger="dit_cache"):
        out = ksample(model, tiny)
    assert torch.equal(out, ksample(tiny.patcher, tiny))
    assert "none of its blocks went through the cache" in caplog.text
    assert run_log.last()["calls"] == 0
