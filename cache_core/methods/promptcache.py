"""Prompt Cache: reuse across prompts (Nirvana, "Approximate Caching for Efficiently Serving Diffusion Models",
Agarwal et al., NSDI 2024).

Every method elsewhere in ``cache_core/methods/`` reuses work inside one sampling run. This one reuses work
*across* runs: a finished generation leaves its intermediate noisy latents at a few chosen steps in a cache,
keyed by its conditioning; a later generation whose conditioning is similar enough starts from the stored
latent at step K and runs only the remaining steps. The paper reports about 21 % GPU compute saved (19.8 %
lower latency) on two production text-to-image traces; it stores the states at K in {5, 10, 15, 20, 25} of
50 steps and picks a larger K for a more similar cached prompt, since a nearer prompt's trajectory stays
close to the new one for longer.

What is here is host-agnostic (no ComfyUI): the config, the similarity of two conditionings, the K policy and the
bounded LRU store. The ComfyUI host (``hosts/comfy/prompt_cache.py``) builds the keys and features from a
sampling run and resumes the run from a stored latent.

- **Exact key** (never a hit across it): the model's identity (weights and patches fingerprint), the latent's
  shape (resolution, frames, batch size), the sampler, the sigmas of the schedule, the CFG scale, the non-text
  parts of the conditioning (guidance, areas, masks...) and, with ``same_seed``, the seed.
- **Similarity** of two conditionings with the same exact key: the smallest cosine similarity over their
  parts (every conditioning entry of every branch compared: the negative too when CFG is not 1). A token
  sequence compares token by token and keeps its worst token, a pooled vector compares as a whole. The worst
  part, not the mean: in a padded sequence the padding dominates any mean (two unrelated two-word prompts of
  the trained test models have 0.83-0.94 cosine over the whole sequence, their pooled vectors 0.56-0.75), so
  the worst token is what tells a changed word apart.
- **K policy**: ``levels`` states kept per generation, at ``max_skip * l / levels`` of the steps
  (l = 1..levels; the defaults 5 and 0.5 are the paper's 5/50 ... 25/50). The similarity band
  ``[threshold, 1]`` is split into ``levels`` equal parts: the highest part resumes at the last kept state,
  the lowest at the first. Below ``threshold``: a miss.
- **Bounds**: at most ``max_entries`` generations and ``max_mb`` MiB of stored tensors; least recently used
  first out (the paper's LCBFU weighs frequency and K; an LRU by count and bytes is what a ComfyUI user can
  predict). A hit refreshes its entry. A hit's own run is not stored (its first K steps were another
  generation's).
"""
from __future__ import annotations

import collections
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..config import check_range
from ..registry import MethodSpec, register

NAME = "Prompt Cache (Nirvana)"


@dataclass(frozen=True)
class PromptCacheConfig:
    """threshold: the least similarity that still hits; max_skip: the share of the steps a most-similar hit
    skips; levels: the states kept per generation; max_entries / max_mb: the cache's bounds; same_seed: hit
    only a generation of the same seed; disk: also keep the entries on disk (same bounds)."""

    threshold: float = 0.95
    max_skip: float = 0.5
    levels: int = 5
    max_entries: int = 64
    max_mb: float = 1024.0
    same_seed: bool = False
    disk: bool = False

    def __post_init__(self) -> None:
        check_range("threshold", self.threshold, 0.0, 1.0)
        check_range("max_skip", self.max_skip, 0.0, 0.95)
        if not isinstance(self.levels, int) or not 1 <= self.levels <= 20:
            raise ValueError(f"levels must be a whole number from 1 to 20, got {self.levels!r}")
        if not isinstance(self.max_entries, int) or self.max_entries < 0:
            raise ValueError(f"max_entries must be a whole number >= 0, got {self.max_entries!r}")
        check_range("max_mb", self.max_mb, 0.0, 1e7)

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_mb > 0 and self.max_skip > 0

    def settings(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "max_skip": self.max_skip, "levels": self.levels,
                "max_entries": self.max_entries, "max_mb": self.max_mb, "same_seed": self.same_seed,
                "disk": self.disk}


# ------------------------------------------------------------------ similarity
def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float((a * b).sum()) / (na * nb)


def part_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two conditioning parts. A token sequence ``(batch, tokens, dim)`` of the same shape:
    the smallest over its tokens; 1-D/2-D parts (pooled vectors) or sequences of different lengths: one cosine
    (sequences averaged over their tokens first). Different batch sizes: 0."""
    a, b = a.float(), b.float()
    if a.ndim >= 3 and b.ndim >= 3:
        if a.shape[0] != b.shape[0]:
            return 0.0
        if a.shape == b.shape:
            fa, fb = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
            dots = (fa * fb).sum(-1)
            na, nb = fa.norm(dim=-1), fb.norm(dim=-1)
            both_zero = (na == 0) & (nb == 0)
            cos = torch.where(both_zero, torch.ones_like(dots), dots / (na * nb).clamp_min(1e-12))
            return float(cos.min())
        a, b = a.mean(dim=-2), b.mean(dim=-2)
    if a.shape != b.shape:
        return 0.0
    return _cosine(a.reshape(-1), b.reshape(-1))


def similarity(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """The similarity of two conditionings given as their parts in the same order: the smallest part similarity
    (0 when they have different numbers of parts)."""
    if len(a) != len(b) or not a:
        return 0.0
    return min(part_similarity(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------ K policy
def kept_steps(config: PromptCacheConfig, steps: int) -> list[int]:
    """The step indices whose latents a finished generation of ``steps`` steps leaves in the cache (ascending,
    distinct, each in 1..steps-1)."""
    out = []
    for level in range(1, config.levels + 1):
        k = round(config.max_skip * level / config.levels * steps)
        k = min(max(k, 1), steps - 1)
        if k not in out:
            out.append(k)
    return sorted(out) if steps > 1 else []


def k_for(config: PromptCacheConfig, sim: float, available: Sequence[int]) -> int | None:
    """The step to resume at for similarity ``sim`` among the ``available`` kept steps, or None (a miss).
    The band [threshold, 1] is split into len(available) equal parts; a higher part resumes later."""
    if not available or not math.isfinite(sim) or sim < config.threshold:
        return None
    ks = sorted(available)
    width = (1.0 - config.threshold) / len(ks)
    if width <= 0:
        return ks[-1]
    part = int((min(sim, 1.0) - config.threshold) / width)
    return ks[min(part, len(ks) - 1)]


# ------------------------------------------------------------------ the store
class Entry:
    """One finished generation: its exact key, conditioning parts, kept latents by step and the seed."""

    def __init__(self, key: Hashable, parts: list[torch.Tensor], latents: dict[int, torch.Tensor],
                 seed: int | None = None, name: str | None = None) -> None:
        self.key = key
        self.parts = [p.detach().float().cpu() for p in parts]
        self.latents = {int(k): v.detach().cpu() for k, v in latents.items()}
        self.seed = seed
        self.name = name  # the host's name for it (a disk file), never built from prompt text
        self.hits = 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.parts, *self.latents.values()))


class Hit:
    def __init__(self, entry: Entry, sim: float, k: int) -> None:
        self.entry, self.similarity, self.k = entry, sim, k

    @property
    def latent(self) -> torch.Tensor:
        return self.entry.latents[self.k]


class PromptCache:
    """Bounded LRU store of finished generations with a similarity lookup (the method's "policy": the registry's
    ``policy_for(config)`` builds one). ``on_evict(entry)`` runs for every entry dropped by the bounds (the disk
    store deletes its file there)."""

    name = NAME

    def __init__(self, config: PromptCacheConfig, on_evict: Callable[[Entry], None] | None = None) -> None:
        self.config = config
        self.on_evict = on_evict
        self.entries: collections.OrderedDict[int, Entry] = collections.OrderedDict()  # oldest use first
        self._next = 0
        self.bytes = 0

    @property
    def max_bytes(self) -> int:
        return int(self.config.max_mb * 1024 * 1024)

    def settings(self) -> dict[str, Any]:
        return self.config.settings()

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, key: Hashable, parts: Sequence[torch.Tensor], steps: int, seed: int | None = None) -> Hit | None:
        """The best hit for a generation of ``steps`` steps with this exact key and conditioning, or None. Among
        the entries with the same key the most similar one is taken; it becomes the most recently used."""
        best: tuple[float, int] | None = None
        for eid, e in self.entries.items():
            if e.key != key or (self.config.same_seed and e.seed != seed):
                continue
            sim = similarity(parts, e.parts)
            if best is None or sim > best[0]:
                best = (sim, eid)
        if best is None:
            return None
        sim, eid = best
        entry = self.entries[eid]
        k = k_for(self.config, sim, [k for k in entry.latents if 0 < k < steps])
        if k is None:
            return None
        self.entries.move_to_end(eid)
        entry.hits += 1
        return Hit(entry, sim, k)

    def best_similarity(self, key: Hashable, parts: Sequence[torch.Tensor], seed: int | None = None) -> float | None:
        """The highest similarity among the entries with this key (None: none), for the run's record."""
        sims = [similarity(parts, e.parts) for e in self.entries.values()
                if e.key == key and not (self.config.same_seed and e.seed != seed)]
        return max(sims) if sims else None

    def add(self, entry: Entry) -> bool:
        """Keep ``entry`` (most recently used) and evict by the bounds; False when it alone exceeds them (not kept)."""
        if self.config.max_entries < 1 or entry.nbytes > self.max_bytes:
            return False
        eid = self._next
        self._next += 1
        self.entries[eid] = entry
        self.bytes += entry.nbytes
        self._evict()
        return True

    def _evict(self) -> None:
        while self.entries and (len(self.entries) > self.config.max_entries or self.bytes > self.max_bytes):
            _, old = self.entries.popitem(last=False)
            self.bytes -= old.nbytes
            if self.on_evict is not None:
                self.on_evict(old)

    def clear(self) -> None:
        while self.entries:
            _, old = self.entries.popitem(last=False)
            self.bytes -= old.nbytes
        self.bytes = 0


# ``scope="prompts"``: reuses work across sampling runs, not inside one (see MethodSpec.scope): one run alone never
# skips a model call, so the support matrix and the knob sweep do not apply; bench/prompt_cache.py measures it
register(MethodSpec(key="promptcache", label=NAME, config=PromptCacheConfig, policy=PromptCache,
                    nodes=("promptcache_node:ApplyPromptCache",), hosts=("comfy",), calibration=None,
                    scope="prompts", exports=("similarity", "k_for", "kept_steps")))
