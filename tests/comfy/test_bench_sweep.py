"""The sweep benchmark (bench/sweep.py, bench/sweep_methods.py) and the SSIM it reports.

- SSIM: 1 for equal latents, falling as noise grows, image and video latents, a clear error otherwise.
- Every registry entry whose node is installed applies through its real node with the knob swept, its fixed
  inputs and the node's defaults for the rest, and its largest knob value skips model calls (attention-level
  methods: reuses attention computations) of a real KSampler run on the tiny Flux; entries name inputs their
  nodes have. Node inputs: Int inputs take whole-number knob values, unknown names and fractional ints are refused.
- The command itself, at a tiny size and few steps, prints the table and writes the CSV and the PNG.
- Presets: each names a tiny_models family/size and sweep entries whose nodes take the knob and fixed inputs;
  explicit --methods / --values override them; one preset's command at a tiny size prints its table.
- Every method of the support matrix (methods_registry.METHODS) has a sweep entry under the same key.
"""
from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from comfy_env import REPO
from metrics import psnr, ssim
from sampling import ksample

sys.path.insert(0, str(REPO / "bench"))

import common  # noqa: E402  (the pack is loaded already: it keeps the tests' ComfyUI set-up)
import sweep  # noqa: E402
import sweep_methods  # noqa: E402


def test_ssim_orders_noise_levels():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn((1, 16, 24, 24), generator=g)
    noise = torch.randn(ref.shape, generator=g)
    values = [ssim(ref + s * noise, ref) for s in (0.0, 0.05, 0.2, 1.0)]
    assert values[0] == pytest.approx(1.0)
    assert values == sorted(values, reverse=True) and values[-1] < 0.5
    video = torch.randn((1, 16, 3, 8, 8), generator=g)
    assert ssim(video, video) == pytest.approx(1.0) and ssim(video.flip(2), video) < 0.9
    with pytest.raises(ValueError):
        ssim(ref, video)  # shapes differ


def test_registry_entries_are_complete():
    keys = [m.key for m in sweep_methods.METHODS]
    assert len(keys) == len(set(keys))
    assert {"fbc", "magcache", "teacache", "dbcache", "taylorseer", "adaptive", "pab", "fastercache",
            "easycache"} <= set(keys)
    assert [m.key for m in sweep_methods.METHODS if m.reference] == ["easycache"]
    for m in sweep_methods.METHODS:
        assert m.values["medium"] and all(v > 0 for vals in m.values.values() for v in vals)
    with pytest.raises(ValueError, match="cannot also be fixed"):
        sweep_methods.SweepMethod("x", "X", "DitCache.ApplyDBCache", "threshold", {"medium": (0.1,)},
                                  fixed={"threshold": 0.2})


def test_node_inputs_defaults_fixed_and_int_knobs(pack):
    classes = sweep.node_classes(pack)
    dbcache, taylorseer = classes["DitCache.ApplyDBCache"], classes["DitCache.ApplyTaylorSeer"]
    kwargs = sweep.node_inputs(dbcache, {"Fn": 1, "threshold": 0.3})
    assert kwargs["Fn"] == 1 and kwargs["threshold"] == 0.3 and kwargs["Bn"] == 0 and kwargs["warmup_steps"] == 8
    assert "model" not in kwargs
    kwargs = sweep.node_inputs(taylorseer, {"cache_interval": 4.0})  # --values and the registry give floats
    assert kwargs["cache_interval"] == 4 and isinstance(kwargs["cache_interval"], int)
    with pytest.raises(ValueError, match="whole numbers"):
        sweep.node_inputs(taylorseer, {"cache_interval": 2.5})
    with pytest.raises(ValueError, match="no input 'fn'"):
        sweep.node_inputs(dbcache, {"fn": 1})


def test_every_installed_method_skips_through_its_node(pack, one_thread):
    import tiny_models
    from sampling import ksample

    classes = sweep.node_classes(pack)
    assert "EasyCache" in classes and "DitCache.ApplyFirstBlockCache" in classes
    bench = tiny_models.build("flux", "tiny")
    contexts: dict[str, sweep.Context] = {}
    catcher = sweep._SkipLines()
    import logging
    root = logging.getLogger()
    level = root.level
    root.addHandler(catcher)
    root.setLevel(logging.INFO)
    try:
        for m in sweep_methods.METHODS:
            cls = classes.get(m.node_id)
            if cls is None:
                continue  # a node of another branch; the command skips it with a message
            tiny = tiny_models.build(m.family, "tiny") if m.family else bench  # DeepCache needs a UNet
            ref = ksample(tiny.patcher, tiny, steps=12)
            if tiny.family not in contexts:
                contexts[tiny.family] = sweep.Context(pack, tiny, 12, 1.0)
            ctx = contexts[tiny.family]
            assert m.knob in [i.id for i in cls.define_schema().inputs], (m.key, m.knob)
            prepared = m.prepared(ctx) if m.prepared else {}
            patched = sweep.apply_node(cls, tiny.patcher, m.knob, max(m.values_for("tiny")), prepared, m.fixed)
            assert patched is not tiny.patcher
            common.run_log.clear()
            catcher.matches.clear()
            out = ksample(patched, tiny, steps=12)
            run = common.run_log.last()
            skipped = run["skipped_calls"] if run else catcher.matches[-1][0]
            if run and run.get("reuse"):  # attention / component level: every call runs, parts are reused
                skipped = next(iter(run["reuse"].values()))[0]
            assert skipped > 0, m.key
            assert torch.isfinite(out).all() and not torch.equal(out, ref)
            assert math.isfinite(psnr(out, ref))
    finally:
        for ctx in contexts.values():
            ctx.close()
        root.removeHandler(catcher)
        root.setLevel(level)


def test_sweep_command_writes_csv_and_png(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "sweep.py"), "--preset", "random", "--size", "tiny", "--steps", "6",
         "--repeats", "1", "--device", "cpu", "--methods", "fbc", "easycache", "--values", "fbc=0.3", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "First Block Cache" in proc.stdout and "EasyCache" in proc.stdout
    with open(tmp_path / "sweep_tiny.csv", encoding="utf-8") as f:
        assert f.readline().startswith("# ")
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["value"]) for r in rows] == [
        ("uncached", ""), ("fbc", "0.3"), ("easycache", "0.05"), ("easycache", "0.2"), ("easycache", "0.5")]
    assert rows[0]["psnr_db"] == "inf" and float(rows[0]["speedup"]) == 1.0
    fbc = rows[1]
    assert int(fbc["calls"]) == 6 and int(fbc["computed"]) + int(fbc["skipped"]) == 6
    assert float(fbc["peak_mem_mb"]) > 0 and float(fbc["cache_mb"]) > 0
    png = tmp_path / "sweep_tiny.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    png.unlink()
    replot = subprocess.run([sys.executable, str(REPO / "bench" / "sweep.py"), "--replot",
                             str(tmp_path / "sweep_tiny.csv")], capture_output=True, text=True, timeout=120)
    assert replot.returncode == 0 and png.is_file(), replot.stderr


def test_every_matrix_method_has_a_sweep_entry():
    import methods_registry

    assert set(methods_registry.METHODS) <= set(sweep_methods.BY_KEY)
    assert sweep_methods.METHOD_KEYS == tuple(m.key for m in sweep_methods.METHODS)
    assert all(sweep_methods.BY_KEY[k].node_id == methods_registry.METHODS[k].node_id
               for k in methods_registry.METHODS)


def test_presets_resolve(pack):
    import tiny_models
    import trained_models

    classes = sweep.node_classes(pack)
    assert sweep._parse([]).preset == "trained"  # the trained models by default
    for name in ("random", "trained", "trained-defaults"):
        assert [c.method.key for c in sweep.resolve(sweep.PRESETS[name], "medium")] == list(sweep_methods.BY_KEY)
    for name, preset in sweep.PRESETS.items():
        if preset.trained:
            assert preset.size == "trained" and set(preset.families) <= set(trained_models.FAMILIES)
            assert preset.seeds >= 6 and set(preset.cfgs) == {1.0, 3.5}
            continue
        assert preset.size in tiny_models.FAMILIES[preset.family], name
        assert "tiny" in tiny_models.FAMILIES[preset.family], name  # the quick check every preset allows
        for size in ("tiny", preset.size):
            curves = sweep.resolve(preset, size)
            assert curves, name
            for c in curves:
                assert c.values and c.method.key in sweep_methods.BY_KEY
                cls = classes.get(c.method.node_id)
                if cls is not None:  # every input the curve sets is one its node has
                    for v in c.values:
                        sweep.node_inputs(cls, {**c.fixed, c.knob: v})
    attention = sweep.PRESETS["attention"]
    assert attention.family == "wan21" and attention.cfg > 1 and attention.weighted_ideal
    assert {c.method.key for c in sweep.resolve(attention, "medium")} == {"pab", "fastercache"}
    fbc = sweep.resolve(sweep.PRESETS["fbc-overhead"], "medium")
    assert min(v for c in fbc for v in c.values) < 1e-6  # a threshold that never skips
    forecast = sweep.PRESETS["forecast"]
    assert "easycache" in {c.method.key for c in sweep.resolve(forecast, "medium")} and forecast.weighted_ideal


def test_explicit_flags_override_a_preset():
    preset = sweep.PRESETS["attention"]
    curves = sweep.resolve(preset, "tiny", ["fastercache", "fbc"], {"fastercache": (2.0,)})
    assert [(c.method.key, c.knob, c.values) for c in curves] == [
        ("fastercache", "uncond_skip", (2.0,)), ("fbc", "threshold", sweep_methods.BY_KEY["fbc"].values_for("tiny"))]
    with pytest.raises(ValueError, match="unknown method"):
        sweep.resolve(preset, "tiny", ["nope"])
    with pytest.raises(ValueError, match="cannot also be fixed"):
        sweep.resolve(sweep.Preset("x", runs=(sweep.Run("pab", knob="cross_skip", fixed={"cross_skip": 2}),)), "tiny")
    with pytest.raises(ValueError, match="share a label"):
        sweep.resolve(sweep.Preset("x", runs=(sweep.Run("fbc"), sweep.Run("fbc", values=(0.1,)))), "tiny")
    args = sweep._parse(["--preset", "attention", "--steps", "3", "--cfg", "2"])
    assert (args.family, args.size, args.steps, args.cfg, args.weighted_ideal) == ("wan21", "medium", 3, 2.0, True)


def test_preset_command_prints_its_table(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "sweep.py"), "--preset", "attention", "--size", "tiny", "--steps", "3",
         "--repeats", "1", "--device", "cpu", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "(preset attention): Wan-class video tiny" in out and "cfg 5.0" in out
    assert "attention cores" in out and "ideal: cost-weighted" in out
    table = out[out.index("method "):]
    assert "PAB, windows 0.1-0.95" in table and "uncond_skip 5" in table and "uncond_skip 3" in table
    with open(tmp_path / "sweep_attention_tiny.csv", encoding="utf-8") as f:
        assert f.readline().startswith("# ")
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["uncached", "pab", "pab", "fastercache", "fastercache"]
    assert all(float(r["weighted_ideal"]) >= 1.0 for r in rows)
    assert rows[3]["uncond_rebuilt"]  # FasterCache at CFG 5 ran its unconditional-branch logic


def test_block_counter_counts_batch_rows_times_block_calls(pack):
    """The trained benchmark's block work: an uncached run of the 6-block trained Flux-class model makes
    steps x 6 block calls, of 1 row at CFG 1 and 2 rows (cond + uncond batched) at CFG 3.5; First Block Cache
    at a high threshold runs fewer."""
    import trained_models
    from trained import BlockCounter

    m = trained_models.load("flux")
    counter = BlockCounter(m.patcher.model.diffusion_model)
    assert len(counter.blocks) == 6

    def rows(model, cfg):
        counter.rows = 0
        with counter:
            ksample(model, m, steps=4, cfg=cfg, noise=m.noise(1, seed=0), positive=m.conditioning(0),
                    negative=m.empty())
        return counter.rows

    assert rows(m.patcher, 1.0) == 4 * 6 and rows(m.patcher, 3.5) == 4 * 6 * 2
    fbc = sweep.node_classes(pack)["DitCache.ApplyFirstBlockCache"]
    cached = fbc.execute(m.patcher, **sweep.node_inputs(fbc, {"threshold": 5.0, "warmup_steps": 0})).result[0]
    assert 4 * 1 < rows(cached, 1.0) < 4 * 6  # first block every step, the rest at least once
    counter.rows = 0
    ksample(m.patcher, m, steps=2, cfg=1.0, noise=m.noise(1, seed=0), positive=m.conditioning(0),
            negative=m.empty())
    assert counter.rows == 0  # hooks gone after the with block


def test_trained_command_prints_table_and_best(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "sweep.py"), "--families", "flux", "--cfgs", "1", "3.5", "--seeds",
         "2", "--steps", "6", "--methods", "fbc", "fastercache", "--values", "fbc=0.5", "fastercache=2",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "(preset trained)" in out and "Flux-class (flux.safetensors" in out and "best block speedup" in out
    with open(tmp_path / "bench-trained.csv", encoding="utf-8") as f:
        assert f.readline().startswith("# trained models")
        rows = list(csv.DictReader(f))
    assert [(r["cfg"], r["method"]) for r in rows] == [
        (c, k) for c in ("1.0", "3.5") for k in ("uncached", "fbc", "fastercache")]
    by = {(r["cfg"], r["method"]): r for r in rows}
    assert int(by["1.0", "uncached"]["block_rows"]) == 2 * 6 * 6 and by["1.0", "uncached"]["psnr_mean"] == "100.0"
    assert int(by["3.5", "uncached"]["block_rows"]) == 2 * 6 * 6 * 2
    assert float(by["1.0", "fbc"]["block_speedup"]) > 1 and float(by["1.0", "fbc"]["psnr_min"]) < 100
    assert by["1.0", "fastercache"]["block_speedup"] == "1.0" and by["1.0", "fastercache"]["attention_reused"]
    assert float(by["3.5", "fastercache"]["block_speedup"]) > 1 and by["3.5", "fastercache"]["uncond_rebuilt"]
    assert (tmp_path / "bench-trained.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trained_defaults_command_shows_defaults_and_recommended(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "sweep.py"), "--preset", "trained-defaults", "--families", "wan21",
         "--cfgs", "3.5", "--seeds", "1", "--steps", "6", "--methods", "dbcache", "teacache", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    # DBCache's Fn 8 cannot apply to the 4-block model: said, and its recommended setting runs instead
    assert "defaults on wan21: DBCache: Fn 8" in out and "DBCache F1B0 + TaylorSeer 1, recommended" in out
    assert "TeaCache, defaults" in out and "TeaCache, recommended" in out and "rel_l1_threshold 0.1" in out
    assert (tmp_path / "bench-trained-defaults.csv").is_file()
