"""The benchmark on the small trained models (models/trained/): ``bench/sweep.py``'s default preset, "trained".

For each trained model (tests/support/trained_models.py: Flux-class, Qwen-Image-class image models and a
Wan-class video model) and each CFG (1 and 3.5), every method's knob values (the ``"trained"`` values of
bench/sweep_methods.py) run through ComfyUI's KSampler path at the model's reference sampler (euler, simple,
20 steps) over several seeds (seed s: noise of seed s, the prompt of class s; negative: the empty prompt),
each against the uncached run of the same seed. Calibrating methods (MagCache, SmoothCache) calibrate once per
model and CFG on another seed (:data:`CALIBRATION_SEED`), as a user calibrates once and then samples.

Per point and over the seeds:

- block speedup: transformer-block work of the uncached runs over that of the cached ones, counted exactly as
  batch rows x block calls (a forward pre-hook on every block module the family's layout names; a batched CFG
  call counts 2 rows, a call that runs only the positive half counts 1);
- wall speedup: the uncached runs' wall time over this point's, measured in the same process and round (each
  seed's fastest of ``--repeats`` runs; the uncached runs open and close each round);
- PSNR of the final latent against the uncached one, mean and min over the seeds (a seed whose latent is
  identical counts :data:`IDENTICAL_DB`), and mean SSIM;
- model calls computed / made (run record), attention computations reused and unconditional passes rebuilt.

Then per method and model/CFG its best point: the largest block speedup (then wall speedup) with mean PSNR >=
30 dB and min >= 27 dB (:data:`BAR_MEAN`, :data:`BAR_MIN`). The preset "trained-defaults" runs every node once
with all its inputs at their defaults instead (what a user gets dropping the node in).
"""
from __future__ import annotations

import csv
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

CALIBRATION_SEED = 1000  # not among the benchmark seeds
IDENTICAL_DB = 100.0  # PSNR counted for a seed whose latent is identical to the uncached one
BAR_MEAN, BAR_MIN = 30.0, 27.0
FAMILY_LABELS = {"flux": "Flux-class", "qwen_image": "Qwen-Image-class", "wan21": "Wan-class video"}


def BlockCounter(diffusion_model: Any) -> Any:  # noqa: N802 - the class moved to the pack (the tuner counts too)
    """``cache_core/block_counter.py``'s counter (imported when used: the pack is loaded by then)."""
    from dit_cache.cache_core.block_counter import BlockCounter as Counter

    return Counter(diffusion_model)


@dataclass
class SeedRun:
    wall_s: float = math.inf
    rows: int = 0
    calls: int = 0
    skipped: int = 0
    reuse: dict[str, tuple[int, int]] = field(default_factory=dict)
    cache_mb: float = 0.0
    latent: Any = None


@dataclass
class TrainedPoint:
    key: str
    label: str
    knob: str
    value: float | None
    model: Any
    reference: bool = False
    seeds: dict[int, SeedRun] = field(default_factory=dict)


def _sum_reuse(runs: list[SeedRun], part: str) -> str:
    got = [r.reuse[part] for r in runs if part in r.reuse]
    if not got:
        return ""
    return f"{sum(g[0] for g in got)}/{sum(g[1] for g in got)}"


def summarise(family: str, cfg: float, points: list[TrainedPoint]) -> list[dict[str, Any]]:
    """One CSV row per point (the uncached reference first), over its seeds."""
    from metrics import psnr, ssim

    ref = points[0]
    seeds = sorted(ref.seeds)
    ref_rows = sum(ref.seeds[s].rows for s in seeds)
    ref_wall = sum(ref.seeds[s].wall_s for s in seeds)
    rows = []
    for p in points:
        runs = [p.seeds[s] for s in seeds]
        q = [min(psnr(r.latent, ref.seeds[s].latent), IDENTICAL_DB) for s, r in zip(seeds, runs)]
        calls = sum(r.calls for r in runs)
        rows.append({
            "family": family, "cfg": cfg, "method": p.key, "label": p.label, "reference": p.reference,
            "knob": p.knob, "value": "" if p.value is None else p.value, "seeds": len(seeds),
            "block_rows": sum(r.rows for r in runs),
            "block_speedup": round(ref_rows / max(sum(r.rows for r in runs), 1), 3),
            "wall_s": round(sum(r.wall_s for r in runs), 3),
            "wall_speedup": round(ref_wall / sum(r.wall_s for r in runs), 3),
            "calls": calls, "computed": calls - sum(r.skipped for r in runs),
            "psnr_mean": round(sum(q) / len(q), 2), "psnr_min": round(min(q), 2),
            "ssim_mean": round(sum(ssim(r.latent, ref.seeds[s].latent) for s, r in zip(seeds, runs)) / len(runs), 4),
            "attention_reused": _sum_reuse(runs, "attention") or _sum_reuse(runs, "component"),
            "uncond_rebuilt": _sum_reuse(runs, "uncond"),
            "cache_mb": round(max(r.cache_mb for r in runs), 3),
        })
    return rows


def passes(row: dict[str, Any]) -> bool:
    return row["psnr_mean"] >= BAR_MEAN and row["psnr_min"] >= BAR_MIN


def best_points(rows: list[dict[str, Any]]) -> dict[tuple[str, float, str], dict[str, Any]]:
    """(family, cfg, label) -> its fastest point (block speedup, then wall speedup) that passes the bar."""
    best: dict[tuple[str, float, str], dict[str, Any]] = {}
    for r in rows:
        if r["method"] == "uncached" or not passes(r):
            continue
        k = (r["family"], r["cfg"], r["label"])
        if k not in best or (r["block_speedup"], r["wall_speedup"]) > (best[k]["block_speedup"],
                                                                         best[k]["wall_speedup"]):
            best[k] = r
    return best


def _knob(r: dict[str, Any]) -> str:
    return "-" if r["value"] == "" else f"{r['knob']} {r['value']:g}"


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    width = max([28, *(len(r["label"]) for r in rows)])
    print(f"\n{title}")
    print(f"{'method':<{width}} {'knob':>24} {'block':>6} {'wall':>6} {'computed':>9} {'PSNR mean':>9} "
          f"{'min':>6} {'SSIM':>6}  reused")
    for r in rows:
        reused = ", ".join(x for x in (r["attention_reused"] and f"attention {r['attention_reused']}",
                                         r["uncond_rebuilt"] and f"uncond rebuilt {r['uncond_rebuilt']}") if x)
        mark = "" if r["method"] == "uncached" else (" " if passes(r) else "*")
        print(f"{r['label']:<{width}} {_knob(r):>24} {r['block_speedup']:5.2f}x {r['wall_speedup']:5.2f}x "
              f"{r['computed']:>4}/{r['calls']:<4} {r['psnr_mean']:8.2f}{mark} {r['psnr_min']:6.2f} "
              f"{r['ssim_mean']:6.3f}  {reused}")


def print_best(rows: list[dict[str, Any]], families: list[str], cfgs: list[float]) -> None:
    best = best_points(rows)
    cols = [(f, c) for f in families for c in cfgs]
    labels = list(dict.fromkeys(r["label"] for r in rows if r["method"] != "uncached"))
    width = max([28, *(len(x) for x in labels)])
    print(f"\nbest block speedup with mean PSNR >= {BAR_MEAN:g} dB and min >= {BAR_MIN:g} dB "
          f"(block x / wall x @ knob value; '-': no point passes)")
    print(f"{'method':<{width}} " + " ".join(f"{FAMILY_LABELS.get(f, f)[:12] + f' cfg {c:g}':>22}"
                                            for f, c in cols))
    for label in labels:
        cells = []
        for f, c in cols:
            r = best.get((f, c, label))
            cells.append("-" if r is None else f"{r['block_speedup']:.2f}x/{r['wall_speedup']:.2f}x @{r['value']:g}")
        print(f"{label:<{width}} " + " ".join(f"{x:>22}" for x in cells))
    for f, c in cols:
        cand = [r for (ff, cc, _), r in best.items() if (ff, cc) == (f, c) and not r["reference"]]
        if cand:
            top = max(cand, key=lambda r: (r["block_speedup"], r["wall_speedup"]))
            print(f"best on {FAMILY_LABELS.get(f, f)} cfg {c:g}: {top['label']} {_knob(top)} "
                  f"({top['block_speedup']:.2f}x blocks, {top['wall_speedup']:.2f}x wall, PSNR "
                  f"{top['psnr_mean']:.1f}/{top['psnr_min']:.1f} dB)")


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(r["family"] for r in rows))
    cfgs = list(dict.fromkeys(r["cfg"] for r in rows))
    labels = list(dict.fromkeys(r["label"] for r in rows if r["method"] != "uncached"))
    colours = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 7]
    colours += list(plt.get_cmap("tab20").colors[1::2])
    colour = {}
    for label in labels:
        ref = any(r["reference"] for r in rows if r["label"] == label)
        colour[label] = "0.45" if ref else colours[len([x for x in colour if colour[x] != "0.45"]) % len(colours)]
    fig, axes = plt.subplots(len(cfgs), len(families), figsize=(4.2 * len(families) + 2.6, 3.6 * len(cfgs)),
                             squeeze=False, sharey=True)
    for i, c in enumerate(cfgs):
        for j, f in enumerate(families):
            ax = axes[i][j]
            for label in labels:
                pts = sorted((r for r in rows if r["label"] == label and r["family"] == f and r["cfg"] == c),
                             key=lambda r: r["block_speedup"])
                if not pts:
                    continue
                ref = pts[0]["reference"]
                ax.plot([r["block_speedup"] for r in pts], [r["psnr_mean"] for r in pts], "--" if ref else "-",
                        marker="s" if ref else "o", ms=3.5, lw=1.2, color=colour[label],
                        label=label + (" (reference)" if ref else ""))
            ax.axhline(BAR_MEAN, color="0.6", lw=0.8, ls=":")
            ax.set_title(f"{FAMILY_LABELS.get(f, f)}, cfg {c:g}", fontsize=9)
            ax.set_ylim(15, IDENTICAL_DB * 0.62)
            ax.grid(alpha=0.3)
            if i == len(cfgs) - 1:
                ax.set_xlabel("block speedup (rows x block calls)", fontsize=8)
            if j == 0:
                ax.set_ylabel("mean PSNR of the final latent (dB)", fontsize=8)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=7.5, loc="upper left", bbox_to_anchor=(0.0 + 1 - 2.5 / fig.get_figwidth(), 0.93))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - 2.6 / fig.get_figwidth(), 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_trained(args: Any, preset: Any) -> None:
    """Run the trained-model preset ``preset`` with the parsed ``bench/sweep.py`` arguments."""
    from common import PACK, run_log  # noqa: F401  (sets up ComfyUI and the pack)
    import torch
    import trained_models
    from sampling import ksample
    from sweep import Context, _machine, _SkipLines, apply_node, node_classes, resolve
    from tqdm import tqdm

    torch.set_num_threads(args.threads or 1)
    families = args.families or list(preset.families)
    cfgs = args.cfgs or list(preset.cfgs)
    seeds = list(range(args.seeds or preset.seeds))
    overrides = {k: tuple(float(v) for v in vals.split(",")) for k, _, vals in
                 (item.partition("=") for item in args.values)}
    curves = resolve(preset, "trained", args.methods, overrides)
    classes = node_classes(PACK)
    catcher = _SkipLines()
    catcher.attach()
    machine = _machine(False)
    what = "every node at its defaults" if preset.node_defaults else "every method's knob values"
    print(f"dit-cache sweep (preset {args.preset}): {what} on the trained models "
          f"({', '.join(FAMILY_LABELS.get(f, f) for f in families)}), cfg {', '.join(f'{c:g}' for c in cfgs)}, "
          f"{len(seeds)} seeds, {args.steps} steps; {machine}")
    all_rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    try:
        for family in families:
            m = trained_models.load(family)
            ref = m.reference
            counter = BlockCounter(m.patcher.model.diffusion_model)
            for cfg in cfgs:
                def sample(model: Any, seed: int, cfg: float = cfg) -> Any:
                    return ksample(model, m, steps=args.steps, cfg=cfg, sampler=ref["sampler"],
                                   scheduler=ref["scheduler"], noise=m.noise(1, seed=seed),
                                   positive=m.conditioning(seed % len(m.classes)), negative=m.empty())

                ctx = Context(PACK, m, args.steps, cfg, classes, sample=lambda model: sample(model, CALIBRATION_SEED))
                points = [TrainedPoint("uncached", "uncached", "-", None, m.patcher)]
                try:
                    prepared: dict[str, dict[str, Any]] = {}
                    for c in curves:
                        if c.method.family is not None:  # a method for other models (DeepCache: UNets)
                            continue
                        cls = classes.get(c.method.node_id)
                        if cls is None:
                            print(f"skipped {c.label}: node {c.method.node_id} is not installed")
                            continue
                        if c.method.key not in prepared:
                            prepared[c.method.key] = c.method.prepared(ctx) if c.method.prepared else {}
                        if preset.node_defaults:
                            points += _defaults_points(c, cls, m.patcher, family, prepared[c.method.key])
                            continue
                        for v in c.values:
                            patched = apply_node(cls, m.patcher, c.knob, v, prepared[c.method.key], c.fixed)
                            points.append(TrainedPoint(c.method.key, c.label, c.knob, v, patched,
                                                       c.method.reference))
                    sample(points[-1].model, seeds[0])  # warm-up
                    order = [*points, points[0]]
                    desc = f"{family} cfg {cfg:g}"
                    with counter, tqdm(total=len(order) * args.repeats * len(seeds), desc=desc, unit="run",
                                       file=sys.stderr, leave=False, disable=not sys.stderr.isatty()) as bar:
                        for rep in range(args.repeats):
                            for p in order:
                                for seed in seeds:
                                    _one(p, seed, rep, sample, counter, catcher, run_log, args.steps)
                                    bar.update()
                finally:
                    ctx.close()
                rows = summarise(family, cfg, points)
                print_table(rows, f"{FAMILY_LABELS.get(family, family)} ({trained_models.model_path(family).name}, "
                                  f"{ref['sampler']}/{ref['scheduler']} {args.steps} steps), cfg {cfg:g}, "
                                  f"{len(seeds)} seeds")
                all_rows += rows
    finally:
        catcher.detach()
    print_best(all_rows, families, cfgs)
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"block: uncached rows x block calls / cached (exact); wall: uncached wall / cached wall, same round, "
          f"fastest of {args.repeats} per seed; PSNR/SSIM of the final latent vs uncached, identical = "
          f"{IDENTICAL_DB:g} dB; '*': below the bar; {time.perf_counter() - t_start:.0f} s{load}")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "bench-trained" if not preset.node_defaults else "bench-trained-defaults"
    csv_path = args.out / f"{stem}.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        f.write(f"# trained models, {args.steps} steps, {len(seeds)} seeds, {machine}\n")
        w = csv.DictWriter(f, fieldnames=list(all_rows[0]))
        w.writeheader()
        w.writerows(all_rows)
    png_path = args.out / f"{stem}.png"
    plot(all_rows, png_path, f"trained models, {args.steps} euler steps, mean PSNR over {len(seeds)} seeds vs "
                             f"block speedup; {machine}")
    print(f"wrote {csv_path} and {png_path}")


def _defaults_points(curve: Any, cls: Any, patcher: Any, family: str, prepared: dict[str, Any]) -> list[TrainedPoint]:
    """The node with every input at its default, and (where the entry recommends other inputs for ``family``)
    at the recommended setting. A setting the node refuses on this model is printed and left out."""
    from sweep import node_inputs

    meth = curve.method
    settings = [(curve.label + ", defaults", {})]
    if meth.recommended_for(family):
        settings.append((curve.label + ", recommended", meth.recommended_for(family)))
    points = []
    for label, given in settings:
        inputs = node_inputs(cls, {**given, **prepared})
        try:
            patched = cls.execute(patcher, **inputs).result[0]
        except ValueError as e:  # e.g. DBCache's Fn 8 on a 4-block model
            print(f"{label} on {family}: {e}")
            continue
        points.append(TrainedPoint(meth.key, label, curve.knob, inputs[curve.knob], patched, meth.reference))
    return points


def _one(p: TrainedPoint, seed: int, rep: int, sample: Callable[[Any, int], Any], counter: BlockCounter,
         catcher: Any, run_log: Any, steps: int) -> None:
    """One seed of one point: wall time (kept if fastest), and on the first round rows, counts and the latent."""
    run_log.clear()
    catcher.matches.clear()
    counter.rows = 0
    t0 = time.perf_counter()
    out = sample(p.model, seed)
    wall = time.perf_counter() - t0
    run = p.seeds.setdefault(seed, SeedRun())
    run.wall_s = min(run.wall_s, wall)
    if rep:
        return
    run.rows, run.latent = counter.rows, out.float().cpu()
    rec = run_log.last()
    if rec is not None and "calls" in rec:
        run.calls, run.skipped = rec["calls"], rec["skipped_calls"]
        run.reuse = {part: tuple(rt) for part, rt in rec.get("reuse", {}).items()}
        run.cache_mb = rec.get("cache_bytes", 0) / 2**20
    elif catcher.matches:
        run.skipped, run.calls = catcher.matches[-1]
    else:
        run.calls, run.skipped = steps, 0
