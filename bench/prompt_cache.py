"""Benchmark of the Prompt Cache (Nirvana): replay a stream of prompts with repeats and near-duplicates through
"Apply PromptCache" on a trained tiny model and report the steps saved and the quality of the hits.

    .venv/bin/python bench/prompt_cache.py [--family flux] [--requests 100] [--seed 0] [--threshold 0.95]

The stream (drawn with ``--seed``): each request is
- a **repeat** (40 %) of an earlier request's conditioning,
- a **near-duplicate** (30 %) of an earlier one: its conditioning moved towards another class's by 5-25 %
  (an edited prompt; the trained models' text tables only know their 8 two-word prompts, so edits are made in
  embedding space), or
- a **new** prompt (30 %): a class prompt with its token embeddings moved 40 % of the way towards random
  vectors (never similar to another request).
Every request has a seed from a pool of 4, as in a service where users re-roll. Each request runs twice: through
the cache and uncached with the same seed (the reference). A hit's quality: PSNR against that reference, and
whether the trained classifier sees the same class in both images (a hit starts from another generation's
latent, so with another seed the image is expected to differ in detail, not in content).

Two settings are replayed: the node defaults (a hit may reuse another seed's noise path) and ``same_seed`` on.
Output: one table per setting plus a summary line each (docs/benchmarks.md has a run).
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PACK, psnr, run_log, torch  # noqa: I001 (common puts tests/support on the path)

import trained_models

prompt_cache = PACK.hosts.comfy.prompt_cache
ApplyPromptCache = PACK.nodes.promptcache_node.ApplyPromptCache


def _cond(m, cross: torch.Tensor, pooled: torch.Tensor | None, template: list) -> list:
    extra = dict(template[0][1])
    if pooled is not None:
        extra["pooled_output"] = pooled
    return [[cross, extra]]


def make_stream(m, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    out: list[dict] = []
    for i in range(n):
        r = rng.random()
        if out and r < 0.4:
            src = rng.choice(out)
            req = dict(src, kind="repeat")
        elif out and r < 0.7:
            src = rng.choice(out)
            other = m.conditioning(rng.randrange(len(m.classes)))[0]
            w = rng.uniform(0.05, 0.25)
            cross = (1 - w) * src["cross"] + w * other[0]
            pooled = None if src["pooled"] is None else (1 - w) * src["pooled"] + w * other[1]["pooled_output"]
            req = dict(src, kind=f"near {w:.2f}", cross=cross, pooled=pooled)
        else:
            label = rng.randrange(len(m.classes))
            base = m.conditioning(label)[0]
            cross = 0.6 * base[0] + 0.4 * torch.randn(base[0].shape, generator=g) * base[0].std()
            pooled = base[1].get("pooled_output")
            req = {"kind": "new", "label": label, "cross": cross, "pooled": pooled}
        req["seed"] = rng.randrange(4)
        req["index"] = i
        out.append(req)
    return out


def sample(m, model, req: dict, template: list) -> torch.Tensor:
    import comfy.sample

    r = m.reference
    noise = m.noise(1, req["seed"])
    return comfy.sample.sample(model, noise, r["steps"], r["cfg"], r["sampler"], r["scheduler"],
                               _cond(m, req["cross"], req["pooled"], template), m.empty(), torch.zeros_like(noise),
                               seed=req["seed"], disable_pbar=True)


def replay(m, stream: list[dict], refs: list[torch.Tensor], same_seed: bool, threshold: float) -> str:
    prompt_cache.clear_caches()
    model = ApplyPromptCache.execute(m.patcher, threshold=threshold, max_skip=0.5, levels=5, max_entries=64,
                                     max_mb=1024.0, same_seed=same_seed, disk=False).result[0]
    template = m.conditioning(0)
    rows, hits, saved, total, quality, agree, peak = [], 0, 0, 0, [], 0, 0
    by_kind: dict[str, list[int]] = {}
    t0 = time.perf_counter()
    for req, ref in zip(stream, refs):
        out = sample(m, model, req, template)
        rec = [x for x in run_log.recent() if "prompt_cache" in x["details"]][-1]["details"]["prompt_cache"]
        kind = req["kind"].split()[0]
        by_kind.setdefault(kind, [0, 0])[1] += 1
        total += rec["steps"]
        peak = max(peak, rec["cache_bytes"])
        if rec["outcome"] == "hit":
            hits += 1
            by_kind[kind][0] += 1
            saved += rec["steps_saved"]
            q = psnr(out, ref)
            same = m.classify(out).tolist() == m.classify(ref).tolist()
            quality.append(q)
            agree += int(same)
            rows.append(f"| {req['index']} | {req['kind']} | seed {req['seed']} | {rec['similarity']:.4f} | "
                        f"{rec['k']} | {q:.1f} | {'yes' if same else 'NO'} |")
    wall = time.perf_counter() - t0
    lines = [f"### same_seed {'on' if same_seed else 'off'} (threshold {threshold})", "",
             "| request | kind | seed | similarity | K (steps saved) | PSNR vs uncached, dB | same class |",
             "|---|---|---|---|---|---|---|", *rows, ""]
    kinds = ", ".join(f"{k} {h}/{n}" for k, (h, n) in sorted(by_kind.items()))
    q = sorted(quality)
    med = q[len(q) // 2] if q else float("nan")
    lines.append(f"{len(stream)} requests: {hits} hits ({kinds}), {saved}/{total} steps saved "
                 f"({100 * saved / max(total, 1):.1f} %); hits: median PSNR {med:.1f} dB, min "
                 f"{(q[0] if q else float('nan')):.1f} dB, same class as uncached {agree}/{hits}; cache peak "
                 f"{peak / 1024:.0f} KiB; {wall:.0f} s")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="flux", choices=trained_models.FAMILIES)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=0.95)
    args = ap.parse_args()
    m = trained_models.load(args.family)
    stream = make_stream(m, args.requests, args.seed)
    template = m.conditioning(0)
    t0 = time.perf_counter()
    refs = [sample(m, m.patcher, req, template) for req in stream]
    print(f"{args.family}, {m.reference['steps']} steps {m.reference['sampler']}/{m.reference['scheduler']}, "
          f"cfg {m.reference['cfg']}; {len(stream)} requests ("
          + ", ".join(f"{k} {sum(r['kind'].split()[0] == k for r in stream)}" for k in ("repeat", "near", "new"))
          + f"); uncached replay {time.perf_counter() - t0:.0f} s\n")
    for same_seed in (False, True):
        print(replay(m, stream, refs, same_seed, args.threshold))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
