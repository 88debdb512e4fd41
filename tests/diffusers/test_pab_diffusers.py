"""PAB on the diffusers host against diffusers' own hook (apply_pyramid_attention_broadcast), on tiny real
diffusers transformers (the side-by-side loop: support/diffusers_attention.py)."""
from __future__ import annotations

from typing import Callable

import pytest
import torch
from diffusers.hooks import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

from diffusers_attention import _compare, _window
from tiny_diffusers import _reinit

from dit_cache.hosts.diffusers import apply_cache
from dit_cache.cache_core.methods.pab import PABConfig


@pytest.mark.parametrize("family", ["flux", "wan"])
@pytest.mark.parametrize("spatial,cross", [(2, 3), (3, 0)])
def test_pab_matches_diffusers(family: str, spatial: int, cross: int) -> None:
    def theirs(model: torch.nn.Module, timestep: Callable) -> None:
        apply_pyramid_attention_broadcast(model, PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=spatial, cross_attention_block_skip_range=cross or None,
            spatial_attention_timestep_skip_range=(100, 800), cross_attention_timestep_skip_range=(100, 800),
            current_timestep_callback=timestep))

    ours = PABConfig(spatial_skip=spatial, cross_skip=cross, temporal_skip=0)
    pattern, stats = _compare(family, theirs, ours, {"spatial": _window(100, 800), "cross": _window(100, 800)})
    n_attn = len(pattern[0])
    assert any(len(p) < n_attn for p in pattern), "PAB reused nothing"
    assert stats.reuse["attention"][0] > 0


def test_attention_policy_refuses_model_without_attention_modules() -> None:
    model = _reinit(torch.nn.Linear(2, 2), 0)
    with pytest.raises(ValueError):
        apply_cache(model, PABConfig())
