"""Several ranks, one caching decision: the decision group.

Under sequence parallelism (xDiT / USP as raylight runs it, ParaAttention's context parallelism) every rank holds a
shard of the tokens; under CFG parallelism the positive and negative branches run on different ranks. A decision
computed from a rank's own part differs from rank to rank, and a rank that skips while another computes waits
forever in the other's next collective. With a decision group the block runner makes every rank take the same
decision; cached tensors stay per rank (each rank caches its own shard).

Per model call, with a group (``cache_core/block_runner.py``):

1. one ``all_reduce`` (SUM, float64) of one vector: per stream slot (:func:`stream_slot`: "cond", "uncond",
   "cond2", ...) how many ranks hold the stream, how many of them the gate forces to compute, how many measured the
   metric, and the metric's sums (:meth:`~cache_core.policy.Policy.metric_sums`: sums of absolute values and element
   counts, never means, so the reduced metric is the one of the whole tensor, not a mean of shard means). Slots
   keep streams apart: sequence-parallel shards of one stream add up, CFG-parallel branches do not mix.
2. only when some stream is not held by every rank (CFG parallelism; every rank sees the same counts, so all agree
   on it): one ``all_reduce`` of the number of streams that may not skip; the call skips on every rank only when
   every stream of every rank may, as one batched call would.
3. on computed calls of policies that measure what they observe (Adaptive Cache, AdaCache, MagCache Calibrate): one
   ``all_reduce`` of those sums (:meth:`~cache_core.policy.Policy.observe_sums`).

Without a group the runner never calls into this module: no collective, decisions and outputs bit-identical.
Where the group comes from (:func:`resolve`): the model's own setting (ComfyUI: ``hosts/comfy/patch.py``
``set_decision_group``), else :func:`set_decision_group` (process-wide), else the environment variable
``DITCACHE_DECISION_GROUP=world``, else xDiT's parallel state when it runs one prompt on every rank.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Sequence

import torch

log = logging.getLogger("dit_cache")

WORLD = "world"  # the default process group (every rank)
OFF = "off"
ENV = "DITCACHE_DECISION_GROUP"
MAX_SLOTS = 8  # stream slots per call: cond, uncond, cond2, uncond2, ... cond4, uncond4
HEADER = 3  # per slot: ranks holding the stream, ranks the gate forces to compute, ranks that measured

_process_group: Any = None  # set_decision_group


_other_slots: dict[str, int] = {}  # labels outside cond/uncond (diffusers' cache_context names), first seen first


def stream_slot(label: str) -> int:
    """The stream's slot in a reduced vector: "cond" 0, "uncond" 1, "cond2" 2, "uncond2" 3, ...; any other label
    (a diffusers ``cache_context`` name such as "cond_uncond") the next free slot from the top, in the order the
    labels are first seen (the same on every rank: every rank runs the same pipeline)."""
    base = label.rstrip("0123456789")
    if base in ("cond", "uncond"):
        n = int(label[len(base):] or 1)
        slot = 2 * (n - 1) + (1 if base == "uncond" else 0)
    else:
        slot = _other_slots.setdefault(label, MAX_SLOTS - 1 - len(_other_slots))
    if not 0 <= slot < MAX_SLOTS:
        raise ValueError(f"[dit-cache] decision group: stream {label!r} has no slot (at most {MAX_SLOTS} streams "
                         f"per call)")
    return slot


class DecisionGroup:
    """A ``torch.distributed`` process group whose ranks take one decision per model call, with this run's cost."""

    def __init__(self, group: Any = None) -> None:
        import torch.distributed as dist

        self.group = group  # None: the default (world) group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        backend = str(dist.get_backend(group)).lower()
        self.device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in backend else torch.device("cpu")
        self.collectives = 0  # all_reduce calls of this run
        self.bytes = 0  # bytes each rank sent into them

    def all_reduce(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``values`` over the group (float64, on the CPU)."""
        import torch.distributed as dist

        t = values.to(self.device, torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        self.collectives += 1
        self.bytes += t.numel() * t.element_size()
        return t.cpu()

    def cost(self) -> dict[str, int]:
        return {"ranks": self.size, "collectives": self.collectives, "bytes": self.bytes}


def set_decision_group(group: Any = WORLD) -> None:
    """Process-wide: runs started from now on reduce their decisions over ``group`` ("world", a process group, or
    None to go back to the default lookup). A model's own setting wins."""
    global _process_group
    _process_group = group


def _xdit_group() -> Any:
    """xDiT's (xfuser) parallel state, where it is initialised and runs one prompt on every rank (no data
    parallelism): the world group. Otherwise None."""
    ps = sys.modules.get("xfuser.core.distributed.parallel_state")
    if ps is None:
        return None
    try:
        if not ps.model_parallel_is_initialized():
            return None
        if ps.get_data_parallel_world_size() > 1:
            log.warning("[dit-cache] xDiT runs data parallelism (several prompts at once): decisions are not reduced "
                        "automatically; give the group of the ranks that share one prompt (docs/multi-gpu.md)")
            return None
    except Exception:  # another xfuser version: no automatic group
        return None
    return WORLD


def resolve(requested: Any = None) -> DecisionGroup | None:
    """The decision group of a run: ``requested`` (a model's setting), else the process-wide one, else
    ``DITCACHE_DECISION_GROUP``, else xDiT's; None where none is set, ``torch.distributed`` is not initialised or
    the group has a single rank."""
    spec = requested
    for fallback in (lambda: _process_group, lambda: os.environ.get(ENV) or None, _xdit_group):
        if spec is not None:
            break
        spec = fallback()
    if spec is None or spec == OFF:
        return None
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = None if spec == WORLD else spec
    if dist.get_world_size(group) < 2:
        return None
    return DecisionGroup(group)


# ------------------------------------------------------------------------------------------------- sums
def abs_sums(*tensors: torch.Tensor) -> torch.Tensor:
    """(sum|t|, numel) for each tensor, as one float64 vector: what a mean of absolute values reduces by."""
    out = []
    for t in tensors:
        out += [t.float().abs().sum().double(), torch.tensor(float(t.numel()), dtype=torch.float64)]
    return torch.stack(out)


def relative_l1_sums(current: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(sum|current - reference|, n, sum|reference|, n): the sums of ``mean|current - reference| / mean|reference|``."""
    return abs_sums(current.float() - reference.float(), reference)


def mean_at(sums: torch.Tensor, i: int) -> float:
    """The mean of the pair at ``i`` (sum, count) of a reduced vector; 0 for no elements."""
    n = float(sums[i + 1])
    return float(sums[i]) / n if n > 0 else 0.0


def ratio(num: float, den: float) -> float:
    """num / den as the local metrics compute it in float: inf (or NaN for 0 / 0) where den is 0."""
    if den != 0:
        return num / den
    return float("nan") if num == 0 else float("inf")


# ------------------------------------------------------------------------------------------------- per call
def pack(rows: Sequence[tuple[str, bool, torch.Tensor | None]], width: int) -> torch.Tensor:
    """One vector for a call's streams: per row (label, forced to compute, the metric's local sums or None) its
    slot's header (1 rank holds it, forced, measured) and its ``width`` sums."""
    out = torch.zeros(MAX_SLOTS, HEADER + width, dtype=torch.float64)
    for label, forced, sums in rows:
        row = out[stream_slot(label)]
        row[0] += 1
        row[1] += float(forced)
        if sums is not None and width:
            row[2] += 1
            row[HEADER:] += sums.to(torch.float64).cpu()
    return out.reshape(-1)


def unpack(reduced: torch.Tensor, width: int) -> torch.Tensor:
    return reduced.reshape(MAX_SLOTS, HEADER + width)


def split_streams(table: torch.Tensor, size: int) -> bool:
    """Whether some stream of the call is not held by every rank (CFG parallelism)."""
    held = table[:, 0]
    return bool(((held > 0) & (held < size)).any())


def slot_sums(table: torch.Tensor, label: str) -> torch.Tensor | None:
    """The reduced sums of a stream, or None unless every rank holding it measured it."""
    row = table[stream_slot(label)]
    return row[HEADER:] if row[2] > 0 and row[2] == row[0] else None


def forced_anywhere(table: torch.Tensor) -> bool:
    """Whether the gate forces some stream of some rank to compute."""
    return bool((table[:, 1] > 0).any())
