"""Deterministic tiny (and one medium) instances of ComfyUI's real model classes, for tests, demo and bench.

Models come from ``comfy.supported_models.<Family>(unet_config).get_model()``, exactly as ComfyUI builds them
from a checkpoint, then every parameter is initialised explicitly from a seeded generator (ComfyUI leaves
weights uninitialised) and the model is wrapped in a ``ModelPatcher``. Required constructor fields that a
newer ComfyUI adds are read from the host (see ``_fill_required``) instead of being hard-coded here.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

# Values for constructor fields that some ComfyUI versions require and others lack; used only when the
# host's class declares the field without a default (e.g. ComfyUI 0.8 made Flux's txt_ids_dims required;
# Flux.1 uses [] = text ids all zero).
KNOWN_FIELD_VALUES: dict[str, Any] = {"txt_ids_dims": []}


@dataclass(frozen=True)
class FamilySpec:
    supported_model: str  # class name in comfy.supported_models
    unet_config: dict[str, Any]
    latent: tuple[int, ...]  # latent shape without batch
    context: tuple[int, int]  # (tokens, dim) of the text conditioning
    pooled: int | None = None  # pooled output size (Flux's vector_in)
    guidance: float | None = None  # Flux guidance embedding
    # weights of the Linear layers that read a sinusoidal timestep embedding (see smooth_time_embedding)
    time_embed_in: tuple[str, ...] = ()


FAMILIES: dict[str, dict[str, FamilySpec]] = {
    "flux": {
        "tiny": FamilySpec(
            "Flux",
            dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=32,
                 hidden_size=64, mlp_ratio=4.0, num_heads=4, depth=2, depth_single_blocks=4,
                 axes_dim=[4, 6, 6], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True),
            latent=(16, 16, 16), context=(8, 32), pooled=32, guidance=3.5,
            time_embed_in=("time_in.in_layer.weight",),
        ),
        # ~100 M parameters, about a second per step on a 2-core CPU: the benchmark size
        "medium": FamilySpec(
            "Flux",
            dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=128, context_in_dim=256,
                 hidden_size=512, mlp_ratio=4.0, num_heads=8, depth=6, depth_single_blocks=11,
                 axes_dim=[16, 24, 24], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True),
            latent=(16, 48, 48), context=(64, 256), pooled=128, guidance=3.5,
            time_embed_in=("time_in.in_layer.weight",),
        ),
    },
    "wan21": {
        "tiny": FamilySpec(
            "WAN21_T2V",
            dict(image_model="wan2.1", model_type="t2v", dim=64, ffn_dim=128, num_heads=4, num_layers=4,
                 in_dim=16, out_dim=16, text_dim=32, freq_dim=256, patch_size=(1, 2, 2), window_size=(-1, -1),
                 qk_norm=True, cross_attn_norm=True, eps=1e-6),
            latent=(16, 2, 8, 8), context=(8, 32), time_embed_in=("time_embedding.0.weight",),
        ),
    },
    "qwen_image": {
        "tiny": FamilySpec(
            "QwenImage",
            dict(image_model="qwen_image", in_channels=64, out_channels=16, num_layers=3, attention_head_dim=16,
                 num_attention_heads=4, joint_attention_dim=32, axes_dims_rope=(4, 6, 6)),
            latent=(16, 1, 16, 16), context=(8, 32),  # Qwen-Image uses Wan's 5-D latents
            time_embed_in=("time_text_embed.timestep_embedder.linear_1.weight",),
        ),
    },
}


@dataclass
class TinyModel:
    """A patchable model plus matching conditioning."""

    family: str
    size: str
    patcher: Any  # comfy.model_patcher.ModelPatcher
    spec: FamilySpec
    seed: int

    def latent(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros((batch,) + self.spec.latent)

    def noise(self, batch: int = 1, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn((batch,) + self.spec.latent, generator=g)

    def conditioning(self, seed: int = 1, scale: float = 1.0, tokens: int | None = None) -> list:
        """ComfyUI CONDITIONING: ``[[cross_attn, {pooled_output, guidance}]]`` (``tokens``: text length)."""
        g = torch.Generator().manual_seed(seed)
        n, dim = self.spec.context
        cross = torch.randn((1, tokens or n, dim), generator=g) * scale
        extra: dict[str, Any] = {}
        if self.spec.pooled is not None:
            extra["pooled_output"] = torch.randn((1, self.spec.pooled), generator=g) * scale
        if self.spec.guidance is not None:
            extra["guidance"] = self.spec.guidance
        return [[cross, extra]]


def _fill_required(unet_config: dict[str, Any], target: Callable | type) -> dict[str, Any]:
    """Add values for fields the host's constructor/dataclass requires but the config lacks."""
    if dataclasses.is_dataclass(target):
        required = [f.name for f in dataclasses.fields(target)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    else:
        required = [n for n, p in inspect.signature(target).parameters.items()
                    if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
                    and n != "self"]
    out = dict(unet_config)
    for name in required:
        if name not in out:
            if name not in KNOWN_FIELD_VALUES:
                raise RuntimeError(f"the host's {getattr(target, '__name__', target)} requires {name!r}, "
                                   f"which the tiny-model factory does not know: add it to KNOWN_FIELD_VALUES")
            out[name] = KNOWN_FIELD_VALUES[name]
    return out


def _required_target(family: str) -> Callable | type | None:
    if family == "flux":
        import comfy.ldm.flux.model as flux_model
        return flux_model.FluxParams
    return None


@torch.no_grad()
def init_weights(module: torch.nn.Module, seed: int) -> None:
    """Deterministic, scale-aware initialisation of every parameter and floating buffer."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
        leaf = name.rsplit(".", 1)[-1]
        if p.ndim >= 2:
            fan_in = math.prod(p.shape[1:])
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
        elif leaf in ("scale", "weight") and ("norm" in name or "scale" in leaf):
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.02 * torch.randn(p.shape, generator=g))
    for name, b in module.named_buffers():
        if b.is_floating_point() and not torch.isfinite(b).all():
            b.zero_()


@torch.no_grad()
def smooth_time_embedding(module: torch.nn.Module, names: tuple[str, ...]) -> None:
    """Make the model's response to the timestep smooth, as training does.

    Sinusoidal embeddings of ``1000 * sigma`` have high-frequency features that turn over several times
    between two sampling steps; random weights on them make a random model's blocks jump from step to step,
    unlike a trained DiT. Columns [cos | sin], each half ordered from the highest frequency down: the upper
    (faster) half of each is zeroed.
    """
    params = dict(module.named_parameters())
    for name in names:
        w = params[name]
        half = w.shape[1] // 2
        fast = (torch.arange(w.shape[1]) % half) < half // 2
        w[:, fast] = 0.0


def build(family: str, size: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32) -> TinyModel:
    """A deterministic model of ``family`` at ``size``; the same arguments give the same weights."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    spec = FAMILIES[family][size]
    unet_config = dict(spec.unet_config)
    target = _required_target(family)
    if target is not None:
        unet_config = _fill_required(unet_config, target)
    config_cls = getattr(comfy.supported_models, spec.supported_model)
    model_config = config_cls(unet_config)
    model_config.set_inference_dtype(dtype, None)
    device = torch.device("cpu")
    model = model_config.get_model({}, device=device)
    init_weights(model.diffusion_model, seed)
    smooth_time_embedding(model.diffusion_model, spec.time_embed_in)
    model.diffusion_model.to(dtype)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                               offload_device=comfy.model_management.unet_offload_device())
    return TinyModel(family, size, patcher, spec, seed)


def parameter_count(m: TinyModel) -> int:
    return sum(p.numel() for p in m.patcher.model.diffusion_model.parameters())
