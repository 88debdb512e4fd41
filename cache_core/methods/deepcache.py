"""DeepCache (Ma, Fang, Wang; arXiv 2312.00858, CVPR 2024): on UNets, reuse the deep features of the last full
step and recompute only the shallow branch.

A UNet's up-block i reads two things: the feature coming up from the deeper blocks and the skip connection of
down-block i. The deep feature changes little between adjacent steps, so DeepCache runs the full UNet on one
step in every N ("uniform 1:N") and, on the N - 1 steps in between, runs only the first down-block(s) and the
matching last up-block(s), feeding the latter the deep feature cached at the last full step. The paper's
abstract: 2.3x on Stable Diffusion v1.5 with a 0.05 drop in CLIP score, 4.1x on LDM-4-G (ImageNet) with a 0.22
rise in FID; the project's reference notes give the SD1.5 figure at interval 3.

Here a step is a model call of one CFG stream. ``branch_depth`` counts the input blocks after the stem
convolution that stay in the shallow branch (1 = the paper's default, the first ResBlock/attention block of the
first down-block, with the last up-block of the same resolution). Warm-up calls and calls outside the schedule
window always run in full; a full call restarts the 1:N count.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config import HIDDEN, GatedConfig, check_int
from ..policy import Policy, Probe
from ..registry import MethodSpec, register
from ..unet_runner import UNetPlan

MAX_DEPTH = 12  # input blocks after the stem of the deepest ComfyUI UNet (SD1.5/SD2: 11, SDXL: 8)


@dataclass(frozen=True)
class DeepCacheConfig(GatedConfig):
    """interval: N, one full call in every N calls of a stream (1 = every call full); branch_depth: input blocks
    after the stem that always run (with as many matching output blocks)."""

    interval: int = 3
    branch_depth: int = 1
    max_consecutive_skips: int = field(default=-1, kw_only=True, metadata=HIDDEN)  # the interval says it

    def __post_init__(self) -> None:
        check_int("interval", self.interval, 1, 1000)
        check_int("branch_depth", self.branch_depth, 1, MAX_DEPTH)
        super().__post_init__()


class _DeepCacheState:
    def __init__(self) -> None:
        self.since_full = 0  # calls reused since the last full call of this stream


class DeepCachePolicy(Policy):
    name = "DeepCache"
    probe = Probe.NONE
    unet_only = True  # a host refuses it on other models (a DiT has no shallow branch)

    def unet_plan(self) -> UNetPlan:
        """Stem + ``branch_depth`` input blocks, and the output blocks that pop their skip connections."""
        keep = 1 + self.config.branch_depth
        return UNetPlan(head=keep, tail=keep, reuse="output")

    def new_state(self) -> _DeepCacheState:
        return _DeepCacheState()

    def wants_skip(self, state: _DeepCacheState, metric: float | None) -> bool:
        return state.since_full < self.config.interval - 1

    def commit(self, state: _DeepCacheState, probe_residual, computed: bool) -> None:
        state.since_full = 0 if computed else state.since_full + 1


register(MethodSpec(
    key="deepcache", label="DeepCache", config=DeepCacheConfig, policy=DeepCachePolicy,
    nodes=("deepcache_node:ApplyDeepCache",), hosts=("comfy",)))
