"""Tiny ControlNets built from ComfyUI's own classes (Flux's ``ControlNetFlux``, SD3's ``comfy.cldm.mmdit.ControlNet``),
matching the tiny Flux and SD3 of ``tiny_models``, with explicitly initialised weights, and the conditioning they
are applied to through ComfyUI's ControlNetApplyAdvanced node (as a user's graph does).

The hint is a latent-sized tensor (``latent_format=None``, compression 1): no VAE is needed, the ControlNet reads
it as ComfyUI's latent-input ControlNets (InstantX Flux, SD3) read an encoded image.
"""
from __future__ import annotations

from typing import Any

import torch

import tiny_models


def build_controlnet(family: str, seed: int = 7) -> Any:
    """A ``comfy.controlnet.ControlNet`` for the tiny ``family`` ("flux" or "sd3")."""
    import comfy.cldm.mmdit
    import comfy.controlnet
    import comfy.ldm.flux.controlnet
    import comfy.ops

    spec = tiny_models.FAMILIES[family]["tiny"]
    config = dict(spec.unet_config)
    channels = spec.latent[0]
    ops, device = comfy.ops.disable_weight_init, torch.device("cpu")
    if family == "flux":
        import comfy.ldm.flux.model as flux_model
        config = tiny_models._fill_required(config, flux_model.FluxParams)
        model = comfy.ldm.flux.controlnet.ControlNetFlux(latent_input=True, control_latent_channels=channels,
                                                         operations=ops, device=device, dtype=torch.float32,
                                                         **config)
        extra = ["y", "guidance"]
    elif family == "sd3":
        model = comfy.cldm.mmdit.ControlNet(num_blocks=config["depth"], control_latent_channels=channels,
                                            operations=ops, device=device, dtype=torch.float32, **config)
        extra = ["y"]
    else:
        raise ValueError(f"no tiny ControlNet for {family!r}")
    tiny_models.init_weights(model, seed)
    tiny_models.smooth_time_embedding(model, spec.time_embed_in)
    buffers = dict(model.named_buffers())
    g = torch.Generator().manual_seed(seed + 1)
    for name in spec.random_buffers:
        with torch.no_grad():
            buffers[name].copy_(0.02 * torch.randn(buffers[name].shape, generator=g))
    return comfy.controlnet.ControlNet(model, compression_ratio=1, latent_format=None, load_device=device,
                                       manual_cast_dtype=None, extra_conds=extra)


def hint(tiny: Any, seed: int = 5) -> torch.Tensor:
    """A control "image" as ControlNetApplyAdvanced takes it ([B, H, W, C]), latent-sized with latent channels."""
    c, h, w = tiny.spec.latent[0], tiny.spec.latent[-2], tiny.spec.latent[-1]
    return torch.randn((1, h, w, c), generator=torch.Generator().manual_seed(seed))


def with_control(tiny: Any, control: Any, strength: float = 1.0) -> tuple[list, list]:
    """(positive, negative) conditioning of ``tiny`` with ``control`` applied by ComfyUI's ControlNetApplyAdvanced."""
    import nodes

    positive, negative = nodes.ControlNetApplyAdvanced().apply_controlnet(
        tiny.conditioning(1), tiny.conditioning(2), control, hint(tiny), strength, 0.0, 1.0)
    return positive, negative
