"""The runner for UNet models (SD1.5 / SD2 / SDXL): a shallow branch always runs, the deep part may be reused.

A UNet is ``n`` input blocks (each pushes its output on the skip stack), a middle block and ``n`` output blocks
(output block ``j`` pops the skip stack, so it reads input block ``n - 1 - j``). A method that applies to UNets
gives a :class:`UNetPlan`: the first ``head`` input blocks and the last ``tail`` output blocks always run (the
shallow branch); on a skipped call every block in between is replaced:

- skipped blocks return placeholders: zeros of the shape they returned on the last computed call of the same
  input shape, so the host's skip stack, ControlNet additions and block patches (FreeU) see tensors of the
  right shape, at the cost of a memset instead of the block's work;
- the last skipped output block returns the cached value per CFG stream: its own output of the last computed
  call (``reuse="output"``, DeepCache: the deep feature the first shallow up-block concatenates with its skip)
  or the head's output plus the cached residual ``last skipped output - head output`` (``reuse="residual"``,
  First Block Cache: the head's output plays the role of the first block's output in a DiT).

The decision is taken once the head has run (the policy's probe: the head's last block residual, when its
input and output have the same shape). Hosts call :meth:`UNetCacheRunner.enter` before a block and
:meth:`UNetCacheRunner.exit` after it (or :meth:`UNetCacheRunner.block` with a callback); everything else
(streams, gate, commit, statistics) is the block runner's.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .block_runner import BlockCacheRunner, _Call
from .config import SigmaWindow
from .layout import BlockLayout, Segment
from .policy import Policy, Probe, RunInfo
from .stats import RunStats
from .streams import ResolveWindow, RunBlock, Streams

INPUT, MIDDLE, OUTPUT = 0, 1, 2  # segment indices of UNET_LAYOUT
HIDDEN = "x"
SEGMENTS = ("input", "middle", "output")

# A UNet as a block layout (for the stream bookkeeping and statistics the runners share): three segments
UNET_LAYOUT = BlockLayout(
    family="unet", class_names=("UNetModel",), hidden=HIDDEN, mechanism="object_patch",
    segments=(Segment("input", "input_blocks", (HIDDEN,)), Segment("middle", "middle_block", (HIDDEN,)),
              Segment("output", "output_blocks", (HIDDEN,))),
)


@dataclass(frozen=True)
class UNetPlan:
    """How a method applies to a UNet: ``head`` input blocks and ``tail`` output blocks always run; ``reuse``
    says what the last skipped output block returns ("output": its cached output; "residual": the head's output
    plus the cached residual)."""

    head: int
    tail: int
    reuse: str = "output"

    def check(self, counts: Sequence[int], method: str) -> None:
        """ValueError unless the plan fits a UNet with ``counts`` = (input, middle, output) blocks."""
        n_in, _, n_out = counts
        if self.reuse not in ("output", "residual"):
            raise ValueError(f"{method}: unknown reuse {self.reuse!r}")
        if not 1 <= self.head < n_in or not 0 <= self.tail < n_out:
            raise ValueError(
                f"{method}: a shallow branch of {self.head} input and {self.tail} output blocks leaves nothing to "
                f"cache in a UNet with {n_in} input and {n_out} output blocks (at most {n_in - 1} / {n_out - 1})")


def unet_plan(policy: Any) -> UNetPlan | None:
    """The policy's plan for UNets, or None when the method does not apply to UNets."""
    plan = getattr(policy, "unet_plan", None)
    return plan() if callable(plan) else None


@dataclass
class _UNetCall(_Call):
    head_out: torch.Tensor | None = None  # output of the head's last block (reuse "residual")
    probe_in: torch.Tensor | None = None  # input of the head's last block (the probe residual)
    branch_s: float = 0.0  # wall time of the shallow branch's blocks in this call


class UNetCacheRunner(BlockCacheRunner):
    """Per-run state of a method on a UNet (see the module docstring)."""

    def __init__(self, block_counts: Sequence[int], policy: Policy, stats: RunStats,
                 window: SigmaWindow = SigmaWindow(), run: RunInfo = RunInfo()) -> None:
        super().__init__(UNET_LAYOUT, block_counts, policy, stats, window, run)
        plan = unet_plan(policy)
        if plan is None:
            raise ValueError(f"{policy.name} does not apply to UNet models")
        plan.check(block_counts, policy.name)
        self.plan = plan
        n_in, n_mid, n_out = block_counts
        self._last_skipped = n_in + n_mid + n_out - plan.tail - 1  # flat position of the cached output
        self._tail_start = self._last_skipped + 1
        self._shapes: dict[tuple, tuple[int, ...]] = {}  # (input shape, flat position) -> per-sample output shape
        self._branch_s = 0.0  # wall time of the shallow branch's blocks in computed calls
        self._full_s = 0.0  # wall time of computed calls
        self._branch_t0: float | None = None

    def new_call(self, info: Any, states: list[Any]) -> _UNetCall:
        return _UNetCall(info=info, states=states)

    @classmethod
    def for_policy(cls, layout: BlockLayout, block_counts: Sequence[int], policy: Policy, stats: RunStats,
                   resolve: ResolveWindow, run: RunInfo = RunInfo()) -> UNetCacheRunner:
        return cls(block_counts, policy, stats, resolve("gate", policy.gate.window), run)

    def _flat(self, segment: int, index: int) -> int:
        return self._offsets[segment] + index

    # ----------------------------------------------------------------------------------------- blocks
    def enter(self, segment: int, index: int, x: torch.Tensor) -> torch.Tensor | None:
        """Before block ``index`` of ``segment`` runs on ``x``: None (run it, then call :meth:`exit`), or the tensor
        that stands for its output on a skipped call."""
        call: _UNetCall | None = self._call
        if call is None:
            return None
        p = self._flat(segment, index)
        if p == 0:
            self.check_signatures(call.states, {HIDDEN: x})
            call.head_in = x  # the key of the recorded shapes: (C, H, W) of the model input
        if p == self.plan.head - 1 and self.policy.probe is Probe.BLOCKS:
            call.probe_in = x.clone()  # the probe block's input (blocks may update their input in place)
        if call.skip is None and p >= self.plan.head:
            self._decide(call)
        self._branch_t0 = time.perf_counter() if self._in_branch(p) else None
        if not call.skip or p < self.plan.head or p >= self._tail_start:
            return None
        if p == self._last_skipped:
            cached = self._cached_residual(call, OUTPUT, HIDDEN)
            return call.head_out + cached if self.plan.reuse == "residual" else cached
        shape = self._shapes[(tuple(call.head_in.shape[1:]), p)]
        return x.new_zeros((x.shape[0],) + shape)

    def exit(self, segment: int, index: int, out: torch.Tensor) -> torch.Tensor:
        """After block ``index`` of ``segment`` ran (it was not replaced): its output ``out``, recorded."""
        call: _UNetCall | None = self._call
        if call is None:
            return out
        p = self._flat(segment, index)
        if self._branch_t0 is not None:
            call.branch_s += time.perf_counter() - self._branch_t0
            self._branch_t0 = None
        if p == self.plan.head - 1:
            call.head_out = out.clone()
            if call.probe_in is not None and out.shape == call.probe_in.shape:
                call.probe_residual = out - call.probe_in
            self._decide(call)
        elif self.plan.head <= p < self._tail_start:
            self._shapes[(tuple(call.head_in.shape[1:]), p)] = tuple(out.shape[1:])
            if p == self._last_skipped:
                value = out - call.head_out if self.plan.reuse == "residual" else out.clone()
                call.new_residuals[(OUTPUT, HIDDEN)] = value
        return out

    def block(self, segment: int, index: int, inputs: Streams, run: RunBlock,
              signal: Callable[[], torch.Tensor] | None = None) -> Streams:
        replaced = self.enter(segment, index, inputs[HIDDEN])
        if replaced is not None:
            return {HIDDEN: replaced}
        return {HIDDEN: self.exit(segment, index, run(inputs)[HIDDEN])}

    # ----------------------------------------------------------------------------------------- timing
    def _in_branch(self, p: int) -> bool:
        """Whether flat block ``p`` belongs to the shallow branch (always runs)."""
        return p < self.plan.head or p >= self._tail_start

    def end_call(self, wall_s: float) -> None:
        call = self._call
        super().end_call(wall_s)
        self._branch_t0 = None
        if call is not None and call.skip is False:
            self._branch_s += call.branch_s
            self._full_s += wall_s
            # what a skipped call still costs, as a share of a computed one: the shallow branch's blocks
            self.stats.skipped_cost = min(1.0, self._branch_s / self._full_s) if self._full_s > 0 else 0.0
