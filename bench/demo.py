"""`make demo`: the tiny Flux-class model sampled by ComfyUI's KSampler, uncached vs Apply FirstBlockCache.

Prints wall time, model calls computed/skipped, speedup (uncached wall / cached wall, measured in this run)
and the PSNR of the cached final latent against the uncached one.
"""
from __future__ import annotations

import argparse

from common import PACK, measure, row, timed, tiny_models
from sweep import apply_node, node_classes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--threshold", type=float, default=0.12)
    ap.add_argument("--repeats", type=int, default=3, help="runs per setting, interleaved; the fastest counts")
    args = ap.parse_args()

    tiny = tiny_models.build("flux", "tiny")
    print(f"dit-cache demo: tiny Flux ({tiny_models.parameter_count(tiny) / 1e6:.2f} M params, ComfyUI's Flux class), "
          f"{args.steps} euler steps, CPU")
    # Apply FirstBlockCache by its node id, every input but the threshold at the node's default
    fbc = node_classes(PACK)["DitCache.ApplyFirstBlockCache"]
    cached_model = apply_node(fbc, tiny.patcher, "threshold", args.threshold, {})
    timed("warm-up", cached_model, tiny, 2, 1.0, True)
    ref, cached = measure([("uncached", tiny.patcher, False),
                           (f"FirstBlockCache threshold {args.threshold}", cached_model, True)],
                          tiny, args.steps, 1.0, args.repeats)
    print(row(ref, ref))
    print(row(cached, ref))


if __name__ == "__main__":
    main()
