"""UNet models (ComfyUI's ``UNetModel``: SD1.5, SD2, SDXL) through the shared core, without touching their forward.

``UNetModel._forward`` runs every input block, the middle block and every output block through
``forward_timestep_embed(block, h, emb, context, transformer_options, ...)``, which iterates the block
(``for layer in block``) and calls each layer with what its class takes. Each block is replaced, with
``ModelPatcher.add_object_patch`` on ``diffusion_model.input_blocks.<k>`` / ``middle_block`` /
``output_blocks.<k>`` (undone by ComfyUI on unpatch), by a :class:`UNetBlockProxy`: a ``TimestepEmbedSequential``
sharing the block's submodules (same weight names for LoRA patches, casting and offloading). While a run of
its own patched model is active, iterating the proxy yields a marker that receives the block's input, asks the
run's :class:`~cache_core.unet_runner.UNetCacheRunner` whether the block runs, then either the block's own
layers followed by a marker that hands the output to the runner, or one layer returning the runner's stand-in
(a placeholder of the right shape, or the cached feature). The forward itself (skip stack, ControlNet,
``input_block_patch`` / ``output_block_patch``, FreeU) runs unchanged around it.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import TimestepEmbedSequential, UNetModel

from ...cache_core.unet_runner import INPUT, MIDDLE, OUTPUT, UNetCacheRunner
from .keys import ACTIVE


def is_unet(dm: Any) -> bool:
    return isinstance(dm, UNetModel)


def unet_blocks(dm: Any) -> list[tuple[str, int, int]]:
    """(attribute path under the diffusion model, segment, index) of every block, in execution order."""
    blocks = [(f"input_blocks.{k}", INPUT, k) for k in range(len(dm.input_blocks))]
    if dm.middle_block is not None:
        blocks.append(("middle_block", MIDDLE, 0))
    return blocks + [(f"output_blocks.{k}", OUTPUT, k) for k in range(len(dm.output_blocks))]


def block_counts(dm: Any) -> list[int]:
    """(input, middle, output) block counts."""
    return [len(dm.input_blocks), int(dm.middle_block is not None), len(dm.output_blocks)]


def attach_blocks(m: Any, spec_id: str) -> None:
    """Object-patch every block of the clone ``m``'s UNet with a proxy (an earlier clone's proxy is unwrapped)."""
    dm = m.get_model_object("diffusion_model")
    for path, segment, index in unet_blocks(dm):
        key = f"diffusion_model.{path}"
        block = m.get_model_object(key)
        while isinstance(block, UNetBlockProxy):
            block = block.dit_cache_inner
        m.add_object_patch(key, UNetBlockProxy(block, segment, index, spec_id))


class _Entry:
    """First layer yielded on a cached run: keeps the block's input, returns it unchanged."""

    x: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.x = x
        return x


class _StandIn:
    """The one layer of a skipped block: returns the runner's stand-in, whatever it is given."""

    def __init__(self, value: torch.Tensor) -> None:
        self.value = value

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.value


class _Exit:
    """Last layer yielded after a block's own layers: hands the block's output to the runner."""

    def __init__(self, runner: UNetCacheRunner, segment: int, index: int) -> None:
        self.runner, self.segment, self.index = runner, segment, index

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner.exit(self.segment, self.index, x)


class UNetBlockProxy(TimestepEmbedSequential):
    """Stands in for one UNet block (see the module docstring). Indexing, ``len`` and the module tree are the
    block's own; only iteration during a run of the patched model goes through the runner."""

    def __init__(self, block: TimestepEmbedSequential, segment: int, index: int, spec_id: str) -> None:
        torch.nn.Module.__init__(self)
        object.__setattr__(self, "dit_cache_inner", block)  # not a submodule: no second path to the weights
        self._parameters, self._buffers, self._modules = block._parameters, block._buffers, block._modules
        self.segment, self.index, self.spec_id = segment, index, spec_id
        # transformer layers in the block: a skipped block still advances transformer_options["transformer_index"]
        # (attention patches such as IPAdapter's are keyed on it)
        self.transformers = sum(isinstance(layer, SpatialTransformer) for layer in block)

    def __iter__(self) -> Iterator[Any]:
        active = ACTIVE.get()
        if active is None or active[0] != self.spec_id or not isinstance(active[1], UNetCacheRunner):
            return iter(self.dit_cache_inner)
        return self._through(active[1], active[2])

    def _through(self, runner: UNetCacheRunner, t_opts: dict) -> Iterator[Any]:
        entry = _Entry()
        yield entry  # forward_timestep_embed calls it with the block's input before asking for the next layer
        stand_in = runner.enter(self.segment, self.index, entry.x)
        if stand_in is not None:
            if self.transformers and "transformer_index" in t_opts:
                t_opts["transformer_index"] += self.transformers
            yield _StandIn(stand_in)
            return
        yield from self.dit_cache_inner
        yield _Exit(runner, self.segment, self.index)
