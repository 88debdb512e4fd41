"""MagCache and TeaCache on the medium (~100 M parameter) Flux-class model, all runs in one process.

MagCache uses ratios calibrated on this very model first ("MagCache Calibrate", saved to a temporary
folder), then runs at two thresholds; TeaCache runs at two thresholds with the published Flux coefficients.
Prints per setting: wall time, model calls computed/skipped, speedup (uncached wall / this wall, same run),
ideal speedup (calls / computed calls) and PSNR of the final latent vs uncached.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile

from common import PACK, measure, row, timed, tiny_models

ApplyMagCache = PACK.nodes.magcache_nodes.ApplyMagCache
MagCacheCalibrate = PACK.nodes.magcache_nodes.MagCacheCalibrate
ApplyTeaCache = PACK.nodes.teacache_node.ApplyTeaCache
calibration_store = PACK.nodes.calibration_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="medium", choices=["tiny", "medium"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--mag-thresholds", type=float, nargs=2, default=[0.01, 0.05],
                    help="this random-weight model's calibrated ratios stay within 1 +- 0.016 (trained Flux: up to 1.21), "
                         "so its useful thresholds are small")
    ap.add_argument("--tea-thresholds", type=float, nargs=2, default=[0.25, 0.6])
    ap.add_argument("--repeats", type=int, default=2, help="runs per setting, interleaved; the fastest counts")
    args = ap.parse_args()

    import folder_paths
    import torch

    store = tempfile.mkdtemp(prefix="dit_cache_bench_magcache_")
    calibration_store.register()
    folder_paths.folder_names_and_paths[calibration_store.FOLDER][0].insert(0, store)

    m = tiny_models.build("flux", args.size)
    print(f"MagCache/TeaCache benchmark: Flux {args.size} ({tiny_models.parameter_count(m) / 1e6:.1f} M params), "
          f"{args.steps} euler steps, torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    calib = MagCacheCalibrate.execute(m.patcher, "bench").result[0]
    timed("calibration", calib, m, args.steps, 1.0, True)
    files = calibration_store.choices()
    saved = [f for f in files if f.startswith("bench_")][-1]
    print(f"calibrated: {saved} in {store}")
    configs = [("uncached", m.patcher, False)]
    for t in args.mag_thresholds:
        model = ApplyMagCache.execute(m.patcher, saved, t, 3, 0.2, 0.0, 1.0, "schedule").result[0]
        configs.append((f"MagCache threshold {t} (K 3, ret 0.2)", model, True))
    for t in args.tea_thresholds:
        model = ApplyTeaCache.execute(m.patcher, t, "auto", 0.0, 1.0, -1).result[0]
        configs.append((f"TeaCache rel_l1 {t} (flux coeffs)", model, True))
    timed("warm-up", configs[1][1], m, 2, 1.0, True)
    try:
        ref, *results = measure(configs, m, args.steps, 1.0, args.repeats)
    finally:
        shutil.rmtree(store, ignore_errors=True)
    print(row(ref, ref))
    for r in results:
        print(row(r, ref))


if __name__ == "__main__":
    main()
