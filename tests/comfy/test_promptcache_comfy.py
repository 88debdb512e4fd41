"""Apply PromptCache through ComfyUI's real sampler on the trained tiny Flux (tests/support/
trained_models.py): reuse across prompts, keyed by the conditioning's similarity and the exact run setting."""
from __future__ import annotations

import logging

import pytest
import torch
import trained_models
from dit_cache.hosts.comfy import prompt_cache, run_log
from dit_cache.nodes import promptcache_node
from dit_cache.nodes.fbc_node import ApplyFirstBlockCache
from dit_cache.nodes.promptcache_node import ApplyPromptCache
from metrics import psnr

log = logging.getLogger("dit_cache.tests")

pytestmark = pytest.mark.skipif(not trained_models.available("flux"), reason="no trained Flux model")


@pytest.fixture(scope="module")
def m():
    return trained_models.load("flux")


@pytest.fixture(autouse=True)
def fresh():
    prompt_cache.clear_caches()
    yield
    prompt_cache.clear_caches()


def apply(model, **kw):
    inputs = {"threshold": 0.95, "max_skip": 0.5, "levels": 5, "max_entries": 16, "max_mb": 64.0, "same_seed": False,
              "disk": False}
    inputs.update(kw)
    return ApplyPromptCache.execute(model, **inputs).result[0]


def run(m, model, cond, seed=0, steps=None, sampler=None, noise=None, negative=None):
    """One KSampler run (``seed`` makes the noise and is the sampler's seed); the Prompt Cache's record of it, or
    None (a model without the cache)."""
    import comfy.sample

    r = m.reference
    before = {id(x) for x in run_log.recent()}
    noise = m.noise(1, seed) if noise is None else noise
    out = comfy.sample.sample(model, noise, steps or r["steps"], r["cfg"], sampler or r["sampler"], r["scheduler"],
                              cond, m.empty() if negative is None else negative, torch.zeros_like(noise),
                              seed=seed, disable_pbar=True)
    new = [x for x in run_log.recent() if id(x) not in before and "prompt_cache" in x["details"]]
    return out, (new[-1]["details"]["prompt_cache"] if new else None)


def mix(m, a, b, w):
    """Conditioning interpolated between classes a and b (w of b): a near-duplicate prompt."""
    ca, cb = m.conditioning(a)[0], m.conditioning(b)[0]
    extra = dict(ca[1], pooled_output=(1 - w) * ca[1]["pooled_output"] + w * cb[1]["pooled_output"])
    return [[(1 - w) * ca[0] + w * cb[0], extra]]


def test_identical_prompt_hits_and_reproduces_the_uncached_output(m):
    ref, _ = run(m, m.patcher, m.conditioning("circle"))
    model = apply(m.patcher)
    first, rec = run(m, model, m.conditioning("circle"))
    assert rec["outcome"] == "miss" and rec["stored"] and torch.equal(first, ref)
    again, rec = run(m, model, m.conditioning("circle"))
    quality = psnr(again, ref)
    log.info("Prompt Cache identical prompt: %s, PSNR %.1f dB", rec, quality)
    assert rec["outcome"] == "hit" and rec["k"] == 10 and rec["steps_saved"] == 10 and rec["similarity"] > 0.9999
    assert quality > 60  # same seed, same trajectory: resuming from the stored state at step 10 is exact
    assert m.classify(again).tolist() == [m.label("circle")]


def test_near_duplicate_hits_with_a_smaller_k_and_unrelated_never_hits(m):
    model = apply(m.patcher)
    run(m, model, m.conditioning("circle"))
    near, rec = run(m, model, mix(m, "circle", "square", 0.2))
    ref_near, _ = run(m, m.patcher, mix(m, "circle", "square", 0.2))
    log.info("Prompt Cache near duplicate: %s, PSNR %.1f dB against its uncached output", rec, psnr(near, ref_near))
    assert rec["outcome"] == "hit" and 0 < rec["k"] < 10 and 0.95 <= rec["similarity"] < 0.999
    assert m.classify(near).tolist() == m.classify(ref_near).tolist()
    for label in m.classes[1:]:
        _, rec = run(m, model, m.conditioning(label))
        assert rec["outcome"] == "miss" and rec["similarity"] < 0.95, (label, rec)


def test_changed_model_resolution_sampler_steps_batch_or_negative_never_hits(m):
    model = apply(m.patcher)
    cond = m.conditioning("circle")
    run(m, model, cond)
    lora = m.patcher.clone()
    key = next(k for k in lora.model_state_dict() if k.endswith(".weight") and "img_in" in k)
    lora.add_patches({key: (torch.randn_like(lora.model_state_dict()[key]) * 1e-3,)}, 1.0)
    noise = m.noise(1, 0)
    misses = {
        "lora": run(m, apply(lora), cond)[1],
        "resolution": run(m, model, cond, noise=torch.randn((1, noise.shape[1], noise.shape[2] * 2, noise.shape[3] * 2),
                                                              generator=torch.Generator().manual_seed(0)))[1],
        "sampler": run(m, model, cond, sampler="euler_ancestral")[1],
        "steps": run(m, model, cond, steps=m.reference["steps"] + 2)[1],
        "batch": run(m, model, m.conditioning("circle", batch=2), noise=m.noise(2, 0))[1],
        "negative": run(m, model, cond, negative=m.conditioning("square"))[1],
    }
    for what, rec in misses.items():
        assert rec["outcome"] == "miss", (what, rec)
    # the LoRA'd run stored its own entry: the original model still hits its own and the LoRA its own
    assert run(m, model, cond)[1]["outcome"] == "hit"
    assert run(m, apply(lora), cond)[1]["outcome"] == "hit"


def test_same_seed_switch(m):
    model = apply(m.patcher, same_seed=True)
    run(m, model, m.conditioning("star"), seed=1)
    assert run(m, model, m.conditioning("star"), seed=2)[1]["outcome"] == "miss"
    assert run(m, model, m.conditioning("star"), seed=1)[1]["outcome"] == "hit"
    other = apply(m.patcher)  # switch off: a hit continues the other seed's noise path
    run(m, other, m.conditioning("ring"), seed=1)
    out, rec = run(m, other, m.conditioning("ring"), seed=2)
    first, _ = run(m, m.patcher, m.conditioning("ring"), seed=1)
    assert rec["outcome"] == "hit" and psnr(out, first) > 60


def test_bounds_hold_with_memory_measured(m):
    model = apply(m.patcher, max_entries=3)
    for label in m.classes[:6]:
        run(m, model, m.conditioning(label))
    cache = model.model_options["transformer_options"][prompt_cache.SPEC_KEY].cache
    measured = sum(t.numel() * t.element_size() for e in cache.entries.values() for t in (*e.parts, *e.latents.values()))
    assert len(cache) == 3 and cache.bytes == measured
    per_entry = measured // 3
    log.info("Prompt Cache: %d bytes per entry (5 latents + embeddings)", per_entry)
    by_bytes = apply(m.patcher, max_entries=100, max_mb=2.5 * per_entry / 2**20)
    for label in m.classes[:6]:
        run(m, by_bytes, m.conditioning(label))
    cache = by_bytes.model_options["transformer_options"][prompt_cache.SPEC_KEY].cache
    assert len(cache) == 2 and cache.bytes <= cache.max_bytes
    # least recently used first out: the last two prompts are kept
    assert run(m, by_bytes, m.conditioning(m.classes[5]))[1]["outcome"] == "hit"
    assert run(m, by_bytes, m.conditioning(m.classes[0]))[1]["outcome"] == "miss"


def test_disk_store_survives_a_new_process_cache_and_a_failed_save_fails(m, tmp_path, monkeypatch):
    folder = tmp_path / "store"
    monkeypatch.setattr(promptcache_node, "disk_folder", lambda: str(folder))
    run(m, apply(m.patcher, disk=True, max_entries=2), m.conditioning("circle"))
    run(m, apply(m.patcher, disk=True, max_entries=2), m.conditioning("square"))
    run(m, apply(m.patcher, disk=True, max_entries=2), m.conditioning("star"))
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) == 2 and all(len(f.split(".")[0]) == 32 for f in files)  # bounded; ids, no prompt text
    prompt_cache.clear_caches()  # a restart: the entries come back from the disk
    assert run(m, apply(m.patcher, disk=True, max_entries=2), m.conditioning("star"))[1]["outcome"] == "hit"
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("x")
    monkeypatch.setattr(promptcache_node, "disk_folder", lambda: str(blocked))
    with pytest.raises(RuntimeError, match="could not save"):
        run(m, apply(m.patcher, disk=True), m.conditioning("ring"))
    last = [x for x in run_log.recent() if "prompt_cache" in x["details"]][-1]["details"]["prompt_cache"]
    assert last["outcome"] == "miss" and not last["stored"] and "could not save" in last["reason"]
    assert not prompt_cache.shared_cache(prompt_cache.PromptCacheConfig(disk=True), str(blocked))[0].entries


def test_composes_with_a_per_step_cache_and_logs_one_line_per_run(m, caplog):
    fbc = ApplyFirstBlockCache.execute(m.patcher, threshold=0.25, start_percent=0.0, end_percent=1.0,
                                       max_consecutive_skips=-1, warmup_steps=0).result[0]
    model = apply(fbc)
    run(m, model, m.conditioning("triangle"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dit_cache"):
        out, rec = run(m, model, m.conditioning("triangle"))
    lines = [r.getMessage() for r in caplog.records if "PromptCache" in r.getMessage().replace(" ", "")]
    assert rec["outcome"] == "hit" and len(lines) == 1 and "hit at step 10/20" in lines[0], lines
    fbc_runs = [r for r in run_log.recent() if r["method"] != "Prompt Cache (Nirvana)"]
    assert fbc_runs[-1]["calls"] <= 10 * 2  # the block cache saw the shortened run only (cond + uncond per step)
    assert m.classify(out).tolist() == [m.label("triangle")]


def test_max_skip_zero_leaves_the_model_unchanged(m):
    assert apply(m.patcher, max_skip=0.0) is m.patcher


@pytest.mark.parametrize("family", ["wan21", "sd15"])
def test_resume_is_exact_on_other_model_samplings(family):
    """Wan 2.1 (5-D latents, flow sampling; trained) and SD1.5 (a UNet, EPS sampling; tiny random weights): a
    repeated prompt and seed resumes from the stored state exactly (the host maps it through the model's own
    noise_scaling)."""
    import comfy.sample
    import tiny_models

    m = trained_models.load(family) if family == "wan21" else tiny_models.build(family)
    cond, neg = (m.conditioning(0), m.empty()) if family == "wan21" else (m.conditioning(1), m.conditioning(2))
    noise = m.noise(1, 0) if family == "wan21" else m.noise(1)

    def go(model):
        return comfy.sample.sample(model, noise, 10, 4.0, "euler", "simple", cond, neg, torch.zeros_like(noise),
                                   seed=0, disable_pbar=True)

    ref = go(m.patcher)
    model = apply(m.patcher)
    go(model)
    out = go(model)
    rec = [x for x in run_log.recent() if "prompt_cache" in x["details"]][-1]["details"]["prompt_cache"]
    log.info("Prompt Cache %s repeat: %s, PSNR %.1f dB", family, rec, psnr(out, ref))
    assert rec["outcome"] == "hit" and rec["k"] == 5 and psnr(out, ref) > 60
