"""Host-agnostic caching core of dit-cache: rules, state, layouts and statistics.

Nothing here imports ComfyUI or diffusers: the hosts (``hosts/comfy``, ``hosts/diffusers.py``) live beside the
core. A host describes its model with a :class:`BlockLayout` and forwards every block call to the runner the
method's policy asks for; the runner asks the policy whether a model call may reuse cached values and keeps
per-run, per-CFG-stream state and statistics.

Every caching method lives in ``cache_core/methods/`` and registers itself (:mod:`cache_core.registry`); its
config class, its policy and the extra names it lists are the public names of this package.
"""
from __future__ import annotations

import sys

from .block_runner import BlockCacheRunner, CallInfo
from .config import CacheWindow
from .distributed import set_decision_group
from .layout import BlockLayout, Segment, layout_for_class_names
from .registry import MethodSpec, methods, policy_for, register
from .stats import CallRecord, RunStats

__all__ = ["BlockCacheRunner", "BlockLayout", "CacheWindow", "CallInfo", "CallRecord", "MethodSpec", "RunStats",
           "Segment", "layout_for_class_names", "methods", "policy_for", "register", "set_decision_group"]

for _spec in methods().values():
    _module = sys.modules[_spec.config.__module__]
    for _name in (_spec.config.__name__, getattr(_spec.policy, "__name__", ""), *_spec.exports):
        if _name and _name not in globals():
            globals()[_name] = getattr(_module, _name)
            __all__.append(_name)
del _spec, _module, _name
