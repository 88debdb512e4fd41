"""The block-range runner of every step-level method (a :class:`~cache_core.streams.StreamRunner`).

A host drives it as every runner (``cache_core/streams.py``): :meth:`~BlockCacheRunner.begin_call` before
each model call, :meth:`~BlockCacheRunner.block` for every transformer block instead of calling the block
directly, and :meth:`~BlockCacheRunner.end_call` afterwards.

Per call: blocks [0, probe) run; then the policy votes per CFG stream. The call skips only when every stream
votes skip (one decision for the whole batch, since a block cannot run for half of it); each stream keeps
its own references and residuals, so per-sample results never mix. On a skip, blocks in the cached range
pass their inputs through and the last cached block of each segment adds that segment's cached residual, so
the output equals ``head_out + (tail_out_prev - head_out_prev)`` however the host joins segments (Flux
concatenates text and image tokens between its double and single blocks).

Hints (``CallInfo.hints``): where the host adds to the streams between blocks, outside the block calls
(ControlNet, Wan VACE), a computed call measures each addition (the next block's input minus the block's
output) and leaves it out of the cached residual. A skipped call passes its inputs through, so the host adds
that call's own hints as usual, and the cached residual holds the blocks' work only: the output is
``head_out + hints_now + (tail_out_prev - head_out_prev - hints_prev)``, never the previous call's hints again.

Weights (``CallInfo.weights``): a stream whose weights changed since its last call was reset when the call began
(``StreamRunner.begin_call``); it has nothing cached, so it computes, with the reason "weights" in its record.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from . import distributed
from .config import SigmaWindow
from .layout import BlockLayout
from .policy import Policy, Probe, RunInfo, StreamCall
from .stats import CallRecord, RunStats
from .streams import CallInfo, ResolveWindow, RunBlock, StreamRunner, StreamState, Streams

__all__ = ["BlockCacheRunner", "CallInfo", "RunBlock", "Streams"]

log = logging.getLogger("dit_cache")


class _StreamState(StreamState):
    """A stream's policy state, cached residuals and skip counters (and a forecaster's state)."""

    def __init__(self, label: str, policy: Policy, run: RunInfo) -> None:
        self.policy = policy
        self.run = run
        super().__init__(label)

    def reset(self) -> None:
        super().reset()
        self.policy_state = self.policy.new_run_state(self.run)
        forecaster = self.policy.forecaster
        self.forecast = forecaster.new_state() if forecaster is not None else None
        self.residuals: dict[tuple[int, str], torch.Tensor] = {}
        self.consecutive_skips = 0
        self.skips = 0  # skipped calls of this stream in the run (Gate.max_cached_steps)
        self.forecast_ready = False  # the forecaster has observed a computed call of this stream

    def nbytes(self) -> int:
        n = sum(t.numel() * t.element_size() for t in self.residuals.values())
        return n + Policy.state_bytes(self.policy_state) + Policy.state_bytes(self.forecast)


@dataclass
class _Call:
    info: CallInfo
    states: list[_StreamState]
    skip: bool | None = None  # None until decided
    head_in: torch.Tensor | None = None
    probe_residual: torch.Tensor | None = None
    seg_in: dict[int, Streams] = field(default_factory=dict)
    # hints (CallInfo.hints): per segment, the last cached block's output as it returned (the host may add to it
    # in place), and per (segment, stream) the sum of what the host added between the segment's cached blocks
    prev_out: dict[int, Streams] = field(default_factory=dict)
    between: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    new_residuals: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    new_outputs: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)  # forecaster target "output"
    stack_residual: torch.Tensor | None = None  # whole-stack hidden residual (probes STACK, INPUT_AND_STACK)
    observed: torch.Tensor | None = None  # the observed block's hidden residual (Policy.observed)
    records: list[CallRecord] = field(default_factory=list)


class BlockCacheRunner(StreamRunner):
    """Per-run cache state and the per-block logic of step-level methods (see the module docstring)."""

    def __init__(
        self,
        layout: BlockLayout,
        block_counts: Sequence[int],
        policy: Policy,
        stats: RunStats,
        window: SigmaWindow = SigmaWindow(),
        run: RunInfo = RunInfo(),
    ) -> None:
        super().__init__(layout, block_counts, policy, stats, run)
        self.window = window
        self._offsets = [sum(block_counts[:i]) for i in range(len(block_counts))]
        lo, hi = policy.probe_blocks, self.total_blocks - policy.tail_blocks
        if not 0 <= lo < hi <= self.total_blocks:
            raise ValueError(
                f"{policy.name}: {policy.probe_blocks} probe + {policy.tail_blocks} tail blocks leave nothing "
                f"to cache in a model with {self.total_blocks} blocks"
            )
        self._cached = (lo, hi)
        self._observed = policy.observed_block(self.total_blocks) if policy.observed else None
        if self._observed is not None and not lo <= self._observed < hi:
            raise ValueError(f"{policy.name}: observed block {self._observed} is outside the cached blocks "
                             f"[{lo}, {hi})")
        # per segment: first and last flat position inside the cached range (None: no cached block there)
        self._seg_bounds: list[tuple[int, int] | None] = []
        for s, n in enumerate(block_counts):
            a, b = max(self._offsets[s], lo), min(self._offsets[s] + n, hi) - 1
            self._seg_bounds.append((a, b) if a <= b else None)

    @classmethod
    def for_policy(cls, layout: BlockLayout, block_counts: Sequence[int], policy: Policy, stats: RunStats,
                   resolve: ResolveWindow, run: RunInfo = RunInfo()) -> BlockCacheRunner:
        return cls(layout, block_counts, policy, stats, resolve("gate", policy.gate.window), run)

    def new_stream(self, label: str) -> _StreamState:
        return _StreamState(label, self.policy, self.run)

    def new_call(self, info: CallInfo, states: list[Any]) -> _Call:
        return _Call(info=info, states=states)

    def stream_state(self, st: _StreamState) -> Any:  # type: ignore[override]
        return st.policy_state

    # ----------------------------------------------------------------------------------------- call life
    def end_call(self, wall_s: float) -> None:
        call, self._call = self._call, None
        if call is None or call.skip is None:
            return  # the model never reached the decision (e.g. an interrupted call): nothing to commit
        n = len(call.states)
        computed = not call.skip
        probe_chunks = call.probe_residual.chunk(n) if call.probe_residual is not None else [None] * n
        new_chunks = {k: v.chunk(n) for k, v in call.new_residuals.items()} if computed else {}
        stack_chunks = call.stack_residual.chunk(n) if computed and call.stack_residual is not None else None
        observed_chunks = call.observed.chunk(n) if computed and call.observed is not None else None
        forecaster = self.policy.forecaster
        if computed and forecaster is not None:
            seen = call.new_outputs if forecaster.target == "output" else call.new_residuals
            seen_chunks = {k: v.chunk(n) for k, v in seen.items()}
        seen_residuals = stack_chunks if stack_chunks is not None else observed_chunks
        observed_sums = self._observe_in_group(call, seen_residuals) if computed else None
        for j, st in enumerate(call.states):
            if observed_sums is not None:
                if seen_residuals is not None:
                    self.policy.observe_from_sums(st.policy_state, seen_residuals[j],
                                                  distributed.slot_sums(observed_sums, st.label))
            else:
                if stack_chunks is not None:
                    self.policy.observe_stack_residual(st.policy_state, stack_chunks[j])
                if observed_chunks is not None:
                    self.policy.observe_block_residual(st.policy_state, observed_chunks[j])
            if computed and forecaster is not None:
                t = forecaster.coordinate(st.calls, call.info.sigma)
                for key, chunks in seen_chunks.items():
                    forecaster.observe(st.forecast, key, chunks[j], t)
                st.forecast_ready = True
            self.policy.commit(st.policy_state, probe_chunks[j], computed)
            if computed:
                # a forecaster keeps what it needs itself: no second copy of the residuals
                st.residuals = {} if forecaster is not None else {k: v[j] for k, v in new_chunks.items()}
                st.consecutive_skips = 0
            else:
                st.consecutive_skips += 1
                st.skips += 1
            st.calls += 1
        self.stats.add_call(call.records, call.skip, wall_s)
        self.stats.cache_bytes = max(self.stats.cache_bytes, sum(s.nbytes() for s in self._streams.values()))

    # ----------------------------------------------------------------------------------------- blocks
    def block(self, segment: int, index: int, inputs: Streams, run: RunBlock,
              signal: Callable[[], torch.Tensor] | None = None) -> Streams:
        """Stand in for block ``index`` of ``segment``: run it via ``run`` or apply the cache.

        ``signal`` (first block only, optional): computes the per-call signal a policy with probe SIGNAL
        decides on (e.g. TeaCache's timestep-modulated input of block 0); it becomes the probe tensor.
        """
        call = self._call
        if call is None:
            return run(inputs)
        p = self._offsets[segment] + index
        hidden = self.layout.hidden
        if p == 0:
            self.check_signatures(call.states, inputs)
            call.head_in = inputs[hidden].clone()  # blocks may update their input in place (ComfyUI's Flux does)
            probe = self.policy.probe
            if probe is Probe.SIGNAL and signal is not None:
                call.probe_residual = signal()
            elif probe is Probe.INPUT_AND_STACK:
                call.probe_residual = call.head_in
            elif probe is Probe.LATENT:
                call.probe_residual = call.info.latent
        lo, hi = self._cached
        if p < lo:
            out = run(inputs)
            if p == lo - 1:
                head_out = out[hidden]
                if head_out.shape == call.head_in.shape:
                    call.probe_residual = head_out - call.head_in
                elif lo > 1:  # a probe range reaching past a join (DBCache's Fn blocks): the head's tokens
                    call.probe_residual = self._stack_residual(call, segment, head_out)
                self._decide(call)
            return out
        if call.skip is None:
            self._decide(call)  # methods that decide before any block runs
        if p >= hi:
            return run(inputs)
        outputs = self.layout.segments[segment].outputs
        first, last = self._seg_bounds[segment]
        hints = call.info.hints
        output_target = self.policy.forecaster is not None and self.policy.forecaster.target == "output"
        if call.skip:
            if p == first and hints and output_target and p < last:
                call.seg_in[segment] = {k: inputs[k].clone() for k in outputs}  # this call's hints: at `last`
            if p == last and self.policy.forecaster is not None:
                return {k: self._forecast(call, segment, k, inputs[k]) for k in outputs}
            if p == last:
                return {k: inputs[k] + self._cached_residual(call, segment, k) for k in outputs}
            return {k: inputs[k] for k in outputs}
        if p == first:
            call.seg_in[segment] = {k: inputs[k].clone() for k in outputs}
        elif hints:
            self._add_between(call, segment, inputs)
        observed_in = inputs[hidden].clone() if p == self._observed else None  # blocks may update it in place
        out = run(inputs)
        if hints and p < last:
            call.prev_out[segment] = {k: out[k].clone() for k in outputs}  # the host may add to it in place
        if observed_in is not None:
            call.observed = self._head_tokens(call, segment, out[hidden] - observed_in)
        if p == last:
            for k in outputs:
                between = call.between.get((segment, k))
                residual = out[k] - call.seg_in[segment][k]
                call.new_residuals[(segment, k)] = residual if between is None else residual - between
                if output_target:  # later blocks may update it in place; without this call's hints
                    call.new_outputs[(segment, k)] = out[k].clone() if between is None else out[k] - between
        if p == self.total_blocks - 1 and self.policy.probe in (Probe.STACK, Probe.INPUT_AND_STACK):
            call.stack_residual = self._stack_residual(call, segment, out[hidden])
        return out

    # ----------------------------------------------------------------------------------------- internals
    def _observe_in_group(self, call: _Call, chunks: Sequence[torch.Tensor] | None) -> torch.Tensor | None:
        """With a group and a policy that measures what it observes: the reduced table of every stream's
        observation sums (one collective on every rank of a computed call, whether or not this rank has a
        residual), else None."""
        width = self.policy.observe_width
        if self.group is None or not width:
            return None
        rows = [(st.label, False, self.policy.observe_sums(st.policy_state, chunks[j]) if chunks is not None else None)
                for j, st in enumerate(call.states)]
        return distributed.unpack(self.group.all_reduce(distributed.pack(rows, width)), width)

    def _gate_reason(self, st: _StreamState, in_window: bool) -> str | None:
        """Why the gate makes this stream compute, or None where the policy's rule decides."""
        gate = self.policy.gate
        if not (st.residuals or st.forecast_ready):
            return st.reset_reason or "no_cache"  # "weights": its weights changed, everything cached was dropped
        if not in_window:
            return "window"
        if st.calls < gate.warmup_steps:
            return "warmup"
        if 0 <= gate.max_consecutive_skips <= st.consecutive_skips:
            return "max_skips"
        if 0 <= gate.max_cached_steps <= st.skips:
            return "max_cached"
        return None

    # Under torch.compile (ComfyUI's TorchCompileModel compiles the forward that calls the block patches) the
    # decision and the forecast run eagerly: traced, their per-call Python numbers (call indices, Taylor factors,
    # counters) would become graph constants and recompile the graph every step.
    @torch.compiler.disable
    def _decide(self, call: _Call) -> None:
        n = len(call.states)
        chunks = call.probe_residual.chunk(n) if call.probe_residual is not None else [None] * n
        in_window = self.window.contains(call.info.sigma)
        for st in call.states:
            self.policy.begin_stream_call(st.policy_state,
                                          StreamCall(st.calls, call.info.sigma, st.label, call.info.frames))
        if self.group is not None:
            self._decide_in_group(call, chunks, in_window)
            return
        votes: list[tuple[bool, str, float | None]] = []
        for j, st in enumerate(call.states):
            metric = self.policy.metric(st.policy_state, chunks[j])
            reason = self._gate_reason(st, in_window)
            vote = (False, reason) if reason else (self.policy.wants_skip(st.policy_state, metric), "metric")
            votes.append((*vote, metric))
        call.skip = all(v[0] for v in votes)
        self._record_votes(call, votes)

    def _decide_in_group(self, call: _Call, chunks: Sequence[torch.Tensor | None], in_window: bool) -> None:
        """The decision of every rank of the group (cache_core/distributed.py): the metric from the group's sums,
        and where streams are split over ranks, the call skips only if every stream of every rank may."""
        policy, group = self.policy, self.group
        width = policy.metric_width
        reasons = [self._gate_reason(st, in_window) for st in call.states]
        rows = [(st.label, reason is not None, policy.metric_sums(st.policy_state, chunks[j]) if width else None)
                for j, (st, reason) in enumerate(zip(call.states, reasons))]
        table = distributed.unpack(group.all_reduce(distributed.pack(rows, width)), width)
        votes: list[tuple[bool, str, float | None]] = []
        for j, (st, reason) in enumerate(zip(call.states, reasons)):
            if width:
                metric = policy.metric_from_sums(st.policy_state, distributed.slot_sums(table, st.label))
            else:
                metric = policy.metric(st.policy_state, chunks[j])
            vote = (False, reason) if reason else (policy.wants_skip(st.policy_state, metric), "metric")
            votes.append((*vote, metric))
        skip = all(v[0] for v in votes) and not distributed.forced_anywhere(table)
        if not distributed.forced_anywhere(table) and distributed.split_streams(table, group.size):
            refusals = torch.tensor([float(sum(not v[0] for v in votes))])
            skip = bool(group.all_reduce(refusals)[0] == 0)
        call.skip = skip
        self._record_votes(call, votes)

    def _record_votes(self, call: _Call, votes: list[tuple[bool, str, float | None]]) -> None:
        for st, (wanted, reason, metric) in zip(call.states, votes):
            if wanted and not call.skip:
                reason = "batch"  # this stream could skip, another stream in the same batch could not
            call.records.append(CallRecord(
                stream=st.label, call_index=st.calls, sigma=call.info.sigma, skipped=call.skip,
                metric=metric, threshold=self.policy.threshold, reason=reason,
                weights=self.weights_id(call.info.weights),
            ))

    def _head_tokens(self, call: _Call, segment: int, t: torch.Tensor) -> torch.Tensor | None:
        """The first block's tokens of a hidden tensor of ``segment``: all of it where its shape is the first
        block input's; where the host joined other tokens to the segment's hidden stream, the part that
        ``Segment.hidden_tokens`` names; None where neither fits."""
        head_in = call.head_in
        if t.shape == head_in.shape:
            return t
        where = self.layout.segments[segment].hidden_tokens
        n = head_in.shape[1] if head_in.ndim >= 2 else 0
        if (where in ("last", "first") and t.ndim == head_in.ndim >= 2 and t.shape[1] > n
                and t.shape[0] == head_in.shape[0] and t.shape[2:] == head_in.shape[2:]):
            return t[:, -n:] if where == "last" else t[:, :n]
        return None

    def _stack_residual(self, call: _Call, segment: int, tail_out: torch.Tensor) -> torch.Tensor | None:
        """Last block's hidden output minus the first block's hidden input (the head's tokens of the output)."""
        head_out = self._head_tokens(call, segment, tail_out)
        if head_out is not None:
            return head_out - call.head_in
        log.warning("[dit-cache] %s: last block output %s does not match the first block input %s; "
                    "no whole-stack residual this call", self.policy.name, tuple(tail_out.shape),
                    tuple(call.head_in.shape))
        return None

    def _add_between(self, call: _Call, segment: int, inputs: Streams) -> None:
        """Add what the host changed since the previous cached block of ``segment`` returned (its hints)."""
        prev = call.prev_out.pop(segment, None)
        if prev is None:
            return
        for k, before in prev.items():
            now = inputs.get(k)
            if now is None or now.shape != before.shape:
                continue
            added = now - before
            key = (segment, k)
            call.between[key] = added if key not in call.between else call.between[key] + added

    def _cached_residual(self, call: _Call, segment: int, stream: str) -> torch.Tensor:
        parts = [st.residuals[(segment, stream)] for st in call.states]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)

    @torch.compiler.disable
    def _forecast(self, call: _Call, segment: int, stream: str, seg_input: torch.Tensor) -> torch.Tensor:
        """The forecaster's prediction of the segment's last cached block output, per CFG stream: its predicted
        output, or the segment's input plus its predicted residual."""
        n = len(call.states)
        chunks = seg_input.chunk(n) if n > 1 else (seg_input,)
        forecaster, key = self.policy.forecaster, (segment, stream)
        parts = []
        for j, st in enumerate(call.states):
            t = forecaster.coordinate(st.calls, call.info.sigma)
            predicted = forecaster.predict(st.forecast, key, t, chunks[j].dtype)
            parts.append(predicted if forecaster.target == "output" else chunks[j] + predicted)
        out = parts[0] if n == 1 else torch.cat(parts, dim=0)
        seg_in = call.seg_in.get(segment)
        if forecaster.target == "output" and seg_in is not None and seg_in[stream].shape == seg_input.shape:
            out = out + (seg_input - seg_in[stream])  # this call's hints, added between the passed-through blocks
        return out
