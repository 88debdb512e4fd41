"""Block layouts of the model families, as data.

A layout says which ModuleLists of a diffusion model hold its transformer blocks, in execution order, which
streams each block returns (``img`` = image/video tokens, ``txt`` = text tokens) and which stream the
decision metrics read. Methods only ever see a layout, never a model name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable


@dataclass(frozen=True)
class Segment:
    """One run of blocks of the same kind, executed in order.

    ``kind`` is the host's key for these blocks (ComfyUI: the ``patches_replace["dit"]`` name such as
    ``"double_block"``); ``attr`` the attribute holding the ``nn.ModuleList``; ``outputs`` the streams a block
    returns. For hosts that call blocks positionally (diffusers), ``inputs`` maps each stream to the block's
    forward parameter name and ``returns`` lists the streams in the order of the returned tuple (one name:
    the block returns a single tensor).
    """

    kind: str
    attr: str
    outputs: tuple[str, ...]
    inputs: dict[str, str] = field(default_factory=dict)
    returns: tuple[str, ...] = ()


@dataclass(frozen=True)
class BlockLayout:
    """How one model family's blocks are laid out (see :class:`Segment`)."""

    family: str
    class_names: tuple[str, ...]  # diffusion-model classes (own name or a base's) this layout describes
    segments: tuple[Segment, ...]
    hidden: str = "img"  # stream the decision metrics read
    mechanism: str = "patches_replace"  # ComfyUI: "patches_replace" (dit) or "object_patch" (block lists)

    def __post_init__(self) -> None:
        if not self.segments:
            raise ValueError(f"layout {self.family!r} has no segments")
        for seg in self.segments:
            if self.hidden not in seg.outputs:
                raise ValueError(f"layout {self.family!r}: segment {seg.attr!r} does not return {self.hidden!r}")


_DOUBLE_SINGLE = (
    Segment("double_block", "double_blocks", ("img", "txt")),
    Segment("single_block", "single_blocks", ("img",)),
)

# ComfyUI's diffusion-model classes (comfy.ldm.*), matched by class name along the MRO.
COMFY_LAYOUTS: tuple[BlockLayout, ...] = (
    BlockLayout("flux", ("Flux",), _DOUBLE_SINGLE),
    BlockLayout("chroma", ("Chroma",), _DOUBLE_SINGLE),
    BlockLayout("wan", ("WanModel",), (Segment("double_block", "blocks", ("img",)),)),
    BlockLayout("qwen_image", ("QwenImageTransformer2DModel",),
                (Segment("double_block", "transformer_blocks", ("img", "txt")),)),
)

_DIFFUSERS_MMDIT = ("hidden_states", "encoder_hidden_states")

# diffusers transformers (diffusers.models.transformers.*).
DIFFUSERS_LAYOUTS: tuple[BlockLayout, ...] = (
    BlockLayout(
        "flux",
        ("FluxTransformer2DModel",),
        (
            Segment("double", "transformer_blocks", ("img", "txt"),
                    inputs=dict(zip(("img", "txt"), _DIFFUSERS_MMDIT)), returns=("txt", "img")),
            Segment("single", "single_transformer_blocks", ("img", "txt"),
                    inputs=dict(zip(("img", "txt"), _DIFFUSERS_MMDIT)), returns=("txt", "img")),
        ),
    ),
    BlockLayout(
        "wan",
        ("WanTransformer3DModel",),
        (Segment("block", "blocks", ("img",), inputs={"img": "hidden_states"}, returns=("img",)),),
    ),
)


def layout_for_class_names(names: Iterable[str], layouts: Iterable[BlockLayout]) -> BlockLayout | None:
    """The layout of the first class name (most derived first) that a layout lists, or None."""
    layouts = tuple(layouts)
    for name in names:
        for layout in layouts:
            if name in layout.class_names:
                return layout
    return None


def layout_for_module(module: object, layouts: Iterable[BlockLayout]) -> BlockLayout | None:
    """The layout for ``module``'s class or its nearest base class that has one."""
    return layout_for_class_names((c.__name__ for c in type(module).__mro__), layouts)
