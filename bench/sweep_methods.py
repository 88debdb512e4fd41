"""The methods ``bench/sweep.py`` sweeps: one entry each (adding a method = adding one :class:`SweepMethod`).

An entry names the ComfyUI node that applies the method (looked up by node id among this pack's nodes and
ComfyUI's own, see :data:`NODE_SOURCES`), the input swept (its main knob) with the values tried at each model
size, and any inputs that need the bench model first (MagCache's calibration). Every other input keeps the
node's own default, so a point is exactly what a user gets by dropping the node in with that knob value.
An entry whose node is not installed is skipped with a message (nodes added on other branches).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

# Modules whose ``comfy_entrypoint`` lists the nodes entries may name ("pack": this pack).
NODE_SOURCES = ("pack", "comfy_extras.nodes_easycache")


@dataclass(frozen=True)
class SweepMethod:
    key: str  # CSV / command-line name
    label: str  # legend entry
    node_id: str
    knob: str  # the swept input
    # knob values per model size ("tiny", "medium", "large"); a size without an entry uses "medium"'s
    values: dict[str, tuple[float, ...]]
    # inputs computed from the bench context (e.g. a calibration made on the bench model), by input name
    prepared: Callable[[Any], dict[str, Any]] | None = None
    reference: bool = False  # drawn as the reference curve (ComfyUI's built-in EasyCache)
    note: str = field(default="", compare=False)

    def values_for(self, size: str) -> tuple[float, ...]:
        return self.values.get(size, self.values["medium"])


def _magcache_inputs(ctx: Any) -> dict[str, Any]:
    return {"calibration": ctx.magcache_calibration()}


# Knob values: the bench models have random weights; their step-to-step changes are smaller than a trained
# model's, so MagCache's useful thresholds are small (calibrated ratios within 1 +- 0.02, trained Flux up to
# 1.21). Values span "few skips" to "most steps skipped" at 20 steps on each size.
METHODS: tuple[SweepMethod, ...] = (
    SweepMethod("fbc", "First Block Cache", "DitCache.ApplyFirstBlockCache", "threshold",
                {"tiny": (0.1, 0.2, 0.3), "medium": (0.08, 0.12, 0.2)}),
    SweepMethod("magcache", "MagCache (calibrated)", "DitCache.ApplyMagCache", "threshold",
                {"tiny": (0.02, 0.1, 0.3), "medium": (0.01, 0.03, 0.08)}, prepared=_magcache_inputs,
                note="calibrated on the bench model first (MagCache Calibrate, same steps)"),
    SweepMethod("teacache", "TeaCache", "DitCache.ApplyTeaCache", "rel_l1_threshold",
                {"tiny": (0.25, 0.6, 1.0), "medium": (0.25, 0.4, 0.6)}),
    SweepMethod("easycache", "EasyCache (ComfyUI built-in)", "EasyCache", "reuse_threshold",
                {"tiny": (0.05, 0.2, 0.5), "medium": (0.05, 0.2, 0.5)}, reference=True,
                note="comfy_extras.nodes_easycache, start 0.15 / end 0.95 (its defaults)"),
)
