"""ComfyUI glue: patch a cloned ModelPatcher so its DiT blocks go through the shared cache core.

Only ComfyUI's public extension points are used: ``ModelPatcher.clone``, keyed wrappers
(OUTER_SAMPLE for the run's life, APPLY_MODEL for each model call) and ``patches_replace["dit"]`` block
replacements. A replacement that another pack set earlier on the same block is kept and called inside ours.
Families whose forward has no ``patches_replace["dit"]`` (HiDream, Lumina 2 / Z-Image, Cosmos Predict2) get
their block ModuleLists swapped with ``ModelPatcher.add_object_patch`` for a :class:`CachedBlockList`: the
same modules under the same names (weights, LoRA patches and offloading see no difference), whose iteration
yields proxies that call the runner. ComfyUI restores the original lists when it unpatches the model.
UNet models (SD1.5 / SD2 / SDXL) get each block object-patched instead, for methods with a UNet plan
(``unet.py``, ``cache_core/unet_runner.py``).
Per-run state lives in a copy of the guider's model options made for that run, so two clones, two samplers or
an interrupted run never share or leave state behind.
"""
from __future__ import annotations

import inspect
import logging
import time
import uuid
from typing import Any, Callable, Hashable, Iterator

import comfy.model_patcher
import torch
from comfy.patcher_extension import WrappersMP

from ...cache_core import distributed, feedback
from ...cache_core.component_runner import FFN, FFN_SLOT, ComponentPolicy
from ...cache_core.config import CacheWindow, SigmaWindow
from ...cache_core.few_steps import few_step_note, schedule_steps
from ...cache_core.layout import COMFY_LAYOUTS, BlockLayout, Segment, layout_for_module
from ...cache_core.methods.teacache_signals import signal_fn
from ...cache_core.model_call import model_call
from ...cache_core.policy import Policy, Probe, RunInfo
from ...cache_core.runners import make_runner, uses_components
from ...cache_core.stats import RunStats
from ...cache_core.streams import CallInfo, StreamRunner, latent_frames
from ...cache_core.unet_runner import UNET_LAYOUT, unet_plan
from . import stats_server, unet
from .keys import ACTIVE as _ACTIVE
from .keys import GROUP_KEY, RUN_KEY, SPEC_KEY, WRAPPER_KEY
from .uncond import calc_cond_batch_wrapper

log = logging.getLogger("dit_cache")



class CacheSpec:
    """What a cache node attached to a model: the method's policy and the model's block layout."""

    def __init__(self, policy: Policy | ComponentPolicy, layout: BlockLayout, block_counts: list[int], model_name: str,
                 node_label: str, node_id: str | None = None, runner: str | None = None,
                 settings: dict[str, Any] | None = None, details: dict[str, Any] | None = None,
                 publish: bool = True) -> None:
        self.policy = policy
        self.settings = dict(settings or {})  # the node's own settings a run record shows first (its calibration)
        self.details = dict(details or {})  # added to every run record's details (the start-here node's reason)
        self.publish = publish  # False: runs are not recorded nor sent to the page (DiT Cache Tune's trial runs)
        self.runner = runner  # the runner kind the model needs instead of the policy's ("unet"), or None
        self.layout = layout
        self.block_counts = block_counts
        self.model_name = model_name
        self.node_label = node_label
        self.node_id = node_id  # the cache node's id in the prompt graph (the statistics panel matches on it)
        self.id = uuid.uuid4().hex[:8]


def diffusion_model_of(model: Any) -> Any:
    return model.get_model_object("diffusion_model")


def block_count(model: Any) -> int | None:
    """Transformer blocks the cache can see in ``model`` (all segments), or None for an unsupported model."""
    dm = diffusion_model_of(model)
    layout = layout_for_module(dm, COMFY_LAYOUTS)
    if layout is None:
        return None
    return sum(len(getattr(dm, seg.attr)) for seg in layout.segments)


def apply_cache(model: Any, policy: Policy | ComponentPolicy, node_label: str, node_id: str | None = None,
                settings: dict[str, Any] | None = None, details: dict[str, Any] | None = None,
                publish: bool = True) -> Any:
    """A clone of ``model`` whose blocks run through ``policy``; ``model`` itself is left untouched. ``details``:
    added to every run record's details; ``publish`` False: the runs are neither kept in the run log nor sent to
    the page (a tuner's trial runs).

    An unsupported model logs a warning and is returned unchanged. A model that already carries a dit-cache
    method raises ValueError (before sampling): two block caches on one model cannot both decide.
    """
    dm = diffusion_model_of(model)
    if unet.is_unet(dm):
        layout = _unet_layout(policy, dm, node_label, node_id)
    elif getattr(policy, "unet_only", False):
        feedback.warn(f"{policy.name} only applies to UNet models (SD1.5, SD2, SDXL), not to {type(dm).__name__}; "
                      f"the model is left unchanged", node_label, node_id)
        return model
    else:
        layout = layout_for_module(dm, COMFY_LAYOUTS)
        if layout is None:
            feedback.warn(f"{type(dm).__name__} is not a supported DiT model; the model is left unchanged",
                          node_label, node_id)
    if layout is None:
        return model
    existing = model.model_options.get("transformer_options", {}).get(SPEC_KEY)
    if existing is not None:
        raise ValueError(
            f"{node_label}: this model already has {existing.policy.name} from '{existing.node_label}' applied. "
            f"Use one dit-cache node per model (remove one of them, or feed this node the model before the other)."
        )
    is_unet = layout is UNET_LAYOUT
    counts = unet.block_counts(dm) if is_unet else [len(getattr(dm, seg.attr)) for seg in layout.segments]
    m = model.clone()
    if node_id is None:  # nodes without the hidden unique_id input: the node ComfyUI is executing
        node_id = stats_server.executing_node_id()
    spec = CacheSpec(policy, layout, counts, type(dm).__name__, node_label, node_id, "unet" if is_unet else None,
                     settings, details, publish)
    m.model_options.setdefault("transformer_options", {})[SPEC_KEY] = spec
    head_signal = _head_signal(policy, layout, dm)  # raises (before sampling) if the family has no signal
    if is_unet:
        unet.attach_blocks(m, spec.id)
    elif layout.mechanism == "object_patch":
        for s, seg in enumerate(layout.segments):
            key = f"diffusion_model.{seg.attr}"
            # get_model_object returns another pack's object patch of this list if there is one: we wrap it
            m.add_object_patch(key, CachedBlockList(m.get_model_object(key), s, seg))
    else:
        existing_replace = m.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
        for s, seg in enumerate(layout.segments):
            for i in range(counts[s]):
                prev = existing_replace.get((seg.kind, i))
                sig = head_signal if (s, i) == (0, 0) else None
                m.set_model_patch_replace(_block_patch(s, i, seg.outputs, prev, sig), "dit", seg.kind, i)
    if uses_components(policy):
        _attach_attention(m, policy)
        if FFN in policy.kinds():
            _attach_ffn(m, layout, spec.id)
    if getattr(policy, "uncond_reuse", False):  # FasterCache, TaylorSeer's uncond_interval
        m.add_wrapper_with_key(WrappersMP.CALC_COND_BATCH, WRAPPER_KEY, calc_cond_batch_wrapper)
    m.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, _outer_sample_wrapper)
    # APPLY_MODEL (BaseModel.apply_model, every family) rather than DIFFUSION_MODEL, which some forwards of
    # ComfyUI 0.3.75 (SD3's MMDiT, Mochi) do not run their wrappers for
    m.add_wrapper_with_key(WrappersMP.APPLY_MODEL, WRAPPER_KEY, _model_call_wrapper)
    return m


def set_decision_group(model: Any, group: Any = distributed.WORLD) -> Any:
    """A clone of ``model`` whose runs reduce their caching decisions over ``group`` ("world", a
    ``torch.distributed`` process group, or "off"; see cache_core/distributed.py and docs/multi-gpu.md). Set it on
    the model every rank samples, before or after the cache node."""
    m = model.clone()
    m.model_options.setdefault("transformer_options", {})[GROUP_KEY] = group
    return m


def _unet_layout(policy: Policy | ComponentPolicy, dm: Any, node_label: str,
                 node_id: str | None = None) -> BlockLayout | None:
    """UNET_LAYOUT when ``policy`` applies to UNets and its plan fits ``dm`` (ValueError before sampling when it
    does not fit); None after a warning when the method does not apply to UNets."""
    plan = unet_plan(policy)
    if plan is None:
        feedback.warn(f"{type(dm).__name__} is not a supported DiT model and {policy.name} does not apply to UNets "
                      f"(First Block Cache and DeepCache do); the model is left unchanged", node_label, node_id)
        return None
    try:
        plan.check(unet.block_counts(dm), policy.name)
    except ValueError as e:
        raise ValueError(f"{node_label}: {e}") from None
    return UNET_LAYOUT


def _head_signal(policy: Policy, layout: BlockLayout, dm: Any) -> Callable[[dict], Any] | None:
    """For policies deciding on a per-call signal (TeaCache): the layout's signal of the first block."""
    if getattr(policy, "probe", None) is not Probe.SIGNAL:  # component policies have no probe
        return None
    fn = signal_fn(layout.signal)
    if fn is None:
        raise ValueError(f"{policy.name}: no first-block signal is known for {layout.family} models yet")
    head = getattr(dm, layout.segments[0].attr)[0]
    return lambda args: fn(head, args)


def _block_patch(segment: int, index: int, outputs: tuple[str, ...], prev: Callable | None,
                 head_signal: Callable[[dict], Any] | None = None) -> Callable:
    def patch(args: dict, extra: dict) -> dict:
        original = extra["original_block"]

        def run(streams: dict) -> dict:
            a = dict(args)
            a.update(streams)
            out = prev(a, {"original_block": original}) if prev is not None else original(a)
            return _fill_dropped(out, a, outputs)

        runner: StreamRunner | None = (args.get("transformer_options") or {}).get(RUN_KEY)
        if runner is None:
            return run({})
        signal = (lambda: head_signal(args)) if head_signal is not None else None
        return runner.block(segment, index, {k: args[k] for k in outputs}, run, signal)

    return patch


def _fill_dropped(out: dict, inputs: dict, outputs: tuple[str, ...]) -> dict:
    """Pass through a stream a block returns as None (SD3's last joint block has no text output)."""
    for k in outputs:
        if out.get(k) is None and k in inputs:
            out[k] = inputs[k]
    return out


class CachedBlockList(torch.nn.ModuleList):
    """A block ModuleList for ``add_object_patch``: the same modules under the same names as ``blocks``, but
    iterating yields :class:`_BlockProxy` callables that route each block through the current run's runner.

    Indexing still returns the real modules, so ``get_model_object`` / weight patching keys are unchanged.
    """

    def __init__(self, blocks: torch.nn.ModuleList, segment: int, seg: Segment) -> None:
        super().__init__(list(blocks))
        # built once per patched model (a plain list: the proxies are not submodules), not on every forward
        self._dit_cache_proxies = [_BlockProxy(block, segment, i, seg) for i, block in enumerate(blocks)]

    def __iter__(self):  # type: ignore[override]
        return iter(self._dit_cache_proxies)


class _BlockProxy:
    """Calls one block through the runner: streams read from / written to the parameters the layout names."""

    def __init__(self, block: Any, segment: int, index: int, seg: Segment) -> None:
        self.block, self.segment, self.index, self.seg = block, segment, index, seg
        self.signature = inspect.signature(block.forward)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        signature = self.signature
        bound = signature.bind(*args, **kwargs)
        runner: StreamRunner | None = (bound.arguments.get("transformer_options") or {}).get(RUN_KEY)
        if runner is None:
            return self.block(*args, **kwargs)
        seg = self.seg
        inputs = {k: bound.arguments[name] for k, name in seg.inputs.items()
                  if isinstance(bound.arguments.get(name), torch.Tensor)}

        def run(streams: dict) -> dict:
            b = signature.bind(*args, **kwargs)
            for k, v in streams.items():
                b.arguments[seg.inputs[k]] = v
            res = self.block(*b.args, **b.kwargs)
            out = dict(zip(seg.returns, res)) if len(seg.returns) > 1 else {seg.returns[0]: res}
            return _fill_dropped(out, streams, seg.outputs)

        out = runner.block(self.segment, self.index, inputs, run)
        return tuple(out[k] for k in seg.returns) if len(seg.returns) > 1 else out[seg.returns[0]]


def _sigma_window(window: CacheWindow, model_sampling: Any) -> SigmaWindow:
    return SigmaWindow(float(model_sampling.percent_to_sigma(window.start_percent)),
                       float(model_sampling.percent_to_sigma(window.end_percent)))


def _attach_attention(m: Any, policy: ComponentPolicy) -> None:
    """Route every attention computation of the clone through the run's runner.

    ``transformer_options["optimized_attention_override"]`` (ComfyUI's ``wrap_attn``) is one slot per model: an
    override another node set earlier (e.g. a SageAttention patch) is kept and called when we compute.
    """
    t_opts = m.model_options["transformer_options"]
    previous = t_opts.get("optimized_attention_override")

    def override(func: Callable, *args: Any, **kwargs: Any) -> Any:
        def compute() -> Any:
            return previous(func, *args, **kwargs) if previous is not None else func(*args, **kwargs)

        runner = (kwargs.get("transformer_options") or {}).get(RUN_KEY)
        if runner is None or not uses_components(runner.policy):
            return compute()
        return runner.attention(compute)

    t_opts["optimized_attention_override"] = override


class _FeedForwardProxy(torch.nn.Module):
    """Stands in for one feed-forward module of one block (through ``add_object_patch``, undone by ComfyUI on
    unpatch) and routes its call through the current run's runner as an "ffn" site.

    It shares the wrapped module's parameter, buffer and submodule tables, so every weight keeps its name
    (``blocks.3.ffn.0.weight``) for LoRA patching, casting and offloading, and the wrapped module itself is
    deliberately not a submodule (no second path to the same weights).
    """

    def __init__(self, module: torch.nn.Module, slot: int, spec_id: str) -> None:
        super().__init__()
        object.__setattr__(self, "_dit_cache_inner", module)
        self._parameters = module._parameters
        self._buffers = module._buffers
        self._modules = module._modules
        self.slot, self.spec_id = slot, spec_id

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        inner = self._dit_cache_inner
        active = _ACTIVE.get()
        if active is None or active[0] != self.spec_id or not uses_components(active[1].policy):
            return inner(*args, **kwargs)
        return active[1].attention(lambda: inner(*args, **kwargs), kind=FFN, slot=self.slot)


def feed_forward_modules(m: Any, layout: BlockLayout) -> Iterator[tuple[str, int, torch.nn.Module]]:
    """(object-patch key, index j in ``Segment.ffn``, module) of every feed-forward module the layout names that
    the model's blocks have (SD3's last context block has none), unwrapped from our own proxies."""
    dm = diffusion_model_of(m)
    for seg in layout.segments:
        for i in range(len(getattr(dm, seg.attr))):
            for j, path in enumerate(seg.ffn):
                key = f"diffusion_model.{seg.attr}.{i}.{path}"
                try:
                    module = m.get_model_object(key)
                except AttributeError:
                    continue
                while isinstance(module, _FeedForwardProxy):  # the model is still patched by an earlier clone
                    module = module._dit_cache_inner
                if isinstance(module, torch.nn.Module):
                    yield key, j, module


def _attach_ffn(m: Any, layout: BlockLayout, spec_id: str) -> None:
    """Object-patch every feed-forward module the layout names (``Segment.ffn``) with a proxy."""
    for key, j, module in list(feed_forward_modules(m, layout)):
        m.add_object_patch(key, _FeedForwardProxy(module, FFN_SLOT + j, spec_id))


def _outer_sample_wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
    guider = executor.class_obj
    orig_options = guider.model_options
    guider.model_options = comfy.model_patcher.create_model_options_clone(orig_options)
    t_opts = guider.model_options["transformer_options"]
    spec: CacheSpec = t_opts[SPEC_KEY]
    with feedback.running(spec.node_label, spec.node_id):  # warnings of the run name the cache node
        return _outer_sample(executor, guider, orig_options, spec, t_opts, args, kwargs)


def _outer_sample(executor: Any, guider: Any, orig_options: Any, spec: "CacheSpec", t_opts: dict,
                  args: tuple, kwargs: dict) -> Any:
    stats = RunStats(method=spec.policy.name, settings={**spec.settings, **spec.policy.settings()},
                     model=spec.model_name)
    stats.details.update(spec.details)
    sigmas = args[3] if len(args) > 3 else kwargs.get("sigmas")  # CFGGuider.outer_sample(noise, latent, sampler, sigmas, ...)
    run_info = RunInfo(tuple(float(x) for x in sigmas.reshape(-1)) if sigmas is not None else None)
    spec.policy.check_run(run_info)  # e.g. a calibration that needs more steps: an error before sampling
    few = few_step_note(spec.policy.name, run_info.sigmas)
    if few is not None:
        feedback.warn(few, spec.node_label, spec.node_id)
        stats.details["few_steps"] = schedule_steps(run_info.sigmas)
    model_sampling = guider.model_patcher.get_model_object("model_sampling")
    runner = make_runner(spec.policy, spec.layout, spec.block_counts, stats,
                         lambda name, window: _sigma_window(window, model_sampling), run_info, spec.runner)
    runner.group = distributed.resolve(t_opts.get(GROUP_KEY))
    if runner.group is not None:
        log.info("[dit-cache] %s: decisions reduced over %d ranks (this is rank %d)", spec.node_label,
                 runner.group.size, runner.group.rank)
    t_opts[RUN_KEY] = runner
    t0 = time.perf_counter()
    ok = False
    finish_error: Exception | None = None
    try:
        out = executor(*args, **kwargs)
        ok = True
    finally:
        guider.model_options = orig_options
        try:
            runner.finish(ok)  # e.g. MagCache Calibrate saves its file here
        except Exception as e:  # after a failed run the run's own error is the one to see
            log.exception("[dit-cache] %s: end-of-run step failed", spec.node_label)
            finish_error = e
        run = stats.to_dict()
        run.update(node=spec.node_label, node_id=spec.node_id, spec_id=spec.id, completed=ok,
                   run_wall_s=time.perf_counter() - t0)
        if spec.publish:
            stats_server.publish(run)  # run_log.record + push to the page that queued the prompt
        (log.info if spec.publish else log.debug)("[dit-cache] %s%s", stats.summary(), "" if ok else " (run interrupted)")
        if runner.model_calls and not stats.calls:
            feedback.warn(f"the model ran {runner.model_calls} times but none of its blocks went through the cache "
                          f"({spec.model_name}'s forward bypassed the block patches, or another node replaced them "
                          f"after this one): nothing was skipped", spec.node_label, spec.node_id)
    if finish_error is not None:
        # the run itself succeeded but its end-of-run step (a calibration's save) did not: the prompt fails with
        # that error instead of reporting success with the result lost
        raise finish_error
    return out


def _stream_labels(t_opts: dict, n_chunks: int) -> list[tuple[Any, str]]:
    cond_or_uncond = list(t_opts.get("cond_or_uncond") or [0] * n_chunks)
    uuids = list(t_opts.get("uuids") or [None] * len(cond_or_uncond))
    seen: dict[str, int] = {}
    streams = []
    for j, (cu, uid) in enumerate(zip(cond_or_uncond, uuids)):
        base = "uncond" if cu == 1 else "cond"
        seen[base] = seen.get(base, 0) + 1
        label = base if seen[base] == 1 else f"{base}{seen[base]}"
        streams.append((uid if uid is not None else (cu, j), label))
    return streams


def host_adds_hints(args: tuple, kwargs: dict) -> bool:
    """Whether this model call adds hints to the block streams between blocks, outside the block calls: a
    ControlNet's ``control`` (BaseModel.apply_model(x, t, c_concat, c_crossattn, control, ...); Flux, Chroma, SD3,
    HunyuanVideo, Qwen-Image add its entries after their blocks) or Wan VACE's ``vace_context`` (VaceWanModel adds
    its VACE blocks' output after every few blocks)."""
    control = args[4] if len(args) > 4 else kwargs.get("control")
    return control is not None or kwargs.get("vace_context") is not None


def hook_weights(model: Any) -> Hashable | None:
    """The weights key of this model call (``CallInfo.weights``): ComfyUI's hooks the patcher applied for it.

    Before each model call ``calc_cond_batch`` applies the call's hook group (``ModelPatcher.apply_hooks``, which
    sets ``current_hooks``; cond and uncond with different hooks run as separate calls), and before each step
    ``prepare_hook_patches_current_keyframe`` moves every hook to its keyframe of that step. The key is each
    applied hook's identity (``hook_ref``, shared by its clones) with its current strengths, so a keyframe that
    changes a hook LoRA's strength, or another hook group, gives another key. None without hooks (``model`` is the
    BaseModel whose ``apply_model`` runs; ``current_patcher`` is the ModelPatcher sampling it)."""
    patcher = getattr(model, "current_patcher", None)
    group = getattr(patcher, "current_hooks", None)
    hooks = getattr(group, "hooks", None)
    if not hooks:
        return None
    return tuple((id(h.hook_ref), type(h).__name__, float(h.strength), float(getattr(h, "strength_model", 1.0)))
                 for h in hooks)


def _model_call_wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
    t_opts = kwargs.get("transformer_options")
    if t_opts is None:
        t_opts = args[-1] if args and isinstance(args[-1], dict) else {}
    runner: StreamRunner | None = t_opts.get(RUN_KEY)
    if runner is None:
        return executor(*args, **kwargs)
    sigmas = t_opts.get("sigmas")
    sigma = float(sigmas.reshape(-1)[0]) if sigmas is not None else None
    n_chunks = len(t_opts.get("cond_or_uncond") or [0])
    first_record = len(runner.stats.records)
    spec = t_opts.get(SPEC_KEY)
    # BaseModel.apply_model(x, t, ...): x is the noisy latent as the sampler holds it (SeaCache's probe; AdaCache
    # reads its frame count)
    latent = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs.get("x")
    info = CallInfo(_stream_labels(t_opts, n_chunks), sigma, latent=latent, frames=latent_frames(latent),
                    hints=host_adds_hints(args, kwargs), weights=hook_weights(getattr(executor, "class_obj", None)))
    with model_call(runner, info):
        token = _ACTIVE.set((spec.id if spec is not None else "", runner, t_opts))
        try:
            out = executor(*args, **kwargs)
        finally:
            _ACTIVE.reset(token)
    if spec is None or spec.publish:
        stats_server.publish_step(spec, runner.stats, first_record)  # live panel; no-op without a page
    return out
