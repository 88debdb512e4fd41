"""MagCache Calibrate -> file -> dropdown -> Apply MagCache through ComfyUI's real sampler (tiny models)."""
from __future__ import annotations

import logging

import pytest
import torch

import tiny_models
from metrics import psnr
from sampling import ksample

from dit_cache.cache_core.methods import magcache_calibration as cal_io
from dit_cache.nodes import calibration_store
from dit_cache.hosts.comfy import run_log
from dit_cache.nodes.magcache_nodes import ApplyMagCache, MagCacheCalibrate

log = logging.getLogger("dit_cache.tests")

CFG = {"flux": 1.0, "wan21": 4.0, "qwen_image": 4.0}


def apply_mag(model, calibration, threshold=0.2, k=3, retention=0.2, start=0.0, end=1.0, interp="schedule"):
    return ApplyMagCache.execute(model, calibration=calibration, threshold=threshold, max_skip_steps=k,
                                 retention_ratio=retention, start_percent=start, end_percent=end,
                                 interpolation=interp).result[0]


def calibrate(tiny, cfg, steps=20, prefix="t"):
    model = MagCacheCalibrate.execute(tiny.patcher, filename_prefix=prefix).result[0]
    out = ksample(model, tiny, cfg=cfg, steps=steps)
    rec = [r for r in run_log.recent() if "calibration" in r][-1]["calibration"]
    return out, rec


@pytest.mark.parametrize("family", list(CFG))
def test_calibrate_save_list_apply_skip(store, family):
    tiny = tiny_models.build(family)
    cfg = CFG[family]
    ref = ksample(tiny.patcher, tiny, cfg=cfg)
    calibrated_out, rec = calibrate(tiny, cfg)
    assert torch.equal(calibrated_out, ref)  # calibration never skips
    path = store / rec["file"]
    assert path.is_file()
    assert rec["file"] in calibration_store.choices(cal_io.FORMAT)  # the dropdown lists it (read afresh)
    assert rec["file"] in ApplyMagCache.define_schema().inputs[1].options
    cal = cal_io.load(path)
    streams = {"cond"} if cfg == 1.0 else {"cond", "uncond"}
    assert set(cal.ratios) == streams and cal.steps == 20 and len(cal.sigmas) == 21
    assert cal.family == calibration_store.identify(tiny.patcher).layout.family
    results = {}
    for thr in (0.05, 0.3):
        out = ksample(apply_mag(tiny.patcher, rec["file"], thr), tiny, cfg=cfg)
        run = run_log.last()
        assert run["method"] == "MagCache" and torch.isfinite(out).all()
        results[thr] = (run["skipped_calls"], run["calls"], psnr(out, ref))
        assert not any(r["skipped"] for r in run["records"] if r["call_index"] < 4)  # retention 0.2 of 20
    log.info("MagCache %s: %s", family, {t: f"skipped {s}/{c}, PSNR {p:.1f} dB" for t, (s, c, p) in results.items()})
    assert 0 < results[0.3][0] < results[0.3][1]
    assert results[0.05][0] <= results[0.3][0]
    assert results[0.05][2] > 30


def test_other_step_count_and_k_limit(store):
    tiny = tiny_models.build("flux")
    _, rec = calibrate(tiny, 1.0, steps=12)
    for steps in (8, 30):
        out = ksample(apply_mag(tiny.patcher, rec["file"], 10.0, k=2), tiny, steps=steps)
        recs = run_log.last()["records"]
        assert len(recs) == steps and torch.isfinite(out).all()
        run = 0
        for r in recs:
            run = run + 1 if r["skipped"] else 0
            assert run <= 2
        assert any(r["skipped"] for r in recs)


def test_family_and_shape_mismatch_are_clear_errors_before_sampling(store):
    flux, wan = tiny_models.build("flux"), tiny_models.build("wan21")
    _, rec = calibrate(wan, 4.0, steps=6)
    with pytest.raises(ValueError, match="calibrated for a wan model, this model is flux"):
        apply_mag(flux.patcher, rec["file"])
    with pytest.raises(ValueError, match="calibrated for a wan model"):
        apply_mag(flux.patcher, "preset: wan21_t2v_14b")
    # same family, other block shapes: the Flux "medium" model is too slow to sample here, so a saved Flux
    # calibration gets another block hash written into it
    _, frec = calibrate(flux, 1.0, steps=6)
    cal = cal_io.load(store / frec["file"])
    cal.block_hash = "0123456789abcdef"
    cal_io.save(store / "other_shapes.safetensors", cal)
    with pytest.raises(ValueError, match="other block shapes"):
        apply_mag(flux.patcher, "other_shapes.safetensors")
    # a preset is tied to the family only
    apply_mag(flux.patcher, "preset: flux_dev")


def test_corrupt_file_is_a_clear_error_naming_it(store):
    tiny = tiny_models.build("flux")
    _, rec = calibrate(tiny, 1.0, steps=6)
    data = (store / rec["file"]).read_bytes()
    (store / "broken.safetensors").write_bytes(data[:40])
    assert "broken.safetensors" in ApplyMagCache.define_schema().inputs[1].options  # unreadable: still listed
    with pytest.raises(ValueError, match=r"broken\.safetensors.*corrupt or truncated"):
        apply_mag(tiny.patcher, "broken.safetensors")


def test_two_models_of_one_family_give_two_files(store):
    """Wan 2.2 high-noise + low-noise experts: same class and shapes, other weights -> two files."""
    high, low = tiny_models.build("wan21", seed=0), tiny_models.build("wan21", seed=1)
    m_high = MagCacheCalibrate.execute(high.patcher, filename_prefix="wan22").result[0]
    m_low = MagCacheCalibrate.execute(low.patcher, filename_prefix="wan22").result[0]
    # one graph, two samplers: the high-noise model takes the first half of the schedule
    ksample(m_high, high, cfg=4.0, steps=10)
    ksample(m_low, low, cfg=4.0, steps=10)
    files = sorted(p.name for p in store.glob("wan22_*.safetensors"))
    assert len(files) == 2 and files[0] != files[1]
    a, b = (cal_io.load(store / f) for f in files)
    assert a.block_hash == b.block_hash and a.weights_hint != b.weights_hint


def test_preset_on_tiny_flux_and_interrupted_calibration_saves_nothing(store):
    import comfy.model_management

    tiny = tiny_models.build("flux")
    ksample(apply_mag(tiny.patcher, "preset: flux_dev", 0.5), tiny, steps=28)
    assert run_log.last()["skipped_calls"] > 0
    model = MagCacheCalibrate.execute(tiny.patcher, filename_prefix="interrupted").result[0]

    def interrupt(step, x0, x, total):
        if step == 3:
            raise comfy.model_management.InterruptProcessingException()

    with pytest.raises(comfy.model_management.InterruptProcessingException):
        ksample(model, tiny, callback=interrupt)
    assert not list(store.glob("interrupted_*"))


def test_too_few_steps_fail_before_sampling_and_a_failed_save_fails_the_run(store, monkeypatch):
    """A calibration is never reported as done when nothing was saved: 1 step is an error before the model
    runs; a save that fails after the run (here the writer raises) fails the sampling call, no file left."""
    tiny = tiny_models.build("flux")
    calls = []
    model = MagCacheCalibrate.execute(tiny.patcher, filename_prefix="one").result[0]
    with pytest.raises(ValueError, match="MagCache calibration needs at least 2 sampling steps, this run has 1"):
        ksample(model, tiny, steps=1, callback=lambda *a: calls.append(a))
    assert calls == [] and not list(store.iterdir())

    def full_disk(path, cal):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cal_io, "save", full_disk)
    model = MagCacheCalibrate.execute(tiny.patcher, filename_prefix="full").result[0]
    with pytest.raises(OSError, match="No space left"):
        ksample(model, tiny, steps=4)
    assert not list(store.iterdir())
    assert run_log.last()["completed"] is True  # the run itself finished; its save did not


def test_calibration_folder_that_is_a_file_fails_before_sampling(tmp_path):
    import folder_paths

    calibration_store.register()
    blocker = tmp_path / "magcache"
    blocker.write_text("not a folder")
    paths = folder_paths.folder_names_and_paths[calibration_store.FOLDER][0]
    paths.insert(0, str(blocker))
    try:
        with pytest.raises(ValueError, match="the calibration folder .*magcache is a file, not a folder"):
            MagCacheCalibrate.execute(tiny_models.build("flux").patcher, filename_prefix="x")
    finally:
        paths.remove(str(blocker))


def test_default_preset_stays_flux_dev():
    spec = next(i for i in ApplyMagCache.define_schema().inputs if i.id == "calibration")
    assert spec.default == "preset: flux_dev" and spec.options[0] != spec.default  # listed by name, chroma first


@pytest.mark.parametrize("family,preset,cfg", [
    ("chroma", "chroma", 4.0), ("flux_kontext", "flux_kontext", 1.0), ("hunyuan_video15", "hunyuan_video15_20steps", 4.0),
    ("wan21_i2v", "wan21_i2v_480p_14b", 4.0), ("wan21_vace", "wan21_vace_1.3b", 4.0), ("wan22_5b", "wan22_ti2v_5b", 4.0),
    ("wan21", "wan22_t2v_14b_low", 4.0),
])
def test_new_presets_run_on_their_family(family, preset, cfg):
    """Issue 20 item 8: each new preset passes the family check and skips steps through the real sampler."""
    tiny = tiny_models.build(family)
    out = ksample(apply_mag(tiny.patcher, f"preset: {preset}", threshold=0.5), tiny, cfg=cfg)
    run = run_log.last()
    assert run["method"] == "MagCache" and run["skipped_calls"] > 0, run["skipped_calls"]
    assert torch.isfinite(out).all()
