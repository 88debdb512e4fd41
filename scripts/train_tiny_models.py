"""Train small models of ComfyUI's real classes (Flux, Wan 2.1, Qwen-Image) on CPU, by flow matching.

    .venv/bin/python scripts/train_tiny_models.py --family flux            # train, save, evaluate, draw
    .venv/bin/python scripts/train_tiny_models.py --family all
    .venv/bin/python scripts/train_tiny_models.py --family wan21 --steps 300 --out /tmp/try
    .venv/bin/python scripts/train_tiny_models.py --family flux --eval-only  # re-evaluate the saved model

Each model is built by ``comfy.supported_models.<Family>(unet_config).get_model()``, as ComfyUI builds it from a
checkpoint, and trained through the model's own ``apply_model`` (ComfyUI's ``model_sampling``: CONST noise
scaling x_t = (1 - sigma) x0 + sigma noise, the family's sigma -> timestep mapping), on the velocity target
noise - x0, so the same weights sample correctly through ``comfy.sample`` (the KSampler path). Training sigmas:
half drawn uniformly, half through the family's own shifted schedule (``model_sampling.sigma``), so every step
of a sampler's schedule is covered.

Data (drawn offline with Pillow, fixed seeds): glyphs and shapes in varied DejaVu fonts, colours, sizes,
positions and angles (Flux: 8 shapes and letters; Qwen-Image: the digits 0-9; Wan: 6 moving, turning, growing
or colour-changing shapes over 4 frames). The latent is the RGB image itself (``trained_models.Codec``). Each
class is a prompt encoded by a fixed random word-embedding table (``trained_models.TextTable``); 10 % of the
training samples get the empty prompt instead, so classifier-free guidance has something to work with.

Outputs (``--out``, default models/trained/): ``<family>.safetensors`` (float16 weights, the embedding table and
latent projection, the config as JSON metadata) and ``<family>.classifier.safetensors`` (a small CNN trained on
fresh renders, that tests/comfy/test_trained_models_comfy.py uses to check that samples show their class), plus the sample
grid docs/trained-<family>.png. Train with one thread (the default): tiny models gain nothing from more.
"""
from __future__ import annotations

import argparse
import colorsys
import fnmatch
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))

CANVAS = 128  # drawing size; images are box-filtered down to ``size``
JITTER = 14  # how far (canvas pixels) a picture's centre strays from the canvas centre


@dataclass
class Recipe:
    kind: str  # "image" or "video"
    supported_model: str
    unet_config: dict[str, Any]
    latent: tuple[int, ...]  # without batch
    classes: list[tuple[str, str, tuple]]  # (name, prompt, drawing)
    size: int = 32  # image side in pixels (``factor`` x the latent)
    factor: int = 2  # latent pixel = factor x factor RGB pixels
    frames: int = 1
    context: tuple[int, int] = (8, 32)
    pooled: int | None = None
    guidance: float | None = None
    per_class: int = 1500  # training images per class
    batch: int = 32
    steps: int = 2000
    lr: float = 3e-3
    reference: dict[str, Any] = field(default_factory=lambda: dict(sampler="euler", scheduler="simple", steps=20,
                                                                    cfg=3.0))
    # parameters started at zero (fnmatch patterns): the output layer and every adaLN modulation (adaLN-Zero, as
    # DiT trains: each block starts as the identity), and Flux's guidance embedding (an input it is trained to
    # ignore)
    zero_init: tuple[str, ...] = ()
    font_names: tuple[str, ...] = ()  # the DejaVu faces glyphs are drawn in (default: all of FONT_NAMES)
    sizes: tuple[float, float] = (30, 46)  # shape radius / half glyph height range, canvas pixels
    glyph_angle: float = 15  # glyphs turn by up to this many degrees either way
    seed: int = 0


RECIPES: dict[str, Recipe] = {
    "flux": Recipe(
        "image", "Flux",
        dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=32,
             hidden_size=128, mlp_ratio=4.0, num_heads=2, depth=2, depth_single_blocks=4, axes_dim=[16, 24, 24],
             theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True),
        # letters in the upright and bold faces, everything drawn a little larger than the first run (82-85 %)
        latent=(16, 8, 8), size=16, pooled=32, guidance=3.5, per_class=2000, batch=64, steps=5000,
        font_names=("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Bold.ttf",
                    "DejaVuSansCondensed-Bold.ttf"), sizes=(34, 46),
        classes=[("circle", "a circle", ("shape", "circle")), ("square", "a square", ("shape", "square")),
                 ("triangle", "a triangle", ("shape", "triangle")), ("cross", "a plus cross", ("shape", "cross")),
                 ("ring", "a ring", ("shape", "ring")), ("star", "a star", ("shape", "star")),
                 ("A", "the letter A", ("glyph", "A")), ("S", "the letter S", ("glyph", "S"))],
        zero_init=("final_layer.*", "double_blocks.*_mod.lin.*", "single_blocks.*.modulation.lin.*",
                   "guidance_in.out_layer.*")),
    "qwen_image": Recipe(
        "image", "QwenImage",
        dict(image_model="qwen_image", in_channels=64, out_channels=16, num_layers=4, attention_head_dim=64,
             num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(16, 24, 24)),
        # digits are thin: the upright and bold faces only, drawn larger, at most 10 degrees off
        latent=(16, 1, 8, 8), size=16, per_class=1500, batch=64, steps=6000,
        font_names=("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Bold.ttf",
                    "DejaVuSansCondensed-Bold.ttf"), sizes=(38, 48), glyph_angle=10,
        reference=dict(sampler="euler", scheduler="simple", steps=20, cfg=4.0),
        classes=[(str(d), f"the digit {w}", ("glyph", str(d))) for d, w in enumerate(
            "zero one two three four five six seven eight nine".split())],
        zero_init=("proj_out.*", "norm_out.linear.*", "transformer_blocks.*_mod.1.*")),
    "wan21": Recipe(
        "video", "WAN21_T2V",
        dict(image_model="wan2.1", model_type="t2v", dim=128, ffn_dim=256, num_heads=2, num_layers=4, in_dim=16,
             out_dim=16, text_dim=32, freq_dim=256, patch_size=(1, 2, 2), window_size=(-1, -1), qk_norm=True,
             cross_attn_norm=True, eps=1e-6),
        latent=(16, 4, 8, 8), size=16, frames=4, per_class=1500, batch=32, steps=4000,
        font_names=("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Bold.ttf",
                    "DejaVuSansCondensed-Bold.ttf"),
        reference=dict(sampler="euler", scheduler="simple", steps=20, cfg=5.0),
        classes=[("circle right", "a circle moving right", ("circle", "right")),
                 ("square turning", "a square turning", ("square", "turn")),
                 ("triangle down", "a triangle moving down", ("triangle", "down")),
                 ("cross colour", "a cross changing colour", ("cross", "colour")),
                 ("ring growing", "a ring growing", ("ring", "grow")),
                 ("A left", "the letter A moving left", ("glyph:A", "left"))],
        zero_init=("head.head.*", "head.modulation", "blocks.*.modulation", "time_projection.1.*")),
}

# ----------------------------------------------------------------------------------------------------- drawing


FONT_NAMES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
              "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif-Italic.ttf",
              "DejaVuSansCondensed-Bold.ttf", "DejaVuSerifCondensed.ttf")


def fonts(names: tuple[str, ...] = ()) -> list[str]:
    """DejaVu faces from the system, else matplotlib's copies (same faces)."""
    names = names or FONT_NAMES
    dirs = [Path("/usr/share/fonts/truetype/dejavu")]
    try:
        import matplotlib
        dirs.append(Path(matplotlib.get_data_path()) / "fonts" / "ttf")
    except ImportError:
        pass
    out = []
    for n in names:
        for d in dirs:
            if (d / n).exists():
                out.append(str(d / n))
                break
    if len(out) < len(names):
        raise RuntimeError(f"need DejaVu fonts (found {out}): apt-get install fonts-dejavu-core or matplotlib")
    return out


def _lum(c: tuple[int, int, int]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _colour(rng: random.Random, light: bool, hue: float | None = None, saturated: bool = False):
    h = rng.random() if hue is None else hue % 1.0
    s = rng.uniform(0.6, 1.0) if saturated else rng.uniform(0.3, 1.0) if rng.random() < 0.8 else rng.uniform(0, 0.2)
    v = rng.uniform(0.75, 1.0) if light else rng.uniform(0.05, 0.45)
    return tuple(int(round(255 * x)) for x in colorsys.hsv_to_rgb(h, s, v))


def colours(rng: random.Random, n: int = 1) -> tuple[list[tuple[int, int, int]], tuple[int, int, int]]:
    """``n`` light foreground colours (any hue) and a dark background, clearly darker than each.

    Always light on dark: with both polarities the average picture of a class is a flat grey (its shape lives
    only in second-order statistics), which a tiny model learns far more slowly. Two foregrounds (a colour
    change) are saturated, their hues a third of a turn or more apart."""
    while True:
        bg = _colour(rng, light=False)
        h = rng.random()
        fgs = [_colour(rng, True, h + i * rng.uniform(0.33, 0.67), saturated=n > 1) for i in range(n)]
        if all(_lum(c) - _lum(bg) > 70 for c in fgs):
            return fgs, bg


def _poly(cx: float, cy: float, r: float, n: int, angle: float, inner: float | None = None) -> list:
    pts = []
    for i in range(n * (2 if inner else 1)):
        a = math.radians(angle) + i * math.pi * 2 / (n * (2 if inner else 1)) - math.pi / 2
        rr = r if not inner or i % 2 == 0 else r * inner
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def mask(kind: str, cx: float, cy: float, r: float, angle: float, rng: random.Random, font: str | None = None):
    """An L-mode CANVAS x CANVAS mask of one shape or glyph (``kind`` "glyph:X" draws X)."""
    from PIL import Image, ImageDraw, ImageFont

    m = Image.new("L", (CANVAS, CANVAS), 0)
    d = ImageDraw.Draw(m)
    if kind == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif kind == "ring":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=255, width=max(3, int(r * 0.32)))
    elif kind == "square":
        d.polygon(_poly(cx, cy, r * 1.05, 4, angle + 45), fill=255)
    elif kind == "triangle":
        d.polygon(_poly(cx, cy + r * 0.15, r * 1.2, 3, angle), fill=255)
    elif kind == "star":
        d.polygon(_poly(cx, cy, r * 1.15, 5, angle, inner=0.45), fill=255)
    elif kind == "cross":
        w = r * 0.34
        arm = [(-r, -w), (r, -w), (r, w), (-r, w)]
        for rot in (0, 90):
            a = math.radians(angle + rot)
            d.polygon([(cx + x * math.cos(a) - y * math.sin(a), cy + x * math.sin(a) + y * math.cos(a))
                       for x, y in arm], fill=255)
    elif kind.startswith("glyph:"):
        f = ImageFont.truetype(font, int(r * 2.3))
        d.text((cx, cy), kind.split(":", 1)[1], fill=255, font=f, anchor="mm")
        if angle:
            m = m.rotate(-angle, resample=Image.BICUBIC, center=(cx, cy))
    else:
        raise ValueError(kind)
    return m


def compose(m, fg: tuple[int, int, int], bg: tuple[int, int, int], size: int):
    from PIL import Image

    img = Image.composite(Image.new("RGB", m.size, fg), Image.new("RGB", m.size, bg), m)
    return img.resize((size, size), Image.BOX)


def draw_image(drawing: tuple, rng: random.Random, font_files: list[str], size: int, recipe: Recipe):
    what, arg = drawing
    kind = arg if what == "shape" else f"glyph:{arg}"
    # near the centre (a tiny model learns shapes much sooner than where to put them), varied size and angle
    r = rng.uniform(*recipe.sizes)
    cx, cy = CANVAS / 2 + rng.uniform(-JITTER, JITTER), CANVAS / 2 + rng.uniform(-JITTER, JITTER)
    angle = rng.uniform(-recipe.glyph_angle, recipe.glyph_angle) if what == "glyph" else rng.uniform(-20, 20)
    (fg,), bg = colours(rng)
    return [compose(mask(kind, cx, cy, r, angle, rng, rng.choice(font_files)), fg, bg, size)]


def draw_video(drawing: tuple, rng: random.Random, font_files: list[str], size: int, frames: int):
    """``frames`` pictures of a shape that moves (right, left, down), turns, grows or changes colour."""
    kind, motion = drawing
    font = rng.choice(font_files)
    r = rng.uniform(24, 32)
    speed = rng.uniform(12, 18)
    travel = speed * (frames - 1)
    # the path is centred on the canvas, give or take JITTER: the clip starts where the motion allows
    cx, cy = CANVAS / 2 + rng.uniform(-JITTER, JITTER), CANVAS / 2 + rng.uniform(-JITTER, JITTER)
    if motion == "right":
        cx -= travel / 2
    elif motion == "left":
        cx += travel / 2
    elif motion == "down":
        cy -= travel / 2
    elif motion == "grow":
        r = rng.uniform(13, 18)
    angle = rng.uniform(-15, 15)
    spin = rng.uniform(20, 30)
    grow = rng.uniform(5, 8)
    fgs, bg = colours(rng, 2 if motion == "colour" else 1)
    out = []
    for t in range(frames):
        x, y, rr, a, fg = cx, cy, r, angle, fgs[0]
        if motion == "right":
            x = cx + speed * t
        elif motion == "left":
            x = cx - speed * t
        elif motion == "down":
            y = cy + speed * t
        elif motion == "turn":
            a = angle + spin * t
        elif motion == "grow":
            rr = r + grow * t
        elif motion == "colour":
            w = t / (frames - 1)
            fg = tuple(int(round((1 - w) * p + w * q)) for p, q in zip(fgs[0], fgs[1]))
        out.append(compose(mask(kind, x, y, rr, a, rng, font), fg, bg, size))
    return out


def render(recipe: Recipe, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pictures as uint8 (N, 3, H, W) or (N, 3, T, H, W), labels (N,)), class-interleaved, seeded."""
    import numpy as np

    rng = random.Random(seed)
    font_files = fonts(recipe.font_names)
    pics, labels = [], []
    for _ in range(per_class):
        for k, (_, _, drawing) in enumerate(recipe.classes):
            if recipe.kind == "image":
                imgs = draw_image(drawing, rng, font_files, recipe.size, recipe)
            else:
                imgs = draw_video(drawing, rng, font_files, recipe.size, recipe.frames)
            arr = np.stack([np.asarray(i) for i in imgs])  # (T, H, W, 3)
            pics.append(torch.from_numpy(arr).permute(3, 0, 1, 2))  # (3, T, H, W)
            labels.append(k)
    x = torch.stack(pics)
    if recipe.kind == "image":
        x = x[:, :, 0]
    return x, torch.tensor(labels)


def to_signed(pics: torch.Tensor) -> torch.Tensor:
    return pics.float() / 127.5 - 1


# ---------------------------------------------------------------------------------------------------- training


def model_latents(recipe: Recipe, codec: Any, pics: torch.Tensor) -> torch.Tensor:
    """Model-side latents of uint8 pictures, shaped as the family's latent."""
    z = codec.encode(to_signed(pics))
    if len(recipe.latent) == 4 and z.ndim == 4:  # Qwen-Image: a 5-D latent of one frame
        z = z[:, :, None]
    assert tuple(z.shape[1:]) == tuple(recipe.latent), (z.shape, recipe.latent)
    return z


def extra_inputs(recipe: Recipe, pooled: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The model kwargs ``extra_conds`` makes from a CONDITIONING entry (pooled -> y, guidance)."""
    out = {}
    if recipe.pooled is not None:
        out["y"] = pooled
    if recipe.guidance is not None:
        # random guidance values: the guidance embedding stays an input the model learns to ignore, so any
        # FluxGuidance value samples the same way
        out["guidance"] = 1.0 + 4.0 * torch.rand(pooled.shape[0], generator=gen)
    return out


def _pack(t: torch.Tensor) -> torch.Tensor:
    # ComfyUI's blocks add residuals in place (``img += ...``, inference code); keeping a copy of every saved
    # activation lets autograd differentiate them unchanged
    return t if isinstance(t, torch.nn.Parameter) else t.clone()


def init_for_training(module: torch.nn.Module, recipe: Recipe, seed: int) -> None:
    import tiny_models

    tiny_models.init_weights(module, seed)  # ComfyUI leaves the weights uninitialised (torch.empty)
    with torch.no_grad():
        for pattern in recipe.zero_init:
            hits = [p for n, p in module.named_parameters() if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise ValueError(f"zero_init pattern {pattern!r} matches no parameter")
            for p in hits:
                p.zero_()


def train(family: str, recipe: Recipe, steps: int, log: Callable[[str], None]) -> dict[str, Any]:
    import trained_models as tm

    seed = recipe.seed
    torch.manual_seed(seed)
    text = tm.TextTable.make([p for _, p, _ in recipe.classes], *recipe.context, seed=seed + 11)
    codec = tm.Codec.make(recipe.latent[0], seed=seed + 12, factor=recipe.factor)
    spec = tm.spec_of(_meta(family, recipe, text, {}))
    model = tm.build_model(family, spec)
    net = model.diffusion_model
    init_for_training(net, recipe, seed)
    n_params = sum(p.numel() for p in net.parameters())
    log(f"[{family}] {recipe.supported_model}: {n_params / 1e6:.2f} M parameters, latent {recipe.latent}, "
        f"{len(recipe.classes)} classes")

    t0 = time.time()
    pics, labels = render(recipe, recipe.per_class, seed=seed + 100)
    x0_all = model_latents(recipe, codec, pics)
    log(f"[{family}] rendered {len(labels)} training {recipe.kind}s in {time.time() - t0:.1f} s; "
        f"latent std {x0_all.std():.3f}")
    enc = [text.encode(p) for _, p, _ in recipe.classes] + [text.encode("")]
    tokens = torch.stack([e[0] for e in enc])
    pooled = torch.stack([e[1] for e in enc])
    empty = len(recipe.classes)

    ms = model.model_sampling
    multiplier = float(getattr(ms, "multiplier", 1.0))
    gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=0.01, betas=(0.9, 0.99))
    warmup = min(100, steps // 10 + 1)

    def lr_at(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        p = (i - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ema = {k: v.detach().clone() for k, v in net.state_dict().items()}
    losses: list[float] = []
    net.train()
    t0 = time.time()
    for i in range(steps):
        idx = torch.randint(len(labels), (recipe.batch,), generator=gen)
        x0 = x0_all[idx]
        lab = labels[idx].clone()
        lab[torch.rand(recipe.batch, generator=gen) < 0.1] = empty  # condition dropout -> the empty prompt
        noise = torch.randn(x0.shape, generator=gen)
        u = torch.rand(recipe.batch, generator=gen)
        shifted = ms.sigma(u * multiplier)
        sigma = torch.where(torch.rand(recipe.batch, generator=gen) < 0.5, shifted, u).clamp(1e-3, 1.0)
        xt = ms.noise_scaling(sigma, noise, x0)  # (1 - sigma) x0 + sigma noise
        with torch.autograd.graph.saved_tensors_hooks(_pack, lambda t: t):
            denoised = model.apply_model(xt, sigma, c_crossattn=tokens[lab],
                                         **extra_inputs(recipe, pooled[lab], gen))
            s = sigma.view(-1, *([1] * (xt.ndim - 1)))
            v = (xt - denoised) / s  # the network's raw output (velocity), recovered from the CONST denoised
            loss = torch.nn.functional.mse_loss(v, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(0.995, (1 + i) / (10 + i))
        with torch.no_grad():
            for k, val in net.state_dict().items():
                if val.is_floating_point():
                    ema[k].mul_(decay).add_(val.detach(), alpha=1 - decay)
        losses.append(loss.item())
        if (i + 1) % max(1, steps // 20) == 0 or i == 0:
            w = losses[-max(1, steps // 20):]
            el = time.time() - t0
            log(f"[{family}] step {i + 1}/{steps}  loss {sum(w) / len(w):.4f}  lr {sched.get_last_lr()[0]:.2e}  "
                f"{el:.0f} s (eta {el / (i + 1) * (steps - i - 1):.0f} s)")
    train_s = time.time() - t0
    net.load_state_dict(ema)
    net.eval()
    tenth = max(1, steps // 10)
    curve = [round(sum(losses[j:j + tenth]) / len(losses[j:j + tenth]), 4) for j in range(0, steps, tenth)]
    log(f"[{family}] trained {steps} steps in {train_s:.0f} s; loss per tenth of training: {curve}")
    return dict(model=model, text=text, codec=codec, params=n_params, train_s=round(train_s, 1), steps=steps,
                loss_curve=curve, final_loss=curve[-1])


def _meta(family: str, recipe: Recipe, text: Any, training: dict[str, Any]) -> dict[str, Any]:
    return dict(
        family=family, kind=recipe.kind, supported_model=recipe.supported_model, unet_config=recipe.unet_config,
        latent=list(recipe.latent), frames=recipe.frames, image_size=recipe.size, context=list(recipe.context),
        pooled=recipe.pooled, guidance=recipe.guidance, seed=recipe.seed,
        classes=[dict(name=n, prompt=p) for n, p, _ in recipe.classes],
        text=dict(vocab=text.vocab, tokens=recipe.context[0], dim=recipe.context[1],
                  recipe="word embeddings (fixed random table) + positional table, <pad> to 8 tokens; pooled = "
                         "mean of the word embeddings; empty prompt = all <pad>; 10 % condition dropout"),
        latent_space="RGB in [-1, 1] at 2x the latent size, pixel-unshuffle 2 (12 ch), fixed 16x12 orthonormal "
                     "projection (dit_cache.codec.proj); that is the model-side latent (process_latent_in of "
                     "what the sampler returns)",
        reference=recipe.reference, classifier=dict(in_channels=3 * recipe.frames, width=32),
        training=training)


def save(family: str, recipe: Recipe, result: dict[str, Any], out: Path, evaluation: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    import trained_models as tm

    training = {k: result[k] for k in ("params", "train_s", "steps", "loss_curve", "final_loss")}
    training.update(batch=recipe.batch, lr=recipe.lr, per_class=recipe.per_class, torch=torch.__version__,
                    command=f"scripts/train_tiny_models.py --family {family} --steps {result['steps']}")
    meta = _meta(family, recipe, result["text"], training)
    meta["evaluation"] = evaluation
    tensors = {k: v.detach().to(torch.float16).contiguous()
               for k, v in result["model"].diffusion_model.state_dict().items()}
    tensors[tm.AUX + "text.table"] = result["text"].table.contiguous()
    tensors[tm.AUX + "text.pos"] = result["text"].pos.contiguous()
    tensors[tm.AUX + "codec.proj"] = result["codec"].proj.contiguous()
    out.mkdir(parents=True, exist_ok=True)
    path = tm.model_path(family, out)
    save_file(tensors, str(path), metadata={tm.META_KEY: json.dumps(meta)})
    return path


def set_evaluation(path: Path, evaluation: dict[str, Any]) -> None:
    """Rewrite the metadata's evaluation entry (tensors unchanged)."""
    from safetensors.torch import load_file, save_file

    import trained_models as tm

    meta = tm._meta_file(path)
    meta["evaluation"] = evaluation
    save_file(load_file(str(path)), str(path), metadata={tm.META_KEY: json.dumps(meta)})


# -------------------------------------------------------------------------------------------------- classifier


def train_classifier(family: str, recipe: Recipe, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """A small CNN on fresh renders (another seed than the diffusion data); held-out accuracy reported."""
    from safetensors.torch import save_file

    import trained_models as tm

    t0 = time.time()
    per_class, width, epochs, bs = 800, 32, 6, 64
    pics, labels = render(recipe, per_class, seed=recipe.seed + 200)
    x = to_signed(pics)
    n_test = len(labels) // 5
    xt, yt, xv, yv = x[n_test:], labels[n_test:], x[:n_test], labels[:n_test]
    torch.manual_seed(recipe.seed + 201)
    g = torch.Generator().manual_seed(recipe.seed + 202)
    net = tm.Classifier(3 * recipe.frames, len(recipe.classes), width)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    batches = (len(yt) + bs - 1) // bs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * batches)
    for ep in range(epochs):
        perm = torch.randperm(len(yt), generator=g)
        for j in range(0, len(yt), bs):
            b = perm[j:j + bs]
            xb = tm.Classifier.prepare(xt[b])
            # robustness to what a sampler leaves: a little noise, sometimes a little blur
            xb = xb + torch.randn(xb.shape, generator=g) * 0.08 * torch.rand((len(b), 1, 1, 1), generator=g)
            if torch.rand(1, generator=g).item() < 0.3:
                xb = torch.nn.functional.avg_pool2d(xb, 3, 1, 1, count_include_pad=False)
            loss = torch.nn.functional.cross_entropy(net(xb), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        acc = (net(xv).argmax(-1) == yv).float().mean().item()
        noise_pred = net(torch.randn((200,) + tuple(xv.shape[1:]), generator=g).clamp(-1, 1) * 0.5).argmax(-1)
    hist = torch.bincount(noise_pred, minlength=len(recipe.classes)).tolist()
    log(f"[{family}] classifier: held-out accuracy {acc:.3f} on {n_test} fresh renders "
        f"({time.time() - t0:.0f} s); on noise pictures it answers {hist}")
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tm.classifier_path(family, out)))
    return dict(held_out_accuracy=round(acc, 4), held_out=n_test, width=width)


# -------------------------------------------------------------------------------------------------- evaluation


def sample(m: Any, labels: list[int], cfg: float, seed: int, steps: int | None = None) -> torch.Tensor:
    """Sampler output latents through comfy.sample (the KSampler path), one class per sample."""
    from sampling import ksample

    ref = m.reference
    return ksample(m.patcher, m, steps=steps or ref["steps"], cfg=cfg, sampler=ref["sampler"],
                   scheduler=ref["scheduler"], noise=m.noise(len(labels), seed=seed),
                   positive=m.conditioning(labels), negative=m.empty())


def evaluate(family: str, out: Path, per_class: int, log: Callable[[str], None],
             cfgs: tuple[float, ...] = ()) -> tuple[dict[str, Any], Any, torch.Tensor]:
    import trained_models as tm

    m = tm.load(family, out)
    m.classifier = tm.load_classifier(family, m.meta, out)
    n = len(m.classes)
    labels = [k for k in range(n) for _ in range(per_class)]
    ref = m.reference
    result: dict[str, Any] = dict(sampler=ref["sampler"], scheduler=ref["scheduler"], steps=ref["steps"],
                                  per_class=per_class, seed=1000)
    samples = None
    for cfg in sorted({float(ref["cfg"]), *cfgs}):
        t0 = time.time()
        x = sample(m, labels, cfg, seed=1000)
        pred = m.classify(x)
        acc = (pred == torch.tensor(labels)).float().mean().item()
        per = [round((pred[k * per_class:(k + 1) * per_class] == k).float().mean().item(), 2) for k in range(n)]
        log(f"[{family}] cfg {cfg:g}: accuracy {acc:.3f} over {len(labels)} samples ({time.time() - t0:.0f} s); "
            f"per class {per}")
        result[f"accuracy_cfg{cfg:g}"] = round(acc, 4)
        if cfg == float(ref["cfg"]):
            result["accuracy"] = round(acc, 4)
            result["per_class"] = per
            result["cfg"] = cfg
            samples = x
    x = ksample_empty(m, 2 * n, seed=2000)  # the empty prompt: no class is asked for
    hist = torch.bincount(m.classify(x), minlength=n).tolist()
    log(f"[{family}] empty prompt: classes of {2 * n} samples {hist}")
    result["empty_prompt_classes"] = hist
    return result, m, samples


def ksample_empty(m: Any, batch: int, seed: int) -> torch.Tensor:
    from sampling import ksample

    ref = m.reference
    return ksample(m.patcher, m, steps=ref["steps"], cfg=1.0, sampler=ref["sampler"], scheduler=ref["scheduler"],
                   noise=m.noise(batch, seed=seed), positive=m.empty(batch), negative=m.empty(batch))


def picture(family: str, m: Any, samples: torch.Tensor, per_class: int, path: Path) -> None:
    """docs/trained-<family>.png: one row per class (video: each sample's frames side by side)."""
    import trained_models as tm

    rgb = m.decode(samples)
    n = len(m.classes)
    if rgb.ndim == 5:  # (B, 3, T, H, W) -> per sample T tiles, a white column between samples
        _, c, t, h, w = rgb.shape
        keep = min(per_class, 3)
        rows = []
        for k in range(n):
            tiles = []
            for j in range(keep):
                v = rgb[k * per_class + j]
                tiles += [v[:, f] for f in range(t)] + [torch.ones(c, h, w)]
            rows += tiles[:-1]
        rgb = torch.stack(rows)
    img = tm.grid(rgb, rows=n, scale=max(2, 96 // rgb.shape[-1]), labels=m.classes, label_width=110)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="flux", choices=[*RECIPES, "all"])
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the family's recipe)")
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "trained")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs", help="where the sample grid PNG goes")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-per-class", type=int, default=10)
    ap.add_argument("--cfgs", default="1", help="extra CFG scales to report accuracy at (comma separated)")
    ap.add_argument("--eval-only", action="store_true", help="evaluate and draw the saved model")
    ap.add_argument("--classifier", action="store_true", help="retrain the classifier even if --out has one")
    args = ap.parse_args()

    import logging

    import comfy_env

    comfy_env.setup_comfy()
    logging.getLogger().setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, flush=True)

    cfgs = tuple(float(c) for c in args.cfgs.split(",") if c)
    for family in (list(RECIPES) if args.family == "all" else [args.family]):
        recipe = RECIPES[family]
        t_all = time.time()
        if not args.eval_only:
            steps = args.steps or recipe.steps
            result = train(family, recipe, steps, log)
            import trained_models as tm

            if args.classifier or not tm.classifier_path(family, args.out).exists():
                clf = train_classifier(family, recipe, args.out, log)
            else:  # the classifier depends on the classes and drawing only: keep the one there
                old = tm.model_path(family, args.out)
                clf = tm._meta_file(old)["evaluation"]["classifier"] if old.exists() else {}
                log(f"[{family}] keeping the classifier {tm.classifier_path(family, args.out)} (--classifier "
                    f"retrains it)")
            path = save(family, recipe, result, args.out, dict(classifier=clf))
            log(f"[{family}] saved {path} ({path.stat().st_size / 1e6:.2f} MB)")
        else:
            import trained_models as tm

            path = tm.model_path(family, args.out)
            clf = tm._meta_file(path)["evaluation"].get("classifier", {})
        evaluation, m, samples = evaluate(family, args.out, args.eval_per_class, log, cfgs)
        evaluation["classifier"] = clf
        set_evaluation(path, evaluation)
        picture(family, m, samples, args.eval_per_class, args.docs / f"trained-{family}.png")
        log(f"[{family}] done in {time.time() - t_all:.0f} s: accuracy {evaluation['accuracy']:.3f} at "
            f"{evaluation['sampler']}/{evaluation['scheduler']} {evaluation['steps']} steps cfg {evaluation['cfg']:g}")


if __name__ == "__main__":
    main()
