"""The start-here choice: fast / balanced / high quality -> a method and its inputs, per model family.

"Cache (DiT, start here)" (nodes/auto_node.py) uses a DiT Cache Tune file of this model when one exists
(cache_core/tune.py: the fastest point of its measured curve meeting the level's target), else the table below:
per family and level, the method and inputs measured best on the small trained models (docs/bench-trained.csv,
20 euler/simple steps, 6 seeds, CFG 1 and 3.5): the largest block speedup (the smaller of the two CFGs') among
the methods that need no calibration, whose mean PSNR over the seeds reaches the level's target at both CFGs and
whose worst seed stays within 3 dB of it. Families the table lacks get the choice that passes on all three
trained families (SeaCache 1.0: 2.5x, 39.7-49 dB mean).

Not a method of its own (scope "chooser"): the chosen method's own node builds the config and policy, exactly as
if that node had been dropped in with those inputs; :class:`AutoChoice` carries it, with why it was chosen.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..registry import MethodSpec, policy_for, register

# level -> PSNR target (dB, mean over seeds) the table was picked for; a tune file's curve is read at the same
# target plus its margin on the worst tuning seed
LEVELS: dict[str, float] = {"fast": 28.0, "balanced": 30.0, "high quality": 36.0}
SSIM_LEVELS: dict[str, float] = {"fast": 0.85, "balanced": 0.90, "high quality": 0.97}
DEFAULT_LEVEL = "balanced"


@dataclass(frozen=True)
class Recommendation:
    method: str  # registry key
    inputs: tuple[tuple[str, Any], ...]  # on top of the method node's defaults
    measured: str  # what docs/bench-trained.csv measured (lines cited)


def _rec(method: str, measured: str, **inputs: Any) -> Recommendation:
    return Recommendation(method, tuple(inputs.items()), measured)


# docs/bench-trained.csv lines (1-based, the header comment is line 1): block speedup, mean / min PSNR in dB at
# CFG 1 and 3.5
TABLE: dict[str, dict[str, Recommendation]] = {
    "flux": {
        "fast": _rec("teacache", "lines 21, 80: 4.00x at 28.5/26.3 and 30.0/26.0 dB", rel_l1_threshold=1.0),
        "balanced": _rec("teacache", "lines 20, 79: 3.33x / 3.16x at 30.2/28.2 and 32.9/31.1 dB",
                         rel_l1_threshold=0.6),
        "high quality": _rec("seacache", "lines 52, 111: 2.50x at 47.0/41.1 and 45.0/37.1 dB", threshold=1.0),
    },
    "qwen_image": {
        "fast": _rec("teacache", "lines 137, 196: 5.00x / 4.44x at 28.9/27.3 and 29.2/26.9 dB",
                     rel_l1_threshold=0.4),
        "balanced": _rec("teacache", "lines 136, 195: 3.33x at 33.7/32.0 and 33.5/30.7 dB", rel_l1_threshold=0.25),
        "high quality": _rec("seacache", "lines 170, 229: 2.50x at 48.9/47.9 and 46.7/40.0 dB", threshold=1.0),
    },
    "wan": {
        "fast": _rec("teacache", "lines 254, 313: 5.00x at 28.8/25.2 and 29.6/26.8 dB", rel_l1_threshold=0.25),
        "balanced": _rec("teacache", "lines 253, 312: 4.00x at 30.8/27.4 and 31.5/28.1 dB", rel_l1_threshold=0.15),
        "high quality": _rec("seacache", "lines 288, 347: 2.50x at 43.2/41.1 and 39.7/33.6 dB", threshold=1.0),
    },
}
OTHER = _rec("seacache", "lines 52, 111, 170, 229, 288, 347: 2.50x at >= 39.7 dB mean on every trained family",
             threshold=1.0)


def recommendation(family: str, level: str) -> tuple[Recommendation, bool]:
    """The table's choice for ``family`` at ``level`` and whether the family is in the table (else: the
    all-families choice)."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; known: {', '.join(LEVELS)}")
    by_level = TABLE.get(family)
    return (by_level[level], True) if by_level is not None else (OTHER, False)


@dataclass
class AutoChoice:
    """What the start-here node chose: the method's own config, built by its own node, and why."""

    method: str
    config: Any
    inputs: dict[str, Any] = field(default_factory=dict)
    chosen_because: str = ""


def auto_policy(choice: AutoChoice) -> Any:
    """The chosen method's own policy."""
    return policy_for(choice.config)


register(MethodSpec(
    key="auto", label="DiT Cache Tune / start here", config=AutoChoice, policy=auto_policy,
    nodes=("auto_node:ApplyAuto", "tune_node:DitCacheTune"), hosts=("comfy",), scope="chooser"))
