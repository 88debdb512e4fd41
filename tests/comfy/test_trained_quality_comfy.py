"""Every method at its recommended setting keeps the final latent within 30 dB PSNR of the uncached one on the
small *trained* models (models/trained/), at CFG 1 and 3.5, and saves work there.

The recommended setting is the method's node with every input at its default, plus the inputs its
bench/sweep_methods.py entry recommends for that trained family (``SweepMethod.recommended_for``: e.g. DBCache's
Fn 1 on these 4-6-block models, TeaCache's 0.1 where no rescaling polynomial is published). Sampling is ComfyUI's
KSampler path (``comfy.sample``) at the model's reference sampler, 20 steps, 3 seeds (seed s: noise s, prompt of
class s, the empty negative prompt); calibrating methods calibrate once per model and CFG on another seed, as
``bench/sweep.py --preset trained-defaults`` does. "Saves work": fewer batch rows x block calls than the uncached
run (counted by hooks on the blocks), or computations reused inside the blocks (the run record).
Random-weight models are not used here: their trajectories do not behave like trained ones.
"""
from __future__ import annotations

import logging
import sys

import pytest

import trained_models
from comfy_env import REPO
from metrics import psnr
from sampling import ksample

sys.path.insert(0, str(REPO / "bench"))

import sweep  # noqa: E402
import sweep_methods  # noqa: E402
from trained import CALIBRATION_SEED, BlockCounter  # noqa: E402

log = logging.getLogger("dit_cache.tests")

pytestmark = pytest.mark.usefixtures("one_thread")

SEEDS = (0, 1, 2)
BAR_DB = 30.0
METHODS = [m for m in sweep_methods.METHODS if not m.reference and m.family is None]  # DiT methods


class Bench:
    """One trained model at one CFG: its uncached latents per seed, block counter and calibrations."""

    def __init__(self, pack, family: str, cfg: float) -> None:
        self.m = trained_models.load(family)
        self.family, self.cfg = family, cfg
        self.counter = BlockCounter(self.m.patcher.model.diffusion_model)
        self.ctx = sweep.Context(pack, self.m, 20, cfg, sample=lambda model: self.sample(model, CALIBRATION_SEED))
        self.reference = {s: self.run(self.m.patcher, s) for s in SEEDS}

    def sample(self, model, seed: int):
        ref = self.m.reference
        return ksample(model, self.m, steps=20, cfg=self.cfg, sampler=ref["sampler"], scheduler=ref["scheduler"],
                       noise=self.m.noise(1, seed=seed), positive=self.m.conditioning(seed % len(self.m.classes)),
                       negative=self.m.empty())

    def run(self, model, seed: int) -> tuple:
        """(latent, block rows) of one seed."""
        with self.counter:
            self.counter.rows = 0
            out = self.sample(model, seed)
        return out, self.counter.rows


@pytest.fixture(scope="module")
def benches(pack):
    made: dict[tuple[str, float], Bench] = {}
    yield lambda family, cfg: made.setdefault((family, cfg), Bench(pack, family, cfg))
    for b in made.values():
        b.ctx.close()


@pytest.mark.parametrize("cfg", [1.0, 3.5])
@pytest.mark.parametrize("family", trained_models.FAMILIES)
@pytest.mark.parametrize("method", METHODS, ids=[m.key for m in METHODS])
def test_recommended_setting_keeps_30_db_and_saves_work(benches, method, family, cfg):
    run_log = sys.modules["dit_cache.hosts.comfy.run_log"]
    bench = benches(family, cfg)
    cls = bench.ctx.classes[method.node_id]
    prepared = method.prepared(bench.ctx) if method.prepared else {}
    inputs = sweep.node_inputs(cls, {**method.recommended_for(family), **prepared})
    patched = cls.execute(bench.m.patcher, **inputs).result[0]
    scores, rows, reused = [], 0, 0
    for s in SEEDS:
        run_log.clear()
        out, n = bench.run(patched, s)
        scores.append(psnr(out, bench.reference[s][0]))
        rows += n
        rec = run_log.last() or {}
        reused += sum(rt[0] for rt in rec.get("reuse", {}).values())
    uncached_rows = sum(bench.reference[s][1] for s in SEEDS)
    mean = sum(min(q, 100.0) for q in scores) / len(scores)
    shown = {k: v for k, v in inputs.items() if k in method.recommended_for(family) or k == method.knob}
    log.info("trained %s cfg %g, %s %s: PSNR mean %.1f dB (min %.1f), block work %d/%d, reused %d",
             family, cfg, method.key, shown, mean, min(scores), rows, uncached_rows, reused)
    assert mean >= BAR_DB, f"{method.key} {shown}: mean PSNR {mean:.1f} dB over seeds {SEEDS} ({scores})"
    assert rows < uncached_rows or reused > 0, f"{method.key} {shown} saved no work ({rows}/{uncached_rows})"
