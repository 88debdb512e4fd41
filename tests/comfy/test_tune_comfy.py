"""DiT Cache Tune and "Cache (DiT, start here)" through ComfyUI's sampler on the small trained models.

The tuner (tuning seeds 0 and 1, target PSNR 30 dB of the final latent + its 1 dB margin on the worst seed) meets
its target within 2 dB on held-out seeds (mean over four others) on the trained Flux-, Wan- and Qwen-Image-class
models at CFG 1 and 3.5; the tune file it saves round-trips and the start-here node uses it (and says so in the run record),
falls back to the family's measured table without one, and an interrupt stops the tuner before its next run
with nothing saved."""
from __future__ import annotations

import logging

import pytest
import torch

import trained_models
from metrics import psnr
from sampling import ksample

from dit_cache.cache_core import tune
from dit_cache.cache_core.block_counter import BlockCounter
from dit_cache.cache_core.methods.auto import LEVELS, TABLE
from dit_cache.hosts.comfy import run_log
from dit_cache.nodes import calibration_store
from dit_cache.nodes.auto_node import ApplyAuto
from dit_cache.nodes.tune_node import DitCacheTune

log = logging.getLogger("dit_cache.tests")

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 20
TARGET = 30.0
HELD_OUT = (10, 11, 12, 13)
CLASS = 1  # the prompt: one class of the trained model's
METHODS = "teacache, taylorseer, fbc"  # the fastest families of docs/benchmarks.md, plus one more curve


def tune_inputs(m, cfg: float, **over) -> dict:
    ref = m.reference
    latent = {"samples": torch.zeros_like(m.noise(1, seed=0))}
    return {"positive": m.conditioning(CLASS), "negative": m.empty(), "latent_image": latent, "seed": 0,
            "steps": STEPS, "cfg": cfg, "sampler_name": ref["sampler"], "scheduler": ref["scheduler"],
            "denoise": 1.0, "metric": "PSNR", "target": TARGET, "seeds": 2, "methods": METHODS,
            "filename_prefix": "t", **over}


def sample(m, model, cfg: float, seed: int) -> torch.Tensor:
    ref = m.reference
    return ksample(model, m, steps=STEPS, cfg=cfg, sampler=ref["sampler"], scheduler=ref["scheduler"],
                   noise=m.noise(1, seed=seed), positive=m.conditioning(CLASS), negative=m.empty())


@pytest.mark.parametrize("cfg", [1.0, 3.5])
@pytest.mark.parametrize("family", ["flux", "wan21", "qwen_image"])
def test_tuner_meets_its_target_on_held_out_seeds(store, family, cfg):
    m = trained_models.load(family)
    out = DitCacheTune.execute(m.patcher, **tune_inputs(m, cfg))
    tuned = out.result[0]
    files = calibration_store.tune_files()
    assert len(files) == 1 and files[0].parent == store
    tf = tune.read(files[0])
    assert tf.metric == "PSNR" and tf.target == TARGET and tf.quality >= TARGET + 1.0 and tf.speedup > 1.0
    assert tf.family == ("wan" if family == "wan21" else family) and tf.steps == STEPS and tf.cfg == cfg
    assert set(tf.curve) <= {"teacache", "taylorseer", "fbc"} and tf.method in tf.curve
    record = [r for r in run_log.recent() if r.get("tune")][-1]
    assert record["details"]["tune_file"] == files[0].name and record["details"]["tune_winner"]["method"] == tf.method
    assert out.ui["dit_cache_tune"][0]["curve"] == tf.curve

    counter = BlockCounter(m.patcher.model.diffusion_model)
    with counter:
        refs = {s: sample(m, m.patcher, cfg, s) for s in HELD_OUT}
    base, counter.rows = counter.rows, 0
    with counter:
        q = [psnr(sample(m, tuned, cfg, s), refs[s]) for s in HELD_OUT]
    assert run_log.last()["details"]["chosen_because"].startswith("tuned here")
    speedup = base / counter.rows
    mean = sum(q) / len(q)
    log.info("Tune %s cfg %g: %s %s=%g (tuning: %.2fx, worst seed %.1f dB); held-out %.2fx, PSNR mean %.1f min %.1f "
             "(%s)", family, cfg, tf.method, tf.knob, tf.value, tf.speedup, tf.quality, speedup, mean, min(q),
             [round(x, 1) for x in q])
    assert mean >= TARGET - 2.0, (tf.method, tf.value, q)
    assert speedup == pytest.approx(tf.speedup, rel=0.2)


def test_tune_file_round_trip_and_start_here_uses_it(store):
    m = trained_models.load("flux")
    # without a tune file: the family's measured table, and the reason says so
    table_model = ApplyAuto.execute(m.patcher, choice="balanced").result[0]
    sample(m, table_model, 1.0, 0)
    rec = run_log.last()
    assert "no tune file" in rec["details"]["chosen_because"] and "bench-trained.csv" in rec["details"]["chosen_because"]
    want = TABLE["flux"]["balanced"]
    assert rec["details"]["chosen"]["method"] == want.method and rec["details"]["chosen"]["inputs"] == dict(want.inputs)

    DitCacheTune.execute(m.patcher, **tune_inputs(m, 1.0, methods="teacache", seeds=1))
    path = calibration_store.tune_files()[0]
    tf = tune.read(path)
    assert tune.read(path) == tf and tf.name == path.name  # round trip
    path2 = store / "copy.json"
    tune.write(path2, tf)
    assert tune.read(path2) == tf
    # with it: the fastest measured point meeting each level
    for level in LEVELS:
        best = tune.best_at(tf, LEVELS[level])
        model = ApplyAuto.execute(m.patcher, choice=level).result[0]
        if best is None:
            continue
        sample(m, model, 1.0, 0)
        rec = run_log.last()
        assert rec["details"]["chosen_because"].startswith("tune file") and rec["details"]["chosen"]["inputs"] == {
            "rel_l1_threshold": best[1]}, rec["details"]
    # a file of another model is not used
    other = tune.TuneFile(**{**{k: getattr(tf, k) for k in tf.__dataclass_fields__ if k != "name"},
                             "weights_hint": "00000000"})
    path.unlink()
    path2.unlink()
    tune.write(store / "other.json", other)
    ApplyAuto.execute(m.patcher, choice="balanced")
    sample(m, ApplyAuto.execute(m.patcher, choice="balanced").result[0], 1.0, 0)
    assert "no tune file of this model" in run_log.last()["details"]["chosen_because"]
    # a broken file is skipped with a warning, never an error
    (store / "broken.json").write_text("{", encoding="utf-8")
    assert ApplyAuto.execute(m.patcher, choice="fast").result[0] is not m.patcher


def test_interrupt_stops_the_tuner_cleanly(store):
    import comfy.model_management
    import comfy.utils

    m = trained_models.load("flux")
    seen = []

    def hook(value, total, preview, node_id=None):
        seen.append(value)
        if value == 3:
            comfy.model_management.interrupt_current_processing(True)

    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            DitCacheTune.execute(m.patcher, **tune_inputs(m, 1.0, methods="teacache"))
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)
        comfy.model_management.interrupt_current_processing(False)
    assert seen[-1] == 3  # stopped before the fourth run
    assert calibration_store.tune_files() == []


def test_bad_inputs_fail_before_sampling(store):
    m = trained_models.load("flux")
    with pytest.raises(ValueError, match="cannot tune"):
        DitCacheTune.execute(m.patcher, **tune_inputs(m, 1.0, methods="magcache"))
    assert "cannot tune" in DitCacheTune.validate_inputs(methods="nope")
    with pytest.raises(ValueError, match="choice"):
        ApplyAuto.execute(m.patcher, choice="fastest")


def test_with_a_vae_the_decoded_image_is_judged(store):
    """A real ComfyUI VAE (comfy.sd.VAE from a TAESD state dict with 16 latent channels, random weights: the
    decoder is not the point, that the tuner judges its decoded images is) and SSIM."""
    import comfy.sd
    from comfy.taesd.taesd import TAESD

    m = trained_models.load("flux")
    torch.manual_seed(0)
    taesd = TAESD(latent_channels=m.noise(1, seed=0).shape[1])
    for p in taesd.parameters():  # comfy.ops layers are created without initialising their weights
        torch.nn.init.normal_(p, std=0.1) if p.ndim > 1 else torch.nn.init.zeros_(p)
    taesd.vae_scale.data.fill_(1.0)
    vae = comfy.sd.VAE(sd=taesd.state_dict())
    out = DitCacheTune.execute(m.patcher, **tune_inputs(m, 1.0, metric="SSIM", target=0.9, seeds=1,
                                                         methods="teacache"), vae=vae)
    tf = tune.read(calibration_store.tune_files()[0])
    assert tf.measured_on == "image" and tf.metric == "SSIM" and tf.margin == 0.01
    assert tf.quality >= 0.91 and tf.quality <= 1.0 and tf.speedup > 1.0
    assert out.ui["dit_cache_tune"][0]["winner"]["quality"] == tf.quality
    # the SSIM levels of the start-here node read the same file
    assert ApplyAuto.execute(m.patcher, choice="fast").result[0] is not m.patcher
