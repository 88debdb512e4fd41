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
# HunyuanVideoParams (0.3.75) requires byt5 / meanflow / use_cond_type_embedding / vision_in_dim: a plain
# HunyuanVideo 1.0 has none of them. ComfyUI 0.8 adds HunyuanVideoParams.meanflow_sum (read only with meanflow;
# False averages the two time embeddings, as 0.3.75 always does) and ChromaParams.vec_in_dim (Chroma has no
# vector input: None, what 0.8's model detection sets).
KNOWN_FIELD_VALUES: dict[str, Any] = {"txt_ids_dims": [], "byt5": False, "meanflow": False,
                                      "use_cond_type_embedding": False, "vision_in_dim": None,
                                      "meanflow_sum": False, "vec_in_dim": None}


@dataclass(frozen=True)
class FamilySpec:
    supported_model: str  # class name in comfy.supported_models
    unet_config: dict[str, Any]
    latent: tuple[int, ...]  # latent shape without batch
    context: tuple[int, int]  # (tokens, dim) of the text conditioning
    pooled: int | None = None  # pooled output size (Flux's vector_in)
    guidance: float | None = None  # Flux guidance embedding
    # weights of the Linear layers that read a sinusoidal timestep embedding (see smooth_time_embedding);
    # "name:16" = only the first 16 input columns are the embedding (Chroma's approximator)
    time_embed_in: tuple[str, ...] = ()
    # extra conditioning entries: name -> shape of a seeded random tensor (batch included), e.g. Wan I2V's
    # concat_latent_image; "reference_latents" (Kontext / Qwen-Image-Edit) is given as a list of one latent
    cond_tensors: tuple[tuple[str, tuple[int, ...]], ...] = ()
    cond_values: tuple[tuple[str, Any], ...] = ()  # extra conditioning constants, e.g. an attention mask
    cfg: float = 1.0  # CFG the support-matrix test samples with (distilled families: 1)
    # buffers the host allocates with torch.empty and fills from the checkpoint (SD3's pos_embed): seeded here
    random_buffers: tuple[str, ...] = ()


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
        # ~0.55 B parameters, 64x64 latent (512 px): the GPU benchmark size (bench/sweep.py --size large)
        "large": FamilySpec(
            "Flux",
            dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=256, context_in_dim=1024,
                 hidden_size=1024, mlp_ratio=4.0, num_heads=8, depth=8, depth_single_blocks=16,
                 axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True),
            latent=(16, 64, 64), context=(256, 1024), pooled=256, guidance=3.5,
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
        # a short video clip (5 latent frames of 32x32 -> 1280 tokens): attention is about half of the work, as
        # in real video models, which is where attention-level caching (PAB, FasterCache) pays off
        "medium": FamilySpec(
            "WAN21_T2V",
            dict(image_model="wan2.1", model_type="t2v", dim=256, ffn_dim=768, num_heads=4, num_layers=8,
                 in_dim=16, out_dim=16, text_dim=64, freq_dim=256, patch_size=(1, 2, 2), window_size=(-1, -1),
                 qk_norm=True, cross_attn_norm=True, eps=1e-6),
            latent=(16, 5, 32, 32), context=(32, 64), time_embed_in=("time_embedding.0.weight",),
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

# The support matrix's families (tests/comfy/test_matrix.py): one tiny config per DiT family of the host. Sizes are
# the smallest that keep each forward's shape rules (head dim = sum of RoPE axes, patch multiples, ...).
_WAN_TINY = dict(image_model="wan2.1", model_type="t2v", dim=64, ffn_dim=128, num_heads=4, num_layers=4,
                 in_dim=16, out_dim=16, text_dim=32, freq_dim=256, patch_size=(1, 2, 2), window_size=(-1, -1),
                 qk_norm=True, cross_attn_norm=True, eps=1e-6)
_WAN_T = ("time_embedding.0.weight",)
_FLUX_TINY = FAMILIES["flux"]["tiny"]
_QWEN_TINY = FAMILIES["qwen_image"]["tiny"]
_LUMINA_TINY = dict(image_model="lumina2", patch_size=2, in_channels=16, dim=64, n_layers=4, n_refiner_layers=1,
                    n_heads=4, n_kv_heads=4, multiple_of=16, ffn_dim_multiplier=4.0, qk_norm=True,
                    cap_feat_dim=32, axes_dims=[4, 6, 6], axes_lens=[64, 64, 64], rope_theta=10000.0)
_HV_TINY = dict(image_model="hunyuan_video", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=32,
                hidden_size=64, mlp_ratio=4.0, num_heads=4, depth=2, depth_single_blocks=3, axes_dim=[4, 6, 6],
                theta=256, patch_size=[1, 2, 2], qkv_bias=True, guidance_embed=True)

FAMILIES.update({
    "flux_kontext": {"tiny": dataclasses.replace(
        _FLUX_TINY, cond_tensors=(("reference_latents", (1, 16, 16, 16)),))},
    "chroma": {"tiny": FamilySpec(
        "Chroma",
        dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=32, hidden_size=64,
             mlp_ratio=4.0, num_heads=4, depth=2, depth_single_blocks=4, axes_dim=[4, 6, 6], theta=10000,
             patch_size=2, qkv_bias=True, in_dim=64, out_dim=64, hidden_dim=32, n_layers=2),
        latent=(16, 16, 16), context=(8, 32), pooled=32, guidance=0.0,
        time_embed_in=("distilled_guidance_layer.in_proj.weight:16",), cfg=4.0)},
    "sd3": {"tiny": FamilySpec(
        "SD3",
        dict(in_channels=16, out_channels=16, patch_size=2, depth=3, adm_in_channels=32, pos_embed_max_size=16,
             num_patches=256, pos_embed_scaling_factor=None, qk_norm="rms",
             context_embedder_config={"target": "torch.nn.Linear",
                                      "params": {"in_features": 32, "out_features": 192}}),
        latent=(16, 16, 16), context=(8, 32), pooled=32, time_embed_in=("t_embedder.mlp.0.weight",), cfg=4.0,
        random_buffers=("pos_embed",))},
    "auraflow": {"tiny": FamilySpec(
        "AuraFlow",
        dict(in_channels=4, out_channels=4, patch_size=2, dim=64, n_layers=4, n_double_layers=2, n_heads=4,
             global_conddim=64, cond_seq_dim=32, max_seq=256),
        latent=(4, 16, 16), context=(8, 32), time_embed_in=("t_embedder.mlp.0.weight",), cfg=4.0)},
    "wan21_i2v": {"tiny": FamilySpec(
        "WAN21_I2V", dict(_WAN_TINY, model_type="i2v", in_dim=36),
        latent=(16, 2, 8, 8), context=(8, 32), time_embed_in=_WAN_T, cfg=4.0,
        cond_tensors=(("concat_latent_image", (1, 16, 2, 8, 8)),))},
    "wan21_vace": {"tiny": FamilySpec(
        "WAN21_Vace", dict(_WAN_TINY, model_type="vace", vace_layers=2, vace_in_dim=96),
        latent=(16, 2, 8, 8), context=(8, 32), time_embed_in=_WAN_T, cfg=4.0,
        cond_tensors=(("vace_frames", (1, 32, 2, 8, 8)),))},
    "wan22_5b": {"tiny": FamilySpec(
        "WAN22_T2V", dict(_WAN_TINY, in_dim=48, out_dim=48),
        latent=(48, 2, 8, 8), context=(8, 32), time_embed_in=_WAN_T, cfg=4.0)},
    "hunyuan_video": {"tiny": FamilySpec(
        "HunyuanVideo", _HV_TINY, latent=(16, 2, 8, 8), context=(8, 32), pooled=32, guidance=6.0,
        time_embed_in=("time_in.in_layer.weight",))},
    "hunyuan_image21": {"tiny": FamilySpec(
        "HunyuanImage21", dict(_HV_TINY, vec_in_dim=None, in_channels=64, out_channels=64, patch_size=[1, 1],
                               guidance_embed=False, axes_dim=[8, 8]),
        latent=(64, 8, 8), context=(8, 32), time_embed_in=("time_in.in_layer.weight",), cfg=4.0)},
    # Mochi's block asserts hidden_size_x * mlp_ratio_x == 1536 * 8 (the released MLP width), so a tiny Mochi
    # keeps that product with a narrow hidden size and a wide ratio (64 x 192)
    "mochi": {"tiny": FamilySpec(
        "GenmoMochi",
        dict(image_model="mochi_preview", depth=3, patch_size=2, num_heads=2, hidden_size_x=64, hidden_size_y=32,
             mlp_ratio_x=192.0, mlp_ratio_y=4.0, learn_sigma=False, in_channels=12, qk_norm=True, qkv_bias=False,
             out_bias=True, attn_drop=0.0, patch_embed_bias=True, posenc_preserve_area=True,
             timestep_mlp_bias=True, attend_to_padding=False, timestep_scale=1000.0, use_t5=True, t5_feat_dim=32,
             t5_token_length=8),
        latent=(12, 2, 8, 8), context=(8, 32), time_embed_in=("t_embedder.mlp.0.weight",), cfg=4.0,
        cond_values=(("attention_mask", "ones_long"),))},
    # HunyuanVideo 1.5: the HunyuanVideo class with a vision-token projection and 32-channel latents; img_in
    # also takes the image-conditioning latent and mask (zeros for text-to-video): 32 + 32 + 1 channels
    "hunyuan_video15": {"tiny": FamilySpec(
        "HunyuanVideo15", dict(_HV_TINY, vision_in_dim=16, in_channels=65, out_channels=32),
        latent=(32, 2, 8, 8), context=(8, 32), pooled=32, guidance=6.0, time_embed_in=("time_in.in_layer.weight",))},
    "ltxv": {"tiny": FamilySpec(
        "LTXV",
        dict(image_model="ltxv", in_channels=128, cross_attention_dim=64, attention_head_dim=16,
             num_attention_heads=4, caption_channels=32, num_layers=4),
        latent=(128, 2, 4, 4), context=(8, 32),
        time_embed_in=("adaln_single.emb.timestep_embedder.linear_1.weight",), cfg=3.0,
        cond_values=(("attention_mask", "ones_long"),))},
    "qwen_image_edit": {"tiny": dataclasses.replace(
        _QWEN_TINY, cond_tensors=(("reference_latents", (1, 16, 1, 16, 16)),), cfg=4.0)},
    "hidream": {"tiny": FamilySpec(
        "HiDream",
        dict(image_model="hidream", patch_size=2, in_channels=16, out_channels=16, num_layers=2,
             num_single_layers=3, attention_head_dim=16, num_attention_heads=4, caption_channels=[32, 24],
             text_emb_dim=32, num_routed_experts=2, num_activated_experts=1, axes_dims_rope=(8, 4, 4),
             max_resolution=(16, 16), llama_layers=[0, 1, 2, 3, 3]),
        latent=(16, 16, 16), context=(8, 32), pooled=32,
        time_embed_in=("t_embedder.timestep_embedder.linear_1.weight",),
        cond_tensors=(("conditioning_llama3", (1, 4, 8, 24)),))},
    "lumina2": {"tiny": FamilySpec(
        "Lumina2", _LUMINA_TINY, latent=(16, 16, 16), context=(8, 32),
        time_embed_in=("t_embedder.mlp.0.weight",), cfg=4.0)},
    "z_image": {"tiny": FamilySpec(
        # z_image_modulation reads a 256-wide time embedding: dim must be at least 256
        "ZImage", dict(_LUMINA_TINY, dim=256, n_layers=3, axes_dims=[16, 24, 24], z_image_modulation=True,
                       time_scale=1000.0, rope_theta=256.0, ffn_dim_multiplier=8.0 / 3.0, pad_tokens_multiple=32),
        latent=(16, 16, 16), context=(8, 32), time_embed_in=("t_embedder.mlp.0.weight",))},
    "cosmos_predict2": {"tiny": FamilySpec(
        "CosmosT2IPredict2",
        dict(image_model="cosmos_predict2", max_img_h=64, max_img_w=64, max_frames=8, in_channels=16,
             out_channels=16, patch_spatial=2, patch_temporal=1, concat_padding_mask=True, model_channels=64,
             num_blocks=4, num_heads=4, crossattn_emb_channels=32, pos_emb_cls="rope3d", pos_emb_learnable=True,
             pos_emb_interpolation="crop", min_fps=1, max_fps=30, use_adaln_lora=True, adaln_lora_dim=16,
             extra_per_block_abs_pos_emb=False, rope_h_extrapolation_ratio=4.0, rope_w_extrapolation_ratio=4.0,
             rope_t_extrapolation_ratio=1.0),
        latent=(16, 1, 16, 16), context=(8, 32), time_embed_in=("t_embedder.1.linear_1.weight",), cfg=4.0)},
})


# UNet families (comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel): three resolution levels; attention where
# the real models have it (SD1.5: the first levels, so its first block is a ResBlock + transformer; SDXL: the
# deeper levels only, its first block a plain ResBlock). SD15 forces 8 heads, SDXL 64-channel heads (from 64 wide).
_UNET_TINY = dict(image_size=16, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=[1, 1, 1],
                  channel_mult=[1, 2, 2], transformer_depth=[1, 1, 0], transformer_depth_middle=1,
                  transformer_depth_output=[1, 1, 1, 1, 0, 0], num_head_channels=16, use_temporal_attention=False,
                  use_spatial_transformer=True, legacy=False, use_checkpoint=False)
_UNET_T = ("time_embed.0.weight",)
FAMILIES.update({
    "sd15": {"tiny": FamilySpec(
        "SD15", dict(_UNET_TINY, context_dim=32, use_linear_in_transformer=False, adm_in_channels=None),
        latent=(4, 16, 16), context=(8, 32), time_embed_in=_UNET_T, cfg=4.0)},
    # SDXL's adm input: the pooled text embedding (32 here) + six 256-wide size embeddings
    "sdxl": {"tiny": FamilySpec(
        "SDXL", dict(_UNET_TINY, context_dim=32, use_linear_in_transformer=True, adm_in_channels=32 + 6 * 256,
                     num_classes="sequential", transformer_depth=[0, 1, 1],
                     transformer_depth_output=[0, 0, 1, 1, 1, 1]),
        latent=(4, 16, 16), context=(8, 32), pooled=32, time_embed_in=_UNET_T, cfg=4.0)},
})

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
        for name, shape in self.spec.cond_tensors:
            t = torch.randn(shape, generator=g) * scale
            extra[name] = [t] if name in ("reference_latents", "vace_frames") else t
        for name, value in self.spec.cond_values:
            extra[name] = torch.ones((1, tokens or n), dtype=torch.long) if value == "ones_long" else value
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
    """The host class whose required fields the family's unet_config must cover (params dataclasses)."""
    if family in ("flux", "flux_kontext"):
        import comfy.ldm.flux.model as flux_model
        return flux_model.FluxParams
    if family in ("hunyuan_video", "hunyuan_image21", "hunyuan_video15"):
        import comfy.ldm.hunyuan_video.model as hv_model
        return hv_model.HunyuanVideoParams
    if family == "chroma":
        import comfy.ldm.chroma.model as chroma_model
        return chroma_model.ChromaParams
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
    for entry in names:
        name, _, cols = entry.partition(":")
        w = params[name]
        n = int(cols) if cols else w.shape[1]
        half = n // 2
        fast = torch.zeros(w.shape[1], dtype=torch.bool)
        fast[:n] = (torch.arange(n) % half) < half // 2
        w[:, fast] = 0.0


def build(family: str, size: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32,
          weights: str = "float") -> TinyModel:
    """A deterministic model of ``family`` at ``size``; the same arguments give the same weights.

    ``weights``: "float", or a quantized kind of tests/support/quant_weights.py ("fp8_scaled": ComfyUI's scaled
    fp8 operations; "int8_custom_ops": custom operations as GGUF loaders pass them), holding the float model's
    weights converted to that format and dequantized in each Linear's forward."""
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
    buffers = dict(model.diffusion_model.named_buffers())
    g = torch.Generator().manual_seed(seed + 1)
    for name in spec.random_buffers:
        with torch.no_grad():
            buffers[name].copy_(0.02 * torch.randn(buffers[name].shape, generator=g))
    model.diffusion_model.to(dtype)
    if weights != "float":
        import quant_weights

        quant_config = config_cls(unet_config)
        quant_weights.configure(quant_config, weights)
        quant = quant_config.get_model({}, device=device)
        missing, unexpected = quant.diffusion_model.load_state_dict(
            quant_weights.converted_state_dict(model.diffusion_model, quant.diffusion_model), strict=False)
        if missing or unexpected or not quant_weights.quantized_layers(quant.diffusion_model):
            raise RuntimeError(f"{family} {weights}: missing {missing}, unexpected {unexpected}")
        model = quant
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                               offload_device=comfy.model_management.unet_offload_device())
    return TinyModel(family, size, patcher, spec, seed)


def parameter_count(m: TinyModel) -> int:
    return sum(p.numel() for p in m.patcher.model.diffusion_model.parameters())


def build_sd15_unet() -> Any:
    """A tiny SD1.5 UNet (no DiT) in a ModelPatcher: the "unsupported model" case of every method."""
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SD15(dict(
        image_size=8, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=[1, 1], channel_mult=[1, 2],
        transformer_depth=[0, 1], transformer_depth_middle=1, transformer_depth_output=[0, 0, 1, 1],
        context_dim=768, num_head_channels=16, use_linear_in_transformer=False, adm_in_channels=None,
        use_temporal_attention=False, use_spatial_transformer=True, legacy=False, use_checkpoint=False))
    return comfy.model_patcher.ModelPatcher(config.get_model({}), torch.device("cpu"), torch.device("cpu"))
