"""Sweep caching methods' knobs on one model and compare with the uncached run (all in one process): the
project's one benchmark.

    .venv/bin/python bench/sweep.py                          # every method, medium Flux-class model, CPU, 5-8 min
    .venv/bin/python bench/sweep.py --size tiny              # seconds
    .venv/bin/python bench/sweep.py --size large             # ~0.55 B, meant for a GPU (--device auto picks it)
    .venv/bin/python bench/sweep.py --preset fbc-overhead    # First Block Cache's overhead when nothing is skipped
    .venv/bin/python bench/sweep.py --preset attention       # PAB, FasterCache: medium Wan-class video, CFG 5
    .venv/bin/python bench/sweep.py --preset forecast        # forecasting methods vs ComfyUI's EasyCache
    .venv/bin/python bench/sweep.py --list-presets

A preset (:data:`PRESETS`, data only) names the model family and size, cfg, steps, repeats and the runs: entries
of bench/sweep_methods.py (one per method, keyed as the support matrix's methods; ComfyUI's built-in EasyCache is
the reference curve), each with its knob values and, where it differs from the entry, the swept input and more
fixed inputs. Flags given explicitly override the preset (``--methods`` keeps the preset's runs of those keys and
adds the entry of any other key; ``--values`` replaces the values of every run of a key). Each point applies the
method's node with that knob value (other inputs at the run's fixed values or the node's defaults) and samples
with ComfyUI's KSampler path (euler, simple). The uncached run opens and closes each round; with ``--repeats N``
the rounds run N times and each point keeps its fastest wall time, so load from elsewhere on the machine hits all
alike. CPU runs use one torch thread unless ``--threads`` says otherwise.
Per point: wall time, speedup (uncached wall / this wall, same run), the same ratio of process CPU times (it
leaves out time spent waiting for a core while other processes run), ideal speedup (model calls / computed
calls; attention-level methods skip no call, their reused attention computations are listed under the table
and in the CSV; with ``--weighted-ideal``, as the attention and forecast presets set, the ideal counts reused
attention / feed-forward computations and rebuilt unconditional passes at their measured share of an uncached
run, bench/common.py weighted_ideal), PSNR and SSIM of the final latent against the uncached one, and peak
memory: on CPU the process's peak resident set size during the run (Linux VmHWM, reset before each run through
/proc/self/clear_refs; it includes the weights), on GPU torch.cuda.max_memory_allocated (reset before each run).
A dit-cache point that skipped and reused nothing also gets a line with its wall time over the uncached one (the
patched model's overhead). Prints a table and writes bench/out/sweep_<size>.csv and .png (speedup vs PSNR;
other presets: sweep_<preset>_<size>.*).
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import importlib
import inspect
import logging
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

OUT_DIR = Path(__file__).resolve().parent / "out"
# ComfyUI's EasyCache logs "EasyCache - skipped X/Y steps (...)" at the end of each run (no run record)
EASYCACHE_LINE = re.compile(r"^(?:EasyCache|LazyCache) - skipped (\d+)/(\d+) steps")


@dataclass(frozen=True)
class Run:
    """One curve of a preset: the bench/sweep_methods.py entry ``key`` with, where given, its own knob values
    (else the entry's for the model size), another swept input, inputs fixed on top of the entry's, and its own
    legend label (needed when a preset runs one entry twice)."""

    key: str
    values: tuple[float, ...] | None = None
    knob: str | None = None
    fixed: Mapping[str, Any] = field(default_factory=dict)
    label: str | None = None


@dataclass(frozen=True)
class Preset:
    about: str
    family: str = "flux"  # tests/support/tiny_models.py FAMILIES key
    size: str = "medium"
    cfg: float = 1.0
    steps: int = 20
    repeats: int = 1
    runs: tuple[Run, ...] | None = None  # None: every sweep_methods entry at its values for the size
    weighted_ideal: bool = False  # ideal speedup weighted by measured component shares (common.weighted_ideal)
    best_at_psnr: float | None = None  # also print the fastest point at or above this PSNR (dB)
    # trained-model presets (bench/trained.py): the trained families, CFG values and seeds; node_defaults: every
    # node once with all inputs at their defaults instead of the knob values
    trained: bool = False
    families: tuple[str, ...] = ("flux", "qwen_image", "wan21")
    cfgs: tuple[float, ...] = (1.0, 3.5)
    seeds: int = 6
    node_defaults: bool = False


def _windows(start: float, end: float, kinds: tuple[str, ...] = ("spatial", "temporal", "cross")) -> dict:
    return {f"{k}_{edge}_percent": v for k in kinds for edge, v in (("start", start), ("end", end))}


PRESETS: dict[str, Preset] = {
    "trained": Preset("every method's main knob on the three small trained models (Flux-, Qwen-Image- and "
                      "Wan-class), cfg 1 and 3.5, 6 seeds: block and wall speedup, PSNR mean / min, SSIM",
                      size="trained", trained=True),
    "trained-defaults": Preset("every node once at its default inputs on the three trained models, cfg 1 and 3.5, "
                               "6 seeds", size="trained", trained=True, node_defaults=True),
    "random": Preset("every method's main knob on the medium random-weight Flux-class model at cfg 1: wall time "
                     "and overhead at a size where block work dominates"),
    # threshold 1e-9 never skips (0 would disable the cache and return the model unpatched): every block still
    # runs through the cache core, so its wall time over the uncached one is the patched model's overhead
    "fbc-overhead": Preset(
        "First Block Cache on the medium Flux-class model: a threshold that never skips (every block through the "
        "cache core: the patched model's overhead) next to its usual thresholds",
        repeats=2, runs=(Run("fbc", values=(1e-9,), label="First Block Cache, nothing skipped"), Run("fbc"))),
    # 5 latent frames of 32x32 = 1280 tokens, attention about half the work; CFG 5 so that FasterCache's
    # unconditional-branch rebuild applies (at cfg 1 ComfyUI runs no unconditional branch)
    "attention": Preset(
        "PAB and FasterCache on the medium Wan-class video model at CFG 5 (FasterCache's unconditional-branch "
        "rebuild applies), ideal speedup weighted by the measured attention share",
        family="wan21", cfg=5.0, weighted_ideal=True,
        runs=(Run("pab", values=(2,)),
              Run("pab", values=(3,), fixed=_windows(0.1, 0.95), label="PAB, windows 0.1-0.95"),
              Run("fastercache", knob="uncond_skip", values=(5, 3)))),
    # TaylorSeer with one full final step, as cache-dit's setting; DBCache Fn 4 next to the entry's Fn 1
    "forecast": Preset(
        "DBCache, TaylorSeer, Adaptive Cache and SmoothCache against ComfyUI's built-in EasyCache on the medium "
        "Flux-class model, with the cost-weighted ideal and the fastest point at PSNR >= 30 dB",
        repeats=2, weighted_ideal=True, best_at_psnr=30.0,
        runs=(Run("easycache", values=(0.1, 0.2, 0.3)),
              Run("dbcache", values=(0.2,), fixed={"Fn": 4}, label="DBCache F4B0 + TaylorSeer 1"),
              Run("dbcache", values=(0.2, 0.3)),
              Run("taylorseer", values=(3, 4, 5), fixed={"final_full_steps": 1}, label="TaylorSeer, final 1"),
              Run("taylorseer", values=(4,), fixed={"final_full_steps": 1, "predict": "attention+MLP outputs"},
                  label="TaylorSeer attention+MLP, final 1"),
              Run("adaptive", values=(0.2, 0.4, 0.8)),
              Run("smoothcache", values=(0.05, 0.1, 0.2)))),
    # each forecaster of cache_core/forecasters.py against Taylor at equal computed steps (same schedule), then
    # the checked predictions and the CFG-aware negative branch on top (issue 17; docs/benchmarks.md)
    "forecasters": Preset(
        "TaylorSeer's forecasters (Taylor, Adams-Bashforth 1-3, FoCa, Hermite) at equal computed steps, checked "
        "predictions and the sparser negative CFG branch, on the trained Flux- and Wan-class models, cfg 1 and 3.5",
        size="trained", trained=True, families=("flux", "wan21"),
        runs=tuple(Run("taylorseer", values=(4, 5, 6), fixed={"forecaster": f}, label=f"TaylorSeer {f}")
                   for f in ("taylor", "adams-bashforth 1", "adams-bashforth 2", "adams-bashforth 3", "foca",
                             "hermite")) + (
            Run("taylorseer", values=(5, 6, 7), fixed={"forecaster": "taylor", "warmup_steps": 2},
                label="TaylorSeer taylor, warm-up 2"),
            Run("taylorseer", values=(5, 6, 7), fixed={"forecaster": "hermite", "warmup_steps": 2},
                label="TaylorSeer hermite, warm-up 2"),
            Run("taylorseer", values=(8, 10), fixed={"forecaster": "hermite", "warmup_steps": 2, "check_blocks": 1,
                                                     "check_threshold": 0.4},
                label="TaylorSeer hermite, warm-up 2, check 1 block 0.4"),
            Run("taylorseer", values=(5, 6), fixed={"forecaster": "hermite", "warmup_steps": 2, "uncond_interval": 2},
                label="TaylorSeer hermite, warm-up 2, uncond 2"))),
    # the tiny SD1.5 UNet (tests/support/tiny_models.py; there is no medium UNet) at CFG 4: DeepCache's interval and
    # First Block Cache on a UNet, with the ideal counting each reused step at the measured shallow-branch cost
    "unet": Preset(
        "DeepCache and First Block Cache on the tiny SD1.5 UNet at CFG 4",
        family="sd15", size="tiny", cfg=4.0,
        runs=(Run("deepcache"), Run("deepcache", values=(3,), fixed={"branch_depth": 2}, label="DeepCache, depth 2"),
              Run("fbc", values=(0.02, 0.05)))),
}

FAMILY_LABELS = {"flux": "Flux-class", "wan21": "Wan-class video", "sd15": "SD1.5-class UNet",
                 "sdxl": "SDXL-class UNet"}


@dataclass(frozen=True)
class Curve:
    """A resolved run: the entry, its legend label, swept input, values and every fixed input."""

    method: Any  # sweep_methods.SweepMethod
    label: str
    knob: str
    values: tuple[float, ...]
    fixed: Mapping[str, Any]


def resolve(preset: Preset, size: str, methods: list[str] | None = None,
            values: Mapping[str, tuple[float, ...]] | None = None) -> list[Curve]:
    """The curves ``preset`` runs at ``size``: its runs (``methods``: only those of these keys, plus the entry of
    any key the preset does not run), ``values`` replacing the values of every run of a key. Unknown keys, a run
    that fixes its own swept input and two curves with one label raise ValueError."""
    import sweep_methods

    by_key = sweep_methods.BY_KEY
    values = dict(values or {})
    runs = list(preset.runs) if preset.runs is not None else [Run(k) for k in by_key]
    unknown = ({r.key for r in runs} | set(methods or []) | set(values)) - set(by_key)
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(sorted(unknown))}; bench/sweep_methods.py has "
                         f"{', '.join(by_key)}")
    if methods is not None:
        ran = {r.key for r in runs}
        runs = [r for r in runs if r.key in methods] + [Run(k) for k in dict.fromkeys(methods) if k not in ran]
    curves = []
    for run in runs:
        entry = by_key[run.key]
        knob = run.knob or entry.knob
        if knob in run.fixed:
            raise ValueError(f"{run.key}: the swept input {knob!r} cannot also be fixed")
        fixed = {k: v for k, v in {**entry.fixed, **run.fixed}.items() if k != knob}
        curves.append(Curve(entry, run.label or entry.label, knob,
                            tuple(values.get(run.key) or run.values or entry.values_for(size)), fixed))
    labels = [c.label for c in curves]
    if len(labels) != len(set(labels)):
        raise ValueError(f"two runs share a label: {labels}")
    return curves


def _presets_text() -> str:
    lines = ["presets (--preset NAME; explicit flags override them):"]
    for name, p in PRESETS.items():
        lines.append(f"  {name}: {p.about}; {p.family} {p.size}, cfg {p.cfg:g}, {p.steps} steps, "
                     f"{p.repeats} repeat(s)")
    return "\n".join(lines)


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, epilog=_presets_text(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="trained", choices=list(PRESETS), help="what to run (see below)")
    ap.add_argument("--families", nargs="+", default=None, help="trained presets: trained model families")
    ap.add_argument("--cfgs", nargs="+", type=float, default=None, help="trained presets: CFG values")
    ap.add_argument("--seeds", type=int, default=None, help="trained presets: number of seeds (default 6)")
    ap.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    ap.add_argument("--family", default=None, help="tiny_models family key (preset's: flux, or wan21)")
    ap.add_argument("--size", default=None, choices=["tiny", "medium", "large", "trained"],
                    help="tiny / medium (CPU), large (GPU, Flux only); default: the preset's (medium)")
    ap.add_argument("--cfg", type=float, default=None, help="default: the preset's (1, attention: 5)")
    ap.add_argument("--steps", type=int, default=None, help="default: the preset's (20)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="runs per point, interleaved; the fastest counts (2-3 on a quiet machine for steadier times; "
                         "default: the preset's)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default on CPU: 1; with other processes busy on a small machine, "
                         "several threads stall each other: 2 threads ran 6x slower than 1 on the 2-core host)")
    ap.add_argument("--methods", nargs="+", default=None,
                    help="method keys of bench/sweep_methods.py (default: the preset's; default preset: all)")
    ap.add_argument("--values", nargs="+", default=[], metavar="KEY=V1,V2",
                    help="override a method's knob values, e.g. fbc=0.05,0.1")
    ap.add_argument("--weighted-ideal", action=argparse.BooleanOptionalAction, default=None,
                    help="measure the attention / feed-forward shares of an uncached run first and weight the ideal "
                         "speedup by them (default: the preset's)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"], help="auto: GPU when torch sees one")
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--replot", type=Path, default=None, metavar="CSV",
                    help="only redraw the PNG of a CSV this script wrote (next to it)")
    args = ap.parse_args(argv)
    preset = PRESETS[args.preset]
    for name in ("family", "size", "cfg", "steps", "repeats", "weighted_ideal"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(preset, name))
    return args


class _SkipLines(logging.Handler):
    """Collects ComfyUI EasyCache's end-of-run summary lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.matches: list[tuple[int, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = EASYCACHE_LINE.match(record.getMessage())
        if m:
            self.matches.append((int(m[1]), int(m[2])))

    def attach(self) -> None:
        """Listen on the root logger at INFO; the handlers already there keep printing warnings only."""
        root = logging.getLogger()
        self._quiet = [(h, h.level) for h in root.handlers]
        for h, level in self._quiet:
            h.setLevel(max(level, logging.WARNING))
        root.addHandler(self)
        root.setLevel(logging.INFO)

    def detach(self) -> None:
        logging.getLogger().removeHandler(self)
        for h, level in self._quiet:
            h.setLevel(level)


class Memory:
    """Peak memory of one run: CPU RSS high-water mark (reset per run) or CUDA peak allocation."""

    def __init__(self, gpu: bool) -> None:
        self.gpu = gpu
        self.kind = "torch.cuda.max_memory_allocated"
        if not gpu:
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.kind = "peak RSS (VmHWM, reset per run)"
            except OSError:  # not Linux, or not allowed: the process's lifetime peak
                self.kind = "peak RSS (process lifetime, ru_maxrss)"

    def reset(self) -> None:
        import torch
        if self.gpu:
            torch.cuda.reset_peak_memory_stats()
        elif self.kind.startswith("peak RSS (VmHWM"):
            Path("/proc/self/clear_refs").write_text("5")

    def peak_mb(self) -> float:
        import torch
        if self.gpu:
            return torch.cuda.max_memory_allocated() / 2**20
        if self.kind.startswith("peak RSS (VmHWM"):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Point:
    key: str
    label: str
    knob: str
    value: float | None
    model: Any
    reference: bool = False
    wall_s: float = math.inf
    cpu_s: float = math.inf  # process CPU time of the fastest run (all threads)
    calls: int = 0
    skipped: int = 0
    cache_mb: float | None = None
    attention_reused: tuple[int, int] | None = None  # attention-level methods: (reused, total) computations
    uncond_rebuilt: tuple[int, int] | None = None  # FasterCache at cfg != 1: (rebuilt, total) unconditional passes
    recorded: bool = False  # a dit-cache run record was read
    weighted: float | None = None  # cost-weighted ideal speedup (--weighted-ideal)
    peak_mb: float = 0.0
    latent: Any = None


def _resolve(value: Any) -> Any:
    """ComfyUI's entry points are coroutines in some packs and plain calls in others."""
    return asyncio.run(value) if inspect.isawaitable(value) else value


def node_classes(pack: Any) -> dict[str, Any]:
    """node id -> V3 node class, from the modules sweep_methods.NODE_SOURCES names."""
    import sweep_methods

    found: dict[str, Any] = {}
    for source in sweep_methods.NODE_SOURCES:
        try:
            module = pack if source == "pack" else importlib.import_module(source)
        except ImportError as e:
            logging.getLogger("dit_cache.bench").warning("[dit-cache] bench: cannot import %s: %s", source, e)
            continue
        extension = _resolve(module.comfy_entrypoint())
        for cls in _resolve(extension.get_node_list()):
            found[cls.define_schema().node_id] = cls
    return found


def node_inputs(cls: Any, given: dict[str, Any]) -> dict[str, Any]:
    """Keyword inputs for ``cls.execute`` (all but the model): the pack's own (nodes/method_apply.py), which the
    tuner and the start-here node use too."""
    from dit_cache.nodes.method_apply import node_inputs as pack_node_inputs

    return pack_node_inputs(cls, given)


def apply_node(cls: Any, model: Any, knob: str, value: float, prepared: dict[str, Any],
               fixed: Mapping[str, Any] | None = None) -> Any:
    """``cls.execute`` with ``knob`` = value, the ``fixed`` and ``prepared`` inputs, every other input at the
    node's default."""
    return cls.execute(model, **node_inputs(cls, {**(fixed or {}), knob: value, **prepared})).result[0]


class Context:
    """What entries may need from the bench model (sweep_methods.SweepMethod.prepared)."""

    def __init__(self, pack: Any, tiny: Any, steps: int, cfg: float, classes: dict[str, Any] | None = None,
                 sample: Callable[[Any], Any] | None = None) -> None:
        self.pack, self.tiny, self.steps, self.cfg = pack, tiny, steps, cfg
        self.classes = classes if classes is not None else node_classes(pack)
        # one full sampling run of a (patched) model; default: ksample with the bench model's own conditioning
        self.sample = sample
        self._calibrations: dict[str, str] = {}
        self._tempdirs: dict[str, str] = {}  # model folder name -> temporary folder put first in it

    def calibration(self, node_id: str, folder: str) -> str:
        """Calibrate on the bench model with the calibrate node ``node_id`` (filename_prefix "bench", other inputs
        at their defaults) and one full KSampler run (same steps and cfg as the sweep); the file is saved in a
        temporary folder put first in ComfyUI's model folder ``folder``. Returns the saved file's name as the
        apply node lists it: the ``calibration.file`` of the run-log record the calibrate node writes (as
        MagCache Calibrate does). Made once per node. With ``sample`` given, that run is ``sample(model)``."""
        if node_id not in self._calibrations:
            import folder_paths
            from common import run_log  # the pack's run log, wherever the pack keeps it
            from sampling import ksample

            if folder not in self._tempdirs:
                self._tempdirs[folder] = tempfile.mkdtemp(prefix=f"dit_cache_bench_{folder}_")
                folder_paths.add_model_folder_path(folder, self._tempdirs[folder], is_default=True)
            cls = self.classes[node_id]
            calibrating = cls.execute(self.tiny.patcher, **node_inputs(cls, {"filename_prefix": "bench"})).result[0]
            run_log.clear()
            if self.sample is not None:
                self.sample(calibrating)
            else:
                ksample(calibrating, self.tiny, steps=self.steps, cfg=self.cfg)
            saved = [r for r in run_log.recent() if "calibration" in r]
            if not saved:
                raise RuntimeError(f"{node_id} recorded no calibration in the run log")
            self._calibrations[node_id] = saved[-1]["calibration"]["file"]
        return self._calibrations[node_id]

    def close(self) -> None:
        import folder_paths

        for folder, tempdir in self._tempdirs.items():
            paths = folder_paths.folder_names_and_paths.get(folder, ([], set()))[0]
            if tempdir in paths:
                paths.remove(tempdir)  # the process (e.g. a test session) goes on: forget the folder too
            getattr(folder_paths, "filename_list_cache", {}).pop(folder, None)
            shutil.rmtree(tempdir, ignore_errors=True)
        self._tempdirs.clear()


def _machine(gpu: bool) -> str:
    import torch
    if gpu:
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("model name"))
        cpu = model
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()}-core CPU ({cpu}), no GPU, torch {torch.__version__}, {torch.get_num_threads()} threads"


def _fmt_q(v: float) -> str:
    return "identical" if math.isinf(v) else f"{v:6.2f} dB"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = [r["psnr_db"] for r in rows if r["method"] != "uncached" and math.isfinite(r["psnr_db"])]
    cap = (max(finite) + 5) if finite else 60.0  # "identical" points are drawn at the top
    fig, ax = plt.subplots(figsize=(9.5, 5))
    # method colours: tab10 without its grey (the reference's), then tab20's light shades
    colours = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 7]
    colours += list(plt.get_cmap("tab20").colors[1::2])
    n = 0
    for label in dict.fromkeys(r["label"] for r in rows if r["method"] != "uncached"):
        pts = sorted((r for r in rows if r["label"] == label), key=lambda r: r["value"])  # along the knob
        ref = pts[0]["reference"]
        xs = [r["speedup"] for r in pts]
        ys = [min(r["psnr_db"], cap) for r in pts]
        colour = "0.45" if ref else colours[n % len(colours)]
        n += 0 if ref else 1
        ax.plot(xs, ys, "--" if ref else "-", marker="s" if ref else "o", color=colour,
                label=label + (" (reference)" if ref else ""))
        for r, x, y in zip(pts, xs, ys):
            ax.annotate(f"{r['value']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axvline(1.0, color="0.8", lw=0.8)
    ax.set_xlabel("speedup (uncached wall time / cached wall time)")
    ax.set_ylabel("PSNR of the final latent vs uncached (dB)")
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def replot(csv_path: Path) -> Path:
    """Redraw the PNG of a CSV written by this script (its first line is the run's description)."""
    with open(csv_path, encoding="utf-8") as f:
        title = f.readline().lstrip("# ").split("; peak_mem_mb")[0]
        rows = list(csv.DictReader(f))
    png = csv_path.with_suffix(".png")
    for r in rows:
        r["reference"] = r["reference"] == "True"
        r["value"] = float(r["value"]) if r["value"] else ""
    if rows and "block_speedup" in rows[0]:  # a trained-model CSV (bench/trained.py)
        from trained import plot as plot_trained
        for r in rows:
            r["cfg"] = float(r["cfg"])
            r["block_speedup"], r["psnr_mean"] = float(r["block_speedup"]), float(r["psnr_mean"])
        plot_trained(rows, png, title)
        return png
    for r in rows:
        r["speedup"], r["psnr_db"] = float(r["speedup"]), float(r["psnr_db"])
    plot(rows, png, title)
    return png


def main() -> None:
    args = _parse()
    sys.stdout.reconfigure(line_buffering=True)  # lines show up before the progress bar when piped
    if args.list_presets:
        print(_presets_text())
        return
    if args.replot is not None:
        print(f"wrote {replot(args.replot)}")
        return
    if args.device == "auto":
        import torch
        args.device = "gpu" if torch.cuda.is_available() else "cpu"
    os.environ["DITCACHE_BENCH_DEVICE"] = args.device
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if PRESETS[args.preset].trained:
        from trained import run_trained
        try:
            run_trained(args, PRESETS[args.preset])
        except ValueError as e:
            sys.exit(str(e))
        return
    from common import PACK, component_shares, run_log, tiny_models, weighted_ideal  # noqa: E402  (sets up ComfyUI)
    import torch
    from metrics import psnr, ssim
    from sampling import ksample
    from tqdm import tqdm

    preset = PRESETS[args.preset]
    gpu = args.device == "gpu"
    if args.threads or not gpu:
        torch.set_num_threads(args.threads or 1)
    overrides = {}
    for item in args.values:
        key, _, vals = item.partition("=")
        overrides[key] = tuple(float(v) for v in vals.split(","))
    try:
        curves = resolve(preset, args.size, args.methods, overrides)
    except ValueError as e:
        sys.exit(str(e))
    if args.size not in tiny_models.FAMILIES.get(args.family, {}):
        sys.exit(f"tests/support/tiny_models.py has no {args.size} {args.family} model")
    classes = node_classes(PACK)

    catcher = _SkipLines()
    catcher.attach()

    m = tiny_models.build(args.family, args.size)
    cfg = args.cfg
    streams = 1 if cfg == 1.0 else 2  # ComfyUI runs the unconditional branch only at cfg != 1 (batched)
    machine = _machine(gpu)
    family = FAMILY_LABELS.get(args.family, f"{args.family} family")
    params = tiny_models.parameter_count(m) / 1e6
    named = "" if args.preset == "random" else f" (preset {args.preset})"
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"dit-cache sweep{named}: {family} {args.size} ({params:.1f} M params, ComfyUI's "
          f"{m.spec.supported_model} class, random weights), {args.steps} euler steps, cfg {cfg}, {machine}{load}")
    shares = None
    if args.weighted_ideal:
        shares = component_shares(m.patcher, m, cfg)
        print(f"uncached run's shares (for the weighted ideal): attention cores {shares['attention']:.0%}, "
              f"feed-forward modules {shares['ffn']:.0%}")
    ctx = Context(PACK, m, args.steps, cfg, classes)
    points = [Point("uncached", "uncached", "-", None, m.patcher)]
    used = []
    try:
        prepared_for: dict[str, dict[str, Any]] = {}
        for c in curves:
            meth = c.method
            cls = classes.get(meth.node_id)
            if cls is None:
                print(f"skipped {c.label}: node {meth.node_id} is not installed")
                continue
            if meth.key not in prepared_for:
                prepared_for[meth.key] = meth.prepared(ctx) if meth.prepared else {}
                for name, value in prepared_for[meth.key].items():
                    print(f"{meth.label}: {name} prepared on this model: {value}")
            used.append(c)
            for v in c.values:
                patched = apply_node(cls, m.patcher, c.knob, v, prepared_for[meth.key], c.fixed)
                points.append(Point(meth.key, c.label, c.knob, v, patched, meth.reference))
        mem = Memory(gpu)
        ksample(points[-1].model, m, steps=2, cfg=cfg)  # warm-up
        t_start = time.perf_counter()
        # the uncached run opens and closes each round: a load change during the round hits the reference too
        order = [*points, points[0]]
        with tqdm(total=len(order) * args.repeats, desc="sweep", unit="run", file=sys.stderr) as bar:
            for rep in range(args.repeats):
                for p in order:
                    bar.set_postfix_str(f"{p.key} {'' if p.value is None else p.value}")
                    run_log.clear()
                    catcher.matches.clear()
                    mem.reset()
                    t0, c0 = time.perf_counter(), time.process_time()
                    out = ksample(p.model, m, steps=args.steps, cfg=cfg)
                    if gpu:
                        torch.cuda.synchronize()
                    wall = time.perf_counter() - t0
                    p.cpu_s = min(p.cpu_s, time.process_time() - c0)
                    if rep == 0:
                        p.peak_mb = mem.peak_mb()
                        p.latent = out.float().cpu()
                        run = run_log.last()
                        if run is not None and "calls" in run:
                            p.recorded = True
                            p.calls, p.skipped = run["calls"], run["skipped_calls"]
                            p.cache_mb = run.get("cache_bytes", 0) / 2**20
                            # "attention" (PAB, FasterCache) or "component" (SmoothCache); "uncond" (FasterCache)
                            reuse = {part: tuple(rt) for part, rt in run.get("reuse", {}).items()}
                            inside = [rt for part, rt in reuse.items() if part != "uncond"]
                            p.attention_reused = inside[0] if inside else None
                            p.uncond_rebuilt = reuse.get("uncond")
                            if shares is not None:
                                p.weighted = weighted_ideal(run, shares, streams)
                        elif catcher.matches:
                            p.skipped, p.calls = catcher.matches[-1]
                        else:
                            p.calls, p.skipped = args.steps, 0  # uncached: one (batched) call per step
                    p.wall_s = min(p.wall_s, wall)
                    bar.update()
        total = time.perf_counter() - t_start
    finally:
        ctx.close()
        catcher.detach()

    ref = points[0]
    rows = []
    for p in points:
        q = psnr(p.latent, ref.latent)
        ideal = round(p.calls / max(p.calls - p.skipped, 1), 3)
        rows.append({
            "method": p.key, "label": p.label, "reference": p.reference, "knob": p.knob,
            "value": "" if p.value is None else p.value, "wall_s": round(p.wall_s, 3),
            "speedup": round(ref.wall_s / p.wall_s, 3), "cpu_s": round(p.cpu_s, 3),
            "cpu_speedup": round(ref.cpu_s / p.cpu_s, 3), "calls": p.calls, "computed": p.calls - p.skipped,
            "skipped": p.skipped, "ideal_speedup": ideal,
            "weighted_ideal": "" if shares is None else round(p.weighted if p.weighted is not None else ideal, 3),
            "psnr_db": q if math.isinf(q) else round(q, 2), "ssim": round(ssim(p.latent, ref.latent), 4),
            "peak_mem_mb": round(p.peak_mb, 1), "cache_mb": "" if p.cache_mb is None else round(p.cache_mb, 2),
            "attention_reused": "" if p.attention_reused is None else "{}/{}".format(*p.attention_reused),
            "uncond_rebuilt": "" if p.uncond_rebuilt is None else "{}/{}".format(*p.uncond_rebuilt),
        })
    width = max([30, *(len(r["label"]) for r in rows)])
    print(f"{'method':<{width}} {'knob':>22} {'wall':>7} {'speedup':>7} {'CPU':>6} {'ideal':>6} {'computed':>9} "
          f"{'PSNR':>10} {'SSIM':>6} {'peak MB':>8} {'cache MB':>8}")
    for r in rows:
        knob = "-" if r["value"] == "" else f"{r['knob']} {r['value']:g}"
        ideal = r["ideal_speedup"] if r["weighted_ideal"] == "" else r["weighted_ideal"]
        print(f"{r['label']:<{width}} {knob:>22} {r['wall_s']:6.2f}s {r['speedup']:6.2f}x {r['cpu_speedup']:5.2f}x "
              f"{ideal:5.2f}x "
              f"{r['computed']:>4}/{r['calls']:<4} {_fmt_q(r['psnr_db']):>10} {r['ssim']:6.3f} {r['peak_mem_mb']:8.0f} "
              f"{'-' if r['cache_mb'] == '' else format(r['cache_mb'], '.1f'):>8}")
    reused = [f"{r['label']} {r['knob']} {r['value']:g}: {r['attention_reused'] or '-'}"
              + (f", unconditional passes rebuilt {r['uncond_rebuilt']}" if r["uncond_rebuilt"] else "")
              for r in rows if r["attention_reused"] or r["uncond_rebuilt"]]
    if reused:
        print("computations reused inside the calls (attention / component-level methods): " + "; ".join(reused))
    for p, r in zip(points, rows):
        if p.recorded and p.skipped == 0 and not any(rt[0] for rt in (p.attention_reused, p.uncond_rebuilt) if rt):
            print(f"{p.label} {p.knob} {p.value:g}: nothing skipped or reused, wall {p.wall_s / ref.wall_s:.3f}x the "
                  f"uncached run's (the patched model's overhead)")
    for meth in {c.method.key: c.method for c in used}.values():
        if meth.note:
            print(f"{meth.label}: {meth.note}")
    if preset.best_at_psnr is not None:
        good = [r for r in rows[1:] if r["psnr_db"] >= preset.best_at_psnr]
        if good:
            top = max(good, key=lambda r: r["speedup"])
            print(f"fastest at PSNR >= {preset.best_at_psnr:g} dB: {top['label']} {top['knob']} {top['value']:g} "
                  f"({top['speedup']:.2f}x, {_fmt_q(top['psnr_db']).strip()})")
    weighted = ("" if shares is None else
                "ideal: cost-weighted (skipped calls, rebuilt unconditional passes, and reused attention / "
                "feed-forward computations at the shares above); ")
    load_end = f", load average at the end {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"{weighted}speedup: uncached wall / this wall; CPU: the same ratio of process CPU times (leaves out time "
          f"spent waiting for a core); peak memory: {mem.kind}; cache MB: the cache's own tensors (dit-cache run "
          f"record); {args.repeats} run(s) per point, interleaved, fastest kept (uncached: first and last of each "
          f"round); sweep {total:.0f} s{load_end}")

    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"sweep_{args.size}" if args.preset == "random" else f"sweep_{args.preset}_{args.size}"
    csv_path = args.out / f"{stem}.csv"
    setting = f"{args.steps} steps" + ("" if cfg == 1.0 else f", cfg {cfg:g}")
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        f.write(f"# {params:.1f} M params {family} {args.size}{named}, {setting}, {machine}; "
                f"peak_mem_mb = {mem.kind}\n")
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    png_path = args.out / f"{stem}.png"
    plot(rows, png_path, f"{family} {args.size} ({params:.0f} M params){named}, {setting}, {machine}")
    print(f"wrote {csv_path} and {png_path}")


if __name__ == "__main__":
    main()
