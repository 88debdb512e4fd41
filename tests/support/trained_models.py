"""Small *trained* models of ComfyUI's real classes (Flux, Wan 2.1, Qwen-Image), for tests and benchmarks.

``scripts/train_tiny_models.py`` trains them on CPU by flow matching on glyphs and shapes drawn with Pillow and
saves each as ``models/trained/<family>.safetensors`` (float16 weights of ``diffusion_model``, plus the fixed
text-embedding table and latent projection under ``dit_cache.*``; everything else in the JSON metadata
``dit_cache_trained``) and a small classifier as ``models/trained/<family>.classifier.safetensors``.
docs/trained-models.md describes data, training and the measured accuracies.

    m = trained_models.load("flux")                 # a TinyModel-compatible object
    pos = m.conditioning("circle")                  # or an index, or a list (one class per sample)
    x = ksample(m.patcher, m, steps=m.reference["steps"], cfg=m.reference["cfg"],
                noise=m.noise(4, seed=0), positive=pos, negative=m.empty())
    m.classify(x)                                   # class indices of the samples; m.decode(x) -> RGB

The latent space is defined here (``Codec``): the RGB image (values in [-1, 1]) at twice the latent size,
pixel-unshuffled by 2 (12 channels), times a fixed 16 x 12 matrix with orthonormal columns. That is the
*model-side* latent (what the diffusion model sees); the latent that ComfyUI's sampler returns and SaveLatent
writes is ``process_latent_out`` of it (the family's own latent format), so ``decode`` applies
``process_latent_in`` first, exactly as the sampler does on the way in.

The text encoder stand-in (``TextTable``) is a fixed random word-embedding table: a prompt's words (up to
``tokens``) plus a learned-free positional table, padded with the ``<pad>`` embedding; the empty prompt is all
padding. Flux's pooled vector is the mean of the prompt's word embeddings (the pad embedding for the empty one).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from tiny_models import FamilySpec, TinyModel, _fill_required, _required_target

REPO = Path(__file__).resolve().parents[2]
TRAINED_DIR = REPO / "models" / "trained"
FAMILIES = ("flux", "wan21", "qwen_image")
META_KEY = "dit_cache_trained"
AUX = "dit_cache."  # prefix of the non-model tensors in a model file
PAD = "<pad>"


class TextTable:
    """A fixed random word-embedding table standing in for a text encoder."""

    def __init__(self, vocab: Sequence[str], table: torch.Tensor, pos: torch.Tensor):
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.table = table.float()  # (len(vocab), dim); row 0 is <pad>
        self.pos = pos.float()  # (tokens, dim)

    @classmethod
    def make(cls, prompts: Sequence[str], tokens: int, dim: int, seed: int) -> "TextTable":
        vocab = [PAD] + sorted({w for p in prompts for w in p.split()})
        g = torch.Generator().manual_seed(seed)
        table = torch.randn((len(vocab), dim), generator=g)
        pos = 0.3 * torch.randn((tokens, dim), generator=g)
        return cls(vocab, table, pos)

    @property
    def tokens(self) -> int:
        return self.pos.shape[0]

    def encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(cross-attention tokens (tokens, dim), pooled (dim)) of ``prompt``; "" is the empty prompt."""
        words = prompt.split()[: self.tokens]
        ids = [self.index[w] for w in words] + [0] * (self.tokens - len(words))
        emb = self.table[ids]
        pooled = emb[: len(words)].mean(0) if words else self.table[0]
        return emb + self.pos, pooled


class Codec:
    """RGB (in [-1, 1], ``factor`` x the latent size) <-> the model-side latent: pixel-unshuffle by ``factor``
    (3 * factor**2 values per latent pixel), then a fixed matrix ``proj`` with orthonormal columns."""

    def __init__(self, proj: torch.Tensor):
        self.proj = proj.float()  # (latent channels, 3 * factor**2)
        self.factor = math.isqrt(self.proj.shape[1] // 3)

    @classmethod
    def make(cls, channels: int, seed: int, factor: int = 1) -> "Codec":
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn((channels, 3 * factor * factor), generator=g))
        return cls(q)

    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) or (B, 3, T, H, W) -> (B, C, H/f, W/f) or (B, C, T, H/f, W/f)."""
        video = rgb.ndim == 5
        if video:
            b, _, t, h, w = rgb.shape
            rgb = rgb.permute(0, 2, 1, 3, 4).reshape(b * t, 3, h, w)
        z = torch.nn.functional.pixel_unshuffle(rgb.float(), self.factor)
        z = torch.einsum("ck,bkhw->bchw", self.proj, z)
        if video:
            z = z.reshape(b, t, *z.shape[1:]).permute(0, 2, 1, 3, 4)
        return z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        video = z.ndim == 5
        if video:
            b, _, t, h, w = z.shape
            z = z.permute(0, 2, 1, 3, 4).reshape(b * t, -1, h, w)
        rgb = torch.nn.functional.pixel_shuffle(torch.einsum("ck,bchw->bkhw", self.proj, z.float()), self.factor)
        rgb = rgb.clamp(-1, 1)
        if video:
            rgb = rgb.reshape(b, t, *rgb.shape[1:]).permute(0, 2, 1, 3, 4)
        return rgb


class Classifier(torch.nn.Module):
    """A small CNN on RGB in [-1, 1]; a video's frames are stacked on the channel axis (motion is visible)."""

    def __init__(self, in_channels: int, classes: int, width: int = 32):
        super().__init__()
        c = torch.nn
        self.net = c.Sequential(
            c.Conv2d(in_channels, width, 3, padding=1), c.ReLU(), c.Conv2d(width, width, 3, padding=1), c.ReLU(),
            c.MaxPool2d(2),
            c.Conv2d(width, 2 * width, 3, padding=1), c.ReLU(), c.Conv2d(2 * width, 2 * width, 3, padding=1), c.ReLU(),
            c.MaxPool2d(2),
            c.Conv2d(2 * width, 2 * width, 3, padding=1), c.ReLU(), c.AdaptiveAvgPool2d(1), c.Flatten(),
            c.Linear(2 * width, classes))

    @staticmethod
    def prepare(rgb: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) stays; (B, 3, T, H, W) -> (B, T*3, H, W)."""
        if rgb.ndim == 5:
            b, _, t, h, w = rgb.shape
            rgb = rgb.permute(0, 2, 1, 3, 4).reshape(b, t * 3, h, w)
        return rgb

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.net(self.prepare(rgb))


def _meta_file(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()[META_KEY])


@dataclass
class TrainedModel(TinyModel):
    """A trained model in a ModelPatcher, its conditioning, latent codec and classifier."""

    meta: dict[str, Any] = field(default_factory=dict)
    text: TextTable | None = None
    codec: Codec | None = None
    classifier: Classifier | None = None

    @property
    def classes(self) -> list[str]:
        return [c["name"] for c in self.meta["classes"]]

    @property
    def prompts(self) -> list[str]:
        return [c["prompt"] for c in self.meta["classes"]]

    @property
    def reference(self) -> dict[str, Any]:
        """The reference sampler settings: sampler, scheduler, steps, cfg."""
        return dict(self.meta["reference"])

    def label(self, label: int | str) -> int:
        return label if isinstance(label, int) else self.classes.index(label)

    def prompt_conditioning(self, prompts: Sequence[str]) -> list:
        enc = [self.text.encode(p) for p in prompts]
        cross = torch.stack([e[0] for e in enc])
        extra: dict[str, Any] = {}
        if self.spec.pooled is not None:
            extra["pooled_output"] = torch.stack([e[1] for e in enc])
        if self.spec.guidance is not None:
            extra["guidance"] = self.spec.guidance
        return [[cross, extra]]

    def conditioning(self, label: int | str | Sequence[int | str] = 0, batch: int | None = None,
                     seed: int | None = None, **_: Any) -> list:
        """ComfyUI CONDITIONING for one class (``batch`` copies) or one class per sample (a list).

        ``seed`` (TinyModel's keyword) picks class ``seed % classes``, as the test loader node does."""
        if seed is not None:
            label = seed % len(self.classes)
        labels = [label] * (batch or 1) if isinstance(label, (int, str)) else list(label)
        return self.prompt_conditioning([self.prompts[self.label(k)] for k in labels])

    def empty(self, batch: int = 1) -> list:
        """The empty prompt's conditioning: the negative the models were trained for (condition dropout)."""
        return self.prompt_conditioning([""] * batch)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """A sampler's output latent -> RGB in [0, 1], (B, 3, H, W) or (B, 3, T, H, W)."""
        z = self.patcher.model.process_latent_in(latent.float())
        if self.meta["kind"] == "image" and z.ndim == 5:  # Qwen-Image: Wan's 5-D latent, one frame
            z = z[:, :, 0]
        return (self.codec.decode(z) + 1) / 2

    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] -> the latent a sampler returns (inverse of ``decode``)."""
        z = self.codec.encode(rgb * 2 - 1)
        if len(self.spec.latent) == 4 and z.ndim == 4:  # an image family with 5-D latents
            z = z[:, :, None]
        return self.patcher.model.process_latent_out(z)

    @torch.no_grad()
    def classify(self, latent: torch.Tensor) -> torch.Tensor:
        """Class index per sample of a sampler's output latent."""
        if self.classifier is None:
            self.classifier = load_classifier(self.family, self.meta)
        return self.classifier(self.decode(latent) * 2 - 1).argmax(-1)


def model_path(family: str, folder: Path | None = None) -> Path:
    return (folder or TRAINED_DIR) / f"{family}.safetensors"


def classifier_path(family: str, folder: Path | None = None) -> Path:
    return (folder or TRAINED_DIR) / f"{family}.classifier.safetensors"


def spec_of(meta: dict[str, Any]) -> FamilySpec:
    return FamilySpec(meta["supported_model"], dict(meta["unet_config"]), latent=tuple(meta["latent"]),
                      context=tuple(meta["context"]), pooled=meta.get("pooled"), guidance=meta.get("guidance"),
                      cfg=float(meta["reference"]["cfg"]))


def build_model(family: str, spec: FamilySpec, dtype: torch.dtype = torch.float32) -> Any:
    """An uninitialised ``model_base`` instance of ``spec`` (ComfyUI's own class, as a checkpoint load builds it)."""
    import comfy.supported_models

    unet_config = dict(spec.unet_config)
    target = _required_target(family)
    if target is not None:
        unet_config = _fill_required(unet_config, target)
    model_config = getattr(comfy.supported_models, spec.supported_model)(unet_config)
    model_config.set_inference_dtype(dtype, None)
    return model_config.get_model({}, device=torch.device("cpu"))


def patcher_of(model: Any) -> Any:
    import comfy.model_management
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def load_classifier(family: str, meta: dict[str, Any], folder: Path | None = None) -> Classifier:
    from safetensors.torch import load_file

    c = meta["classifier"]
    net = Classifier(c["in_channels"], len(meta["classes"]), c["width"])
    net.load_state_dict({k: v.float() for k, v in load_file(str(classifier_path(family, folder))).items()})
    return net.eval()


def available(family: str, folder: Path | None = None) -> bool:
    return model_path(family, folder).exists()


def load(family: str, folder: Path | None = None) -> TrainedModel:
    """The trained ``family`` model ("flux", "wan21", "qwen_image") in a ModelPatcher, float32 on the CPU."""
    from safetensors.torch import load_file

    path = model_path(family, folder)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no trained {family!r} model (scripts/train_tiny_models.py makes it)")
    meta = _meta_file(path)
    tensors = load_file(str(path))
    spec = spec_of(meta)
    model = build_model(family, spec)
    weights = {k: v.float() for k, v in tensors.items() if not k.startswith(AUX)}
    missing, unexpected = model.diffusion_model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{path}: weights do not fit the {spec.supported_model} class: "
                           f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.diffusion_model.eval()
    text = TextTable(meta["text"]["vocab"], tensors[AUX + "text.table"], tensors[AUX + "text.pos"])
    codec = Codec(tensors[AUX + "codec.proj"])
    return TrainedModel(family, "trained", patcher_of(model), spec, meta.get("seed", 0), meta=meta, text=text,
                        codec=codec)


def grid(images: torch.Tensor, rows: int, scale: int = 4, labels: Sequence[str] | None = None,
         label_width: int = 0) -> Any:
    """A PIL image of ``images`` ((N, 3, H, W) in [0, 1], row-major), each upscaled ``scale``x (nearest)."""
    from PIL import Image, ImageDraw

    n, _, h, w = images.shape
    cols = math.ceil(n / rows)
    gap = 2
    cw, ch = w * scale + gap, h * scale + gap
    out = Image.new("RGB", (label_width + cols * cw + gap, rows * ch + gap), (255, 255, 255))
    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, c = divmod(i, cols)
        tile = Image.fromarray(arr[i]).resize((w * scale, h * scale), Image.NEAREST)
        out.paste(tile, (label_width + gap + c * cw, gap + r * ch))
    if labels:
        draw = ImageDraw.Draw(out)
        for r, text in enumerate(labels):
            draw.text((4, gap + r * ch + ch // 2 - 6), text, fill=(0, 0, 0))
    return out
