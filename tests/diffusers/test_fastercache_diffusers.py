"""FasterCache on the diffusers host against diffusers' own hook (apply_faster_cache), on tiny real diffusers
transformers (the side-by-side loop: support/diffusers_attention.py); separate cond / uncond calls warn and compute."""
from __future__ import annotations

import logging
from typing import Any, Callable

import pytest
import torch
from diffusers.hooks import FasterCacheConfig as DFasterCacheConfig
from diffusers.hooks import apply_faster_cache

from diffusers_attention import CFG, STEPS, _batched, _compare, _timesteps, _window

from dit_cache.hosts.diffusers import apply_cache
from dit_cache.cache_core.methods.fastercache import FasterCacheConfig


@pytest.mark.parametrize("uncond_skip", [2, 5])
def test_fastercache_matches_diffusers(uncond_skip: int) -> None:
    def theirs(model: torch.nn.Module, timestep: Callable) -> None:
        apply_faster_cache(model, DFasterCacheConfig(
            spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 681),
            unconditional_batch_skip_range=uncond_skip, unconditional_batch_timestep_skip_range=(-1, 641),
            low_frequency_weight_update_timestep_range=(99, 901), high_frequency_weight_update_timestep_range=(-1, 301),
            alpha_low_frequency=1.1, alpha_high_frequency=1.1, attention_weight_callback=lambda _: 0.5,
            current_timestep_callback=timestep, tensor_format="BCFHW"))

    ours = FasterCacheConfig(spatial_skip=2, uncond_skip=uncond_skip, attention_weight=0.5)
    windows = {"spatial": _window(-1, 681), "uncond": _window(-1, 641), "low_freq": _window(99, 901),
               "high_freq": _window(-1, 301)}
    pattern, stats = _compare("wan", theirs, ours, windows)
    reused, total = stats.reuse["uncond"]
    assert 0 < reused < total == STEPS
    assert stats.reuse["attention"][0] > 0


def test_fastercache_separate_cfg_calls_warn_and_compute(caplog) -> None:
    """Pipelines that run cond and uncond as separate calls (diffusers' Flux and Wan pipelines): the uncond reuse
    cannot act; one warning, every call computed, no error in the middle of sampling; output equals FasterCache
    with the uncond reuse off (uncond_skip 0)."""
    model, x0, _ = _batched("wan")
    g = torch.Generator().manual_seed(7)
    ctx = torch.randn(2, 8, 32, generator=g)

    def run(config: FasterCacheConfig) -> tuple[torch.Tensor, Any]:
        cache = apply_cache(model, config)
        x = x0
        ts = _timesteps()
        for i in range(STEPS):
            out = {}
            for j, name in enumerate(("cond", "uncond")):
                with cache.stream(name, sigma=ts[i] / 1000.0):
                    out[name] = model(hidden_states=x, timestep=torch.tensor([ts[i]]),
                                      encoder_hidden_states=ctx[j:j + 1], return_dict=False)[0]
            x = x + (ts[i + 1] - ts[i]) / 1000.0 * (out["uncond"] + CFG * (out["cond"] - out["uncond"]))
        stats = cache.reset()
        cache.remove()
        return x, stats

    with caplog.at_level(logging.WARNING, logger="dit_cache"):
        out, stats = run(FasterCacheConfig(spatial_skip=2, uncond_skip=2))
    assert caplog.text.count("came in a separate call") == 1
    assert "uncond" not in stats.reuse or stats.reuse["uncond"][0] == 0
    ref, _ = run(FasterCacheConfig(spatial_skip=2, uncond_skip=0))
    assert torch.equal(out, ref)
