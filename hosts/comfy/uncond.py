"""FasterCache's unconditional-branch reuse in ComfyUI: a keyed CALC_COND_BATCH wrapper.

On a step the policy skips, the sampler's cond list is passed on with the uncond entry left out (ComfyUI then
runs only the conditional chunks, whether it would have batched cond and uncond or run them apart) and the
uncond result is rebuilt from the conditional one (cache_core/fastercache.py). ``calc_cond_batch`` returns
denoised predictions; the spectra are taken of ``(x - denoised) / sigma``, which is the model's own output for
flow-matching (velocity) and epsilon models, so the stored differences mean the same thing at every sigma.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from ...cache_core.component_runner import AttentionCacheRunner
from ...cache_core.methods.fastercache import (frequency_weights, uncond_observe, uncond_rebuild, uncond_should_skip)

log = logging.getLogger("dit_cache")


def _eps(x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return (x - denoised) / sigma


def calc_cond_batch_wrapper(executor: Any, model: Any, conds: list, x_in: torch.Tensor, timestep: torch.Tensor,
                            model_options: dict) -> Any:
    from .patch import RUN_KEY

    runner = model_options.get("transformer_options", {}).get(RUN_KEY)
    if not isinstance(runner, AttentionCacheRunner) or runner.uncond_state is None:
        return executor(model, conds, x_in, timestep, model_options)
    has_uncond = len(conds) > 1 and conds[1] is not None
    if not has_uncond:
        if not runner.cfg_active and not runner.uncond_idle_logged:
            runner.uncond_idle_logged = True
            log.info("[dit-cache] %s: CFG is 1 (no unconditional branch is computed), so the unconditional-branch "
                     "reuse does nothing in this run; attention reuse still applies", runner.policy.name)
        return executor(model, conds, x_in, timestep, model_options)
    runner.cfg_active = True
    config, state = runner.policy.config, runner.uncond_state
    sigma = float(timestep.reshape(-1)[0])
    sig = timestep.reshape(-1, *([1] * (x_in.ndim - 1))).to(x_in.dtype)
    if uncond_should_skip(config, state, runner.windows["uncond"].contains(sigma)):
        runner.uncond_dropped = True
        try:
            out = executor(model, [conds[0], None, *conds[2:]], x_in, timestep, model_options)
        finally:
            runner.uncond_dropped = False
        weights = frequency_weights(config, runner.windows["low_freq"].contains(sigma),
                                    runner.windows["high_freq"].contains(sigma))
        eps_uncond = uncond_rebuild(state, _eps(x_in, out[0], sig), *weights)
        out[1] = x_in - eps_uncond * sig
        runner.stats.count("uncond", 1, 1)
        return out
    out = executor(model, conds, x_in, timestep, model_options)
    uncond_observe(state, _eps(x_in, out[0], sig), _eps(x_in, out[1], sig))
    runner.stats.count("uncond", 0, 1)
    return out
