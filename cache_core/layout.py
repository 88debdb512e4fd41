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
    # Where the first block's hidden tokens sit in these blocks' hidden stream when the host joined other
    # tokens to it: "all" (not joined), "last" (ComfyUI Flux/Chroma single blocks get cat(txt, img)) or
    # "first" (HunyuanVideo: cat(img, txt)). Whole-stack residuals (MagCache calibration) take those tokens.
    hidden_tokens: str = "all"
    # Attention-level caching (PAB, FasterCache): the kind of each attention a block of this segment runs.
    # ComfyUI host: kinds in call order ("spatial" = self/joint attention, "cross" = text cross-attention,
    # "temporal"); further calls in the same block take the last kind (Wan I2V's cross-attention makes two).
    # diffusers host: (module attribute, kind) pairs naming the block's attention modules.
    attention: tuple[str, ...] = ()
    attention_modules: tuple[tuple[str, str], ...] = ()
    # Component-level caching (SmoothCache): dotted paths, inside one block, of its feed-forward modules (each
    # is hooked as an "ffn" component; a block lacking a path, e.g. SD3's last context block, has none there).
    # Empty where the block fuses its MLP with the attention projections (Flux single blocks).
    ffn: tuple[str, ...] = ()


@dataclass(frozen=True)
class BlockLayout:
    """How one model family's blocks are laid out (see :class:`Segment`)."""

    family: str
    # diffusion-model classes (own name or a base's; "module.QualName" where two hosts' classes share a name)
    class_names: tuple[str, ...]
    segments: tuple[Segment, ...]
    hidden: str = "img"  # stream the decision metrics read
    mechanism: str = "patches_replace"  # ComfyUI: "patches_replace" (dit) or "object_patch" (block lists)
    # TeaCache's per-call signal: a name in cache_core/methods/teacache_signals.py (block 0's timestep-modulated input), or None
    signal: str | None = None

    def __post_init__(self) -> None:
        if not self.segments:
            raise ValueError(f"layout {self.family!r} has no segments")
        for seg in self.segments:
            if self.hidden not in seg.outputs:
                raise ValueError(f"layout {self.family!r}: segment {seg.attr!r} does not return {self.hidden!r}")


_SELF = ("spatial",)  # one self/joint attention per block
_SELF_CROSS = ("spatial", "cross")  # self-attention, then cross-attention to the text

_DOUBLE_SINGLE = (
    Segment("double_block", "double_blocks", ("img", "txt"), attention=_SELF, ffn=("img_mlp", "txt_mlp")),
    Segment("single_block", "single_blocks", ("img",), hidden_tokens="last", attention=_SELF),
)

# ComfyUI's diffusion-model classes (comfy.ldm.*), matched by class name along the MRO (a name with dots is
# matched against "module.QualName", for class names two families share). Read from ComfyUI 0.3.75's forwards.
# Per family: which stream the decision reads (``hidden``) and how segments join, so a method's cached
# residual per segment is right however the host reshapes streams between segments.
# patches_replace["dit"] families: the block patch gets ``args`` with the streams named in ``outputs`` and
# returns a dict with them.
COMFY_LAYOUTS: tuple[BlockLayout, ...] = (
    # Flux.1 / Kontext / Flux.2 (comfy.ldm.flux.model.Flux): double blocks return (img, txt); then
    # img = cat(txt, img) feeds the single blocks (their "img" is the joint sequence). Kontext's reference
    # latents are concatenated to the image tokens before the blocks: the same layout, longer "img".
    BlockLayout("flux", ("Flux",), _DOUBLE_SINGLE, signal="double_stream_img_mod"),
    # Chroma (comfy.ldm.chroma.model.Chroma, and ChromaRadiance): as Flux, vec = per-block modulations.
    BlockLayout("chroma", ("Chroma",), _DOUBLE_SINGLE, signal="double_stream_img_mod"),
    # SD3 / SD3.5 (comfy.ldm.modules.diffusionmodules.mmdit.MMDiT via OpenAISignatureMMDITWrapper):
    # joint_blocks patched as "double_block" with img/txt; the last block's context is pre-only and returns
    # txt=None (the host glue passes such a stream through). One segment, no join.
    BlockLayout("sd3", ("OpenAISignatureMMDITWrapper", "comfy.ldm.modules.diffusionmodules.mmdit.MMDiT"),
                (Segment("double_block", "joint_blocks", ("img", "txt"), attention=_SELF,
                         ffn=("x_block.mlp", "context_block.mlp")),)),
    # AuraFlow (comfy.ldm.aura.mmdit.MMDiT): double_layers return (c, x); then cx = cat(c, x) feeds the
    # single_layers (their "img" is the joint sequence).
    BlockLayout("auraflow", ("comfy.ldm.aura.mmdit.MMDiT",),
                (Segment("double_block", "double_layers", ("img", "txt"), attention=_SELF, ffn=("mlpX", "mlpC")),
                 Segment("single_block", "single_layers", ("img",), hidden_tokens="last", attention=_SELF,
                         ffn=("mlp",)))),
    # Wan 2.1 / 2.2 T2V, I2V (36 channels in: noise + mask + image latent, concatenated before patch
    # embedding), FLF, VACE (VaceWanModel), Camera: one segment, img only (text is cross-attention input).
    # VACE adds its hints to img between blocks, outside the block calls.
    BlockLayout("wan", ("WanModel",),
                (Segment("double_block", "blocks", ("img",), attention=_SELF_CROSS, ffn=("ffn",)),),
                signal="vec"),
    # HunyuanVideo 1.0 / 1.5, HunyuanImage 2.1 (comfy.ldm.hunyuan_video.model.HunyuanVideo): as Flux but the
    # join is img = cat(img, txt).
    BlockLayout("hunyuan_video", ("HunyuanVideo",),
                (_DOUBLE_SINGLE[0],
                 Segment("single_block", "single_blocks", ("img",), hidden_tokens="first", attention=_SELF))),
    # LTXV (comfy.ldm.lightricks.model.LTXVModel): transformer_blocks return img only.
    BlockLayout("ltxv", ("LTXVModel",),
                (Segment("double_block", "transformer_blocks", ("img",), attention=_SELF_CROSS, ffn=("ff",)),)),
    # Mochi (comfy.ldm.genmo...AsymmDiTJoint): blocks return (img, txt); the last block does not update txt.
    BlockLayout("mochi", ("AsymmDiTJoint",),
                (Segment("double_block", "blocks", ("img", "txt"), attention=_SELF, ffn=("mlp_x", "mlp_y")),)),
    # Qwen-Image / Qwen-Image-Edit (edit reference latents are concatenated to img before the blocks).
    BlockLayout("qwen_image", ("QwenImageTransformer2DModel",),
                (Segment("double_block", "transformer_blocks", ("img", "txt"), attention=_SELF,
                         ffn=("img_mlp", "txt_mlp")),),
                signal="qwen_img_mod"),
    # Families whose forward has no patches_replace["dit"]: the block ModuleList is swapped through
    # ModelPatcher.add_object_patch for one whose iteration yields proxies; ``inputs`` names each stream's
    # parameter in the block's forward, ``returns`` the order of the returned tuple.
    # HiDream (HiDreamImageTransformer2DModel): double_stream_blocks(image_tokens, text_tokens=cat(initial
    # text, llama layer k)) -> (img, txt), the host keeps the first part of txt; then img = cat(img, txt)
    # and each single block gets cat(img, llama layer k), the host cuts the appended part off afterwards.
    BlockLayout("hidream", ("HiDreamImageTransformer2DModel",),
                (Segment("double_stream", "double_stream_blocks", ("img", "txt"),
                         inputs={"img": "image_tokens", "txt": "text_tokens"}, returns=("img", "txt"), attention=_SELF,
                         ffn=("block.ff_i", "block.ff_t")),
                 Segment("single_stream", "single_stream_blocks", ("img",),
                         inputs={"img": "image_tokens"}, returns=("img",), hidden_tokens="first", attention=_SELF,
                         ffn=("block.ff_i",))),
                mechanism="object_patch"),
    # Lumina 2 / Z-Image (comfy.ldm.lumina.model.NextDiT): the refiners run first (not cached), then
    # ``layers`` over the joint caption+image sequence x.
    BlockLayout("lumina2", ("NextDiT",),
                (Segment("layer", "layers", ("img",), inputs={"img": "x"}, returns=("img",), attention=_SELF,
                         ffn=("feed_forward",)),),
                mechanism="object_patch"),
    # Cosmos Predict2 (comfy.ldm.cosmos.predict2.MiniTrainDIT): blocks(x_B_T_H_W_D, ...) -> x.
    BlockLayout("cosmos_predict2", ("MiniTrainDIT",),
                (Segment("block", "blocks", ("img",), inputs={"img": "x_B_T_H_W_D"}, returns=("img",),
                         attention=_SELF_CROSS, ffn=("mlp",)),),
                mechanism="object_patch"),
)

_DIFFUSERS_MMDIT = ("hidden_states", "encoder_hidden_states")

# diffusers transformers (diffusers.models.transformers.*).
DIFFUSERS_LAYOUTS: tuple[BlockLayout, ...] = (
    BlockLayout(
        "flux",
        ("FluxTransformer2DModel",),
        (
            Segment("double", "transformer_blocks", ("img", "txt"),
                    inputs=dict(zip(("img", "txt"), _DIFFUSERS_MMDIT)), returns=("txt", "img"),
                    attention_modules=(("attn", "spatial"),)),
            Segment("single", "single_transformer_blocks", ("img", "txt"),
                    inputs=dict(zip(("img", "txt"), _DIFFUSERS_MMDIT)), returns=("txt", "img"),
                    attention_modules=(("attn", "spatial"),)),
        ),
    ),
    BlockLayout(
        "wan",
        ("WanTransformer3DModel",),
        (Segment("block", "blocks", ("img",), inputs={"img": "hidden_states"}, returns=("img",),
                 attention_modules=(("attn1", "spatial"), ("attn2", "cross"))),),
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
    """The layout for ``module``'s class or its nearest base class that has one ("module.QualName" first)."""
    names = (n for c in type(module).__mro__ for n in (f"{c.__module__}.{c.__qualname__}", c.__name__))
    return layout_for_class_names(names, layouts)
