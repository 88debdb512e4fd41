"""ComfyUI's TorchCompileModel before and after a cache node: the same decisions and outputs as the uncompiled cached
run, and no recompilation per step (torch._dynamo's counters: graphs are compiled on the first calls of a shape,
the computed and the skipped path, then never again in that run or the next).

The compiled forward runs the cache's block patches inside dynamo: the decision's ``.item()`` and the run state are
graph breaks, so the blocks between breaks are compiled and the bookkeeping runs eagerly. Dynamo's "eager" backend
traces exactly as inductor does (same graphs, guards and recompiles) without inductor's code generation, which takes
minutes on a 2-core CPU: the order and model checks use it, one check runs the TorchCompileModel node with inductor.
"""
from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
import torch._dynamo
from comfy_api.torch_helpers import set_torch_compile_wrapper
from comfy_extras.nodes_torch_compile import TorchCompileModel
from torch._dynamo.utils import counters

import methods_registry
import tiny_models
from sampling import ksample

from dit_cache.hosts.comfy import run_log

log = logging.getLogger("dit_cache.tests")

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 10


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()
    counters.clear()


def _compiled(model: Any, backend: str) -> Any:
    if backend == "inductor":
        return TorchCompileModel.execute(model, "inductor").result[0]  # the node, as a graph uses it
    m = model.clone()
    set_torch_compile_wrapper(model=m, backend=backend)  # what the node does, with dynamo's eager backend
    return m


def _cached(model: Any, family: str, method: str) -> Any:
    return methods_registry.METHODS[method].apply(model, "mild", family)


def _run(model: Any, tiny: Any) -> tuple[torch.Tensor, list[bool], list[int]]:
    """Output, per-call skip decisions and the graphs compiled so far after each step."""
    graphs: list[int] = []
    out = ksample(model, tiny, steps=STEPS, cfg=1.0,  # one stream: one decision per step
                  callback=lambda *a: graphs.append(counters["stats"]["unique_graphs"]))
    return out, [r["skipped"] for r in run_log.last()["records"]], graphs


def _check(tiny: Any, family: str, method: str, order: str, backend: str, atol: float) -> None:
    ref, ref_decisions, _ = _run(_cached(tiny.patcher, family, method), tiny)
    assert any(ref_decisions)
    if order == "compile_then_cache":
        model = _cached(_compiled(tiny.patcher, backend), family, method)
    else:
        model = _compiled(_cached(tiny.patcher, family, method), backend)
    out, decisions, graphs = _run(model, tiny)
    assert decisions == ref_decisions
    assert torch.allclose(out, ref, atol=atol, rtol=atol), (out - ref).abs().max()
    assert graphs[0] > 0  # it did compile
    # graphs are compiled the first time each path of the runner is taken (computed call, first skip, computed
    # after a skip, ...: a bounded set of guard variants, dynamo's recompile_limit caps each frame); a step that
    # takes paths seen before compiles nothing
    seen: set[tuple] = set()
    for k in range(1, STEPS):
        path = tuple(decisions[max(0, k - 2):k + 1])
        if path in seen:
            assert graphs[k] == graphs[k - 1], (k, graphs, decisions)
        seen.add(path)
    again, decisions2, graphs2 = _run(model, tiny)  # a second run of the same model: nothing new to compile
    assert decisions2 == ref_decisions and torch.equal(again, out)
    assert graphs2 == [graphs[-1]] * STEPS, (graphs, graphs2)
    log.info("torch.compile %s %s %s (%s): graphs per step %s, max |diff| %.2e", backend, order, method, family,
             graphs, (out - ref).abs().max().item())


@pytest.mark.parametrize("order", ("compile_then_cache", "cache_then_compile"))
@pytest.mark.parametrize("family,method", (("flux", "fbc"), ("wan21", "taylorseer"), ("sd3", "fbc")))
def test_orders_same_decisions_no_recompile(family, method, order):
    _check(tiny_models.build(family), family, method, order, "eager", atol=1e-5)


def test_torch_compile_node_inductor():
    """The TorchCompileModel node (inductor) after First Block Cache on a tiny Flux: outputs within float tolerance
    (inductor fuses and reorders arithmetic), the same decisions, graphs compiled once."""
    _check(tiny_models.build("flux"), "flux", "fbc", "cache_then_compile", "inductor", atol=1e-3)
