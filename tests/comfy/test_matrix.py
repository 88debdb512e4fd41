"""The support matrix: every method (tests/support/methods_registry.py) x every DiT family and UNet model of the
host (tests/support/matrix_families.py), each a short real ComfyUI sample of a tiny real model.

Per cell: at least one skipped model call at the aggressive setting; finite and close to uncached (PSNR) at
the mild one; bit-identical when disabled; the input model unchanged afterwards (object patches undone).
A family a method cannot apply to must be refused with a warning and the model returned unchanged.
The results go to tests/out/matrix.json and the matrix in docs/support-matrix.md must equal the table
rendered from them.

Two columns check the rest of the stack on covering subsets (every family and every method at least once; the
0.3.75 host only: 0.8.0 replaced scaled_fp8_ops by mixed-precision ops): "quantized / custom-op weights" (the
tiny model with fp8-scaled ComfyUI operations, and with int8 custom operations as GGUF loaders pass them: skips at
the aggressive setting, mild within the method's PSNR bar of the uncached quantized run) and "torch.compile"
(ComfyUI's TorchCompileModel wrapper, dynamo's eager backend, applied after the cache node: the same decisions
as the uncompiled cached run, output within float tolerance).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import comfy_env
import matrix_families
import tiny_models
from matrix_families import ROWS, Row
from methods_registry import METHODS, Method
from metrics import psnr
from sampling import ksample

from dit_cache.cache_core.layout import COMFY_LAYOUTS
from dit_cache.hosts.comfy import run_log

ROOT = Path(__file__).resolve().parents[2]
RESULTS_FILE = ROOT / "tests" / "out" / "matrix.json"
TESTED = [r for r in ROWS if r.tiny]
ALL_CELLS = [(m, r) for m in METHODS for r in TESTED]


def covering_cells(uses: dict[str, int] | None = None, taken: set | None = None) -> list[tuple[str, Row]]:
    """One cell per family, each taking the applicable method used least so far (rows with the fewest
    applicable methods first), then one for any method still unused: every family and every method at least
    once. The compatibility subset a second host runs (comfy_env.COMPAT). ``uses`` (method key -> cells so far)
    and ``taken`` ((method key, row key) cells so far), both updated: a further covering gives each family a
    method it has not had yet where it can, then the method used least."""
    uses = dict.fromkeys(METHODS, 0) if uses is None else uses
    taken = set() if taken is None else taken
    before = dict(uses)
    cells = []

    def take(key: str, row: Row) -> None:
        uses[key] += 1
        taken.add((key, row.key))
        cells.append((key, row))

    for row in sorted(TESTED, key=lambda r: sum(m.applies_to(r.key) for m in METHODS.values())):
        fits = [k for k, m in METHODS.items() if m.applies_to(row.key)] or list(METHODS)
        take(min(fits, key=lambda k: ((k, row.key) in taken, uses[k])), row)
    for key in [k for k in METHODS if uses[k] == before[k]]:
        take(key, min((r for r in TESTED if METHODS[key].applies_to(r.key)), key=lambda r: (key, r.key) in taken))
    return sorted(cells, key=ALL_CELLS.index)


CELLS = covering_cells() if comfy_env.COMPAT else ALL_CELLS
_stack_uses: dict[str, int] = dict.fromkeys(METHODS, 0)
_stack_taken: set[tuple[str, str]] = set()
# three successive coverings: each family gets a different method in each where it has enough of them
STACK_CELLS = [] if comfy_env.COMPAT else [
    (column, kind, m, r) for column, kind in (("quantized", "fp8_scaled"), ("quantized", "int8_custom_ops"),
                                               ("torch_compile", "eager"))
    for m, r in covering_cells(_stack_uses, _stack_taken)]
RESULTS: dict[str, dict[str, dict]] = {}
assert not set(matrix_families.STACK_COLUMNS) & set(METHODS)

_models: dict[tuple[str, int, str], tiny_models.TinyModel] = {}


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(family: str, seed: int = 0, weights: str = "float") -> tiny_models.TinyModel:
    if (family, seed, weights) not in _models:
        _models[(family, seed, weights)] = tiny_models.build(family, seed=seed, weights=weights)
    return _models[(family, seed, weights)]


def _two_model_sample(high, low, tiny: tiny_models.TinyModel, cfg: float, steps: int = 20) -> torch.Tensor:
    """Wan 2.2 A14B as its workflows run it: two KSamplerAdvanced nodes, the high-noise model for the first
    half of the steps (leftover noise kept), the low-noise model for the rest (no new noise)."""
    import comfy.sample

    noise = tiny.noise(1)
    pos, neg = tiny.conditioning(1), tiny.conditioning(2)
    x = comfy.sample.sample(high, noise, steps, cfg, "euler", "simple", pos, neg, torch.zeros_like(noise),
                            start_step=0, last_step=steps // 2, force_full_denoise=False, seed=0, disable_pbar=True)
    return comfy.sample.sample(low, torch.zeros_like(noise), steps, cfg, "euler", "simple", pos, neg, x,
                               disable_noise=True, start_step=steps // 2, last_step=steps,
                               force_full_denoise=True, seed=0, disable_pbar=True)


def _compiled(model):
    """What ComfyUI's TorchCompileModel node does to a model, with dynamo's eager backend (the same graphs,
    guards and recompiles as inductor, without its code generation: tests/comfy/test_torch_compile_comfy.py)."""
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    m = model.clone()
    set_torch_compile_wrapper(model=m, backend="eager")
    return m


def _run_cell(method: Method, row: Row, setting: str | None, weights: str = "float",
              compiled: bool = False) -> tuple[torch.Tensor, list[dict]]:
    """Sample the row's model(s) with ``method`` at ``setting`` (None: uncached); the runs it logged.
    ``weights``: the tiny models' weight kind (tests/support/quant_weights.py); ``compiled``: TorchCompileModel
    after the cache node."""
    run_log.clear()
    tiny = _tiny(row.tiny, weights=weights)
    cfg = tiny.spec.cfg
    models = [tiny.patcher] + ([_tiny(row.tiny, seed=1, weights=weights).patcher] if row.two_models else [])
    if setting is not None:
        models = [method.apply(m, setting, row.tiny) for m in models]
    if compiled:
        models = [_compiled(m) for m in models]
    out = _two_model_sample(*models, tiny, cfg) if row.two_models else ksample(models[0], tiny, cfg=cfg)
    return out, run_log.recent()


def _skipped_work(run: dict) -> int:
    """Skipped model calls, plus reused attention / unconditional-branch computations (attention-level methods)."""
    return run["skipped_calls"] + sum(reused for reused, _ in run.get("reuse", {}).values())


@pytest.mark.parametrize("method_key,row", CELLS, ids=[f"{m}-{r.key}" for m, r in CELLS])
def test_method_on_family(method_key: str, row: Row, caplog) -> None:
    method = METHODS[method_key]
    result: dict = {"status": "fail"}
    RESULTS.setdefault(method_key, {})[row.key] = result
    if not method.applies_to(row.key):
        # refused: a warning and the model itself back, or a ValueError from the node (before sampling)
        tiny = _tiny(row.tiny)
        try:
            with caplog.at_level(logging.WARNING, logger="dit_cache"):
                out = method.apply(tiny.patcher, "aggressive", row.tiny)
            message = caplog.text
            assert out is tiny.patcher, f"{method.name} must return {row.name} unchanged"
        except ValueError as e:
            message = str(e)
        assert method.name.split()[0].lower() in message.lower(), f"unclear refusal: {message!r}"
        assert not tiny.patcher.object_patches and "dit_cache" not in tiny.patcher.model_options.get(
            "transformer_options", {})
        result["status"] = "not_applicable"
        return

    ref, _ = _run_cell(method, row, None)
    expected_runs = 2 if row.two_models else 1

    out, runs = _run_cell(method, row, "aggressive")
    assert len(runs) == expected_runs and all(r["completed"] for r in runs), runs
    skipped = [_skipped_work(r) for r in runs]
    calls = [r["calls"] for r in runs]
    assert all(s > 0 for s in skipped), f"{method.name} on {row.name}: no skip at the aggressive setting {runs}"
    assert torch.isfinite(out).all()
    if row.two_models:  # each model has its own state: two runs, two specs
        assert len({r["spec_id"] for r in runs}) == 2

    out, runs = _run_cell(method, row, "mild")
    assert torch.isfinite(out).all()
    quality = psnr(out, ref)
    assert quality >= method.mild_min_psnr, f"{method.name} on {row.name}: PSNR {quality:.1f} dB at mild"
    mild_skipped = [_skipped_work(r) for r in runs]

    out, _ = _run_cell(method, row, "disabled")
    assert torch.equal(out, ref), f"{method.name} on {row.name}: not bit-identical when disabled"
    again, _ = _run_cell(method, row, None)
    assert torch.equal(again, ref), f"{row.name}: the input model was changed by applying {method.name}"

    result.update(status="pass", aggressive_skipped=skipped, calls=calls, mild_skipped=mild_skipped,
                  mild_psnr=None if math.isinf(quality) else round(quality, 1))


@pytest.mark.parametrize("column,kind,method_key,row", STACK_CELLS,
                         ids=[f"{c}-{k}-{m}-{r.key}" for c, k, m, r in STACK_CELLS])
def test_stack_column(column: str, kind: str, method_key: str, row: Row) -> None:
    """A cell of the quantized-weights or the torch.compile column (module docstring)."""
    method = METHODS[method_key]
    result: dict = {"status": "fail", "method": method_key}
    RESULTS.setdefault(column, {}).setdefault(row.key, {})[kind] = result
    expected_runs = 2 if row.two_models else 1
    if column == "quantized":
        ref, _ = _run_cell(method, row, None, weights=kind)
        out, runs = _run_cell(method, row, "aggressive", weights=kind)
        assert len(runs) == expected_runs and all(r["completed"] for r in runs), runs
        skipped = [_skipped_work(r) for r in runs]
        assert all(s > 0 for s in skipped), f"{method.name} on {row.name} ({kind}): no skip at aggressive {runs}"
        assert torch.isfinite(out).all()
        out, runs = _run_cell(method, row, "mild", weights=kind)
        quality = psnr(out, ref)
        assert torch.isfinite(out).all()
        assert quality >= method.mild_min_psnr, f"{method.name} on {row.name} ({kind}): PSNR {quality:.1f} dB"
        result.update(status="pass", aggressive_skipped=skipped, mild_skipped=[_skipped_work(r) for r in runs],
                      mild_psnr=None if math.isinf(quality) else round(quality, 1))
        return
    ref, ref_runs = _run_cell(method, row, "aggressive")
    torch._dynamo.reset()  # shared pack code: each cell starts below dynamo's recompile limit
    counters.clear()
    try:
        out, runs = _run_cell(method, row, "aggressive", compiled=True)
        graphs = counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()
        counters.clear()
    assert len(runs) == expected_runs and all(r["completed"] for r in runs), runs
    assert graphs > 0, "nothing was compiled"
    skipped = [_skipped_work(r) for r in runs]
    assert all(s > 0 for s in skipped), f"{method.name} on {row.name} compiled: no skip {runs}"
    decisions = [[r["skipped"] for r in run["records"]] for run in runs]
    assert decisions == [[r["skipped"] for r in run["records"]] for run in ref_runs], "decisions differ"
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5), (out - ref).abs().max()
    result.update(status="pass", aggressive_skipped=skipped, graphs=graphs,
                  max_abs_diff=float((out - ref).abs().max()))


DIT_ONLY = [k for k, m in METHODS.items() if not m.applies_to("sd15")]


@pytest.mark.parametrize("method_key", DIT_ONLY)
def test_unknown_model_is_returned_unchanged_with_a_warning(method_key: str, caplog) -> None:
    """An SD1.5 UNet is no DiT: every method without a UNet plan warns, naming the class, and returns the model
    itself."""
    model = tiny_models.build_sd15_unet()
    for setting in ("aggressive", "mild"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="dit_cache"):
            out = METHODS[method_key].apply(model, setting, "sd15")
        assert out is model
        assert "UNetModel" in caplog.text


OBJECT_PATCH_ROWS = [r for r in TESTED if r.layout != "unet" and next(
    lay for lay in COMFY_LAYOUTS if lay.family == r.layout).mechanism == "object_patch"]


@pytest.mark.parametrize("row", OBJECT_PATCH_ROWS, ids=[r.key for r in OBJECT_PATCH_ROWS])
def test_object_patched_block_lists(row: Row) -> None:
    """Families without patches_replace["dit"]: blocks routed through the swapped list give the same bits when
    nothing is skipped; the list keeps the modules' names, so a weight patch (what a LoRA does) still lands."""
    from dit_cache.nodes.fbc_node import ApplyFirstBlockCache

    tiny = _tiny(row.tiny)
    cfg = tiny.spec.cfg
    ref = ksample(tiny.patcher, tiny, cfg=cfg)
    never = ApplyFirstBlockCache.execute(tiny.patcher, threshold=1e-9, start_percent=0.0, end_percent=1.0,
                                         max_consecutive_skips=-1, warmup_steps=0).result[0]
    assert torch.equal(ksample(never, tiny, cfg=cfg), ref)
    run = run_log.last()
    assert run["skipped_calls"] == 0 and run["calls"] == 20
    assert all(r["metric"] is not None for r in run["records"] if r["call_index"] > 0)  # blocks went through us
    layout = next(lay for lay in COMFY_LAYOUTS if lay.family == row.layout)
    cached = METHODS["fbc"].apply(tiny.patcher, "aggressive", row.tiny)
    assert type(cached.get_model_object(f"diffusion_model.{layout.segments[0].attr}")).__name__ == "CachedBlockList"
    lora = cached.clone()
    key = next(k for k in lora.model_state_dict() if k.startswith(f"diffusion_model.{layout.segments[-1].attr}.1.")
               and k.endswith(".weight") and lora.get_model_object(k).ndim == 2)
    w = lora.get_model_object(key)
    lora.add_patches({key: (torch.ones_like(w) * 0.05,)}, 1.0)
    out_lora = ksample(lora, tiny, cfg=cfg)
    assert run_log.last()["skipped_calls"] > 0
    assert not torch.equal(out_lora, ksample(cached, tiny, cfg=cfg))
    assert torch.equal(ksample(tiny.patcher, tiny, cfg=cfg), ref)  # original lists restored on unpatch


def test_every_host_dit_family_has_a_row() -> None:
    """Each layout the pack ships is a matrix row, and each row's layout and ComfyUI class exist."""
    import comfy.supported_models

    layouts = {lay.family for lay in COMFY_LAYOUTS}
    assert layouts <= {r.layout for r in ROWS}
    for r in ROWS:
        if r.layout == "unet":
            assert r.key in matrix_families.UNET_ROWS and hasattr(comfy.supported_models, r.comfy_class), r
        elif r.layout is not None:
            assert r.layout in layouts, r
            assert hasattr(comfy.supported_models, r.comfy_class), r
        if r.tiny:
            assert r.tiny in tiny_models.FAMILIES, r
        else:
            assert r.reason, r


def rendered(results: dict) -> str:
    return matrix_families.render(results, {k: m.name for k, m in METHODS.items()},
                                  matrix_families.layout_columns(COMFY_LAYOUTS))


def _complete() -> bool:
    return all(r.key in RESULTS.get(m, {}) for m, r in ALL_CELLS) and all(
        k in RESULTS.get(c, {}).get(r.key, {}) for c, k, _, r in STACK_CELLS)


def test_results_file_is_written() -> None:
    """After a full matrix run: tests/out/matrix.json (read by scripts/gen_support_matrix.py)."""
    if not _complete():
        pytest.skip("only part of the matrix ran in this session")
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(RESULTS, indent=1, sort_keys=True) + "\n")
    assert json.loads(RESULTS_FILE.read_text()) == RESULTS


def test_support_matrix_doc_has_one_generated_block() -> None:
    """docs/support-matrix.md holds the generated block once (markers in order); README.md holds none and links
    to the doc. Needs no matrix run."""
    text = (ROOT / matrix_families.DOC).read_text()
    assert text.count(matrix_families.START) == 1 and text.count(matrix_families.END) == 1, \
        f"{matrix_families.DOC} must hold the support-matrix markers exactly once"
    assert matrix_families.doc_block(text) is not None, f"{matrix_families.DOC}: the markers are out of order"
    readme = (ROOT / "README.md").read_text()
    assert matrix_families.START not in readme and matrix_families.END not in readme, \
        "the generated matrix lives in docs/support-matrix.md, not in README.md"
    assert matrix_families.DOC in readme, f"README.md does not link to {matrix_families.DOC}"


def test_support_matrix_doc_matches_results() -> None:
    """docs/support-matrix.md's matrix is exactly what scripts/gen_support_matrix.py renders from this run's
    results."""
    if not _complete():
        pytest.skip("only part of the matrix ran in this session")
    block = matrix_families.doc_block((ROOT / matrix_families.DOC).read_text())
    assert block is not None, f"{matrix_families.DOC} lacks the support-matrix markers"
    assert block == rendered(RESULTS), f"{matrix_families.DOC} matrix is stale: run scripts/gen_support_matrix.py"
