"""First Block Cache on the medium (~100 M parameter) Flux-class model, all runs in one process.

Prints for each setting: wall time, model calls computed/skipped, speedup (uncached wall / this wall, same
run), ideal speedup (calls / computed calls) and PSNR of the final latent vs uncached; plus the overhead of
the patched model when nothing is skipped (threshold 1e-9: every block runs through the cache core).
"""
from __future__ import annotations

import argparse

from common import PACK, measure, row, timed, tiny_models

ApplyFirstBlockCache = PACK.nodes.fbc_node.ApplyFirstBlockCache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="medium", choices=["tiny", "medium"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.08, 0.12, 0.2])
    ap.add_argument("--repeats", type=int, default=2, help="runs per setting, interleaved; the fastest counts")
    args = ap.parse_args()

    import torch
    m = tiny_models.build("flux", args.size)
    print(f"FBC benchmark: Flux {args.size} ({tiny_models.parameter_count(m) / 1e6:.1f} M params), {args.steps} "
          f"euler steps, torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    configs = [("uncached", m.patcher, False),
               ("FBC, nothing skipped (overhead)",
                ApplyFirstBlockCache.execute(m.patcher, 1e-9, 0.0, 1.0, -1, 0).result[0], True)]
    for t in args.thresholds:
        configs.append((f"FBC threshold {t}", ApplyFirstBlockCache.execute(m.patcher, t, 0.0, 1.0, -1, 0).result[0],
                        True))
    timed("warm-up", configs[1][1], m, 2, 1.0, True)
    ref, *results = measure(configs, m, args.steps, 1.0, args.repeats)
    print(row(ref, ref))
    for r in results:
        print(row(r, ref))
    print(f"overhead with nothing skipped: {results[0].wall_s / ref.wall_s:.3f}x uncached wall time")


if __name__ == "__main__":
    main()
