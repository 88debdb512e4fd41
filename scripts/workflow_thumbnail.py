"""Draw a workflow's thumbnail for ComfyUI's template browser (``workflows/<name>.jpg``; the browser shows the
file name as the title and asks for ``<name>.jpg`` beside the JSON).

The picture is a map of the graph: every node as a box at its place (dit-cache nodes highlighted, loaders,
notes and the rest in their own colours, muted nodes dimmed), the links as lines, and the workflow's name and
cache node titles as text. Pillow only; the same input gives the same bytes (``make_workflows.py --check``).

    .venv/bin/python scripts/workflow_thumbnail.py workflows/flux-dbcache.json out.jpg
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

SIZE = (512, 320)
HEADER = 64  # px of title above the map
MARGIN = 14
BACKGROUND = (24, 26, 30)
GRID = (34, 37, 43)
COLORS = {"cache": (46, 160, 130), "loader": (64, 96, 150), "note": (120, 96, 60), "sampler": (130, 80, 150),
          "other": (80, 84, 92)}
LOADER_TYPES = ("UNETLoader", "CLIPLoader", "DualCLIPLoader", "VAELoader", "CheckpointLoaderSimple")
TITLE_HEIGHT = 30


def _kind(node: dict[str, Any]) -> str:
    t = node["type"]
    if t.startswith("DitCache."):
        return "cache"
    if t in LOADER_TYPES:
        return "loader"
    if t in ("Note", "MarkdownNote"):
        return "note"
    if t.startswith("KSampler"):
        return "sampler"
    return "other"


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _dim(color: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple((c + 2 * b) // 3 for c, b in zip(color, BACKGROUND))  # type: ignore[return-value]


def draw(workflow: dict[str, Any], name: str) -> bytes:
    """The thumbnail of a UI-format workflow called ``name``, as JPEG bytes."""
    nodes = workflow["nodes"]
    img = Image.new("RGB", SIZE, BACKGROUND)
    d = ImageDraw.Draw(img)
    for x in range(0, SIZE[0], 32):
        d.line([(x, HEADER), (x, SIZE[1])], fill=GRID)
    for y in range(HEADER, SIZE[1], 32):
        d.line([(0, y), (SIZE[0], y)], fill=GRID)

    # graph bounds -> the map area below the header
    x0 = min(n["pos"][0] for n in nodes)
    y0 = min(n["pos"][1] - TITLE_HEIGHT for n in nodes)
    x1 = max(n["pos"][0] + n["size"][0] for n in nodes)
    y1 = max(n["pos"][1] + n["size"][1] for n in nodes)
    area_w, area_h = SIZE[0] - 2 * MARGIN, SIZE[1] - HEADER - 2 * MARGIN
    scale = min(area_w / (x1 - x0), area_h / (y1 - y0))
    ox = MARGIN + (area_w - (x1 - x0) * scale) / 2
    oy = HEADER + MARGIN + (area_h - (y1 - y0) * scale) / 2

    def box(n: dict[str, Any]) -> tuple[float, float, float, float]:
        left = ox + (n["pos"][0] - x0) * scale
        top = oy + (n["pos"][1] - TITLE_HEIGHT - y0) * scale
        return (left, top, left + n["size"][0] * scale, top + (n["size"][1] + TITLE_HEIGHT) * scale)

    by_id = {n["id"]: n for n in nodes}
    for _lid, src, _ss, dst, _ds, _t in workflow["links"]:
        a, b = box(by_id[src]), box(by_id[dst])
        d.line([(a[2], (a[1] + a[3]) / 2), (b[0], (b[1] + b[3]) / 2)], fill=(150, 150, 160), width=1)
    label_font = _font(11)
    for n in nodes:
        color = COLORS[_kind(n)]
        if n.get("mode", 0) == 2:
            color = _dim(color)
        b = box(n)
        d.rounded_rectangle(b, radius=3, fill=color, outline=(230, 230, 235) if _kind(n) == "cache" else None)
        if _kind(n) == "cache":
            label = n["type"].removeprefix("DitCache.")
            while label and d.textlength(label, font=label_font) > b[2] - b[0] - 6:
                label = label[:-1]
            d.text((b[0] + 3, b[1] + 2), label, font=label_font, fill=(255, 255, 255))

    d.rectangle([(0, 0), (SIZE[0], HEADER)], fill=(16, 18, 22))
    d.text((MARGIN, 10), name, font=_font(24), fill=(240, 240, 240))
    d.text((MARGIN, 40), "dit-cache example workflow", font=_font(14), fill=(46, 200, 160))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=88)
    return out.getvalue()


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    dst.write_bytes(draw(json.loads(src.read_text(encoding="utf-8")), src.stem))
    return 0


if __name__ == "__main__":
    sys.exit(main())
