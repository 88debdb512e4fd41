"""The unconditional-branch reuse in ComfyUI (FasterCache, TaylorSeer's uncond_interval): a keyed CALC_COND_BATCH
wrapper.

On a step the policy skips, the sampler's cond list is passed on with the uncond entry left out (ComfyUI then
runs only the conditional chunks, whether it would have batched cond and uncond or run them apart) and the
uncond result is rebuilt from the conditional one (``StreamRunner.reuse_uncond``, shared with the
diffusers host). ``calc_cond_batch`` returns denoised predictions; the spectra are taken of
``(x - denoised) / sigma``, which is the model's own output for flow-matching (velocity) and epsilon models, so
the stored differences mean the same thing at every sigma. When a step's cond-only calls meet new weights (a hook
keyframe, ``CallInfo.weights``), the uncond entry is computed alone after all and joined to the cond result.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from .keys import RUN_KEY

log = logging.getLogger("dit_cache")


def _eps(x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return (x - denoised) / sigma


def calc_cond_batch_wrapper(executor: Any, model: Any, conds: list, x_in: torch.Tensor, timestep: torch.Tensor,
                            model_options: dict) -> Any:
    runner = model_options.get("transformer_options", {}).get(RUN_KEY)
    if runner is None or getattr(runner, "uncond_state", None) is None:
        return executor(model, conds, x_in, timestep, model_options)
    has_uncond = len(conds) > 1 and conds[1] is not None
    if not has_uncond:
        if not runner.cfg_active and not runner.uncond_idle_logged:
            runner.uncond_idle_logged = True
            log.info("[dit-cache] %s: CFG is 1 (no unconditional branch is computed), so the unconditional-branch "
                     "reuse does nothing in this run; the rest of the method still applies", runner.policy.name)
        return executor(model, conds, x_in, timestep, model_options)
    runner.cfg_active = True
    sig = timestep.reshape(-1, *([1] * (x_in.ndim - 1))).to(x_in.dtype)
    result: list[Any] = []

    def full() -> tuple[torch.Tensor, torch.Tensor]:
        out = executor(model, conds, x_in, timestep, model_options)
        result.append(out)
        return _eps(x_in, out[0], sig), _eps(x_in, out[1], sig)

    def cond_only() -> torch.Tensor:
        out = executor(model, [conds[0], None, *conds[2:]], x_in, timestep, model_options)
        result.append(out)
        return _eps(x_in, out[0], sig)

    def uncond_only() -> torch.Tensor:
        # after cond_only, when that step's weights changed (a hook keyframe): the uncond branch alone, joined to
        # the cond result
        out = executor(model, [None, *conds[1:]], x_in, timestep, model_options)
        joined = list(result[-1])
        joined[1:] = out[1:]
        result.append(joined)
        return _eps(x_in, out[1], sig)

    _, eps_uncond, rebuilt = runner.reuse_uncond(float(timestep.reshape(-1)[0]), full, cond_only, uncond_only)
    out = result[-1]
    if rebuilt:
        out[1] = x_in - eps_uncond * sig
    return out
