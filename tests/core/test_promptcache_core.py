"""Prompt Cache (Nirvana) core: similarity of conditionings, the K policy and the LRU bounds (no ComfyUI)."""
from __future__ import annotations

import pytest
import torch
from dit_cache.cache_core.methods.promptcache import (
    Entry,
    PromptCache,
    PromptCacheConfig,
    k_for,
    kept_steps,
    part_similarity,
    similarity,
)


def _seq(seed: int, tokens: int = 8, dim: int = 32) -> torch.Tensor:
    return torch.randn((1, tokens, dim), generator=torch.Generator().manual_seed(seed))


def test_similarity_is_the_worst_token_and_the_worst_part():
    a, b = _seq(0), _seq(1)
    assert part_similarity(a, a) == pytest.approx(1.0)
    one_word = a.clone()
    one_word[0, 1] = b[0, 1]  # one token changed, the rest (padding) identical: the whole-sequence cosine is high
    whole = torch.nn.functional.cosine_similarity(a.flatten(), one_word.flatten(), 0).item()
    assert whole > 0.75 and part_similarity(a, one_word) < 0.5
    mixed = 0.8 * a + 0.2 * b
    assert 0.9 < part_similarity(a, mixed) < 1.0
    assert similarity([a, a[:, 0]], [a, b[:, 0]]) == pytest.approx(part_similarity(a[:, 0], b[:, 0]))
    assert similarity([a], [a, a]) == 0.0  # different numbers of parts
    assert part_similarity(a, torch.cat([a, a])) == 0.0  # different batch
    assert part_similarity(a, _seq(0, tokens=5)) < 1.0  # different lengths: the mean-pooled cosine
    zero = torch.zeros(1, 4, 8)
    assert part_similarity(zero, zero) == 1.0


def test_kept_steps_follow_the_paper_levels():
    cfg = PromptCacheConfig()  # 5 levels up to half the steps: the paper's K in {5, 10, 15, 20, 25} of 50
    assert kept_steps(cfg, 50) == [5, 10, 15, 20, 25]
    assert kept_steps(cfg, 20) == [2, 4, 6, 8, 10]
    assert kept_steps(PromptCacheConfig(levels=10, max_skip=0.5), 4) == [1, 2]  # distinct, within 1..steps-1
    assert kept_steps(cfg, 1) == []


def test_k_grows_with_similarity_and_misses_below_the_threshold():
    cfg = PromptCacheConfig(threshold=0.9)
    ks = [2, 4, 6, 8, 10]
    assert k_for(cfg, 0.89, ks) is None
    assert k_for(cfg, float("nan"), ks) is None
    assert k_for(cfg, 0.9, ks) == 2
    assert k_for(cfg, 0.95, ks) == 6
    assert k_for(cfg, 1.0, ks) == 10
    got = [k_for(cfg, s, ks) for s in (0.9, 0.92, 0.94, 0.96, 0.98, 1.0)]
    assert got == sorted(got)
    assert k_for(cfg, 1.0, []) is None


def _entry(key, seed: int, steps=(2, 4), numel: int = 256, run_seed: int | None = None) -> Entry:
    return Entry(key, [_seq(seed)], {k: torch.zeros(numel) for k in steps}, run_seed)


def test_lookup_needs_the_same_key_and_the_same_seed_when_asked():
    cache = PromptCache(PromptCacheConfig(threshold=0.9, levels=2, max_skip=0.4))
    cache.add(_entry("model-a", 0, run_seed=1))
    assert cache.lookup("model-b", [_seq(0)], 10) is None  # another model / size / sampler: never
    assert cache.lookup("model-a", [_seq(5)], 10) is None  # unrelated conditioning
    hit = cache.lookup("model-a", [_seq(0)], 10, seed=7)
    assert hit is not None and hit.k == 4 and hit.similarity == pytest.approx(1.0)
    same = PromptCache(PromptCacheConfig(threshold=0.9, levels=2, max_skip=0.4, same_seed=True))
    same.add(_entry("model-a", 0, run_seed=1))
    assert same.lookup("model-a", [_seq(0)], 10, seed=7) is None
    assert same.lookup("model-a", [_seq(0)], 10, seed=1) is not None


def test_bounds_count_and_bytes_least_recently_used_first():
    evicted = []
    cache = PromptCache(PromptCacheConfig(max_entries=3, max_mb=1.0), on_evict=evicted.append)
    entries = [_entry("k", i) for i in range(5)]
    for e in entries[:3]:
        assert cache.add(e)
    assert cache.lookup("k", [_seq(0)], 10) is not None  # entry 0 is now the most recently used
    cache.add(entries[3])
    assert evicted == [entries[1]] and len(cache) == 3
    assert cache.bytes == sum(e.nbytes for e in cache.entries.values())
    # bytes: each entry is 2 x 256 float32 latents + an 8 x 32 part = 3 KiB
    small = PromptCache(PromptCacheConfig(max_entries=100, max_mb=10 * 3072 / 2**20))
    for i in range(25):
        small.add(_entry("k", i))
        assert small.bytes <= small.max_bytes
    assert len(small) == 10
    huge = _entry("k", 0, numel=10**6)
    assert not small.add(huge) and len(small) == 10  # one entry above the bound alone is not kept


def test_config_checks():
    with pytest.raises(ValueError, match="threshold"):
        PromptCacheConfig(threshold=1.5)
    with pytest.raises(ValueError, match="levels"):
        PromptCacheConfig(levels=0)
    assert not PromptCacheConfig(max_skip=0.0).enabled
