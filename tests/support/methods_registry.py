"""Every caching method of the pack, for the support matrix (tests/comfy/test_matrix.py): one entry per method.

An entry says how to put the method on a ComfyUI model (a ``ModelPatcher``) at the three settings the matrix
samples with, and which families it can apply to:

- ``aggressive``: must skip at least one model call on every family it applies to;
- ``mild``: the output must stay finite and within ``mild_min_psnr`` dB of the uncached output;
- ``disabled``: the output must be bit-identical to the uncached one.

The settings are the same for every family (what a user would set), not tuned per family. A family outside
``families`` must be refused clearly: ``apply`` logs a warning naming the method and returns the model itself,
or raises ValueError naming the method (what a node does in ``execute``, before sampling). Either way the input
model is left unchanged; the matrix shows "does not apply".
Adding a method = adding one :class:`Method` to :data:`METHODS`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

SETTINGS = ("aggressive", "mild", "disabled")


@dataclass(frozen=True)
class Method:
    name: str  # column title in the support matrix (docs/support-matrix.md)
    node_id: str
    # (ModelPatcher, setting, family) -> ModelPatcher; must not change its input. ``family`` is the tiny-model
    # family key (tests/support/tiny_models.py; "sd15" for the unknown-model check), for methods that need
    # per-family data such as a calibration
    apply: Callable[[Any, str, str], Any]
    # matrix family keys (tests/support/matrix_families.py) the method can apply to; None = every DiT family
    families: frozenset[str] | None = None
    mild_min_psnr: float = 30.0  # dB, final latent against the uncached one
    unets: bool = False  # also applies to the UNet rows (SD1.5, SDXL: matrix_families.UNET_ROWS)

    def applies_to(self, row_key: str) -> bool:
        """Whether the method applies to the matrix row ``row_key`` (else it must refuse it clearly)."""
        from matrix_families import UNET_ROWS

        if row_key in UNET_ROWS:
            return self.unets
        return self.families is None or row_key in self.families


def _fbc(model: Any, setting: str, family: str) -> Any:
    from dit_cache.nodes.fbc_node import ApplyFirstBlockCache

    # thresholds on the FBC metric mean|r - r_ref| / mean|r_ref|; 0 disables the cache (model unchanged).
    # The tiny models' metric runs 0.01-0.45 per step (see tiny_models.smooth_time_embedding)
    threshold = {"aggressive": 0.3, "mild": 0.15, "disabled": 0.0}[setting]
    return ApplyFirstBlockCache.execute(model, threshold=threshold, start_percent=0.0, end_percent=1.0,
                                        max_consecutive_skips=-1, warmup_steps=0).result[0]


# --- MagCache, SmoothCache: need a calibration of the model, made the way a user makes it (the Calibrate node +
# a sampler run with the matrix's steps and CFG), once per model and method, kept in a temporary folder.
_calibrations: dict[tuple[int, str], str] = {}
_calibration_dir: list[str] = []


def _calibration_for(model: Any, family: str, method: str = "MagCache") -> str:
    import tempfile

    import folder_paths
    import tiny_models
    from sampling import ksample

    from dit_cache.nodes import calibration_store
    from dit_cache.hosts.comfy import run_log
    from dit_cache.nodes.magcache_nodes import MagCacheCalibrate
    from dit_cache.nodes.smoothcache_nodes import SmoothCacheCalibrate
    from dit_cache.nodes.stepschedule_node import StepScheduleCalibrate

    calibrate = {"MagCache": MagCacheCalibrate, "SmoothCache": SmoothCacheCalibrate,
                 "StepSchedule": StepScheduleCalibrate}[method]
    key = (id(model.model), method)
    if key not in _calibrations:
        if not _calibration_dir:
            calibration_store.register()
            _calibration_dir.append(tempfile.mkdtemp(prefix="dit-cache-matrix-"))
            folder_paths.folder_names_and_paths[calibration_store.FOLDER][0].insert(0, _calibration_dir[0])
        tiny = tiny_models.TinyModel(family, "tiny", model, tiny_models.FAMILIES[family]["tiny"], 0)
        earlier = run_log.recent()  # the calibration run is not part of the cell's runs
        ksample(calibrate.execute(model, filename_prefix="matrix").result[0], tiny, cfg=tiny.spec.cfg)
        saved = [r for r in run_log.recent() if r.get("method") == f"{calibrate.label().replace(' ', '')}"
                 and "calibration" in r][-1][
            "calibration"]["file"]
        run_log.clear()
        for r in earlier:
            run_log.record(r)
        _calibrations[key] = saved
    return _calibrations[key]


def _magcache(model: Any, setting: str, family: str) -> Any:
    from dit_cache.nodes.calibration_store import identify
    from dit_cache.nodes.magcache_nodes import ApplyMagCache

    # (threshold, K): the error budget on the accumulated magnitude ratio; 0 disables (model unchanged)
    threshold, k = {"aggressive": (0.3, 3), "mild": (0.02, 2), "disabled": (0.0, 3)}[setting]
    calibration = _calibration_for(model, family) if setting != "disabled" and identify(model) else "none"
    return ApplyMagCache.execute(model, calibration=calibration, threshold=threshold, max_skip_steps=k,
                                 retention_ratio=0.2, start_percent=0.0, end_percent=1.0,
                                 interpolation="schedule").result[0]


def _stepschedule(model: Any, setting: str, family: str) -> Any:
    from dit_cache.nodes.calibration_store import identify
    from dit_cache.nodes.stepschedule_node import ApplyStepSchedule

    # computed steps per stream of the matrix's run; 0 disables (model unchanged)
    budget = {"aggressive": 3, "mild": 8, "disabled": 0}[setting]
    calibration = _calibration_for(model, family, "StepSchedule") if budget and identify(model) else "none"
    return ApplyStepSchedule.execute(model, calibration=calibration, computed_steps=budget, max_error=0.0,
                                     on_skipped="adams-bashforth 1", order=1).result[0]


def _teacache(model: Any, setting: str, family: str) -> Any:
    from dit_cache.nodes.teacache_node import ApplyTeaCache

    # accumulated (rescaled) relative L1 change of block 0's modulated input; 0 disables
    threshold = {"aggressive": 0.6, "mild": 0.1, "disabled": 0.0}[setting]
    return ApplyTeaCache.execute(model, rel_l1_threshold=threshold, coefficients="auto", start_percent=0.0,
                                 end_percent=1.0, max_consecutive_skips=-1).result[0]


def pab_inputs(spatial: int, cross: int, start: float = 0.2, end: float = 0.9) -> dict:
    """PAB Config's inputs: N per attention kind (temporal off) and one window for every kind."""
    kinds = ("spatial", "temporal", "cross")
    return {"spatial_skip": spatial, "temporal_skip": 0, "cross_skip": cross,
            **{f"{k}_start_percent": start for k in kinds}, **{f"{k}_end_percent": end for k in kinds}}


def fastercache_inputs(spatial: int = 2, uncond: int = 5, attention_start: float = 0.319,
                       uncond_start: float = 0.359) -> dict:
    """Apply FasterCache's inputs: diffusers' defaults unless given."""
    return {"spatial_skip": spatial, "temporal_skip": 0, "attention_weight": 0.5, "uncond_skip": uncond,
            "alpha_low": 1.1, "alpha_high": 1.1, "attention_start_percent": attention_start,
            "attention_end_percent": 1.0, "uncond_start_percent": uncond_start, "uncond_end_percent": 1.0,
            "low_freq_start_percent": 0.099, "low_freq_end_percent": 0.901,
            "high_freq_start_percent": 0.699, "high_freq_end_percent": 1.0}


def _pab(model: Any, setting: str, family: str) -> Any:
    from dit_cache.nodes.pab_node import PABConfigNode

    # aggressive: every attention reused on every other call over the whole schedule; mild: PAB's defaults;
    # disabled: every N below 2 (the model comes back unchanged)
    inputs = {"aggressive": pab_inputs(2, 2, 0.0, 1.0), "mild": pab_inputs(2, 6),
              "disabled": pab_inputs(0, 0)}[setting]
    return PABConfigNode.execute(model, **inputs).result[0]


def _fastercache(model: Any, setting: str, family: str) -> Any:
    from dit_cache.nodes.fastercache_node import ApplyFasterCache

    # aggressive: N 2 for attention and the uncond branch from the first step; mild: diffusers' defaults but the
    # uncond branch computed every 3rd step (the tiny random models' cond/uncond gap drifts faster than a
    # trained model's: at N 5 Wan I2V falls to 29 dB); disabled: every N below 2
    inputs = {"aggressive": fastercache_inputs(2, 2, 0.0, 0.0), "mild": fastercache_inputs(uncond=3),
              "disabled": fastercache_inputs(0, 0)}[setting]
    return ApplyFasterCache.execute(model, **inputs).result[0]


def _dbcache(model: Any, setting: str, family: str) -> Any:
    from dit_cache.nodes.dbcache_node import ApplyDBCache

    # F1B0 (every tiny model has more than one block), 4 warm-up steps; threshold on the Fn residual's relative
    # change (0 disables); the mild setting predicts the middle residual with TaylorSeer order 1
    threshold, order = {"aggressive": (0.3, 0), "mild": (0.1, 1), "disabled": (0.0, 0)}[setting]
    return ApplyDBCache.execute(model, Fn=1, Bn=0, threshold=threshold, warmup_steps=4, max_cached_steps=-1,
                                max_consecutive_cached_steps=-1, taylorseer_order=order, start_percent=0.0,
                                end_percent=1.0).result[0]


def _taylorseer(model: Any, setting: str, family: str) -> Any:
    from dit_cache.nodes.taylorseer_node import ApplyTaylorSeer

    # one computed step in every `interval` (1 disables); 3 warm-up steps, order 1, bfloat16 factors (defaults)
    interval = {"aggressive": 5, "mild": 2, "disabled": 1}[setting]
    return ApplyTaylorSeer.execute(model, cache_interval=interval, warmup_steps=3, final_full_steps=0, max_order=1,
                                   predict="block outputs", factor_dtype="bfloat16").result[0]


def _adaptive(model: Any, setting: str, family: str) -> Any:
    from dit_cache.nodes.adaptive_node import ApplyAdaptiveCache

    # accumulated estimated relative change of the stack's residual; 0 disables; window from 15 % (default)
    threshold = {"aggressive": 0.8, "mild": 0.1, "disabled": 0.0}[setting]
    return ApplyAdaptiveCache.execute(model, threshold=threshold, start_percent=0.15, end_percent=1.0,
                                      max_consecutive_skips=-1, warmup_steps=0).result[0]


def _adacache(model: Any, setting: str, family: str) -> Any:
    from dit_cache.cache_core.methods.adacache import FAST_30, SLOW_30
    from dit_cache.nodes.adacache_node import ApplyAdaCache

    # the AdaCache authors' 30-step codebooks: "fast" (up to 6 steps per computed one) and "slow" (up to 3);
    # threshold_scale 0 disables (model unchanged). The tiny models' residual change per step runs 0.01-0.15
    codebook, scale = {"aggressive": (FAST_30, 1.0), "mild": (SLOW_30, 1.0), "disabled": (FAST_30, 0.0)}[setting]
    return ApplyAdaCache.execute(model, codebook=codebook, threshold_scale=scale, motion_regularization=True,
                                 block=-1, start_percent=0.0, end_percent=1.0, max_consecutive_skips=-1,
                                 warmup_steps=0).result[0]


def _smoothcache(model: Any, setting: str, family: str) -> Any:
    from dit_cache.nodes.calibration_store import identify
    from dit_cache.nodes.smoothcache_nodes import ApplySmoothCache

    # alpha: the error budget the schedule is rebuilt with (0 disables). Aggressive: every calibrated error
    # fits (each component type reuses 3 steps in 4); mild: the tiny models' lag-1 errors run 0.03-0.1
    alpha = {"aggressive": 10.0, "mild": 0.03, "disabled": 0.0}[setting]
    calibration = _calibration_for(model, family, "SmoothCache") if setting != "disabled" and identify(model) else ""
    return ApplySmoothCache.execute(model, calibration=calibration, alpha=alpha).result[0]


def _seacache(model: Any, setting: str, family: str) -> Any:
    from dit_cache.nodes.seacache_node import ApplySeaCache

    # accumulated relative change of the spectrally filtered input latent (0 disables); diffusers' defaults
    # otherwise (order 1, retention 1, end 1, at most 2 in a row). The tiny models' SEA distance runs 0.07-1.4 per
    # step; 0.25 is diffusers' default
    threshold = {"aggressive": 1.0, "mild": 0.25, "disabled": 0.0}[setting]
    return ApplySeaCache.execute(model, threshold=threshold, residual_order=1, retention_steps=1, cache_end_steps=1,
                                 max_consecutive_cached=2, power_exp=3.0, start_percent=0.0,
                                 end_percent=1.0).result[0]


def _families_with_signal() -> frozenset[str]:
    """Matrix rows whose layout says how to read TeaCache's first-block signal."""
    from matrix_families import ROWS

    from dit_cache.cache_core.layout import COMFY_LAYOUTS
    from dit_cache.cache_core.methods.teacache_signals import signal_fn

    with_signal = {lay.family for lay in COMFY_LAYOUTS if lay.signal and signal_fn(lay.signal) is not None}
    return frozenset(r.key for r in ROWS if r.layout in with_signal)


def _deepcache(model: Any, setting: str, family: str) -> Any:
    from dit_cache.nodes.deepcache_node import ApplyDeepCache

    # one full UNet call in every `interval` (1 disables: model unchanged); the paper's shallow branch (depth 1)
    interval = {"aggressive": 5, "mild": 2, "disabled": 1}[setting]
    return ApplyDeepCache.execute(model, interval=interval, branch_depth=1, start_percent=0.0, end_percent=1.0,
                                  warmup_steps=0).result[0]


METHODS: dict[str, Method] = {
    "fbc": Method("First Block Cache", "DitCache.ApplyFirstBlockCache", _fbc, unets=True),
    "magcache": Method("MagCache", "DitCache.ApplyMagCache", _magcache),
    "teacache": Method("TeaCache", "DitCache.ApplyTeaCache", _teacache, families=_families_with_signal()),
    "dbcache": Method("DBCache", "DitCache.ApplyDBCache", _dbcache),
    "taylorseer": Method("TaylorSeer", "DitCache.ApplyTaylorSeer", _taylorseer),
    "adaptive": Method("Adaptive Cache", "DitCache.ApplyAdaptiveCache", _adaptive),
    "pab": Method("PAB", "DitCache.PABConfig", _pab),
    "fastercache": Method("FasterCache", "DitCache.ApplyFasterCache", _fastercache),
    "smoothcache": Method("SmoothCache", "DitCache.ApplySmoothCache", _smoothcache),
    "stepschedule": Method("Step Schedule", "DitCache.ApplyStepSchedule", _stepschedule),
    "seacache": Method("SeaCache", "DitCache.ApplySeaCache", _seacache),
    "deepcache": Method("DeepCache", "DitCache.ApplyDeepCache", _deepcache, families=frozenset(), unets=True),
    "adacache": Method("AdaCache", "DitCache.ApplyAdaCache", _adacache),
}
