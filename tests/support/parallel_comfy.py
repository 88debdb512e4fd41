"""One rank of a multi-process run of the tiny Flux through ComfyUI's sampler, for tests/comfy/test_distributed_comfy.py.

Run as ``python tests/support/parallel_comfy.py '<json>'`` (keys: rank, world, cfg_degree, port, out) on the gloo
backend, or import :func:`run_cases` for the single-process reference. Ranks are ``cfg_degree`` CFG groups of
``world / cfg_degree`` sequence-parallel ranks each:

- sequence parallelism, the way xDiT's USP (raylight) shards a ComfyUI Flux: a ``post_input`` patch (ComfyUI's
  hook after the input projections) keeps this rank's contiguous chunk of the text and image tokens (and their
  position ids); ComfyUI's attention override (``transformer_options["optimized_attention_override"]``) gathers the
  keys and values of every rank of the sequence group, so each rank's queries attend to every token (softmax does
  not depend on the keys' order); an object patch of ``final_layer`` gathers the output tokens back in order;
- CFG parallelism: a CALC_COND_BATCH wrapper hands this rank's CFG group only its branch (rank group 0 the
  positive, 1 the negative: the other entry None, so ComfyUI labels the call's stream "cond" / "uncond") and
  gathers both branches' results over the CFG group.

Every case samples the same model with one cache node on top and the decision group set; the rank saves its
per-call decisions, final latent and the run's collective cost to ``<out>/rank<r>.pt``.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch

SUPPORT = Path(__file__).resolve().parent
STEPS = 10
CFG = 2.0  # cond and uncond: two streams per call (one per rank group under CFG parallelism)
# the methods whose decisions read data, at the support matrix's aggressive setting (tests/support/methods_registry.py)
CASES = ("fbc", "dbcache", "teacache", "adaptive", "seacache", "adacache", "magcache", "taylorseer_checked")


def _taylorseer_checked(model: Any, setting: str, family: str) -> Any:
    """TaylorSeer whose predictions are checked against the first block (its error decides, reduced per group)."""
    from dit_cache.nodes.taylorseer_node import ApplyTaylorSeer

    return ApplyTaylorSeer.execute(model, cache_interval=4, warmup_steps=2, final_full_steps=0, max_order=1,
                                   predict="block outputs", factor_dtype="float32", forecaster="taylor",
                                   check_blocks=1, check_threshold=0.3, uncond_interval=0).result[0]


EXTRA_CASES = {"taylorseer_checked": _taylorseer_checked}  # cases that are no support-matrix setting


def _gather(t: torch.Tensor, dim: int, group: Any) -> torch.Tensor:
    import torch.distributed as dist

    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


class _GatherTokens(torch.nn.Module):
    """Stands in for ``final_layer``: its output tokens gathered over the sequence group, in rank order."""

    def __init__(self, inner: torch.nn.Module, group: Any) -> None:
        super().__init__()
        self.inner, self.group = inner, group

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return _gather(self.inner(*args, **kwargs), 1, self.group)


def sequence_parallel(model: Any, group: Any) -> Any:
    """A clone of a ComfyUI Flux ModelPatcher that runs this rank's token shard with global attention."""
    import torch.distributed as dist

    rank, size = dist.get_rank(group), dist.get_world_size(group)
    m = model.clone()

    def shard(args: dict) -> dict:
        return {k: args[k].chunk(size, dim=1)[rank] for k in ("img", "txt", "img_ids", "txt_ids")}

    def attention(func: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any, **kwargs: Any):
        dim = 2 if kwargs.get("skip_reshape") else 1  # (batch, heads, tokens, dim) or (batch, tokens, heads x dim)
        return func(q, _gather(k, dim, group), _gather(v, dim, group), *args, **kwargs)

    m.set_model_patch(shard, "post_input")
    m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = attention
    m.add_object_patch("diffusion_model.final_layer", _GatherTokens(m.get_model_object("diffusion_model.final_layer"),
                                                                    group))
    return m


def cfg_parallel(model: Any, branch: int, group: Any) -> Any:
    """A clone that computes only CFG branch ``branch`` (0 positive, 1 negative) and gathers the other over ``group``."""
    from comfy.patcher_extension import WrappersMP

    def split(executor: Any, model_: Any, conds: list, x_in: torch.Tensor, timestep: torch.Tensor, options: dict):
        if len(conds) != 2 or conds[1] is None:
            return executor(model_, conds, x_in, timestep, options)
        mine = [c if i == branch else None for i, c in enumerate(conds)]
        out = executor(model_, mine, x_in, timestep, options)
        return list(_gather(out[branch].unsqueeze(0), 0, group).unbind(0))

    m = model.clone()
    m.add_wrapper_with_key(WrappersMP.CALC_COND_BATCH, "test_cfg_parallel", split)
    return m


def run_cases(pack: Any, tiny: Any, model: Any) -> dict[str, Any]:
    """Every case on ``model``: per case the per-call decisions, the final latent and the run's details."""
    import methods_registry
    from safetensors.torch import load_file
    from sampling import ksample

    run_log = pack.hosts.comfy.run_log
    results: dict[str, Any] = {}
    for case in CASES:
        apply = EXTRA_CASES.get(case) or methods_registry.METHODS[case].apply
        cached = apply(model, "aggressive", "flux")
        run_log.clear()
        latent = ksample(cached, tiny, steps=STEPS, cfg=CFG)
        run = run_log.last()
        results[case] = {
            "decisions": [(r["stream"], r["call_index"], r["skipped"], r["reason"], r["metric"])
                          for r in run["records"]],
            "latent": latent,
            "details": run["details"],
        }
    name = methods_registry._calibrations[(id(model.model), "MagCache")]
    ratios = load_file(os.path.join(methods_registry._calibration_dir[0], name))
    results["magcache_calibration"] = {k: v for k, v in ratios.items() if k.startswith("ratios.")}
    return results


def main(config: dict[str, Any]) -> None:
    sys.path.insert(0, str(SUPPORT))
    import comfy_env

    comfy_env.setup_comfy()
    pack = comfy_env.load_pack()
    import torch.distributed as dist

    import tiny_models

    torch.set_num_threads(1)
    rank, world, cfg_degree = config["rank"], config["world"], config["cfg_degree"]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{config['port']}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=config.get("timeout", 120)))
    sp_size = world // cfg_degree
    # every rank creates every group (torch.distributed's rule), then keeps its own
    sp_groups = [dist.new_group(list(range(c * sp_size, (c + 1) * sp_size))) for c in range(cfg_degree)]
    cfg_groups = [dist.new_group(list(range(s, world, sp_size))) for s in range(sp_size)]
    branch, sp_rank = divmod(rank, sp_size)
    tiny = tiny_models.build("flux")
    model = tiny.patcher
    if sp_size > 1:
        model = sequence_parallel(model, sp_groups[branch])
    if cfg_degree > 1:
        model = cfg_parallel(model, branch, cfg_groups[sp_rank])
    model = pack.hosts.comfy.patch.set_decision_group(model, "world")
    results = run_cases(pack, tiny, model)
    torch.save(results, Path(config["out"]) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
