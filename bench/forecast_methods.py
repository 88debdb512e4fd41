"""DBCache, TaylorSeer, the adaptive cache and SmoothCache against ComfyUI's built-in EasyCache node, on the
medium (~100 M parameter) Flux-class model, all runs in one process.

SmoothCache is calibrated on the model first (SmoothCache Calibrate + one full run, same steps, into a temporary
calibration folder); its ideal speedup counts each reused attention / feed-forward computation at its measured
share of an uncached run (bench/common.py component_ideal), since it never skips a whole model call.

EasyCache is applied exactly as its node does (comfy_extras.nodes_easycache.EasyCacheNode.execute on the
model; start 0.15, end 0.95 as its defaults). Its skipped calls are counted with a forward hook on the first
transformer block (it runs only on calls EasyCache computes); ours come from the pack's run log.
Prints per setting: wall time, model calls computed/skipped, speedup (uncached wall / this wall, same run),
ideal speedup (calls / computed calls), PSNR and SSIM of the final latent vs uncached.
"""
from __future__ import annotations

import argparse
import time

from common import PACK, Result, component_ideal, component_shares, ksample, psnr, run_log, tiny_models
from metrics import ssim

ApplyDBCache = PACK.nodes.dbcache_node.ApplyDBCache
ApplyTaylorSeer = PACK.nodes.taylorseer_node.ApplyTaylorSeer
ApplyAdaptiveCache = PACK.nodes.adaptive_node.ApplyAdaptiveCache
ApplySmoothCache = PACK.nodes.smoothcache_nodes.ApplySmoothCache
SHARES: dict[str, float] = {}  # attention / feed-forward shares of an uncached run (measured in main)


def run_once(label: str, model, m, steps: int, kind: str) -> Result:
    """kind: "plain" (uncached), "easycache" (count computed calls with a hook), "ours" (run log)."""
    computed = [0]
    handle = None
    if kind == "easycache":
        first = m.patcher.get_model_object("diffusion_model").double_blocks[0]
        handle = first.register_forward_pre_hook(lambda *_: computed.__setitem__(0, computed[0] + 1))
    run_log.clear()
    try:
        t0 = time.perf_counter()
        out = ksample(model, m, steps=steps, cfg=1.0)
        wall = time.perf_counter() - t0
    finally:
        if handle is not None:
            handle.remove()
    if kind == "ours":
        run = run_log.last()
        ideal = component_ideal(run, SHARES) if run.get("reuse_by_kind") else None
        return Result(label, wall, run["calls"], run["skipped_calls"], out, ideal)
    calls = steps  # cfg 1, euler: one model call per step
    return Result(label, wall, calls, calls - computed[0] if kind == "easycache" else 0, out)


def line(r: Result, ref: Result) -> str:
    q = psnr(r.latent, ref.latent)
    q_s = "     inf" if q == float("inf") else f"{q:6.2f}dB"
    return (f"{r.label:<50} {r.wall_s:7.2f}s  computed {r.computed:3d}/{r.calls:<3d} "
            f"speedup {ref.wall_s / r.wall_s:5.2f}x  "
            f"ideal {r.ideal if r.ideal is not None else r.calls / max(r.computed, 1):5.2f}x  "
            f"PSNR {q_s}  SSIM {ssim(r.latent, ref.latent):.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="medium", choices=["tiny", "medium"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--easycache", type=float, nargs="+", default=[0.1, 0.2, 0.3], help="reuse_threshold values")
    ap.add_argument("--dbcache", nargs="+", default=["F4B0:0.2:1", "F1B0:0.2:1", "F1B0:0.3:1"],
                    help="F<n>B<n>:threshold:taylorseer_order (warm-up 4 steps)")
    ap.add_argument("--taylorseer", nargs="+", default=["3:1", "4:1", "5:1", "4:1:c"],
                    help="cache_interval:max_order[:c] (c: predict attention+MLP outputs, else block outputs)")
    ap.add_argument("--adaptive", type=float, nargs="+", default=[0.2, 0.4, 0.8], help="threshold values")
    ap.add_argument("--smoothcache", type=float, nargs="+", default=[0.05, 0.1, 0.2],
                    help="alpha values (one calibration, schedule rebuilt per alpha)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: on a shared 2-core machine two threads' barriers cost more than "
                         "they gain, see bench/sweep.py)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per setting, interleaved; the fastest counts")
    args = ap.parse_args()

    import torch
    from comfy_extras.nodes_easycache import EasyCacheNode

    torch.set_num_threads(args.threads)

    from sweep import Context

    m = tiny_models.build("flux", args.size)
    SHARES.update(component_shares(m.patcher, m, 1.0))
    print(f"Forecasting/adaptive caches vs ComfyUI EasyCache: Flux {args.size} "
          f"({tiny_models.parameter_count(m) / 1e6:.1f} M params), {args.steps} euler steps, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, CPU; attention cores "
          f"{SHARES['attention']:.0%}, feed-forward modules {SHARES['ffn']:.0%} of an uncached run")
    configs = [("uncached", m.patcher, "plain")]
    for t in args.easycache:
        configs.append((f"ComfyUI EasyCache reuse_threshold {t}",
                        EasyCacheNode.execute(m.patcher, t, 0.15, 0.95, False).result[0], "easycache"))
    for spec in args.dbcache:
        blocks, thr, order = spec.split(":")
        fn, bn = (int(x) for x in blocks[1:].split("B"))
        model = ApplyDBCache.execute(m.patcher, fn, bn, float(thr), 4, -1, -1, int(order), 0.0, 1.0).result[0]
        configs.append((f"DBCache {blocks} thr {thr} taylor {order}", model, "ours"))
    for spec in args.taylorseer:
        interval, order, *mode = spec.split(":")
        predict = "attention+MLP outputs" if mode == ["c"] else "block outputs"
        model = ApplyTaylorSeer.execute(m.patcher, int(interval), 3, 1, int(order), predict, "bfloat16").result[0]
        what = ", attn+MLP" if mode == ["c"] else ""
        configs.append((f"TaylorSeer interval {interval} order {order}{what} (final 1)", model, "ours"))
    for t in args.adaptive:
        model = ApplyAdaptiveCache.execute(m.patcher, t, 0.15, 1.0, -1, 0).result[0]
        configs.append((f"Adaptive Cache threshold {t}", model, "ours"))
    ctx = Context(PACK, m, args.steps, 1.0)
    try:
        calibration = ctx.calibration("DitCache.SmoothCacheCalibrate", "magcache") if args.smoothcache else ""
        for a in args.smoothcache:
            model = ApplySmoothCache.execute(m.patcher, calibration, a).result[0]
            configs.append((f"SmoothCache alpha {a}", model, "ours"))
        run_and_print(args, configs, m)
    finally:
        ctx.close()


def run_and_print(args: argparse.Namespace, configs: list, m) -> None:
    run_once("warm-up", configs[0][1], m, 2, "plain")
    best: dict[str, Result] = {}
    for _ in range(args.repeats):  # interleaved, so load from elsewhere on the machine hits all alike
        for label, model, kind in configs:
            r = run_once(label, model, m, args.steps, kind)
            if label not in best or r.wall_s < best[label].wall_s:
                best[label] = r
    ref = best["uncached"]
    for label, _, _ in configs:
        print(line(best[label], ref))
    good = [best[label] for label, _, _ in configs[1:] if psnr(best[label].latent, ref.latent) >= 30.0]
    if good:
        top = max(good, key=lambda r: ref.wall_s / r.wall_s)
        print(f"best speedup at PSNR >= 30 dB: {top.label} ({ref.wall_s / top.wall_s:.2f}x)")


if __name__ == "__main__":
    main()
