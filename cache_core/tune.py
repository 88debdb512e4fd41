"""Tuning to a quality target: for each method with a :class:`~cache_core.registry.TuneKnob`, the fastest setting
whose output meets the target on the worst tuning seed plus a safety margin, searched by bisection; and the
``dit-cache.tune.v1`` file that records the winner and the measured curve.

Host-independent: the host hands in ``run(method, value, seed) -> Measured`` (method None: the uncached
reference) and, optionally, ``between()`` (called before every run: the host's interrupt check and progress).

The search per method assumes quality falls as the knob moves towards "faster" (true in trend on every trained
model of docs/bench-trained.csv, not strictly: TaylorSeer 4 can be worse than 5). It measures the slow end of
the range (if that misses the target the method cannot reach it), then the fast end (if that passes, it is the
answer), then bisects between the last passing and the first failing value: ``knob.steps`` times for a float
knob (geometric midpoints when the range is positive: thresholds act on a log scale), until the bracket is one
apart for an integer knob. Every point measured goes into the curve; the winner is the passing point of the
largest block speedup over all methods (ties: the better quality), so a non-monotone knob costs at most a point.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .quality import psnr, ssim
from .registry import MethodSpec, TuneKnob, methods

FORMAT = "dit-cache.tune.v1"
METRICS = ("PSNR", "SSIM")
# The safety margin over the target on the worst tuning seed (held-out seeds scatter around the tuning ones: on
# the trained models within about 2 dB, tests/comfy/test_tune_comfy.py)
MARGIN = {"PSNR": 1.0, "SSIM": 0.01}
IDENTICAL_PSNR = 100.0  # PSNR counted for an output identical to the reference (finite, for JSON)


@dataclass
class Measured:
    """One sampling run: its output (final latent or decoded image) and the transformer-block rows it ran."""

    output: torch.Tensor
    block_rows: int


@dataclass
class Point:
    """One knob value of one method, over every tuning seed."""

    method: str
    value: float
    speedup: float  # uncached block rows / this setting's, over the seeds
    quality: float  # the worst seed's
    per_seed: list[float]
    passed: bool


@dataclass
class TuneResult:
    metric: str
    target: float
    margin: float
    seeds: list[int]
    points: list[Point] = field(default_factory=list)
    winner: Point | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # method -> why it was not tuned

    def curve(self) -> dict[str, list[list[float]]]:
        """Per method: [value, speedup, quality] of every point measured, by speedup."""
        out: dict[str, list[list[float]]] = {}
        for p in self.points:
            out.setdefault(p.method, []).append([p.value, round(p.speedup, 4), round(p.quality, 4)])
        return {k: sorted(v, key=lambda x: x[1]) for k, v in out.items()}


def quality(metric: str, test: torch.Tensor, ref: torch.Tensor) -> float:
    """``metric`` (PSNR in dB, identical = :data:`IDENTICAL_PSNR`; SSIM) of ``test`` against ``ref``."""
    if metric == "PSNR":
        q = psnr(test, ref)
        return IDENTICAL_PSNR if math.isinf(q) else min(q, IDENTICAL_PSNR)
    if metric == "SSIM":
        return ssim(test, ref)
    raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")


def tunable(only: Iterable[str] | None = None) -> dict[str, MethodSpec]:
    """The registered methods with a tune knob (``only``: those keys of them, ValueError for an unknown one)."""
    found = {k: s for k, s in methods().items() if s.tune is not None}
    if only is None:
        return found
    keys = list(only)
    unknown = [k for k in keys if k not in found]
    if unknown:
        raise ValueError(f"cannot tune {', '.join(unknown)}; tunable methods: {', '.join(found)}")
    return {k: found[k] for k in keys}


def _value(knob: TuneKnob, v: float) -> float:
    return float(round(v)) if knob.integer else float(f"{v:.3g}")


def _mid(knob: TuneKnob, a: float, b: float) -> float:
    if knob.integer:
        return float(math.floor((a + b) / 2))
    if a > 0 and b > 0:
        return _value(knob, math.sqrt(a * b))
    return _value(knob, (a + b) / 2)


def count_runs(specs: dict[str, MethodSpec], seeds: int) -> int:
    """The most sampling runs a tune makes (the progress bar's total): the references and, per method, both ends
    plus its bisection steps."""
    per = 0
    for s in specs.values():
        k = s.tune
        n = max(1, math.ceil(math.log2(max(k.high - k.low, 1)))) if k.integer else k.steps
        per += 2 + n
    return seeds * (1 + per)


def tune(specs: dict[str, MethodSpec], run: Callable[[str | None, float, int], Measured], seeds: list[int],
         metric: str = "PSNR", target: float = 30.0, margin: float | None = None,
         between: Callable[[], None] | None = None, log: Callable[[str], None] | None = None) -> TuneResult:
    """Search every method of ``specs`` (each with a ``tune`` knob) for its fastest setting that meets ``target``
    + ``margin`` on the worst of ``seeds``. ``run(None, 0, seed)`` is the uncached reference. A method whose
    run raises ValueError (e.g. the model does not support it) is skipped, with why in ``result.skipped``."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    margin = MARGIN[metric] if margin is None else margin
    res = TuneResult(metric, target, margin, list(seeds))
    say = log or (lambda _msg: None)

    def one(method: str | None, value: float, seed: int) -> Measured:
        if between is not None:
            between()
        return run(method, value, seed)

    refs = {s: one(None, 0.0, s) for s in seeds}
    base_rows = sum(r.block_rows for r in refs.values())
    bar = target + margin
    for key, spec in specs.items():
        knob = spec.tune
        measured: dict[float, Point] = {}

        def at(v: float) -> Point:
            v = _value(knob, v)
            if v not in measured:
                outs = [one(key, v, s) for s in seeds]
                per_seed = [quality(metric, o.output, refs[s].output) for o, s in zip(outs, seeds)]
                rows = sum(o.block_rows for o in outs)
                p = Point(key, v, base_rows / rows if rows else math.inf, min(per_seed),
                          [round(q, 3) for q in per_seed], min(per_seed) >= bar)
                measured[v] = p
                res.points.append(p)
                say(f"{key} {knob.input}={v:g}: {p.speedup:.2f}x, {metric} {p.quality:.3g} "
                    f"({'meets' if p.passed else 'misses'} {bar:g})")
            return measured[v]

        slow, fast = (knob.low, knob.high) if knob.larger_is_faster else (knob.high, knob.low)
        try:
            if not at(slow).passed:
                res.skipped[key] = f"even {knob.input}={_value(knob, slow):g} misses the target"
                continue
            if not at(fast).passed:
                good, bad = slow, fast
                for _ in range(10_000 if knob.integer else knob.steps):
                    if knob.integer and abs(bad - good) <= 1:
                        break
                    mid = _mid(knob, good, bad)
                    if mid in (_value(knob, good), _value(knob, bad)):
                        break
                    if at(mid).passed:
                        good = mid
                    else:
                        bad = mid
        except ValueError as e:
            res.skipped[key] = str(e)
            say(f"{key}: not tuned ({e})")
            continue
    passing = [p for p in res.points if p.passed]
    if passing:
        res.winner = max(passing, key=lambda p: (round(p.speedup, 6), p.quality))
    return res


# ------------------------------------------------------------------------------------------------ the file
@dataclass
class TuneFile:
    """What a ``dit-cache.tune.v1`` file holds (JSON, in the calibration store)."""

    method: str  # registry key of the winner
    knob: str  # the winner's tuned input
    value: float
    inputs: dict[str, Any]  # the knob and the fixed inputs of the winner (every other input: the node's default)
    speedup: float
    quality: float
    metric: str
    target: float
    margin: float
    seeds: list[int]
    family: str
    model_class: str
    block_hash: str
    weights_hint: str
    steps: int
    sampler: str
    scheduler: str
    cfg: float
    denoise: float
    measured_on: str  # "image" (decoded by the VAE) or "latent"
    curve: dict[str, list[list[float]]]
    knobs: dict[str, dict[str, Any]]  # method -> {"input": its tuned input, "fixed": inputs held} (to apply a point)
    skipped: dict[str, str]
    date: str = ""
    pack_version: str = ""
    format: str = FORMAT
    name: str = field(default="", compare=False)

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("name")
        return json.dumps(d, indent=1, allow_nan=False)


def read(path: str | Path) -> TuneFile:
    """A tune file (ValueError naming what is wrong: not JSON, another format, a field missing)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path.name} is not a readable tune file ({type(e).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path.name} is not a {FORMAT} file")
    names = {f for f in TuneFile.__dataclass_fields__ if f != "name"}
    missing = sorted(names - set(data) - {"date", "pack_version", "format"})
    if missing:
        raise ValueError(f"{path.name}: missing {', '.join(missing)}")
    tf = TuneFile(**{k: data[k] for k in names if k in data})
    tf.name = path.name
    return tf


def write(path: str | Path, tf: TuneFile) -> Path:
    """Write atomically (a ``.part`` file renamed): a half-written file never carries the final name."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(tf.to_json(), encoding="utf-8")
    os.replace(tmp, path)
    return path


def point_inputs(tf: TuneFile, method: str, value: float) -> dict[str, Any]:
    """The node inputs of a curve point (beyond the node's defaults)."""
    knob = tf.knobs[method]
    return {**knob.get("fixed", {}), knob["input"]: value}


def best_at(tf: TuneFile, target: float, margin: float | None = None) -> tuple[str, float, list[float]] | None:
    """From a tune file's curve: the fastest (method, value, [value, speedup, quality]) whose worst-seed quality
    meets ``target`` + ``margin`` (default: the file's margin), or None."""
    margin = tf.margin if margin is None else margin
    best = None
    for method, pts in tf.curve.items():
        for pt in pts:
            if pt[2] >= target + margin and (best is None or (pt[1], pt[2]) > (best[2][1], best[2][2])):
                best = (method, pt[0], pt)
    return best
