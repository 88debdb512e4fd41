"""Test-only ComfyUI node pack: "DitCacheTest.TinyModelLoader" (V3 API).

Not part of dit-cache. ``tests/server/test_server.py`` makes a real ComfyUI server load this folder by passing an
``--extra-model-paths-config`` YAML whose ``custom_nodes:`` entry points at ``tests/support/test_nodes``; it is
never placed in ComfyUI's own ``custom_nodes`` folder. The node outputs a deterministic tiny model from
``tests/support/tiny_models.py`` with matching conditioning and an empty latent, so a prompt can go
loader -> dit-cache node -> KSampler -> SaveLatent without any checkpoint files.

A family with the suffix ":trained" ("flux:trained", "wan21:trained", "qwen_image:trained") loads the small
*trained* model of ``tests/support/trained_models.py`` (models/trained/) instead: positive = the prompt of class
``seed`` (modulo the number of classes; the weights are fixed), negative = the empty prompt it was trained with.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from comfy_api.latest import ComfyExtension, io

_SUPPORT = Path(__file__).resolve().parents[2]  # tests/support, home of tiny_models.py
if str(_SUPPORT) not in sys.path:
    sys.path.insert(0, str(_SUPPORT))

import tiny_models  # noqa: E402
import trained_models  # noqa: E402

log = logging.getLogger("dit_cache_test_loader")

TRAINED = ":trained"
# Built models per (family, seed): building initialises every weight, so reuse them across prompts.
_MODELS: dict[tuple[str, int], tiny_models.TinyModel] = {}


def _model(family: str, seed: int) -> tiny_models.TinyModel:
    key = (family, -1 if family.endswith(TRAINED) else seed)
    if key not in _MODELS:
        if family.endswith(TRAINED):
            log.info("[dit-cache-test] loading trained %s model", family)
            _MODELS[key] = trained_models.load(family[: -len(TRAINED)])
        else:
            log.info("[dit-cache-test] building tiny %s model (seed %d)", family, seed)
            _MODELS[key] = tiny_models.build(family, "tiny", seed=seed)
    return _MODELS[key]


class TinyModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DitCacheTest.TinyModelLoader",
            display_name="Tiny Model Loader (dit-cache tests)",
            category="dit-cache/testing",
            description="A deterministic, randomly initialised tiny DiT of a real ComfyUI model class (or, "
                        "family suffix :trained, a small trained one), with matching conditioning and an "
                        "empty latent. For tests only.",
            inputs=[
                io.Combo.Input("family", default="flux",
                               options=[*tiny_models.FAMILIES, *(f + TRAINED for f in trained_models.FAMILIES)],
                               tooltip="A random tiny model of the family, or (suffix :trained) its small "
                                       "trained model (models/trained/)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Weight initialisation seed; for a trained model, the class to draw "
                                     "(seed modulo the number of classes)."),
                io.Int.Input("batch_size", default=1, min=1, max=16),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL"),
                io.Conditioning.Output(display_name="positive"),
                io.Conditioning.Output(display_name="negative"),
                io.Latent.Output(display_name="LATENT"),
            ],
        )

    @classmethod
    def execute(cls, family: str, seed: int, batch_size: int) -> io.NodeOutput:
        m = _model(family, seed)
        if isinstance(m, trained_models.TrainedModel):
            positive = m.conditioning(seed % len(m.classes))
            negative = m.empty()
            return io.NodeOutput(m.patcher, positive, negative, {"samples": m.latent(batch_size)})
        # Different conditioning seeds so that, with CFG, cond and uncond really differ.
        positive = m.conditioning(seed=1)
        negative = m.conditioning(seed=2)
        return io.NodeOutput(m.patcher, positive, negative, {"samples": m.latent(batch_size)})


class DitCacheTestExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [TinyModelLoader]


async def comfy_entrypoint() -> DitCacheTestExtension:
    return DitCacheTestExtension()
