"""Where each model file the example workflows load comes from: file name -> download URL and ComfyUI models
folder. ``scripts/make_workflows.py`` writes these as ``properties.models`` on every loader node (the format of
ComfyUI's own workflow templates: ``[{"name", "url", "directory"}]``; the front end's missing-models dialog reads
it and offers the downloads) and as links in each workflow's note.

The URLs are the ones ComfyUI's own templates use (package ``comfyui_workflow_templates_media_*``): the
Comfy-Org repackaged files on Hugging Face where one exists. A workflow that loads a file missing here makes
``make_workflows.py`` fail naming it: add the file with its public URL and folder.
"""
from __future__ import annotations

HF = "https://huggingface.co"
WAN21 = f"{HF}/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
WAN22 = f"{HF}/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files"
QWEN = f"{HF}/Comfy-Org/Qwen-Image_ComfyUI/resolve/main/split_files"
FLUX_TE = f"{HF}/comfyanonymous/flux_text_encoders/resolve/main"

# file name -> (url, folder under ComfyUI/models)
MODELS: dict[str, tuple[str, str]] = {
    # Flux.1-dev
    "flux1-dev.safetensors": (f"{HF}/Comfy-Org/flux1-dev/resolve/main/flux1-dev.safetensors", "diffusion_models"),
    "clip_l.safetensors": (f"{FLUX_TE}/clip_l.safetensors", "text_encoders"),
    "t5xxl_fp16.safetensors": (f"{FLUX_TE}/t5xxl_fp16.safetensors", "text_encoders"),
    "ae.safetensors": (f"{HF}/Comfy-Org/Lumina_Image_2.0_Repackaged/resolve/main/split_files/vae/ae.safetensors", "vae"),
    # Wan 2.1 / 2.2
    "wan2.1_t2v_1.3B_fp16.safetensors": (f"{WAN21}/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors",
                                         "diffusion_models"),
    "umt5_xxl_fp8_e4m3fn_scaled.safetensors": (f"{WAN21}/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                                               "text_encoders"),
    "wan_2.1_vae.safetensors": (f"{WAN21}/vae/wan_2.1_vae.safetensors", "vae"),
    "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors": (
        f"{WAN22}/diffusion_models/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "diffusion_models"),
    "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors": (
        f"{WAN22}/diffusion_models/wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", "diffusion_models"),
    # Qwen-Image
    "qwen_image_fp8_e4m3fn.safetensors": (f"{QWEN}/diffusion_models/qwen_image_fp8_e4m3fn.safetensors",
                                          "diffusion_models"),
    "qwen_2.5_vl_7b_fp8_scaled.safetensors": (f"{QWEN}/text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors",
                                              "text_encoders"),
    "qwen_image_vae.safetensors": (f"{QWEN}/vae/qwen_image_vae.safetensors", "vae"),
    # LTX-Video
    "ltx-video-2b-v0.9.5.safetensors": (f"{HF}/Lightricks/LTX-Video/resolve/main/ltx-video-2b-v0.9.5.safetensors",
                                        "checkpoints"),
    # Stable Diffusion 1.5
    "v1-5-pruned-emaonly-fp16.safetensors": (
        f"{HF}/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/v1-5-pruned-emaonly-fp16.safetensors",
        "checkpoints"),
}

# the ComfyUI models folders a loader reads (folder_paths names; ``text_encoders`` is also listed as ``clip``)
DIRECTORIES = ("checkpoints", "diffusion_models", "text_encoders", "vae", "loras", "clip_vision", "upscale_models")

# loader node type -> the widgets (by position) that name a model file
LOADER_FILE_WIDGETS: dict[str, tuple[int, ...]] = {
    "UNETLoader": (0,),
    "CheckpointLoaderSimple": (0,),
    "VAELoader": (0,),
    "CLIPLoader": (0,),
    "DualCLIPLoader": (0, 1),
    "TripleCLIPLoader": (0, 1, 2),
    "LoraLoaderModelOnly": (1,),
}


class UnknownModelFile(KeyError):
    def __str__(self) -> str:
        return (f"model file {self.args[0]!r} has no entry in scripts/workflow_models.py MODELS: add its public "
                f"download URL and ComfyUI models folder there")


def entry(name: str) -> dict[str, str]:
    """The ``properties.models`` entry of one file (UnknownModelFile when the table lacks it)."""
    if name not in MODELS:
        raise UnknownModelFile(name)
    url, directory = MODELS[name]
    return {"name": name, "url": url, "directory": directory}


def files_of(node_type: str, widgets: list) -> list[str]:
    """The model files a loader node's widget values name (none for other node types)."""
    return [widgets[i] for i in LOADER_FILE_WIDGETS.get(node_type, ())]
