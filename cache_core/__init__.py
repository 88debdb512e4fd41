"""Host-agnostic caching core of dit-cache.

Nothing here imports ComfyUI: the ComfyUI glue lives in ``nodes/comfy_host.py`` and the diffusers glue in
``cache_core/diffusers_host.py``. A host describes its model with a :class:`BlockLayout` and forwards every
block call to a :class:`BlockCacheRunner`; the runner asks the method's policy whether a model call may
reuse cached residuals and keeps per-run, per-CFG-stream state and statistics.
"""
from .config import CacheWindow
from .fbc import FirstBlockCacheConfig, FirstBlockCachePolicy
from .layout import BlockLayout, Segment, layout_for_class_names
from .magcache import MagCacheCalibratePolicy, MagCacheConfig, MagCachePolicy
from .teacache import TeaCacheConfig, TeaCachePolicy
from .runner import BlockCacheRunner, CallInfo
from .stats import CallRecord, RunStats

__all__ = [
    "BlockCacheRunner",
    "BlockLayout",
    "CacheWindow",
    "CallInfo",
    "CallRecord",
    "FirstBlockCacheConfig",
    "FirstBlockCachePolicy",
    "MagCacheCalibratePolicy",
    "MagCacheConfig",
    "MagCachePolicy",
    "RunStats",
    "Segment",
    "TeaCacheConfig",
    "TeaCachePolicy",
    "layout_for_class_names",
]
