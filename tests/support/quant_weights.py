"""Tiny matrix models with quantized weights that dequantize on the fly, built the way ComfyUI's loaders build them.

Two kinds (``tiny_models.build(..., weights=...)``):

- ``"fp8_scaled"``: a scaled-fp8 checkpoint as ``comfy.sd.load_diffusion_model_state_dict`` loads it: the detected
  ``model_config.scaled_fp8`` (float8_e4m3fn) makes ``comfy.ops.pick_operations`` choose ``scaled_fp8_ops``; every
  Linear weight is stored in fp8 with its ``scale_weight`` and cast (times the scale) to the compute dtype in each
  forward; the other layers keep the model's dtype.
- ``"int8_custom_ops"``: the mechanism of GGUF loaders (ComfyUI-GGUF passes ``model_options["custom_operations"]``,
  which the loader puts into ``model_config.custom_operations``): a custom ``operations`` class whose Linear keeps
  its weight as int8 codes with a per-row scale and dequantizes it in ``forward``.

The float model of the same family and seed is built first; its weights are quantized into the new model (a
checkpoint converted to that format), so the quantized model approximates the float one.
"""
from __future__ import annotations

from typing import Any

import torch

WEIGHT_KINDS = ("float", "fp8_scaled", "int8_custom_ops")
FP8 = torch.float8_e4m3fn


def int8_custom_ops() -> type:
    """A custom ``operations`` class (as GGUF loaders pass one): Linear weights as int8 codes + per-row scales."""
    import comfy.ops

    class Int8Ops(comfy.ops.manual_cast):
        class Linear(comfy.ops.manual_cast.Linear):
            def reset_parameters(self):
                shape, device = self.weight.shape, self.weight.device
                self.weight = torch.nn.Parameter(torch.zeros(shape, dtype=torch.int8, device=device),
                                                 requires_grad=False)
                self.weight_scale = torch.nn.Parameter(torch.ones(shape[0], dtype=torch.float16, device=device),
                                                       requires_grad=False)

            def forward_comfy_cast_weights(self, input):
                weight = self.weight.to(device=input.device, dtype=input.dtype)
                weight = weight * self.weight_scale.to(device=input.device, dtype=input.dtype)[:, None]
                bias = None if self.bias is None else self.bias.to(device=input.device, dtype=input.dtype)
                return torch.nn.functional.linear(input, weight, bias)

            def forward(self, *args, **kwargs):
                return self.forward_comfy_cast_weights(*args, **kwargs)

    return Int8Ops


def configure(model_config: Any, weights: str) -> None:
    """Set what a loader sets on the detected config for a checkpoint of that kind (before ``get_model``)."""
    if weights == "fp8_scaled":
        model_config.scaled_fp8 = FP8  # model_detection: the checkpoint's "scaled_fp8" marker
        model_config.optimizations["fp8"] = False  # a 2-element marker: no fp8 matrix multiplication
    elif weights == "int8_custom_ops":
        model_config.custom_operations = int8_custom_ops()
    else:
        raise ValueError(f"unknown weight kind {weights!r} (one of {WEIGHT_KINDS})")
    model_config.set_inference_dtype(torch.float32, None)  # CPU: fp32 compute, as unet_dtype picks it


@torch.no_grad()
def converted_state_dict(float_model: torch.nn.Module, quant_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The float model's weights in the quantized model's format (a converted checkpoint)."""
    sd = dict(float_model.state_dict())
    for name, module in quant_model.named_modules():
        w = getattr(module, "weight", None)
        if not isinstance(w, torch.Tensor) or w.dtype not in (FP8, torch.int8):
            continue
        key = f"{name}.weight"
        full = sd[key].float()
        if w.dtype == FP8:
            scale = (full.abs().max() / torch.finfo(FP8).max).clamp(min=1e-12)
            sd[key] = (full / scale).to(FP8)
            sd[f"{name}.scale_weight"] = scale.reshape(())
        else:
            scale = (full.abs().amax(dim=1) / 127.0).clamp(min=1e-12).half()
            sd[key] = torch.round(full / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
            sd[f"{name}.weight_scale"] = scale
    return sd


def quantized_layers(model: torch.nn.Module) -> int:
    """Linear layers whose stored weight is fp8 or int8 (dequantized in forward)."""
    return sum(1 for m in model.modules() if isinstance(m, torch.nn.Linear) and m.weight.dtype in (FP8, torch.int8))
