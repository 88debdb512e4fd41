"""The diffusers host's tests need no ComfyUI: the pack is imported as ``dit_cache`` without its ComfyUI nodes (unless
another folder of the same session already loaded it with them)."""
import comfy_env

comfy_env.load_pack(with_comfy=False)
