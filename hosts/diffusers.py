"""diffusers glue: run a diffusers transformer's blocks through the shared cache core.

Usage::

    cache = apply_cache(pipe.transformer, FirstBlockCacheConfig(threshold=0.08))
    image = pipe(prompt).images[0]      # the pipeline's own cache_context("cond"/"uncond") picks the streams
    print(cache.last_stats.summary())   # and its end-of-call cache reset ends our run too
    cache.remove()                      # the transformer is exactly as before

or, driving the transformer by hand::

    with cache.stream("cond", sigma=s):
        v = transformer(...)
    stats = cache.reset()               # end of a sampling run

Nothing here imports diffusers: any ``torch.nn.Module`` whose class (or a base class) is named in
:data:`~cache_core.layout.DIFFUSERS_LAYOUTS` works. Everything is done with instance attributes that shadow
methods of the transformer and its blocks (``forward``; ``cache_context`` and ``_reset_stateful_cache`` where
the model has them), so :meth:`DiffusersCache.remove` only has to delete them again.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import math
from typing import Any, Callable, Iterator, Sequence

import torch

from ..cache_core import distributed
from ..cache_core.component_runner import ComponentPolicy
from ..cache_core.config import CacheWindow, SigmaWindow
from ..cache_core.layout import DIFFUSERS_LAYOUTS, BlockLayout, Segment, layout_for_module
from ..cache_core.model_call import model_call
from ..cache_core.policy import Policy
from ..cache_core.registry import spec_for
from ..cache_core.runners import make_runner, uses_components
from ..cache_core.stats import RunStats
from ..cache_core.streams import CallInfo, Streams, latent_frames

__all__ = ["DEFAULT_STREAM", "DiffusersCache", "apply_cache", "flow_sigma_window", "policy_for"]

log = logging.getLogger("dit_cache")

DEFAULT_STREAM = "default"
_MARKER = "_dit_cache"  # instance attribute naming the DiffusersCache applied to a transformer
_MISSING = object()

# FasterCache's unconditional-branch reuse slices these keyword arguments (and every positional tensor) to the
# conditional half of a [uncond; cond] batch, as diffusers' denoiser hook does
_BATCHED_KWARGS = ("hidden_states", "encoder_hidden_states", "timestep", "attention_mask", "encoder_attention_mask")


def policy_for(method: Any) -> Policy | ComponentPolicy:
    """The policy for a method config (or ``method`` itself when it already is a policy); only methods whose
    registry entry names the diffusers host."""
    if isinstance(method, (Policy, ComponentPolicy)):
        return method
    spec = spec_for(method)
    if "diffusers" not in spec.hosts:
        raise TypeError(f"unsupported cache method {type(method).__name__} on the diffusers host: {spec.label} runs "
                        f"on {', '.join(spec.hosts)}")
    return spec.policy(method)


def flow_sigma_window(window: CacheWindow) -> SigmaWindow:
    """A schedule window as flow-matching sigmas (1 at the start of sampling, 0 at the end).

    diffusers' flow-matching pipelines (Flux, Wan, ...) pass sigmas in [0, 1], already shifted; percents are
    mapped without the shift, i.e. as fractions of the sigma range rather than of the steps (ComfyUI maps them
    through the model's shift). An open end stays unbounded so models with other sigma ranges are unaffected.
    """
    start = math.inf if window.start_percent <= 0.0 else 1.0 - window.start_percent
    end = -math.inf if window.end_percent >= 1.0 else 1.0 - window.end_percent
    return SigmaWindow(start, end)


class _AttrPatch:
    """One instance attribute we set to shadow a method; remembers what it shadowed to put it back."""

    def __init__(self, obj: Any, name: str, value: Callable) -> None:
        self.obj, self.name, self.value = obj, name, value
        self.previous = obj.__dict__.get(name, _MISSING)  # an earlier instance-level override, if any
        setattr(obj, name, value)

    def intact(self) -> bool:
        return self.obj.__dict__.get(self.name, _MISSING) is self.value

    def restore(self) -> None:
        if self.previous is _MISSING:
            delattr(self.obj, self.name)
        else:
            setattr(self.obj, self.name, self.previous)


class _BlockForward:
    """Stands in for one block's ``forward``: maps its arguments to streams and hands them to the runner."""

    def __init__(self, cache: DiffusersCache, segment: int, index: int, block: torch.nn.Module, seg: Segment) -> None:
        self.cache, self.segment, self.index = cache, segment, index
        self.original = block.forward  # bound method, or whatever instance-level forward was there before us
        self.returns = seg.returns
        params = inspect.signature(self.original).parameters
        positional = [n for n, p in params.items()
                      if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        self.where: dict[str, tuple[str, int | None]] = {}  # stream -> (parameter name, position or None)
        for stream, name in seg.inputs.items():
            if name not in params:
                raise ValueError(f"{type(block).__name__}.forward has no parameter {name!r} (stream {stream!r}); "
                                 f"the layout does not match this diffusers version")
            self.where[stream] = (name, positional.index(name) if name in positional else None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        streams: Streams = {}
        for stream, (name, pos) in self.where.items():
            if name in kwargs:
                streams[stream] = kwargs[name]
            elif pos is not None and pos < len(args):
                streams[stream] = args[pos]
            else:
                return self.original(*args, **kwargs)  # not called the way we know: let the block complain

        def run(new: Streams) -> Streams:
            a, kw = list(args), dict(kwargs)
            for stream, value in new.items():
                name, pos = self.where[stream]
                if name in kw:
                    kw[name] = value
                else:
                    a[pos] = value
            return self._to_streams(self.original(*a, **kw))

        out = self.cache._runner.block(self.segment, self.index, streams, run)
        if len(self.returns) == 1:
            return out[self.returns[0]]
        return tuple(out[k] for k in self.returns)

    def _to_streams(self, out: Any) -> Streams:
        if len(self.returns) == 1:
            return {self.returns[0]: out}
        if not isinstance(out, tuple) or len(out) != len(self.returns):
            raise RuntimeError(f"dit-cache: block returned {type(out).__name__} of length "
                               f"{len(out) if isinstance(out, tuple) else '-'}, layout expects {self.returns}")
        return dict(zip(self.returns, out))


class DiffusersCache:
    """Handle of a cache applied with :func:`apply_cache`: selects streams, ends runs, removes the cache.

    ``stats`` is the run in progress; ``last_stats`` the last run that :meth:`reset` ended with at least one
    model call (diffusers pipelines end their runs themselves, so read it after ``pipe(...)``).
    """

    def __init__(self, transformer: torch.nn.Module, layout: BlockLayout, policy: Policy | ComponentPolicy,
                 windows: dict[str, SigmaWindow]) -> None:
        self.transformer = transformer
        self.layout = layout
        self.policy = policy
        self.windows = windows  # every schedule window of the policy, by name, as sigmas
        self.block_counts = [len(getattr(transformer, seg.attr)) for seg in layout.segments]
        self.last_stats: RunStats | None = None
        self._stream: tuple[tuple[str, ...], float | None] = ((DEFAULT_STREAM,), None)
        self._patches: list[_AttrPatch] = []
        self._new_run()

    # ------------------------------------------------------------------------------------------ public
    @contextlib.contextmanager
    def stream(self, name: str | Sequence[str] = DEFAULT_STREAM,
               sigma: float | torch.Tensor | None = None) -> Iterator[None]:
        """Model calls inside belong to CFG stream ``name`` (e.g. "cond", "uncond"); each stream keeps its own
        cache. A sequence names the streams of a batched call in batch order (e.g. ``("uncond", "cond")``).
        ``sigma`` (the call's noise level) is only needed for the schedule windows."""
        previous = self._stream
        names = (name,) if isinstance(name, str) else tuple(name)
        self._stream = (names, None if sigma is None else float(sigma))
        try:
            yield
        finally:
            self._stream = previous

    def reset(self) -> RunStats:
        """End the current run (logging a one-line summary if it had model calls) and start a fresh one.

        Returns the ended run's statistics; nothing cached carries over into the next run.
        """
        finished = self.stats
        if finished.calls:
            self._runner.finish(True)  # end-of-run hook (e.g. MagCacheCalibratePolicy hands over its ratios)
            log.info("[dit-cache] %s", finished.summary())
            self.last_stats = finished
        self._new_run()
        return finished

    def remove(self) -> None:
        """Take the cache off: every patched method of the transformer and its blocks is as it was before."""
        if getattr(self.transformer, _MARKER, None) is not self:
            raise RuntimeError("dit-cache: this cache is no longer applied to the transformer")
        moved = [f"{type(p.obj).__name__}.{p.name}" for p in self._patches if not p.intact()]
        if moved:
            # something patched the same methods after us; restoring ours would drop its patch
            raise RuntimeError(f"dit-cache: {', '.join(moved[:3])} were patched again after apply_cache; "
                               f"remove that patch first")
        for p in reversed(self._patches):
            p.restore()
        self._patches.clear()
        delattr(self.transformer, _MARKER)

    # ------------------------------------------------------------------------------------------ internals
    def _new_run(self) -> None:
        self.stats = RunStats(method=self.policy.name, settings=self.policy.settings(),
                              model=type(self.transformer).__name__)
        self._runner = make_runner(self.policy, self.layout, self.block_counts, self.stats,
                                   lambda name, window: self.windows[name])
        self._runner.group = distributed.resolve()  # set_decision_group / DITCACHE_DECISION_GROUP / xDiT's

    def _install(self) -> None:
        t = self.transformer
        # build every block wrapper first: a layout mismatch then raises before anything is patched
        wrappers = [(block, _BlockForward(self, s, i, block, seg))
                    for s, seg in enumerate(self.layout.segments)
                    for i, block in enumerate(getattr(t, seg.attr))]
        attention = []
        if uses_components(self.policy):
            for s, seg in enumerate(self.layout.segments):
                for block in getattr(t, seg.attr):
                    for slot, (attr, kind) in enumerate(seg.attention_modules):
                        module = getattr(block, attr, None)
                        if not isinstance(module, torch.nn.Module):
                            raise ValueError(f"{type(block).__name__} has no attention module {attr!r}; the layout "
                                             f"does not match this diffusers version")
                        attention.append((module, self._attention_forward(module.forward, kind, slot)))
        for block, fwd in wrappers:
            self._patches.append(_AttrPatch(block, "forward", fwd))
        for module, fwd in attention:
            self._patches.append(_AttrPatch(module, "forward", fwd))
        self._patches.append(_AttrPatch(t, "forward", self._model_forward(t.forward)))
        if callable(getattr(t, "cache_context", None)):
            # diffusers pipelines wrap each transformer call in cache_context("cond"/"uncond", ...)
            self._patches.append(_AttrPatch(t, "cache_context", self._cache_context(t.cache_context)))
        if callable(getattr(t, "_reset_stateful_cache", None)):
            # ... and call this at the end of every pipeline call (maybe_free_model_hooks)
            self._patches.append(_AttrPatch(t, "_reset_stateful_cache", self._end_of_pipeline(t._reset_stateful_cache)))
        setattr(t, _MARKER, self)

    def _attention_forward(self, original: Callable, kind: str, slot: int) -> Callable:
        def forward(*args: Any, **kwargs: Any) -> Any:
            return self._runner.attention(lambda: original(*args, **kwargs), kind, slot)

        return forward

    def _model_forward(self, original: Callable) -> Callable:
        def call(names: tuple[str, ...], sigma: float | None, args: tuple, kwargs: dict) -> Any:
            runner = self._runner  # the run this call belongs to, even if reset() happens meanwhile
            latent = kwargs.get("hidden_states", args[0] if args else None)  # the transformer's input latent
            info = CallInfo(streams=[(n, n) for n in names], sigma=sigma,
                            latent=latent if isinstance(latent, torch.Tensor) else None,
                            frames=latent_frames(latent))  # Wan: (B, C, T, H, W)
            with model_call(runner, info):
                return original(*args, **kwargs)

        def forward(*args: Any, **kwargs: Any) -> Any:
            names, sigma = self._stream
            runner = self._runner
            if getattr(runner, "uncond_state", None) is None or "uncond" not in names:
                return call(names, sigma, args, kwargs)
            if names != ("uncond", "cond"):
                # separate cond / uncond calls (the Flux and Wan pipelines): nothing to rebuild the uncond from in
                # this call; say so once per run and compute it (never an error in the middle of sampling)
                if not runner.uncond_idle_logged:
                    runner.uncond_idle_logged = True
                    log.warning("[dit-cache] %s: the unconditional branch came in a separate call %s; its "
                                "reuse needs cond and uncond batched as ('uncond', 'cond') in one call, so it is "
                                "computed every step in this run", runner.policy.name, names)
                return call(names, sigma, args, kwargs)
            return self._uncond_reuse_call(runner, call, sigma, args, kwargs)

        return forward

    @staticmethod
    def _uncond_reuse_call(runner: Any, call: Callable, sigma: float | None, args: tuple, kwargs: dict) -> Any:
        """FasterCache on a [uncond; cond] batch: on the steps the policy picks, run only the cond half and rebuild
        the uncond half of the output from it (``ComponentCacheRunner.reuse_uncond``)."""
        result: list[Any] = []

        def full() -> tuple[torch.Tensor, torch.Tensor]:
            out = call(("uncond", "cond"), sigma, args, kwargs)
            result.append(out)
            uncond, cond = _first(out).chunk(2)
            return cond, uncond

        def half(v: Any) -> Any:
            return v.chunk(2)[1] if isinstance(v, torch.Tensor) else v

        def cond_only() -> torch.Tensor:
            out = call(("cond",), sigma, tuple(half(a) for a in args),
                       {k: half(v) if k in _BATCHED_KWARGS else v for k, v in kwargs.items()})
            result.append(out)
            return _first(out)

        cond, uncond, rebuilt = runner.reuse_uncond(sigma, full, cond_only)
        out = result[-1]
        if not rebuilt:
            return out
        both = torch.cat([uncond, cond])
        if isinstance(out, torch.Tensor):
            return both
        if isinstance(out, tuple):
            return (both, *out[1:])
        out.sample = both
        return out

    def _cache_context(self, original: Callable) -> Callable:
        @contextlib.contextmanager
        def cache_context(name: str, **kwargs: Any) -> Iterator[None]:
            with original(name, **kwargs), self.stream(name, kwargs.get("sigma")):
                yield

        return cache_context

    def _end_of_pipeline(self, original: Callable) -> Callable:
        def reset_stateful_cache(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            self.reset()
            return out

        return reset_stateful_cache


def _first(out: Any) -> torch.Tensor:
    """The sample tensor of a transformer's output (tensor, tuple or output dataclass)."""
    if isinstance(out, torch.Tensor):
        return out
    return out[0] if isinstance(out, tuple) else out.sample


def apply_cache(transformer: torch.nn.Module, method: Any, *, sigma_window: SigmaWindow | None = None,
                windows: dict[str, SigmaWindow] | None = None) -> DiffusersCache:
    """Run ``transformer``'s blocks through ``method`` (a config such as :class:`FirstBlockCacheConfig`, or a
    :class:`Policy`); returns the handle that selects streams, ends runs and removes the cache.

    ``sigma_window`` overrides the method's schedule window as sigmas (default: :func:`flow_sigma_window`);
    ``windows`` does so for attention-level methods (PAB, FasterCache), by window name (an attention kind,
    "uncond", "low_freq", "high_freq"). A diffusers timestep range ``(lo, hi)`` over 1000 is
    ``SigmaWindow(hi / 1000, lo / 1000)`` with the call's ``sigma = timestep / 1000``.
    Raises ValueError for a transformer class without a layout, and for one that already has a dit-cache or a
    diffusers cache applied (two block caches on one model cannot both decide).
    """
    layout = layout_for_module(transformer, DIFFUSERS_LAYOUTS)
    if layout is None:
        supported = sorted(n for lay in DIFFUSERS_LAYOUTS for n in lay.class_names)
        raise ValueError(f"dit-cache: {type(transformer).__name__} is not a supported diffusers transformer "
                         f"(supported: {', '.join(supported)})")
    if getattr(transformer, _MARKER, None) is not None:
        raise ValueError(f"dit-cache: {type(transformer).__name__} already has a dit-cache applied; "
                         f"call .remove() on its handle first")
    if getattr(transformer, "is_cache_enabled", False):
        raise ValueError(f"dit-cache: {type(transformer).__name__} has a diffusers cache enabled; "
                         f"call transformer.disable_cache() first")
    for seg in layout.segments:
        if not seg.returns or set(seg.returns) != set(seg.outputs) or not set(seg.outputs) <= set(seg.inputs):
            raise ValueError(f"dit-cache: layout {layout.family!r} segment {seg.attr!r} needs inputs for "
                             f"{seg.outputs} and returns listing them")
    policy = policy_for(method)
    if uses_components(policy) and not any(seg.attention_modules for seg in layout.segments):
        raise ValueError(f"dit-cache: no attention modules are known for {type(transformer).__name__}")
    resolved = {name: flow_sigma_window(policy.window(name)) for name in policy.window_names()}
    resolved.update(windows or {})
    if sigma_window is not None:
        resolved["gate"] = sigma_window
    cache = DiffusersCache(transformer, layout, policy, resolved)
    cache._install()
    log.debug("[dit-cache] %s applied to %s (blocks %s)", policy.name, type(transformer).__name__,
              cache.block_counts)
    return cache
