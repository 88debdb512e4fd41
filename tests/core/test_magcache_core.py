"""MagCache pieces without a host: ratio interpolation, calibration files, presets, model checks."""
from __future__ import annotations

import math

import pytest
import torch
from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS, nearest_interp

from dit_cache.cache_core.methods import magcache_calibration as cal_io
from dit_cache.cache_core.methods.magcache import MagCacheConfig, MagRatioCurve, schedule_position
from dit_cache.cache_core.policy import RunInfo, StreamCall

RATIOS = [1.0, 1.2, 1.1, 1.05, 1.0, 0.98, 0.95, 0.9]


def resampled(curve: MagRatioCurve, steps: int) -> list[float]:
    """The ratios MagCachePolicy uses for a run of ``steps`` evenly spaced steps (schedule interpolation)."""
    pos = [i / (steps - 1) for i in range(steps)]
    return [1.0] + [curve.between(pos[i - 1], pos[i]) for i in range(1, steps)]


def test_schedule_interpolation_keeps_calibrated_steps_and_total_change():
    curve = MagRatioCurve(RATIOS)
    assert resampled(curve, len(RATIOS)) == pytest.approx(RATIOS)
    total = math.prod(RATIOS)
    for n in (4, 5, 15, 28, 50):
        r = resampled(curve, n)
        assert len(r) == n and r[0] == 1.0
        assert math.prod(r) == pytest.approx(total, rel=1e-9)  # the whole run's magnitude change is kept
    # twice as many steps: each calibrated step is split in two whose product is the calibrated ratio
    fine = resampled(curve, 2 * len(RATIOS) - 1)
    for i in range(1, len(RATIOS)):
        assert fine[2 * i - 1] * fine[2 * i] == pytest.approx(RATIOS[i])


@pytest.mark.parametrize("n", [6, 12, 20, 28, 40])
def test_nearest_matches_diffusers(n):
    curve = MagRatioCurve(FLUX_MAG_RATIOS.tolist())
    theirs = nearest_interp(FLUX_MAG_RATIOS, n).tolist()
    assert [curve.nearest(i, n) for i in range(n)] == pytest.approx(theirs)


def test_position_from_sigmas_handles_several_calls_per_step():
    run = RunInfo((1.0, 0.75, 0.5, 0.25, 0.0))
    assert schedule_position(run, StreamCall(0, 1.0), 28) == 0.0
    assert schedule_position(run, StreamCall(1, 0.75), 28) == pytest.approx(1 / 3)
    assert schedule_position(run, StreamCall(2, 0.625), 28) == pytest.approx(1.5 / 3)  # a mid-step call
    assert schedule_position(run, StreamCall(3, 0.25), 28) == 1.0
    assert schedule_position(RunInfo(), StreamCall(3, None), 7) == pytest.approx(0.5)


def test_config_validation():
    with pytest.raises(ValueError, match="at least 2"):
        MagCacheConfig(ratios=[1.0])
    with pytest.raises(ValueError, match="positive"):
        MagCacheConfig(ratios=[1.0, -1.0])
    with pytest.raises(ValueError, match="interpolation"):
        MagCacheConfig(ratios=RATIOS, interpolation="cubic")
    c = MagCacheConfig(ratios={"cond": RATIOS, "uncond": RATIOS[::-1]})
    assert c.curve_for("cond2").ratios == RATIOS and c.curve_for("uncond").ratios == RATIOS[::-1]


def _cal(**kw):
    base = dict(ratios={"cond": RATIOS, "uncond": RATIOS}, family="flux", steps=len(RATIOS), model_class="Flux",
                block_hash="abc", sampler="euler", scheduler="simple", sigmas=[1.0 - i / 8 for i in range(9)])
    base.update(kw)
    return cal_io.Calibration(**base)


def test_file_round_trip_and_metadata(tmp_path):
    path = cal_io.save(tmp_path / "a.safetensors", _cal())
    got = cal_io.load(path)
    assert got.ratios["cond"] == pytest.approx(RATIOS) and set(got.ratios) == {"cond", "uncond"}
    assert (got.family, got.steps, got.sampler, got.scheduler, got.block_hash) == ("flux", 8, "euler", "simple", "abc")
    assert got.pack_version == cal_io.pack_version() != "unknown"
    assert got.date and len(got.sigmas) == 9 and got.name == "a.safetensors"
    assert not list(tmp_path.glob("*.part"))


def test_corrupt_truncated_and_foreign_files_name_the_file(tmp_path):
    good = cal_io.save(tmp_path / "good.safetensors", _cal()).read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(good[: len(good) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    for name in ("trunc.safetensors", "junk.safetensors"):
        with pytest.raises(cal_io.CalibrationError, match=f"{name}.*corrupt or truncated"):
            cal_io.load(tmp_path / name)
    from safetensors.torch import save_file
    save_file({"x": torch.ones(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(cal_io.CalibrationError, match="other.safetensors.*not a dit-cache"):
        cal_io.load(tmp_path / "other.safetensors")
    with pytest.raises(cal_io.CalibrationError, match="missing.safetensors.*does not exist"):
        cal_io.load(tmp_path / "missing.safetensors")


def test_model_checks():
    cal = _cal(name="x.safetensors")
    cal_io.check_model(cal, "flux", "abc")
    with pytest.raises(ValueError, match="calibrated for a flux model, this model is wan"):
        cal_io.check_model(cal, "wan", "abc")
    with pytest.raises(ValueError, match="other block shapes"):
        cal_io.check_model(cal, "flux", "def")
    cal_io.check_model(_cal(block_hash=""), "flux", "anything")  # presets: family only


def test_presets_load_and_cite_their_source():
    names = cal_io.preset_names()
    assert {"flux_dev", "wan21_t2v_1.3b", "wan21_t2v_14b"} <= set(names)
    for n in names:
        p = cal_io.load_preset(n)
        assert p.source and p.family and p.steps >= 10  # a Wan 2.2 expert's part of the schedule: 14-26 steps
        assert all(r[0] == 1.0 and all(0.5 < x < 2.0 for x in r) for r in p.ratios.values()), n
    assert cal_io.load_preset("flux_dev").ratios["cond"] == pytest.approx(FLUX_MAG_RATIOS.tolist())
    wan = cal_io.load_preset("wan21_t2v_14b")
    assert set(wan.ratios) == {"cond", "uncond"} and wan.steps == 50
    with pytest.raises(cal_io.CalibrationError, match="does not exist"):
        cal_io.load_preset("nope")


def test_presets_for_every_family_with_published_ratios():
    """Issue 20 item 8: ComfyUI-MagCache's ratio table (wzgrx/ComfyUI-MagCache nodes.py, commit 6f93dbd) gives
    presets for Chroma, Flux Kontext, HunyuanVideo 1.5, Wan I2V, VACE and the Wan 2.2 experts; spot values are the
    source's (first, a middle and the last entries of its lists)."""
    presets = {n: cal_io.load_preset(n) for n in cal_io.preset_names()}
    families = {"chroma": "chroma", "flux_kontext": "flux", "hunyuan_video15_20steps": "hunyuan_video",
                "hunyuan_video15_40steps": "hunyuan_video", "wan21_i2v_480p_14b": "wan", "wan21_i2v_720p_14b": "wan",
                "wan21_vace_1.3b": "wan", "wan22_ti2v_5b": "wan", "wan22_t2v_14b_high": "wan",
                "wan22_t2v_14b_low": "wan", "wan22_i2v_14b_high": "wan", "wan22_i2v_14b_low": "wan"}
    for name, family in families.items():
        assert presets[name].family == family and "ComfyUI-MagCache" in presets[name].source, name
    assert len(presets) == 6 + len(families)
    steps = {"chroma": 26, "flux_kontext": 20, "hunyuan_video15_20steps": 20, "hunyuan_video15_40steps": 40,
             "wan21_i2v_480p_14b": 40, "wan21_vace_1.3b": 50, "wan22_ti2v_5b": 50}
    for name, n in steps.items():
        assert presets[name].steps == n, name
    assert set(presets["flux_kontext"].ratios) == {"cond"} and presets["flux_kontext"].ratios["cond"][-1] == 0.88672
    assert presets["chroma"].ratios["cond"][1:3] == [1.00781, 1.03906]
    assert presets["chroma"].ratios["uncond"][1:3] == [1.01562, 1.03906]
    assert presets["wan21_i2v_720p_14b"].ratios["uncond"][-1] == 0.86768
    # Wan 2.2: one list for both experts, split at the step where the low-noise expert takes over
    t2v_high, t2v_low = presets["wan22_t2v_14b_high"], presets["wan22_t2v_14b_low"]
    assert t2v_high.steps + t2v_low.steps == 40 and t2v_high.ratios["cond"][-1] == 0.99125
    assert t2v_low.ratios["cond"][:2] == [1.0, 0.98808] and t2v_low.ratios["uncond"][-1] == 0.80181
    i2v_high, i2v_low = presets["wan22_i2v_14b_high"], presets["wan22_i2v_14b_low"]
    assert (i2v_high.steps, i2v_low.steps) == (15, 25) and i2v_low.ratios["cond"][1] == 0.98931


def test_a_preset_is_a_name_never_a_path(tmp_path):
    """Only the pack's preset names load: a path (absolute, ../) to a JSON file that exists, or a missing one,
    gets the same message, and nothing of a file is quoted."""
    secret = tmp_path / "secret.json"
    secret.write_text('{"ratios": {"cond": ["TOPSECRET", 1.0]}, "family": "flux"}', encoding="utf-8")
    up = "../" * len(cal_io.PRESET_DIR.parts)
    names = [str(secret.with_suffix("")), up + str(secret.with_suffix(""))[1:], str(tmp_path / "missing"), "nope"]
    messages = []
    for name in names:
        with pytest.raises(cal_io.CalibrationError) as err:
            cal_io.load_preset(name)
        assert "TOPSECRET" not in str(err.value)
        messages.append(str(err.value).replace(cal_io.shown(name), "<name>"))
    assert len(set(messages)) == 1 and messages[0].startswith("MagCache preset <name> does not exist")


def test_calibrating_needs_two_steps_before_the_run():
    from dit_cache.cache_core.methods.magcache import MagCacheCalibratePolicy

    policy = MagCacheCalibratePolicy()
    policy.check_run(RunInfo(sigmas=(1.0, 0.5, 0.0)))  # 2 steps
    policy.check_run(RunInfo())  # steps unknown (a host without sigmas): not decided here
    with pytest.raises(ValueError, match="needs at least 2 sampling steps, this run has 1"):
        policy.check_run(RunInfo(sigmas=(1.0, 0.0)))


def test_file_names_and_metadata_are_escaped_in_messages(tmp_path):
    """A listed file's name may hold any character (a name that is not UTF-8 comes with a lone surrogate) and
    its metadata any text: messages show both escaped, and such a file is still read."""
    import os

    name = os.fsdecode(b"cal\xff\x1b.safetensors")
    path = tmp_path / name
    os.rename(cal_io.save(tmp_path / "plain.safetensors", _cal(family="flux\u202e\x1b[2J\n")), path)
    got = cal_io.load(path)
    assert got.family == "flux\u202e\x1b[2J\n" and got.name == name
    with pytest.raises(cal_io.CalibrationError) as err:
        cal_io.check_model(got, "wan", "abc")
    msg = str(err.value)
    msg.encode("ascii")
    assert cal_io.shown(name) in msg and "'flux\\u202e\\x1b[2J\\n'" in msg
    assert cal_io.shown(name) in got.summary()
    (tmp_path / name).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{TOPSECRET json }")
    with pytest.raises(cal_io.CalibrationError) as err:
        cal_io.load(tmp_path / name)
    assert str(err.value) == f"MagCache calibration file {cal_io.shown(name)} is corrupt or truncated (JSONDecodeError)"
