"""Apply PromptCache (Nirvana's approximate caching): reuse across prompts (``cache_core/methods/promptcache.py``,
``hosts/comfy/prompt_cache.py``)."""
from __future__ import annotations

import logging
import os
from typing import Any

from comfy_api.latest import io

from ..cache_core.methods.promptcache import PromptCacheConfig
from ..hosts.comfy import prompt_cache
from .base import CacheNode
from .naming import PROMPTS

log = logging.getLogger("dit_cache")

FOLDER = "dit_cache_prompt_cache"  # ComfyUI model folder of the disk store (models/dit_cache_prompt_cache)


def disk_folder() -> str:
    """The disk store's folder: the first path of the ``dit_cache_prompt_cache`` model folder (registered here,
    under ComfyUI's models directory; extra_model_paths.yaml can name another)."""
    import folder_paths

    if FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[FOLDER] = ([os.path.join(folder_paths.models_dir, FOLDER)], {".safetensors"})
    return folder_paths.get_folder_paths(FOLDER)[0]


class ApplyPromptCache(CacheNode):
    OFF_INPUT = "max_skip"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return cls.schema(
            node_id="DitCache.ApplyPromptCache",
            display_name="Apply PromptCache",
            category=PROMPTS, advanced=("levels", "max_entries", "max_mb", "disk"),
            description="Reuses work across prompts: a finished generation leaves its intermediate latents in a "
                        "cache; a later generation with similar conditioning (same model, LoRAs, size, batch, "
                        "sampler and schedule) starts from one of them and skips the first steps. A hit reuses "
                        "the cached generation's noise path (its seed), unless same_seed is on.",
            inputs=[
                io.Model.Input("model"),
                io.Float.Input("threshold", default=0.95, min=0.0, max=1.0, step=0.005,
                               tooltip="Least similarity of the conditioning (cosine, worst token) that still "
                                       "hits. Higher = fewer, closer hits."),
                io.Float.Input("max_skip", default=0.5, min=0.0, max=0.95, step=0.05,
                               tooltip="Share of the steps the most similar hit skips (the paper: 25 of 50). "
                                       "Less similar hits skip less. 0 disables (model unchanged)."),
                io.Int.Input("levels", default=5, min=1, max=20,
                             tooltip="Latents kept per generation, evenly up to max_skip (the paper: 5)."),
                io.Int.Input("max_entries", default=64, min=1, max=100000,
                             tooltip="Most generations kept; the least recently used go first."),
                io.Float.Input("max_mb", default=1024.0, min=1.0, max=1e6, step=1.0,
                               tooltip="Most MiB of kept latents and embeddings (RAM, and the disk store)."),
                io.Boolean.Input("same_seed", default=False,
                                 tooltip="Hit only a generation made with the same seed. Off: a hit continues "
                                         "another generation's noise path, so the seed input has no effect on "
                                         "a hit."),
                io.Boolean.Input("disk", default=False,
                                 tooltip="Also keep the entries in models/dit_cache_prompt_cache (same bounds), "
                                         "so they survive a restart. A failed save fails the prompt."),
            ],
            output="The model with the prompt cache attached.",
        )

    @classmethod
    def validate_inputs(cls, threshold: float | None = None, max_skip: float | None = None,
                        max_mb: float | None = None) -> bool | str:
        return cls.check_inputs(locals())

    @classmethod
    def make_config(cls, model: Any, **inputs: Any) -> PromptCacheConfig:
        return PromptCacheConfig(**inputs)

    @classmethod
    def execute(cls, model: Any, **inputs: Any) -> io.NodeOutput:
        reason = cls.off_reason(**inputs)
        if reason is not None:
            log.info("[dit-cache] %s: %s (model unchanged)", cls.label(), reason)
            return io.NodeOutput(model)
        cls.reject_bad_inputs(inputs)
        config = cls.make_config(model, **inputs)
        cache, store = prompt_cache.shared_cache(config, disk_folder() if config.disk else None)
        return io.NodeOutput(prompt_cache.attach(model, cache, cls.label(), cls.node_id(), store))
