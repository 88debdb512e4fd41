"""What the ComfyUI tests of PAB (tests/comfy/test_pab_comfy.py) and FasterCache (test_fastercache_comfy.py)
share: the step count, the two nodes applied to a model and the reused fraction of attention per stream."""
from __future__ import annotations

from methods_registry import fastercache_inputs, pab_inputs

from dit_cache.nodes.fastercache_node import ApplyFasterCache
from dit_cache.nodes.pab_node import PABConfigNode

STEPS = 20


def pab(model, spatial=2, cross=6, start=0.2, end=0.9):
    return PABConfigNode.execute(model, **pab_inputs(spatial, cross, start, end)).result[0]


def faster(model, **kw):
    return ApplyFasterCache.execute(model, **fastercache_inputs(**kw)).result[0]


def per_stream(run: dict) -> dict[str, list[float]]:
    """Reused fraction of each call's attention, per stream, in call order."""
    out: dict[str, list[float]] = {}
    for r in run["records"]:
        out.setdefault(r["stream"], []).append(r["metric"])
    return out
