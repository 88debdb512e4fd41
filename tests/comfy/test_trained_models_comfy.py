"""The small trained models (models/trained/, scripts/train_tiny_models.py) draw what they were trained on.

Each is sampled through ``comfy.sample`` (the KSampler path) at its reference settings, one prompt per class,
with other noise seeds than the training script's own evaluation; the classifier saved beside the model (a CNN
trained on fresh renders) must find the prompted class in at least 80 % of the samples. Also: the models are
ComfyUI's own classes, the test loader node outputs them, and the latent codec round-trips.
"""
from __future__ import annotations

import importlib.util
import logging

import pytest
import torch

import trained_models
from sampling import ksample

log = logging.getLogger("dit_cache.tests")

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL_CLASSES = {"flux": "Flux", "wan21": "WAN21", "qwen_image": "QwenImage"}  # comfy.model_base classes
PER_CLASS = 10
BAR = 0.8


@pytest.fixture(scope="module", params=trained_models.FAMILIES)
def trained(request):
    family = request.param
    assert trained_models.available(family), f"{trained_models.model_path(family)} is missing"
    return trained_models.load(family)


def test_real_comfyui_class(trained):
    import comfy.model_base

    model = trained.patcher.model
    assert type(model) is getattr(comfy.model_base, MODEL_CLASSES[trained.family])
    assert type(trained.patcher).__name__ == "ModelPatcher"
    assert trained.noise(2, seed=3).shape == (2, *trained.spec.latent)
    assert torch.equal(trained.noise(2, seed=3), trained.noise(2, seed=3))
    meta = trained.meta
    assert meta["training"]["steps"] > 0 and meta["evaluation"]["accuracy"] >= BAR
    assert trained_models.model_path(trained.family).stat().st_size < 12e6


def test_codec_round_trip(trained):
    side = trained.meta["image_size"]
    shape = (2, 3, trained.meta["frames"], side, side) if trained.meta["kind"] == "video" else (2, 3, side, side)
    rgb = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    latent = trained.encode(rgb)
    assert latent.shape == (2, *trained.spec.latent)
    assert torch.allclose(trained.decode(latent), rgb, atol=1e-5)


def test_samples_show_their_class(trained):
    ref = trained.reference
    n = len(trained.classes)
    labels = [k for k in range(n) for _ in range(PER_CLASS)]
    out = ksample(trained.patcher, trained, steps=ref["steps"], cfg=ref["cfg"], sampler=ref["sampler"],
                  scheduler=ref["scheduler"], noise=trained.noise(len(labels), seed=7),
                  positive=trained.conditioning(labels), negative=trained.empty())
    assert torch.isfinite(out).all()
    pred = trained.classify(out)
    acc = (pred == torch.tensor(labels)).float().mean().item()
    per = [(pred[k * PER_CLASS:(k + 1) * PER_CLASS] == k).sum().item() for k in range(n)]
    log.info("trained %s: %.0f %% of %d samples show their class at %s/%s %d steps cfg %g (per class %s)",
             trained.family, 100 * acc, len(labels), ref["sampler"], ref["scheduler"], ref["steps"], ref["cfg"], per)
    assert acc >= BAR, f"{trained.family}: {acc:.2f} of the samples show their class, per class {per}"


def test_loader_node_outputs_trained_model():
    path = trained_models.REPO / "tests" / "support" / "test_nodes" / "dit_cache_test_loader" / "__init__.py"
    spec = importlib.util.spec_from_file_location("dit_cache_test_loader_for_tests", path)
    node_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(node_module)
    loader = node_module.TinyModelLoader
    options = loader.define_schema().inputs[0].options
    assert {f"{f}:trained" for f in trained_models.FAMILIES} <= set(options)
    m = node_module._model("flux:trained", 0)
    out = loader.execute("flux:trained", 3, 2).result
    patcher, positive, negative, latent = out
    assert patcher is m.patcher and isinstance(m, trained_models.TrainedModel)
    assert torch.equal(positive[0][0], m.conditioning(3)[0][0])  # seed 3 -> class 3
    assert torch.equal(negative[0][0], m.empty()[0][0])
    assert latent["samples"].shape == (2, *m.spec.latent)
    random_out = loader.execute("flux", 0, 1).result  # the random tiny model, as before
    assert not isinstance(node_module._model("flux", 0), trained_models.TrainedModel)
    assert random_out[3]["samples"].shape == (1, 16, 16, 16)


@pytest.mark.parametrize("family", trained_models.FAMILIES)
def test_magcache_ratios_unlike_random_weights(store, family):
    """The point of training: calibrated MagCache ratios (residual magnitude step over step) of a trained model
    move away from 1 as a trained DiT's do (by 26-31 % here), where a random-weight model's mostly stay within a
    percent or two of 1 (Qwen-Image's reach 11 % at the last steps)."""
    import tiny_models
    from dit_cache.cache_core.methods import magcache_calibration as cal_io
    from dit_cache.hosts.comfy import run_log
    from dit_cache.nodes.magcache_nodes import MagCacheCalibrate

    def spread(model, tiny, **kw):
        ksample(MagCacheCalibrate.execute(model, family).result[0], tiny, steps=20, **kw)
        rec = [r for r in run_log.recent() if "calibration" in r][-1]["calibration"]
        ratios = cal_io.load(store / rec["file"]).ratios["cond"]
        return max(abs(r - 1) for r in ratios[1:]), ratios

    m = trained_models.load(family)
    ref = m.reference
    trained_spread, trained_ratios = spread(m.patcher, m, cfg=1.0, sampler=ref["sampler"],
                                            scheduler=ref["scheduler"], noise=m.noise(1, seed=0),
                                            positive=m.conditioning(0), negative=m.empty())
    rnd = tiny_models.build(family)
    random_spread, random_ratios = spread(rnd.patcher, rnd, cfg=1.0)
    log.info("MagCache ratios, %s trained: %s", family, " ".join(f"{r:.3f}" for r in trained_ratios))
    log.info("MagCache ratios, %s random:  %s", family, " ".join(f"{r:.3f}" for r in random_ratios))
    assert trained_spread > 2 * random_spread, (trained_spread, random_spread)
