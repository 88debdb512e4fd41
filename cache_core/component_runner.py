"""Attention- and component-level caching (PAB, FasterCache, SmoothCache): reuse, extrapolate or schedule the
outputs of individual attention computations and feed-forward modules inside the blocks.

A host creates one :class:`ComponentCacheRunner` per sampling run and drives it as every runner
(``cache_core/streams.py``): :meth:`begin_call` / :meth:`end_call` around each model call,
:meth:`block` for every transformer block (here the blocks always run; the runner only notes which block is
running), and :meth:`attention` for every attention computation inside a block. Which attention of a block is
which kind ("spatial" self/joint attention, "cross" attention to the text, "temporal") comes from the layout
(``Segment.attention``: kinds in call order; ``Segment.attention_modules`` for hosts that hook modules).

Each CFG stream keeps one state per attention site (segment, block, slot) and its own call count. When a call
batches several streams, the site reuses its cache only if every stream may (one attention computation serves
the whole batch); the output is split per stream afterwards, so streams and samples never mix.

Feed-forward modules are sites too (kind ``"ffn"``): hosts hook the modules the layout names
(``Segment.ffn``) and call :meth:`ComponentCacheRunner.attention` with that kind and slot ``FFN_SLOT + j``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .config import CacheWindow, SigmaWindow, config_settings
from .layout import BlockLayout
from .policy import Policy, RunInfo
from .stats import CallRecord, RunStats
from .streams import CallInfo, ResolveWindow, RunBlock, StreamRunner, StreamState, Streams

log = logging.getLogger("dit_cache")

KINDS = ("spatial", "temporal", "cross")
FFN = "ffn"  # feed-forward modules as sites (component-level methods)
COMPONENT_KINDS = KINDS + (FFN,)
FFN_SLOT = 1000  # slot of a block's j-th feed-forward module: FFN_SLOT + j (attention slots count from 0)


@dataclass(frozen=True)
class SiteCall:
    """What a policy knows when one stream meets one attention site."""

    kind: str
    call_index: int  # calls of this stream so far in the run
    in_window: bool  # the call's sigma lies in this kind's schedule window
    cond_only: bool  # no unconditional branch is computed in this call (CFG off, or its uncond was rebuilt)
    steps: int | None = None  # steps of the run (from the host's sigma schedule), None if unknown
    sigma: float | None = None  # the call's sigma, None if unknown (forecasters on the sigma clock)


class ComponentPolicy:
    """A method's rule for one attention or feed-forward site of one stream (see the module docstring).

    ``reuse`` decides; on True the host uses :meth:`cached` instead of computing; :meth:`store` sees the
    output used (computed or cached) after every call of the site.
    """

    runner = "component"  # the runner kind this policy needs (cache_core/runners.py make_runner)
    name: str = "attention"
    part: str = "attention"  # what the statistics call the reused computations ("reused X/Y <part> ...")
    threshold: float = 0.0
    # rebuilds the unconditional CFG branch on some steps (FasterCache); the host then calls new_uncond_state
    uncond_reuse: bool = False

    def kinds(self) -> frozenset[str]:
        """Attention kinds this policy acts on; other kinds always compute."""
        return frozenset()

    def window(self, name: str) -> CacheWindow:
        """The schedule window of an attention kind (or of another named part, see :meth:`window_names`)."""
        return CacheWindow()

    def window_names(self) -> frozenset[str]:
        """Every window the host must resolve against its schedule: the kinds, plus any other part's."""
        return self.kinds()

    def new_uncond_state(self) -> Any:
        return None

    def new_site_state(self) -> Any:
        return None

    def reuse(self, state: Any, call: SiteCall) -> bool:
        return False

    def cached(self, state: Any, call: SiteCall) -> torch.Tensor:
        raise NotImplementedError

    def store(self, state: Any, output: torch.Tensor, computed: bool, call: SiteCall) -> None:
        pass

    config: Any = None

    def settings(self) -> dict[str, Any]:
        """What a run record shows: the config's fields (:func:`~cache_core.config.config_settings`)."""
        return config_settings(self.config) if self.config is not None else {}

    # ---- FasterCache's unconditional-branch reuse (``uncond_reuse``); the runner's reuse_uncond drives them
    def uncond_skips(self, state: Any, in_window: bool) -> bool:
        """Whether this call's unconditional branch is rebuilt instead of computed."""
        return False

    def uncond_observe(self, state: Any, cond: torch.Tensor, uncond: torch.Tensor) -> None:
        """Both branches' outputs of a call that computed them."""

    def uncond_rebuild(self, state: Any, cond: torch.Tensor, windows: Callable[[str], bool]) -> torch.Tensor:
        """The unconditional output rebuilt from the conditional one (``windows(name)``: inside that window)."""
        raise NotImplementedError

    def check_run(self, run: RunInfo) -> None:
        """Before a run samples: raise ValueError if this run cannot work (e.g. too few steps to calibrate)."""

    def finish_run(self, streams: list[tuple[str, dict]], completed: bool) -> None:
        """End of a run: each stream's (label, {site: states}) in first-seen order (a calibration saves here)."""


class _Stream(StreamState):
    def reset(self) -> None:
        super().reset()
        self.sites: dict[tuple[int, int, int], Any] = {}


class _Call:
    def __init__(self, info: CallInfo, streams: list[_Stream]) -> None:
        self.info = info
        self.streams = streams
        self.block: tuple[int, int] | None = None  # (segment, index) of the block running now
        self.slot = 0  # attention calls made so far inside that block
        self.blocks = 0  # blocks that went through the runner in this call
        self.total = [0] * len(streams)
        self.reused = [0] * len(streams)


class ComponentCacheRunner(StreamRunner):
    """Per-run state of an attention/component-level method (see the module docstring)."""

    def __init__(self, layout: BlockLayout, block_counts: Sequence[int], policy: ComponentPolicy, stats: RunStats,
                 windows: dict[str, SigmaWindow] | None = None, run: RunInfo = RunInfo()) -> None:
        super().__init__(layout, block_counts, policy, stats, run)
        self.windows = windows or {}
        self.attention_seen = 0  # attention calls that reached the runner inside a block
        self._tuple_sites: dict[tuple[int, int, int], bool] = {}  # sites whose attention returns a tuple

    @classmethod
    def for_policy(cls, layout: BlockLayout, block_counts: Sequence[int], policy: ComponentPolicy, stats: RunStats,
                   resolve: ResolveWindow, run: RunInfo = RunInfo()) -> ComponentCacheRunner:
        windows = {name: resolve(name, policy.window(name)) for name in policy.window_names()}
        return cls(layout, block_counts, policy, stats, windows, run)

    def new_stream(self, label: str) -> _Stream:
        return _Stream(label)

    def new_call(self, info: CallInfo, states: list[Any]) -> _Call:
        return _Call(info, states)

    def stream_state(self, st: _Stream) -> Any:  # type: ignore[override]
        return st.sites

    # ----------------------------------------------------------------------------------------- call life
    def end_call(self, wall_s: float) -> None:
        call, self._call = self._call, None
        if call is None or not call.blocks:
            return  # interrupted, or the forward bypassed the block patches: nothing to record
        records = []
        for j, st in enumerate(call.streams):
            total, reused = call.total[j], call.reused[j]
            records.append(CallRecord(
                stream=st.label, call_index=st.calls, sigma=call.info.sigma, skipped=False,
                metric=(reused / total) if total else 0.0, threshold=self.policy.threshold,
                reason=("weights" if st.reset_reason and st.calls == 0 else "attention" if reused else "computed"),
                weights=self.weights_id(call.info.weights),
            ))
            st.calls += 1
            self.stats.count(self.policy.part, reused, total)
        self.stats.add_call(records, False, wall_s)
        self.stats.cache_bytes = max(self.stats.cache_bytes, self.cache_bytes())

    def cache_bytes(self) -> int:
        n = sum(Policy.state_bytes(s) for st in self._streams.values() for states in st.sites.values()
                for s in states)
        return n + Policy.state_bytes(self.uncond_state)

    # ----------------------------------------------------------------------------------------- blocks
    def block(self, segment: int, index: int, inputs: Streams, run: RunBlock,
              signal: Callable[[], torch.Tensor] | None = None) -> Streams:
        """Run the block as it is, noting its position for the attention calls it makes."""
        call = self._call
        if call is None:
            return run(inputs)
        if segment == 0 and index == 0:
            self.check_signatures(call.streams, inputs)
        outer = call.block, call.slot
        call.block, call.slot = (segment, index), 0
        call.blocks += 1
        try:
            return run(inputs)
        finally:
            call.block, call.slot = outer

    def attention(self, compute: Callable[[], Any], kind: str | None = None, slot: int | None = None) -> Any:
        """One attention computation: ``compute()`` runs it and returns a tensor (or a tuple of tensors, e.g. a
        joint attention's image and text parts) whose first dimension is the batch. Hosts that know the kind
        and slot (diffusers: the hooked module) pass them; otherwise they follow from the layout's call order."""
        call = self._call
        if call is None or call.block is None:
            return compute()  # outside the cached blocks (e.g. a text refiner): always computed
        segment, index = call.block
        if slot is None:
            slot = call.slot
            call.slot += 1
        if kind is None:
            kinds = self.layout.segments[segment].attention
            kind = kinds[min(slot, len(kinds) - 1)] if kinds else None
        self.attention_seen += 1
        n = len(call.streams)
        for j in range(n):
            call.total[j] += 1
        by_kind = self.stats.reuse_by_kind.setdefault(str(kind), [0, 0])
        by_kind[1] += n
        if kind not in self.policy.kinds():
            return compute()
        window = self.windows.get(kind, SigmaWindow())
        key = (segment, index, slot)
        cond_only = not self.cfg_active or self.uncond_dropped
        inside = window.contains(call.info.sigma)
        sites = [(st.sites.get(key), SiteCall(kind, st.calls, inside, cond_only, self.run.steps, call.info.sigma))
                 for st in call.streams]
        reuse = all(states is not None and all(self.policy.reuse(s, sc) for s in states) for states, sc in sites)
        if reuse:
            parts = [[self.policy.cached(s, sc) for s in states] for states, sc in sites]
            outs = [p[0] if n == 1 else torch.cat(p, dim=0) for p in zip(*parts)]
            out = tuple(outs) if self._tuple_sites.get(key) else outs[0]
        else:
            out = compute()
            self._tuple_sites[key] = isinstance(out, tuple)
        tensors = list(out) if isinstance(out, tuple) else [out]
        by_kind[0] += n * int(reuse)
        for j, (st, (states, sc)) in enumerate(zip(call.streams, sites)):
            if states is None:
                states = st.sites[key] = [self.policy.new_site_state() for _ in tensors]
            for state, t in zip(states, tensors):
                self.policy.store(state, t.chunk(n)[j] if n > 1 else t, not reuse, sc)
            call.reused[j] += int(reuse)
        return out
