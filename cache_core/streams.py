"""What every runner shares: the CFG streams of a sampling run and the model call in progress.

A host creates one runner per sampling run (:func:`~cache_core.runners.make_runner` picks the kind the
method's policy names), calls :meth:`StreamRunner.begin_call` before each model call (naming the CFG streams
that make up the batch, in batch order), routes every transformer block through :meth:`block`, and ends the call
with :meth:`StreamRunner.end_call` (or :meth:`StreamRunner.abort_call` when the model raised); the per-call
wrapper that does this is :func:`~cache_core.model_call.model_call`. Each stream keeps its own state between
calls; a stream whose inputs change shape, dtype or device starts afresh, and so does a stream whose weights
change (``CallInfo.weights``: e.g. ComfyUI's hook LoRAs at a keyframe): nothing cached under other weights is
reused, and the first call after the change computes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence

import torch

from .config import CacheWindow, SigmaWindow
from .distributed import DecisionGroup
from .layout import BlockLayout
from .policy import RunInfo
from .stats import RunStats

log = logging.getLogger("dit_cache")

Streams = dict[str, torch.Tensor]
RunBlock = Callable[[Streams], Streams]
# (window name, window as fractions of the schedule) -> the window as sigmas of the host's schedule
ResolveWindow = Callable[[str, CacheWindow], SigmaWindow]


@dataclass
class CallInfo:
    """One model call: its CFG streams in batch order as (key, label), the current sigma if known, the model's
    input latent and its latent frames (video models; 1 = an image; None = unknown)."""

    streams: Sequence[tuple[Hashable, str]]
    sigma: float | None = None
    # the model's input latent of this call (the noisy sample, batch = the streams), for policies deciding on
    # it (probe LATENT); None where the host does not hand it over
    latent: torch.Tensor | None = None
    frames: int | None = None
    # the host adds to the block streams between blocks, outside the block calls (ComfyUI: ControlNet hints,
    # Wan VACE hints): the block runner measures those additions on computed calls and keeps them out of its
    # cached residuals, so a skipped call adds this call's additions once, never the cached call's again
    hints: bool = False
    # an identity of the weights this call runs with, where they can change within a run (ComfyUI: the hook group
    # the patcher applied for this call and its hooks' current strengths); None: the model's own weights. A stream
    # whose key differs from its previous call's starts afresh (StreamRunner.begin_call)
    weights: Hashable | None = None


def latent_frames(latent: Any) -> int | None:
    """Latent frames of a model input: dim 2 of a 5-D (batch, channels, frames, height, width) latent, 1 for a
    4-D image latent, None for anything else."""
    if not isinstance(latent, torch.Tensor):
        return None
    return int(latent.shape[2]) if latent.ndim == 5 else 1 if latent.ndim == 4 else None


class StreamState:
    """Everything one CFG stream remembers between model calls of a run; runners extend :meth:`reset`."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.weights: Hashable | None = None  # CallInfo.weights of the stream's last call (kept across resets)
        self.reset()

    def reset(self) -> None:
        self.signature: tuple | None = None
        self.calls = 0
        self.reset_reason: str | None = None  # why the stream last started afresh mid-run ("weights"), if it did


class StreamRunner:
    """Stream bookkeeping for one run of one patched model (see the module docstring)."""

    def __init__(self, layout: BlockLayout, block_counts: Sequence[int], policy: Any, stats: RunStats,
                 run: RunInfo = RunInfo()) -> None:
        if len(block_counts) != len(layout.segments):
            raise ValueError(f"{len(block_counts)} block counts for {len(layout.segments)} segments")
        self.layout = layout
        self.policy = policy
        self.stats = stats
        self.run = run
        self.total_blocks = sum(block_counts)
        self._streams: dict[Hashable, StreamState] = {}
        self._call: Any = None
        self.model_calls = 0  # calls begun, whether or not any block reached the runner
        self.cfg_active = False  # some call of this run had an unconditional (negative) stream
        self.windows: dict[str, SigmaWindow] = {}  # named schedule windows (a runner resolves its policy's)
        # the unconditional-branch reuse (a policy with ``uncond_reuse``: FasterCache, TaylorSeer's uncond_interval)
        self.uncond_dropped = False  # set per call by reuse_uncond: this call's unconditional branch was left out
        self.uncond_idle_logged = False  # the host said once that the uncond reuse cannot act (CFG 1, separate calls)
        self.uncond_state = policy.new_uncond_state() if getattr(policy, "uncond_reuse", False) else None
        self.group: DecisionGroup | None = None  # ranks taking one decision per call (cache_core/distributed.py)
        self.weights_ids: dict[Hashable, int] = {}  # each distinct CallInfo.weights of the run -> its number
        self.weight_resets = 0  # streams reset for new weights so far in the run

    def new_stream(self, label: str) -> StreamState:
        return StreamState(label)

    def new_call(self, info: CallInfo, states: list[Any]) -> Any:
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------- call life
    def begin_call(self, info: CallInfo) -> None:
        self.model_calls += 1
        states = []
        for key, label in info.streams:
            st = self._streams.get(key)
            if st is None:
                st = self._streams[key] = self.new_stream(label)
            elif st.weights != info.weights:
                self._weights_reset(st, info.weights)
            st.weights = info.weights
            states.append(st)
            self.cfg_active = self.cfg_active or label.startswith("uncond")
        self._call = self.new_call(info, states)

    def weights_id(self, weights: Hashable | None) -> int | None:
        """The number of ``weights`` in this run (0, 1, ... in first-seen order; None for the model's own weights):
        what a run record shows per call, so that every skipped call can be matched to the weights it ran with."""
        if weights is None:
            return None
        return self.weights_ids.setdefault(weights, len(self.weights_ids))

    def _weights_reset(self, st: StreamState, weights: Hashable | None) -> None:
        """A stream's weights changed since its last call: drop everything it remembers (cached residuals, metric
        history, forecaster history), so that this call computes and nothing computed under other weights is
        reused; the unconditional-branch reuse forgets its stored branch differences too."""
        log.info("[dit-cache] %s: %s stream weights changed (weights %s -> %s, e.g. a hook keyframe), cache reset",
                 self.policy.name, st.label, self.weights_id(st.weights), self.weights_id(weights))
        st.reset()
        st.reset_reason = "weights"
        self.weight_resets += 1
        self.stats.details["weight_resets"] = self.weight_resets
        if self.uncond_state is not None:
            self.uncond_state = self.policy.new_uncond_state()

    def abort_call(self) -> None:
        """Forget the call in progress (the model raised or was interrupted): nothing is committed."""
        self._call = None

    def end_call(self, wall_s: float) -> None:
        raise NotImplementedError

    def block(self, segment: int, index: int, inputs: Streams, run: RunBlock,
              signal: Callable[[], torch.Tensor] | None = None) -> Streams:
        raise NotImplementedError

    def reuse_uncond(self, sigma: float | None, full: Callable[[], tuple[torch.Tensor, torch.Tensor]],
                     cond_only: Callable[[], torch.Tensor],
                     uncond_only: Callable[[], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """One CFG step of a policy with ``uncond_reuse``: ``full()`` computes both branches and returns their
        outputs (cond, uncond); ``cond_only()`` computes the conditional branch alone. Returns (cond, uncond,
        rebuilt): on the steps the policy picks, the uncond output is rebuilt from the cond one. Every host uses
        this; only how a host leaves the uncond branch out of its batch differs.

        Weights that change at a step (``CallInfo.weights``, e.g. a hook keyframe) are seen only when the step's
        model calls begin, after the decision: when the cond-only calls reset a stream for new weights, the stored
        branch differences (made under the old weights) are dropped and the uncond branch is computed after all,
        by ``uncond_only()`` where the host gives one (the uncond branch alone), else by ``full()``."""
        policy, state = self.policy, self.uncond_state

        def inside(name: str) -> bool:
            return self.windows.get(name, SigmaWindow()).contains(sigma)

        begin = getattr(policy, "uncond_begin", None)
        if begin is not None:
            begin(state, sigma, self.run)

        def computed(compute: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, bool]:
            resets = self.weight_resets
            cond, uncond = compute()
            if self.weight_resets != resets and begin is not None:  # its state was replaced during the calls
                begin(self.uncond_state, sigma, self.run)
            policy.uncond_observe(self.uncond_state, cond, uncond)
            self.stats.count("uncond", 0, 1)
            return cond, uncond, False

        if not policy.uncond_skips(state, inside("uncond")):
            return computed(full)
        self.uncond_dropped = True
        resets = self.weight_resets
        try:
            cond = cond_only()
        finally:
            self.uncond_dropped = False
        if self.weight_resets != resets:
            log.info("[dit-cache] %s: weights changed, the unconditional branch is computed this step", policy.name)
            if begin is not None:  # the state the reset made
                begin(self.uncond_state, sigma, self.run)
            if uncond_only is None:
                return computed(full)
            return computed(lambda: (cond, uncond_only()))
        uncond = policy.uncond_rebuild(state, cond, inside)
        self.stats.count("uncond", 1, 1)
        return cond, uncond, True

    # ----------------------------------------------------------------------------------------- shared
    def check_signatures(self, states: Sequence[StreamState], inputs: Streams) -> None:
        """Reset every stream whose per-sample inputs (shapes, dtypes, devices) differ from its last call's."""
        n = len(states)
        hidden = inputs.get(self.layout.hidden)
        if isinstance(hidden, torch.Tensor) and hidden.ndim and hidden.shape[0] % n:
            raise ValueError(
                f"[dit-cache] {self.policy.name}: the blocks see a batch of {hidden.shape[0]} for {n} CFG streams; "
                f"something splits the batch inside the model (a CFG-parallel wrapper around the diffusion model, "
                f"e.g. raylight's cfg_degree). dit-cache supports CFG parallelism that hands each rank its own "
                f"conditioning before the model call; see docs/multi-gpu.md")
        sig = tuple((k, (v.shape[0] // n,) + tuple(v.shape[1:]), v.dtype, v.device)
                    for k, v in sorted(inputs.items()) if isinstance(v, torch.Tensor))
        for st in states:
            if st.signature is not None and st.signature != sig:
                log.info("[dit-cache] %s: %s stream input changed (%s), cache reset", self.policy.name, st.label, sig)
                st.reset()
            st.signature = sig

    def stream_state(self, st: StreamState) -> Any:
        """What the policy sees of a stream at the end of the run."""
        return st

    def stream_states(self) -> list[tuple[str, Any]]:
        """(label, state) of every stream of the run, in first-seen order."""
        return [(s.label, self.stream_state(s)) for s in self._streams.values()]

    def finish(self, completed: bool) -> None:
        """End of the run: let the policy see every stream's final state (a calibration saves here)."""
        streams = self.stream_states()
        self.policy.finish_run(streams, completed)
        details = getattr(self.policy, "run_details", None)
        if details is not None:
            self.stats.details.update(details(streams))
        if self.group is not None:  # what keeping the ranks' decisions equal cost this run
            self.stats.details["decision_group"] = self.group.cost()
