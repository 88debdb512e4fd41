"""ComfyUI glue of the Prompt Cache (Nirvana, ``cache_core/methods/promptcache.py``): reuse across prompts.

``attach(model, cache, ...)`` returns a clone of the ModelPatcher with one keyed SAMPLER_SAMPLE wrapper
(``comfy/samplers.py``: ``CFGGuider.inner_sample`` runs ``sampler.sample(guider, sigmas, extra_args, callback,
noise, latent_image, denoise_mask, disable_pbar)`` through it, after the conditioning was processed and the
empty latent prepared). No global patch. Per run the wrapper:

1. builds the exact key (model fingerprint, latent shape and dtype, sampler, sigmas, CFG scale, the non-text
   parts of the conditioning) and the conditioning's text parts (``cross_attn`` and ``pooled_output`` of every
   entry; the negative branch only when CFG is not 1);
2. on a hit, resumes at step K: it hands the sampler ``sigmas[K:]``, zero noise and the latent ``L`` that the
   model's own ``noise_scaling(sigma_K, 0, L)`` maps to the stored state, so the sampler starts exactly from
   the stored latent (any model sampling: flow ``(1 - sigma) L``, EPS ``L``);
3. on a miss, wraps the sampler's callback to keep the latent ``x`` at the kept steps (k-diffusion samplers
   report ``x`` at ``sigmas[i]`` before step i) and, when the run finished, stores them;
4. publishes one run record (hit/miss, similarity, K, steps saved) and logs one line.

Not cached (recorded as a bypass, the run unchanged): a denoise mask (inpainting), a non-empty input latent
(img2img: the run depends on the image), schedules of fewer than 3 sigmas, conditioning with parts that cannot
be compared (a ControlNet, hooks, GLIGEN: objects rather than tensors or numbers).
The per-step caches of this pack wrap OUTER_SAMPLE and the model calls: on a hit they simply see fewer steps.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from typing import Any

import torch
from comfy.patcher_extension import WrappersMP

from ...cache_core.methods.promptcache import (
    NAME,
    Entry,
    PromptCache,
    PromptCacheConfig,
    kept_steps,
)
from ...cache_core.stats import RunStats
from . import stats_server

log = logging.getLogger("dit_cache")

SPEC_KEY = "dit_cache_prompt_cache"  # transformer_options entry holding the PromptCacheSpec
WRAPPER_KEY = "dit_cache_prompt_cache"

# conditioning keys compared by similarity (text embeddings); every other key must match exactly
TEXT_PARTS = ("cross_attn", "pooled_output")
IGNORED = ("uuid",)
_SAMPLES = 64  # elements sampled per weight tensor for the model fingerprint
# tensors up to this size are also summed in full: a model's big weight matrices are not (a 12B model would be
# read once in full), a fine-tune or merge changes their values everywhere, so the strided sample sees it
_SUMMED = 1 << 20


class PromptCacheSpec:
    def __init__(self, cache: PromptCache, node_label: str, node_id: str | None, store: Any | None) -> None:
        self.cache = cache
        self.node_label = node_label
        self.node_id = node_id
        self.store = store  # DiskStore or None
        self.id = uuid.uuid4().hex[:8]


# ------------------------------------------------------------------ hashing
class Uncacheable(Exception):
    pass


def _feed(h: Any, value: Any, depth: int = 0) -> None:
    """Feed ``value`` into hash ``h``: tensors by shape, dtype and a strided sample of their values; numbers,
    strings and containers by value; anything else raises Uncacheable."""
    if depth > 8:
        raise Uncacheable("nested too deeply")
    if isinstance(value, torch.Tensor):
        h.update(f"T{tuple(value.shape)}{value.dtype}".encode())
        if value.device.type != "meta" and value.numel():
            flat = value.detach().reshape(-1)
            step = max(1, flat.numel() // _SAMPLES)
            h.update(flat[::step][:_SAMPLES].float().cpu().numpy().tobytes())
            if flat.numel() <= _SUMMED:  # small tensors (embeddings, LoRA factors, scalars) count in full
                h.update(repr(float(flat.float().sum())).encode())
    elif value is None or isinstance(value, (bool, int, float, str, bytes)):
        h.update(repr(value).encode())
    elif isinstance(value, (list, tuple)):
        h.update(f"L{len(value)}".encode())
        for v in value:
            _feed(h, v, depth + 1)
    elif isinstance(value, dict):
        for k in sorted(value, key=repr):
            h.update(repr(k).encode())
            _feed(h, value[k], depth + 1)
    else:
        raise Uncacheable(type(value).__name__)


def _weight_patch(h: Any, value: Any, depth: int = 0) -> None:
    """A weight patch's value: tensors and numbers as in ``_feed``; adapter objects (LoRAAdapter, ...) by class
    name and their attributes."""
    try:
        _feed(h, value, depth)
    except Uncacheable:
        h.update(type(value).__name__.encode())
        attrs = getattr(value, "__dict__", None)
        if attrs is None or depth > 6:
            h.update(repr(id(value)).encode())  # unknown: never equal to another patcher's
            return
        for k in sorted(attrs):
            h.update(k.encode())
            _weight_patch(h, attrs[k], depth + 1)


_fingerprints: dict[tuple[int, Any], str] = {}


def model_fingerprint(patcher: Any) -> str:
    """The model's identity: its class, every weight tensor's name, shape and a strided sample of its values, and
    every weight patch (LoRA, ...) with its strengths. Kept per (model, patches uuid): a new LoRA or strength
    gives the patcher a new uuid and a new fingerprint. Stable across processes (the disk store's files)."""
    memo = (id(patcher.model), patcher.patches_uuid)
    if memo in _fingerprints:
        return _fingerprints[memo]
    h = hashlib.sha256()
    dm = patcher.get_model_object("diffusion_model")
    h.update(type(dm).__name__.encode())
    with torch.no_grad():
        for name, t in dm.state_dict().items():
            h.update(name.encode())
            _feed(h, t)
        for key in sorted(patcher.patches):
            h.update(key.encode())
            for p in patcher.patches[key]:
                _weight_patch(h, p)
    h.update(repr(sorted(patcher.object_patches)).encode())
    out = h.hexdigest()[:32]
    if len(_fingerprints) > 64:
        _fingerprints.clear()
    _fingerprints[memo] = out
    return out


def sampler_id(sampler: Any) -> str:
    fn = getattr(sampler, "sampler_function", None)
    h = hashlib.sha256(type(sampler).__name__.encode())
    h.update(getattr(fn, "__qualname__", repr(fn)).encode())
    for attr in ("extra_options", "inpaint_options"):
        _weight_patch(h, getattr(sampler, attr, None))
    return f"{getattr(fn, '__name__', type(sampler).__name__)}:{h.hexdigest()[:16]}"


def conditioning_parts(guider: Any) -> tuple[str, list[torch.Tensor]]:
    """(hash of the exactly-matched parts, text parts compared by similarity) of the guider's conditioning."""
    conds = getattr(guider, "original_conds", None)
    if not conds:
        raise Uncacheable("no conditioning")
    cfg = getattr(guider, "cfg", None)  # a guider without one (DualCFGGuider...): every branch counts
    h = hashlib.sha256(repr(("cfg", float(cfg) if isinstance(cfg, (int, float)) else repr(cfg))).encode())
    parts: list[torch.Tensor] = []
    for branch in sorted(conds):
        if branch == "negative" and cfg == 1.0:
            continue  # ComfyUI skips the unconditional branch at CFG 1: its prompt does not matter
        h.update(f"B{branch}{len(conds[branch])}".encode())
        for c in conds[branch]:
            for k in sorted(c):
                if k in IGNORED:
                    continue
                if k in TEXT_PARTS and isinstance(c[k], torch.Tensor):
                    h.update(f"P{k}".encode())
                    parts.append(c[k].detach().float().cpu())
                    continue
                h.update(k.encode())
                try:
                    _feed(h, c[k])
                except Uncacheable as e:
                    raise Uncacheable(f"the conditioning has '{k}' ({e})") from None
    return h.hexdigest()[:32], parts


# ------------------------------------------------------------------ attach
_caches: dict[tuple[PromptCacheConfig, str | None], PromptCache] = {}
_stores: dict[str, DiskStore] = {}


def shared_cache(config: PromptCacheConfig, folder: str | None = None) -> tuple[PromptCache, DiskStore | None]:
    """The process's cache for ``config`` (and disk folder): one per setting, so a node that runs again (a new
    model, a changed input) keeps the entries; the exact key keeps models apart."""
    store = None
    if folder is not None:
        store = _stores.setdefault(folder, DiskStore(folder))
    k = (config, folder)
    if k not in _caches:
        _caches[k] = PromptCache(config, on_evict=store.remove if store is not None else None)
    return _caches[k], store


def clear_caches() -> None:
    """Forget every cache of this process (tests, the bench); disk files stay."""
    _caches.clear()
    _stores.clear()


def attach(model: Any, cache: PromptCache, node_label: str, node_id: str | None = None,
           store: Any | None = None) -> Any:
    """A clone of ``model`` whose sampling runs go through ``cache``; ``model`` is left untouched."""
    m = model.clone()
    spec = PromptCacheSpec(cache, node_label, node_id, store)
    m.model_options.setdefault("transformer_options", {})[SPEC_KEY] = spec
    m.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, WRAPPER_KEY, _sampler_sample_wrapper)
    return m


def _record(spec: PromptCacheSpec, model_name: str, steps: int, outcome: str, ok: bool, t0: float,
            sim: float | None = None, k: int = 0, reason: str | None = None, stored: bool = False) -> dict:
    cache = spec.cache
    stats = RunStats(method=NAME, settings=cache.settings(), model=model_name)
    # counted in steps: a hit's saved steps are its skipped "calls" (each step is one or more model calls)
    stats.calls, stats.skipped_calls = steps, (k if outcome == "hit" else 0)
    stats.cache_bytes = cache.bytes
    details = {"unit": "steps", "outcome": outcome, "similarity": sim, "k": k, "steps": steps,
               "steps_saved": k if outcome == "hit" else 0, "entries": len(cache), "cache_bytes": cache.bytes,
               "stored": stored}
    if reason:
        details["reason"] = reason
    stats.details["prompt_cache"] = details
    run = stats.to_dict()
    run.update(node=spec.node_label, node_id=spec.node_id, spec_id=spec.id, completed=ok,
               run_wall_s=time.perf_counter() - t0)
    run = stats_server.publish(run)
    sim_s = "-" if sim is None else f"{sim:.4f}"
    what = {"hit": f"hit at step {k}/{steps}, similarity {sim_s}, {k} steps saved",
            "miss": f"miss (best similarity {sim_s}), {steps} steps run" + (", stored" if stored else "")
                    + (f", {reason}" if reason else ""),
            "bypass": f"not cached ({reason}), {steps} steps run"}[outcome]
    log.info("[dit-cache] %s: %s; %d entries, %.1f MiB%s", spec.node_label, what, len(cache),
             cache.bytes / 2**20, "" if ok else " (run interrupted)")
    return run


def _sampler_sample_wrapper(executor: Any, model_wrap: Any, sigmas: torch.Tensor, extra_args: dict, callback: Any,
                            noise: torch.Tensor, latent_image: torch.Tensor | None = None, denoise_mask: Any = None,
                            disable_pbar: bool = False) -> Any:
    spec: PromptCacheSpec = extra_args["model_options"]["transformer_options"][SPEC_KEY]
    cache = spec.cache
    t0 = time.perf_counter()
    steps = max(int(sigmas.shape[-1]) - 1, 0)
    patcher = getattr(model_wrap, "model_patcher", None)
    model_name = type(patcher.get_model_object("diffusion_model")).__name__ if patcher is not None else "?"

    def plain(reason: str) -> Any:
        out = executor(model_wrap, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)
        _record(spec, model_name, steps, "bypass", True, t0, reason=reason)
        return out

    if denoise_mask is not None:
        return plain("denoise mask")
    if latent_image is not None and torch.count_nonzero(latent_image) > 0:
        return plain("the input latent is not empty")
    if steps < 2 or patcher is None:
        return plain("too few steps" if steps < 2 else "no model patcher")
    try:
        exact, parts = conditioning_parts(model_wrap)
        key = (model_fingerprint(patcher), tuple(noise.shape), str(noise.dtype), sampler_id(executor.class_obj),
               tuple(round(float(s), 7) for s in sigmas.reshape(-1).cpu()), exact)
    except Uncacheable as e:
        return plain(str(e))
    seed = extra_args.get("seed")
    if spec.store is not None:
        spec.store.load_into(cache)
    hit = cache.lookup(key, parts, steps, seed)
    if hit is not None:
        k = hit.k
        x = hit.latent.to(device=noise.device, dtype=noise.dtype)
        sampling = model_wrap.inner_model.model_sampling
        beta = sampling.noise_scaling(sigmas[k], torch.zeros_like(x), torch.ones_like(x))
        if torch.all(beta.abs() > 1e-6):
            if spec.store is not None:
                spec.store.touch(hit.entry)
            ok = False
            try:
                out = executor(model_wrap, sigmas[k:], extra_args, callback, torch.zeros_like(noise), x / beta,
                               None, disable_pbar)
                ok = True
            finally:
                _record(spec, model_name, steps, "hit", ok, t0, sim=hit.similarity, k=k)
            return out
    best = cache.best_similarity(key, parts, seed)
    kept = set(kept_steps(cache.config, steps))
    states: dict[int, torch.Tensor] = {}

    def keep(i: int, denoised: Any, x: torch.Tensor, total: int) -> Any:
        if i in kept and i not in states:
            states[i] = x.detach().to("cpu", copy=True)
        if callback is not None:
            return callback(i, denoised, x, total)

    ok = False
    try:
        out = executor(model_wrap, sigmas, extra_args, keep, noise, latent_image, denoise_mask, disable_pbar)
        ok = True
    finally:
        stored, save_error = False, None
        if ok and states and set(states) == kept:
            entry = Entry(key, parts, states, seed)
            try:
                if spec.store is not None:
                    spec.store.save(entry)
                stored = cache.add(entry)
                if spec.store is not None and not stored:
                    spec.store.remove(entry)
            except (RuntimeError, OSError) as e:  # DiskStore.save's error (path and cause)
                save_error = e
        _record(spec, model_name, steps, "miss", ok, t0, sim=best, stored=stored,
                reason=None if save_error is None else f"not stored: {save_error}")
    if save_error is not None:
        # the prompt fails rather than report an entry that was lost (the run's record says "not stored")
        raise save_error
    return out


# ------------------------------------------------------------------ disk store
class DiskStore:
    """The cache's entries as safetensors files in ``folder`` (file names: a random hex id, never prompt text),
    bounded as the RAM cache is (count and bytes, least recently used first out: a file's modification time is
    its last use). Entries of earlier sessions are read when a cache first looks up."""

    SUFFIX = ".dcprompt.safetensors"

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._loaded: set[int] = set()  # caches (by id) that have read the folder

    def _path(self, entry: Entry) -> str:
        if entry.name is None:
            entry.name = uuid.uuid4().hex
        return os.path.join(self.folder, entry.name + self.SUFFIX)

    def save(self, entry: Entry) -> None:
        import json

        from safetensors.torch import save_file

        tensors = {f"part.{i}": p.contiguous() for i, p in enumerate(entry.parts)}
        tensors.update({f"latent.{k}": v.contiguous() for k, v in entry.latents.items()})
        meta = {"dit_cache_prompt_cache": json.dumps({"key": repr(entry.key), "seed": entry.seed,
                                                        "parts": len(entry.parts)})}
        path = self._path(entry)
        tmp = path + ".tmp"
        try:
            os.makedirs(self.folder, exist_ok=True)
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, path)
        except Exception as e:
            try:
                os.remove(tmp)
            except OSError:
                pass
            raise RuntimeError(f"[dit-cache] {NAME}: could not save the cache entry to {path}: {e}") from e

    def remove(self, entry: Entry) -> None:
        if entry.name is not None:
            try:
                os.remove(os.path.join(self.folder, entry.name + self.SUFFIX))
            except FileNotFoundError:
                pass

    def touch(self, entry: Entry) -> None:
        if entry.name is not None:
            try:
                os.utime(os.path.join(self.folder, entry.name + self.SUFFIX))
            except OSError:
                pass

    def load_into(self, cache: PromptCache) -> None:
        """Add the folder's entries to ``cache`` once (oldest use first, so the bounds drop the oldest)."""
        if id(cache) in self._loaded:
            return
        self._loaded.add(id(cache))
        if not os.path.isdir(self.folder):
            return
        import ast
        import json

        from safetensors import safe_open

        files = sorted((f for f in os.listdir(self.folder) if f.endswith(self.SUFFIX)),
                       key=lambda f: os.path.getmtime(os.path.join(self.folder, f)))
        for f in files:
            path = os.path.join(self.folder, f)
            try:
                with safe_open(path, framework="pt") as st:
                    meta = json.loads(st.metadata()["dit_cache_prompt_cache"])
                    parts = [st.get_tensor(f"part.{i}") for i in range(meta["parts"])]
                    names = [n for n in st.keys() if n.startswith("latent.")]  # noqa: SIM118 (safe_open, not a dict)
                    latents = {int(n.split(".")[1]): st.get_tensor(n) for n in names}
                key = ast.literal_eval(meta["key"])
            except Exception:
                log.warning("[dit-cache] %s: skipped the unreadable cache file %s", NAME, path, exc_info=True)
                continue
            entry = Entry(key, parts, latents, meta.get("seed"), name=f[: -len(self.SUFFIX)])
            if not cache.add(entry):
                self.remove(entry)
