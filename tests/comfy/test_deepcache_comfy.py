"""Apply DeepCache, and Apply FirstBlockCache on UNets, through ComfyUI's real sampler on tiny real SD1.5 and SDXL
UNets (``comfy.supported_models.SD15`` / ``SDXL``): exact full and shallow block calls, quality, bit-identity when
off or when nothing is reused, CFG streams batched and separate, bad input refused before sampling."""
from __future__ import annotations

import logging
from collections import Counter

import pytest
import torch

import tiny_models
from metrics import psnr
from sampling import ksample

from dit_cache.hosts.comfy import run_log
from dit_cache.nodes.deepcache_node import ApplyDeepCache
from dit_cache.nodes.fbc_node import ApplyFirstBlockCache

log = logging.getLogger("dit_cache.tests")

FAMILIES = ("sd15", "sdxl")
CFG = 4.0


def apply_deepcache(model, interval, depth=1, start=0.0, end=1.0, warmup=0):
    return ApplyDeepCache.execute(model, interval=interval, branch_depth=depth, start_percent=start,
                                  end_percent=end, warmup_steps=warmup).result[0]


def apply_fbc(model, threshold):
    return ApplyFirstBlockCache.execute(model, threshold=threshold, start_percent=0.0, end_percent=1.0,
                                        max_consecutive_skips=-1, warmup_steps=0).result[0]


@pytest.fixture(scope="module", params=FAMILIES)
def unet(request):
    return tiny_models.build(request.param)


class BlockCalls:
    """Counts real calls of every UNet block: a forward pre-hook on each block's first layer."""

    def __init__(self, tiny) -> None:
        dm = tiny.patcher.model.diffusion_model
        self.counts: Counter = Counter()
        blocks = [(f"in{k}", b) for k, b in enumerate(dm.input_blocks)] + [("mid", dm.middle_block)]
        blocks += [(f"out{k}", b) for k, b in enumerate(dm.output_blocks)]
        self.handles = [b[0].register_forward_pre_hook(self._hook(name)) for name, b in blocks]

    def _hook(self, name):
        def hook(module, args):
            self.counts[name] += 1
        return hook

    def __enter__(self) -> Counter:
        return self.counts

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("interval,depth", [(3, 1), (2, 2)])
def test_interval_gives_exactly_the_full_and_shallow_block_calls(unet, interval, depth):
    steps = 20
    n = len(unet.patcher.model.diffusion_model.input_blocks)
    model = apply_deepcache(unet.patcher, interval, depth)
    with BlockCalls(unet) as counts:
        out = ksample(model, unet, steps=steps, cfg=CFG)  # cond and uncond batched: one model call per step
    run = run_log.last()
    full = -(-steps // interval)
    assert run["calls"] == steps and run["skipped_calls"] == steps - full
    assert {r["stream"] for r in run["records"]} == {"cond", "uncond"}
    assert torch.isfinite(out).all()
    keep = 1 + depth  # stem + branch_depth input blocks, and the output blocks popping their skips
    for k in range(n):
        assert counts[f"in{k}"] == (steps if k < keep else full), (k, counts)
        assert counts[f"out{k}"] == (steps if k >= n - keep else full), (k, counts)
    assert counts["mid"] == full
    assert 0.0 < run["skipped_cost"] < 1.0  # the shallow branch's measured share of a full call
    assert run["ideal_speedup"] == pytest.approx(steps / (full + (steps - full) * run["skipped_cost"]))
    log.info("DeepCache %s N=%d depth %d: shallow branch %.0f %% of a full call, ideal %.2fx", unet.family,
             interval, depth, 100 * run["skipped_cost"], run["ideal_speedup"])


def test_mild_setting_stays_close_and_aggressive_skips(unet):
    ref = ksample(unet.patcher, unet, cfg=CFG)
    mild = ksample(apply_deepcache(unet.patcher, 2), unet, cfg=CFG)
    assert run_log.last()["skipped_calls"] == 10
    assert psnr(mild, ref) >= 30.0
    aggressive = ksample(apply_deepcache(unet.patcher, 5), unet, cfg=CFG)
    assert run_log.last()["skipped_calls"] == 16 and torch.isfinite(aggressive).all()
    assert not torch.equal(aggressive, ref)


def test_off_and_nothing_reused_are_bit_identical(unet):
    ref = ksample(unet.patcher, unet, cfg=CFG)
    off = apply_deepcache(unet.patcher, 1)
    assert off is unet.patcher  # interval 1: the model is returned untouched
    # patched, every block through the proxies, but every call full (warm-up longer than the run)
    out = ksample(apply_deepcache(unet.patcher, 3, warmup=1000), unet, cfg=CFG)
    assert run_log.last()["skipped_calls"] == 0
    assert torch.equal(out, ref)
    assert torch.equal(ksample(unet.patcher, unet, cfg=CFG), ref)  # the original model is unchanged


def test_separate_cfg_streams_each_follow_the_interval():
    tiny = tiny_models.build("sd15")
    model = apply_deepcache(tiny.patcher, 3)
    neg = tiny.conditioning(2, tokens=3)  # another text length: cond and uncond run as separate calls
    ref = ksample(tiny.patcher, tiny, cfg=CFG, steps=12, negative=neg)
    out = ksample(model, tiny, cfg=CFG, steps=12, negative=neg)
    run = run_log.last()
    assert run["calls"] == 24
    for stream in ("cond", "uncond"):
        records = [r for r in run["records"] if r["stream"] == stream]
        assert [r["skipped"] for r in records] == [i % 3 != 0 for i in range(12)]
    assert psnr(out, ref) >= 30.0


def test_branch_depth_beyond_the_unet_is_refused_before_sampling(caplog):
    tiny = tiny_models.build("sdxl")
    n = len(tiny.patcher.model.diffusion_model.input_blocks)
    with pytest.raises(ValueError, match="Apply DeepCache.*at most"):
        apply_deepcache(tiny.patcher, 3, depth=n - 1)
    assert not tiny.patcher.object_patches
    dit = tiny_models.build("flux")
    with caplog.at_level(logging.WARNING, logger="dit_cache"):
        assert apply_deepcache(dit.patcher, 3) is dit.patcher
    assert "only applies to UNet models" in caplog.text and "Flux" in caplog.text


def test_first_block_cache_on_unets(unet):
    ref = ksample(unet.patcher, unet, cfg=CFG)
    with BlockCalls(unet) as counts:
        out = ksample(apply_fbc(unet.patcher, 0.05), unet, cfg=CFG)
    run = run_log.last()
    computed = run["calls"] - run["skipped_calls"]
    assert 0 < run["skipped_calls"] < run["calls"]
    assert counts["in1"] == 20 and counts["in2"] == counts["mid"] == counts["out5"] == computed
    assert all(r["metric"] is not None for r in run["records"] if r["call_index"] > 0)
    assert psnr(out, ref) >= 30.0
    # a threshold nothing meets: every block through the proxies, same bits
    assert torch.equal(ksample(apply_fbc(unet.patcher, 1e-9), unet, cfg=CFG), ref)
    assert run_log.last()["skipped_calls"] == 0


def test_unet_patch_keeps_weight_names_and_lora_patches():
    """The proxies share the blocks' modules: a weight patch (what a LoRA does) on a deep block still lands."""
    tiny = tiny_models.build("sd15")
    cached = apply_deepcache(tiny.patcher, 2)
    assert type(cached.get_model_object("diffusion_model.input_blocks.3")).__name__ == "UNetBlockProxy"
    assert set(cached.model_state_dict()) == set(tiny.patcher.model_state_dict())
    lora = cached.clone()
    key = "diffusion_model.middle_block.0.in_layers.2.weight"
    w = lora.get_model_object(key)
    lora.add_patches({key: (torch.ones_like(w) * 0.05,)}, 1.0)
    assert not torch.equal(ksample(lora, tiny, cfg=CFG), ksample(cached, tiny, cfg=CFG))


def test_transformer_index_matches_the_full_forward():
    """Skipped blocks still advance transformer_options["transformer_index"] (attention patches are keyed on it)."""
    tiny = tiny_models.build("sd15")
    seen: list[tuple] = []

    def attn2(q, k, v, extra_options):
        seen.append((extra_options["block"], extra_options["transformer_index"]))
        return q, k, v

    patched = tiny.patcher.clone()
    patched.set_model_attn2_patch(attn2)
    ksample(patched, tiny, steps=2, cfg=1.0)
    full = set(seen)
    seen.clear()
    ksample(apply_deepcache(patched, 2), tiny, steps=2, cfg=1.0)
    assert set(seen) <= full and seen[-1] == max(full, key=lambda s: s[1])
