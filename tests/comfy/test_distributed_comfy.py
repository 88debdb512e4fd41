"""Several ranks, one decision (cache_core/distributed.py, docs/multi-gpu.md): the tiny Flux sampled by ComfyUI on 2
and 4 gloo CPU processes under sequence parallelism (each rank its token shard, attention global through ComfyUI's
attention override), CFG parallelism (rank 0 the positive, rank 1 the negative branch) and both at once (2 x 2),
with every data-dependent method (tests/support/parallel_comfy.py). Every rank must take the same decision on every
call, and the decisions and the gathered output must be those of the single-process cached run. A hang fails the
test (each launch has a hard timeout)."""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import parallel_comfy
import tiny_models

log = logging.getLogger("dit_cache")

LAUNCH_TIMEOUT_S = 900  # the whole launch: every rank imports ComfyUI and samples 8 runs
# name -> (processes, CFG groups)
SETUPS = {"sp2": (2, 1), "sp4": (4, 1), "cfg2": (2, 2), "cfg2_sp2": (4, 2)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world: int, cfg_degree: int, out: Path) -> list[dict]:
    """Run every rank as its own process; kill them all and fail if any hangs or fails."""
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs, logs = [], []
    for rank in range(world):
        config = {"rank": rank, "world": world, "cfg_degree": cfg_degree, "port": port, "out": str(out),
                  "timeout": LAUNCH_TIMEOUT_S}
        logs.append(open(out / f"rank{rank}.log", "w"))
        procs.append(subprocess.Popen([sys.executable, parallel_comfy.__file__, json.dumps(config)],
                                      stdout=logs[-1], stderr=subprocess.STDOUT, env=env))
    try:
        for p in procs:
            p.wait(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{world} ranks did not finish in {LAUNCH_TIMEOUT_S} s (a hang?); logs in {out}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs:
            f.close()
    for rank, p in enumerate(procs):
        assert p.returncode == 0, f"rank {rank} failed:\n{(out / f'rank{rank}.log').read_text()[-4000:]}"
    return [torch.load(out / f"rank{r}.pt") for r in range(world)]


@pytest.fixture(scope="module")
def reference(pack):
    """The single-process cached runs (no group: the behaviour every rank must reproduce)."""
    tiny = tiny_models.build("flux")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return parallel_comfy.run_cases(pack, tiny, tiny.patcher)
    finally:
        torch.set_num_threads(threads)


_launched: dict[str, list[dict]] = {}


@pytest.fixture(params=list(SETUPS))
def ranks(request, tmp_path_factory) -> tuple[str, list[dict]]:
    name = request.param
    if name not in _launched:
        _launched[name] = _launch(*SETUPS[name], tmp_path_factory.mktemp(name))
    return name, _launched[name]


def _by_call(decisions: list) -> dict[tuple[str, int], tuple]:
    return {(stream, index): (skipped, reason, metric) for stream, index, skipped, reason, metric in decisions}


@pytest.mark.parametrize("case", parallel_comfy.CASES)
def test_every_rank_takes_the_single_process_decisions(ranks, reference, case):
    name, results = ranks
    expected = _by_call(reference[case]["decisions"])
    assert any(skipped for skipped, _, _ in expected.values()), f"{case}: the reference never skips"
    skipped_per_call: list[dict[int, bool]] = []
    for rank, result in enumerate(results):
        got = _by_call(result[case]["decisions"])
        assert got, f"{name} rank {rank} {case}: no decisions recorded"
        for key, (skipped, reason, metric) in got.items():
            want = expected[key]
            assert (skipped, reason) == want[:2], f"{name} rank {rank} {case} {key}: {skipped, reason} != {want[:2]}"
            if metric is None or want[2] is None:
                assert metric == want[2], f"{name} rank {rank} {case} {key}: metric {metric} != {want[2]}"
            else:
                assert metric == pytest.approx(want[2], rel=1e-4, abs=1e-7), f"{name} rank {rank} {case} {key}"
        skipped_per_call.append({index: skipped for (_, index), (skipped, _, _) in got.items()})
    # the same decision on every rank, call by call (under CFG parallelism the ranks hold different streams)
    assert all(s == skipped_per_call[0] for s in skipped_per_call), f"{name} {case}: ranks decided differently"
    streams = {stream for r in results for stream, *_ in r[case]["decisions"]}
    assert streams == {"cond", "uncond"}


@pytest.mark.parametrize("case", parallel_comfy.CASES)
def test_gathered_output_equals_the_single_process_run(ranks, reference, case):
    name, results = ranks
    want = reference[case]["latent"]
    for rank, result in enumerate(results):
        got = result[case]["latent"]
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), \
            f"{name} rank {rank} {case}: max |diff| {(got - want).abs().max().item():.3g}"


def test_calibration_is_the_single_process_one(ranks, reference):
    name, results = ranks
    for rank, result in enumerate(results):
        got, want = result["magcache_calibration"], reference["magcache_calibration"]
        assert sorted(got) == sorted(want)
        for k in want:
            assert torch.allclose(got[k], want[k], rtol=1e-4), f"{name} rank {rank}: {k} {got[k]} != {want[k]}"


# observation collectives: policies that reduce what they observe on computed calls
_OBSERVES = {"adaptive", "adacache"}


def test_collective_cost_per_model_call(ranks):
    """One all_reduce per model call (plus one for the joint vote where streams are split over ranks and the gate
    forces nothing, plus one per computed call for methods that observe data); logged as the measured cost."""
    name, results = ranks
    world, cfg_degree = SETUPS[name]
    for case in parallel_comfy.CASES:
        costs = {json.dumps(r[case]["details"]["decision_group"], sort_keys=True) for r in results}
        assert len(costs) == 1, f"{name} {case}: ranks paid different costs {costs}"
        cost = results[0][case]["details"]["decision_group"]
        records = results[0][case]["decisions"]
        calls = len({index for _, index, *_ in records})
        computed = len({index for _, index, skipped, *_ in records if not skipped})
        assert cost["ranks"] == world
        low = calls + (computed if case in _OBSERVES else 0)
        high = low + (calls if cfg_degree > 1 else 0)
        assert low <= cost["collectives"] <= high, f"{name} {case}: {cost} for {calls} calls, {computed} computed"
        log.info("[dit-cache] %s %s: %d model calls (%d computed): %d all_reduce calls, %d bytes per rank "
                 "(%.1f calls, %.0f bytes per call)", name, case, calls, computed, cost["collectives"],
                 cost["bytes"], cost["collectives"] / calls, cost["bytes"] / calls)
