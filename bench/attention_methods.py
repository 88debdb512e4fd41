"""PAB and FasterCache (attention-level caching) against the uncached model, all runs in one process.

Default: the medium Wan-class video model (1280 video tokens, attention about half the work) with CFG, so
FasterCache's unconditional-branch rebuild applies; ``--family flux`` runs the medium Flux-class image model.
Prints per setting: wall time, speedup (uncached wall / this wall, same run), attention computations reused,
unconditional branches rebuilt, ideal speedup and PSNR of the final latent vs uncached. The ideal speedup
counts what was not computed at its share of the uncached work: attention cores (measured share, see below)
and whole unconditional passes.
"""
from __future__ import annotations

import argparse
import time

from common import PACK, component_shares, psnr, run_log, tiny_models
from sampling import ksample

PABConfigNode = PACK.nodes.pab_node.PABConfigNode
ApplyFasterCache = PACK.nodes.fastercache_node.ApplyFasterCache


def _inputs():
    import methods_registry
    return methods_registry.pab_inputs, methods_registry.fastercache_inputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--family", default="wan21", choices=["wan21", "flux"])
    ap.add_argument("--size", default="medium", choices=["tiny", "medium"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=1, help="runs per setting, interleaved; the fastest counts")
    args = ap.parse_args()
    import torch

    pab_inputs, fc_inputs = _inputs()
    m = tiny_models.build(args.family, args.size)
    share = component_shares(m.patcher, m, args.cfg)["attention"]
    print(f"Attention-level caching benchmark: {args.family} {args.size} "
          f"({tiny_models.parameter_count(m) / 1e6:.1f} M params), {args.steps} euler steps, CFG {args.cfg}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; attention cores = {share:.0%} of "
          f"an uncached call")
    configs = [
        ("uncached", m.patcher),
        ("PAB spatial 2, cross 6 (0.2-0.9)", PABConfigNode.execute(m.patcher, **pab_inputs(2, 6)).result[0]),
        ("PAB spatial 3, cross 6 (0.1-0.95)", PABConfigNode.execute(m.patcher, **pab_inputs(3, 6, 0.1, 0.95)).result[0]),
        ("FasterCache defaults (attn 2, uncond 5)", ApplyFasterCache.execute(m.patcher, **fc_inputs()).result[0]),
        ("FasterCache attn 2, uncond 3", ApplyFasterCache.execute(m.patcher, **fc_inputs(uncond=3)).result[0]),
    ]
    best: dict[str, tuple[float, torch.Tensor, dict | None]] = {}
    for _ in range(args.repeats):
        for label, model in configs:
            run_log.clear()
            t0 = time.perf_counter()
            out = ksample(model, m, steps=args.steps, cfg=args.cfg)
            wall = time.perf_counter() - t0
            if label not in best or wall < best[label][0]:
                best[label] = (wall, out, run_log.last() if model is not m.patcher else None)
    ref_wall, ref, _ = best["uncached"]
    for label, _ in configs:
        wall, out, run = best[label]
        reuse = (run or {}).get("reuse", {})
        attn_r, attn_t = reuse.get("attention", (0, 0))
        unc_r, unc_t = reuse.get("uncond", (0, 0))
        streams = 2 if args.cfg != 1.0 else 1
        # work left: every stream pass of every step, minus rebuilt uncond passes, minus reused attention cores
        passes = args.steps * streams
        left = passes - unc_r - share * (attn_r / attn_t if attn_t else 0) * (passes - unc_r)
        q = psnr(out, ref)
        print(f"{label:<42} {wall:7.2f}s  speedup {ref_wall / wall:5.2f}x  attention reused {attn_r:4d}/{attn_t:<4d} "
              f"uncond rebuilt {unc_r:2d}/{unc_t:<2d} ideal {passes / left:5.2f}x  "
              f"PSNR {'identical' if q == float('inf') else f'{q:6.2f} dB'}")


if __name__ == "__main__":
    main()
