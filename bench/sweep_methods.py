"""The methods ``bench/sweep.py`` sweeps: one entry each (adding a method = adding one :class:`SweepMethod`).

An entry names the ComfyUI node that applies the method (looked up by node id among this pack's nodes and
ComfyUI's own, see :data:`NODE_SOURCES`), the input swept (its main knob) with the values tried at each model
size, any inputs that need the bench model first (``prepared``: MagCache's calibration) and any inputs held at
a value other than the node's default (``fixed``, e.g. DBCache's Fn for a 17-block model). Every other input
keeps the node's own default, so a point is what a user gets by dropping the node in with those values.
An entry whose node is not installed is skipped with a message (nodes added on other branches).
Entry keys are the support matrix's method keys (``tests/support/methods_registry.py`` ``METHODS``), plus
``easycache`` for ComfyUI's built-in reference; :data:`BY_KEY` maps each key to its entry.

A method with a calibrate node (MagCache Calibrate -> Apply MagCache) gets its file from
``Context.calibration(calibrate_node_id, folder)`` in ``bench/sweep.py``: add a one-line ``prepared`` hook that
calls it (see :func:`_magcache_inputs`) and the entry.

The default sweep runs every point at cfg 1 (one model call per step, as guidance-distilled Flux runs), against
an uncached run at the same cfg; the presets of ``bench/sweep.py`` (``--preset``) pick another model, cfg,
entries and knob values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

# Modules whose ``comfy_entrypoint`` lists the nodes entries may name ("pack": this pack).
NODE_SOURCES = ("pack", "comfy_extras.nodes_easycache")


@dataclass(frozen=True)
class SweepMethod:
    key: str  # CSV / command-line name: the support matrix's method key
    label: str  # legend entry
    node_id: str
    knob: str  # the swept input
    # knob values per model size ("tiny", "medium", "large"); a size without an entry uses "medium"'s
    values: dict[str, tuple[float, ...]]
    # inputs computed from the bench context (e.g. a calibration made on the bench model), by input name
    prepared: Callable[[Any], dict[str, Any]] | None = None
    # inputs held at a non-default value for every point, by input name (Int inputs take ints)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    reference: bool = False  # drawn as the reference curve (ComfyUI's built-in EasyCache)
    # the tiny_models family the method needs where the DiT bench models do not take it (DeepCache: a UNet)
    family: str | None = None
    note: str = field(default="", compare=False)
    # The recommended setting on the trained models (tests/comfy/test_trained_quality_comfy.py checks it reaches
    # PSNR >= 30 dB on each, cfg 1 and 3.5): inputs on top of the node's defaults (empty: the defaults), and per
    # trained family (tests/support/trained_models.py key) inputs on top of those
    recommended: Mapping[str, Any] = field(default_factory=dict)
    recommended_by_family: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.knob in self.fixed:
            raise ValueError(f"{self.key}: the swept input {self.knob!r} cannot also be fixed")

    def values_for(self, size: str) -> tuple[float, ...]:
        return self.values.get(size, self.values["medium"])

    def recommended_for(self, family: str) -> dict[str, Any]:
        """The recommended inputs (beyond the node defaults) on the trained ``family`` model."""
        return {**self.recommended, **self.recommended_by_family.get(family, {})}


def _magcache_inputs(ctx: Any) -> dict[str, Any]:
    return {"calibration": ctx.calibration("DitCache.MagCacheCalibrate", "magcache")}


def _stepschedule_inputs(ctx: Any) -> dict[str, Any]:
    return {"calibration": ctx.calibration("DitCache.StepScheduleCalibrate", "magcache")}


def _smoothcache_inputs(ctx: Any) -> dict[str, Any]:
    return {"calibration": ctx.calibration("DitCache.SmoothCacheCalibrate", "magcache")}


# Knob values: the random-weight bench models' step-to-step changes are smaller than a trained model's, so
# MagCache's useful thresholds there are small (calibrated ratios within 1 +- 0.02, trained Flux up to 1.21).
# Values span "few skips" to "most steps skipped" at 20 steps on each size; the medium values of DBCache,
# TaylorSeer and Adaptive Cache are among those the forecast preset measures on the same model. MagCache
# with its default max_skip_steps 3 computes at least 8 of 20 steps. Two or three points each keep the random
# preset (medium, CPU) near 5 minutes on a quiet 2-core machine. The "trained" values (the default preset, the
# small trained models) run from about the node default to past the 30 dB bar on all three trained models.
# ``recommended``: see SweepMethod; measured by ``bench/sweep.py --preset trained-defaults`` (docs/benchmarks.md).
METHODS: tuple[SweepMethod, ...] = (
    SweepMethod("fbc", "First Block Cache", "DitCache.ApplyFirstBlockCache", "threshold",
                {"tiny": (0.1, 0.2, 0.3), "medium": (0.08, 0.12, 0.2),
                 "trained": (0.08, 0.12, 0.2, 0.3, 0.4, 0.5)}),
    SweepMethod("magcache", "MagCache (calibrated)", "DitCache.ApplyMagCache", "threshold",
                {"tiny": (0.02, 0.1, 0.3), "medium": (0.01, 0.03), "trained": (0.05, 0.1, 0.2, 0.3, 0.4, 0.8)},
                prepared=_magcache_inputs,
                note="calibrated on the bench model first (MagCache Calibrate, same steps)"),
    # Wan and Qwen-Image read TeaCache's signal without a published rescaling polynomial ("raw"): its scale is
    # not Flux's, and 0.4 (a Flux value, the node's default before "auto") falls below 30 dB on both trained
    # models; 0.1 is what the node's default -1 ("auto") now runs with raw coefficients, named here explicitly
    SweepMethod("teacache", "TeaCache", "DitCache.ApplyTeaCache", "rel_l1_threshold",
                {"tiny": (0.25, 0.6, 1.0), "medium": (0.25, 0.4, 0.6), "trained": (0.1, 0.15, 0.25, 0.4, 0.6, 1.0)},
                recommended_by_family={"wan21": {"rel_l1_threshold": 0.1}, "qwen_image": {"rel_l1_threshold": 0.1}}),
    # Fn 1 (cache-dit's fastest Flux setting, F1B0) with its TaylorSeer calibrator: the node's defaults (Fn 8,
    # warm-up 8) are cache-dit's for 28-50 steps of a 57-block Flux; the medium model has 17 blocks and the
    # trained ones 4-6 (Fn 8 cannot apply there), and they run 20 steps
    SweepMethod("dbcache", "DBCache F1B0 + TaylorSeer 1", "DitCache.ApplyDBCache", "threshold",
                {"tiny": (0.1, 0.3), "medium": (0.1, 0.3), "trained": (0.2, 0.3, 0.5, 0.8)},
                fixed={"Fn": 1, "Bn": 0, "warmup_steps": 4, "taylorseer_order": 1},
                recommended={"Fn": 1, "Bn": 0, "warmup_steps": 4, "taylorseer_order": 1, "threshold": 0.2},
                note="Fn 1, Bn 0, warmup_steps 4, taylorseer_order 1 (node defaults Fn 8 / warm-up 8 suit "
                     "28-50 steps of a 57-block Flux; the bench models have 4-17 blocks and run 20 steps)"),
    # final_full_steps 2: at the default 0 the trained Flux-class model at CFG 3.5 fell to a min PSNR of 23 dB
    # over 6 seeds (mean 32); with the last two steps computed it kept >= 28 dB on every trained model
    SweepMethod("taylorseer", "TaylorSeer", "DitCache.ApplyTaylorSeer", "cache_interval",
                {"tiny": (3, 5), "medium": (3, 5), "trained": (2, 3, 4, 5, 6, 8)},
                recommended={"final_full_steps": 2}),
    SweepMethod("adaptive", "Adaptive Cache", "DitCache.ApplyAdaptiveCache", "threshold",
                {"tiny": (0.2, 0.8), "medium": (0.2, 0.4, 0.8), "trained": (0.1, 0.2, 0.4, 0.8)}),
    SweepMethod("pab", "PAB", "DitCache.PABConfig", "spatial_skip",
                {"tiny": (2, 4), "medium": (2, 4), "trained": (2, 4, 6)},
                note="reuses attention cores only (no model call is skipped: computed stays at every call; the "
                     "call-count ideal is 1x, --weighted-ideal counts the reused cores at their share)"),
    SweepMethod("fastercache", "FasterCache", "DitCache.ApplyFasterCache", "spatial_skip",
                {"tiny": (2, 4), "medium": (2, 4), "trained": (2, 4)},
                note="at cfg 1 only its attention extrapolation acts (no unconditional branch to rebuild; "
                     "bench/sweep.py --preset attention measures that part on a video model at CFG 5)"),
    SweepMethod("smoothcache", "SmoothCache (calibrated)", "DitCache.ApplySmoothCache", "alpha",
                {"tiny": (0.05, 0.2), "medium": (0.1, 0.3), "trained": (0.1, 0.2, 0.4, 0.8)},
                prepared=_smoothcache_inputs,
                note="calibrated on the bench model first (SmoothCache Calibrate, same steps); reuses attention "
                     "cores and feed-forward outputs (no model call is skipped), the schedule rebuilt per alpha"),
    # the node's default codebook (the authors' 30-step "slow" one) with its thresholds scaled: the bench models'
    # residual change per step is smaller than a trained model's, so scales below 1 are where the rates differ
    SweepMethod("adacache", "AdaCache", "DitCache.ApplyAdaCache", "threshold_scale",
                {"tiny": (0.25, 1.0), "medium": (0.25, 1.0), "trained": (0.25, 0.5, 1.0, 2.0)}),
    SweepMethod("seacache", "SeaCache", "DitCache.ApplySeaCache", "threshold",
                {"tiny": (0.1, 0.25, 1.0), "medium": (0.1, 0.25, 0.5), "trained": (0.1, 0.25, 0.5, 1.0)},
                note="diffusers' defaults otherwise (residual order 1, retention 1, end 1, at most 2 in a row)"),
    # the budget: computed steps per CFG stream of the 20 (tiny/medium: of the sweep's steps)
    SweepMethod("stepschedule", "Step Schedule (DP, calibrated)", "DitCache.ApplyStepSchedule", "computed_steps",
                {"tiny": (5, 8), "medium": (5, 8), "trained": (3, 4, 5, 6, 8, 10)},
                prepared=_stepschedule_inputs,
                note="calibrated on the bench model first (StepSchedule Calibrate, same steps); the schedule "
                     "is the DP's for the budget with the node's default on_skipped"),
    SweepMethod("deepcache", "DeepCache (UNets)", "DitCache.ApplyDeepCache", "interval",
                {"tiny": (2, 3, 5), "medium": (2, 3, 5)}, family="sd15",
                note="UNet models only: on a DiT bench model the node warns and leaves the model unchanged (points "
                     "equal the uncached run); bench/sweep.py --preset unet runs it on the tiny SD1.5 UNet"),
    SweepMethod("easycache", "EasyCache (ComfyUI built-in)", "EasyCache", "reuse_threshold",
                {"tiny": (0.05, 0.2, 0.5), "medium": (0.1, 0.2, 0.5), "trained": (0.05, 0.1, 0.2)}, reference=True,
                note="comfy_extras.nodes_easycache, start 0.15 / end 0.95 (its defaults); it estimates the change "
                     "from the latent subsampled 8x per side, one value per channel on the trained models' 8x8 "
                     "latents, so its trained-model points say little about larger latents"),
)

# method key -> entry (a completeness check can compare these keys with the support matrix's)
BY_KEY: dict[str, SweepMethod] = {m.key: m for m in METHODS}
METHOD_KEYS: tuple[str, ...] = tuple(BY_KEY)
