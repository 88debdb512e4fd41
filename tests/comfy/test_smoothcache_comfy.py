"""SmoothCache Calibrate -> file -> Apply SmoothCache through ComfyUI's real sampler on tiny Flux, Wan and Lumina 2
(object-patched blocks): the calibration, the saved schedule, and that exactly the scheduled component calls
are skipped."""
from __future__ import annotations

import logging

import pytest
import torch

import tiny_models
from metrics import psnr
from sampling import ksample

from dit_cache.cache_core.methods import smoothcache_calibration as smooth_io
from dit_cache.cache_core.layout import COMFY_LAYOUTS, layout_for_module
from dit_cache.cache_core.methods.smoothcache import build_schedule
from dit_cache.nodes import calibration_store
from dit_cache.hosts.comfy import run_log
from dit_cache.nodes.magcache_nodes import ApplyMagCache
from dit_cache.nodes.smoothcache_nodes import ApplySmoothCache, SmoothCacheCalibrate

log = logging.getLogger("dit_cache.tests")
pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 16
CFG = {"flux": 1.0, "wan21": 4.0, "lumina2": 4.0}


def calibrate(tiny, cfg, steps=STEPS, prefix="s", alpha=0.15):
    model = SmoothCacheCalibrate.execute(tiny.patcher, filename_prefix=prefix, alpha=alpha).result[0]
    out = ksample(model, tiny, cfg=cfg, steps=steps)
    rec = [r for r in run_log.recent() if r.get("method") == "SmoothCacheCalibrate"][-1]["calibration"]
    return out, rec


def apply_smooth(model, calibration, alpha=-1.0):
    return ApplySmoothCache.execute(model, calibration=calibration, alpha=alpha).result[0]


def sites_per_kind(tiny) -> dict[str, int]:
    """Components of each type one model call runs: attention kinds from the layout, feed-forward modules
    that exist in the blocks."""
    import comfy.utils

    dm = tiny.patcher.get_model_object("diffusion_model")
    layout = layout_for_module(dm, COMFY_LAYOUTS)
    counts: dict[str, int] = {}
    for seg in layout.segments:
        blocks = getattr(dm, seg.attr)
        for block in (blocks[i] for i in range(len(blocks))):  # indexing: a patched list iterates proxies
            for kind in seg.attention:
                counts[kind] = counts.get(kind, 0) + 1
            for path in seg.ffn:
                try:
                    comfy.utils.get_attr(block, path)
                except AttributeError:
                    continue
                counts["ffn"] = counts.get("ffn", 0) + 1
    return counts


@pytest.mark.parametrize("family", list(CFG))
def test_calibrate_save_apply_skips_exactly_the_schedule(store, family):
    tiny = tiny_models.build(family)
    cfg = CFG[family]
    ref = ksample(tiny.patcher, tiny, cfg=cfg, steps=STEPS)
    calibrated_out, rec = calibrate(tiny, cfg)
    assert torch.equal(calibrated_out, ref)  # calibrating computes everything
    assert rec["file"] in calibration_store.choices(smooth_io.FORMAT)
    assert rec["file"] in ApplySmoothCache.define_schema().inputs[1].options
    assert rec["file"] not in ApplyMagCache.define_schema().inputs[1].options  # not offered to Apply MagCache
    cal = smooth_io.load(store / rec["file"])
    counts = sites_per_kind(tiny)
    assert set(cal.errors) == set(counts) and cal.steps == STEPS and cal.family == calibration_store.identify(
        tiny.patcher).layout.family
    for rows in cal.errors.values():  # lag k is measured from step k on
        assert all(v == v and v >= 0 for k, row in enumerate(rows, 1) for v in row[k:])
    # the schedule saved is the one alpha builds; pick a budget that reuses something on this model
    assert cal.schedule == build_schedule(cal.errors, 0.15)
    lag1 = sorted(v for rows in cal.errors.values() for v in rows[0][1:])
    alpha = lag1[len(lag1) // 2]  # the median lag-1 error: some steps of some types reuse
    schedule = build_schedule(cal.errors, alpha)

    out = ksample(apply_smooth(tiny.patcher, rec["file"], alpha), tiny, cfg=cfg, steps=STEPS)
    run = run_log.last()
    assert run["method"] == "SmoothCache" and run["completed"] and torch.isfinite(out).all()
    total_sites = sum(counts.values())
    streams = {"cond"} if cfg == 1.0 else {"cond", "uncond"}
    per_stream: dict[str, list[float]] = {}
    for r in run["records"]:
        per_stream.setdefault(r["stream"], []).append(r["metric"])
    assert set(per_stream) == streams
    expected = [sum(n for kind, n in counts.items() if not schedule[kind][s]) / total_sites for s in range(STEPS)]
    for fractions in per_stream.values():
        assert fractions == pytest.approx(expected)
    reused, total = run["reuse"]["component"]
    assert total == STEPS * len(streams) * total_sites and 0 < reused < total
    assert run["reuse_by_kind"] == {kind: [schedule[kind].count(False) * n * len(streams), STEPS * n * len(streams)]
                                    for kind, n in counts.items()}
    quality = psnr(out, ref)
    log.info("SmoothCache on tiny %s, alpha %.4f: reused %d/%d components, PSNR %.1f dB\n%s", family, alpha,
             reused, total, quality, smooth_io.schedule_text(schedule))
    assert quality > 25


def test_saved_schedule_other_alpha_other_steps(store, caplog):
    tiny = tiny_models.build("wan21")
    _, rec = calibrate(tiny, 4.0, alpha=10.0)  # a budget every error fits: the longest runs of reuse
    cal = smooth_io.load(store / rec["file"])
    assert all(v == [True, False, False, False] * (STEPS // 4 - 1) + [True, False, False, True]
               for v in cal.schedule.values())
    ksample(apply_smooth(tiny.patcher, rec["file"]), tiny, cfg=4.0, steps=STEPS)
    saved = run_log.last()["reuse"]["component"][0]
    ksample(apply_smooth(tiny.patcher, rec["file"], 1e-6), tiny, cfg=4.0, steps=STEPS)
    assert run_log.last()["reuse"]["component"][0] == 0 < saved  # a tiny budget reuses nothing
    with caplog.at_level(logging.WARNING, logger="dit_cache"):
        out = ksample(apply_smooth(tiny.patcher, rec["file"], 10.0), tiny, cfg=4.0, steps=9)
    assert "the run has 9 steps, the calibration 16" in caplog.text
    run = run_log.last()
    assert torch.isfinite(out).all() and len(run["records"]) == 18 and run["reuse"]["component"][0] > 0


def test_bad_input_is_a_clear_error_or_unchanged_model(store):
    flux, wan = tiny_models.build("flux"), tiny_models.build("wan21")
    _, rec = calibrate(wan, 4.0, steps=4)
    with pytest.raises(ValueError, match="calibrated for a wan model, this model is flux"):
        apply_smooth(flux.patcher, rec["file"])
    with pytest.raises(ValueError, match="alpha must be"):
        apply_smooth(wan.patcher, rec["file"], -0.5)
    assert apply_smooth(wan.patcher, rec["file"], 0.0) is wan.patcher  # alpha 0: unchanged
    with pytest.raises(ValueError, match="'missing.safetensors' is not one of the listed calibrations"):
        apply_smooth(wan.patcher, "missing.safetensors")
    sd15 = tiny_models.build_sd15_unet()
    assert apply_smooth(sd15, rec["file"]) is sd15


def test_too_few_steps_or_nothing_measured_is_an_error_not_a_success(store):
    """1 step: an error before sampling (it used to log "nothing saved" and report success); a finished run
    that measured nothing raises too."""
    tiny = tiny_models.build("flux")
    calls = []
    model = SmoothCacheCalibrate.execute(tiny.patcher, filename_prefix="one", alpha=0.15).result[0]
    with pytest.raises(ValueError, match="SmoothCache calibration needs at least 2 sampling steps, this run has 1"):
        ksample(model, tiny, steps=1, callback=lambda *a: calls.append(a))
    assert calls == [] and not list(store.iterdir())
    from dit_cache.nodes.calibrate import CalibrationRun
    run = CalibrationRun(SmoothCacheCalibrate, calibration_store.identify(tiny.patcher), "p", "euler", "simple", "1")
    with pytest.raises(ValueError, match="SmoothCache Calibrate: fewer than 2 model calls were measured, nothing saved"):
        SmoothCacheCalibrate.save_errors(run, 0.15, {}, [], completed=True)
    SmoothCacheCalibrate.save_errors(run, 0.15, {}, [], completed=False)  # interrupted: the run's own error counts


def test_a_saved_alpha_that_is_not_a_finite_number_names_the_file(store):
    tiny = tiny_models.build("flux")
    _, rec = calibrate(tiny, 1.0, steps=4)
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(store / rec["file"]), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(store / "nan_alpha.safetensors"), metadata={**meta, "alpha": "nan"})
    with pytest.raises(ValueError, match="SmoothCache calibration file 'nan_alpha.safetensors': alpha must be a "
                                         "finite number"):
        apply_smooth(tiny.patcher, "nan_alpha.safetensors")
