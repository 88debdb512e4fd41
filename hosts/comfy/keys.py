"""The keys under which the ComfyUI host keeps its objects in a model's options."""
SPEC_KEY = "dit_cache"  # transformer_options entry holding the CacheSpec of a patched model
RUN_KEY = "dit_cache_run"  # transformer_options entry holding the current run's runner
WRAPPER_KEY = "dit_cache"  # the key of our wrappers (ModelPatcher.add_wrapper_with_key)
GROUP_KEY = "dit_cache_decision_group"  # transformer_options entry: the model's decision group (patch.py)

import contextvars
from typing import Any

# (spec id, runner, transformer_options) of the model call running now: the proxies that get no
# transformer_options (feed-forward modules, UNet blocks) read it
ACTIVE: contextvars.ContextVar[tuple[str, Any, dict] | None] = contextvars.ContextVar("dit_cache_active", default=None)
