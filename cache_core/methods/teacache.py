"""TeaCache: skip the whole block stack while the first block's timestep-modulated input barely changed.

Rule (TeaCache paper, arXiv 2411.19108; ali-vilab/TeaCache): per CFG stream, with m_t the first block's
modulated input (the family's signal, ``methods/teacache_signals.py``) ``delta = mean|m_t - m_{t-1}| / mean|m_{t-1}|``
(m updated every call), ``acc += poly(delta)`` (the family's published rescaling polynomial, highest power
first; "raw" = no rescaling); skip while ``acc < threshold``, else compute and set ``acc = 0``. The first and
last steps always compute. Skipped calls reuse the residual of the whole block stack.

Coefficients: ``COEFFICIENTS`` below, the rescaling polynomials published with ali-vilab/TeaCache's per-model
scripts (TeaCache4FLUX, TeaCache4HunyuanVideo, ...). "auto" picks one by the block layout's family
(:data:`AUTO_BY_FAMILY`: layout data, not model names) and falls back to "raw" where nothing published fits the
signal we read; the run's settings name the set used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .. import distributed
from ..config import HIDDEN, SETTING, GatedConfig, check_range
from ..policy import Policy, Probe, RunInfo, StreamCall
from ..registry import MethodSpec, TuneKnob, register
from ..text import shown

# Published rescaling polynomials (ali-vilab/TeaCache; highest power first), for the families TeaCache acts on
# here (methods/teacache_signals.py: Flux / Flux Kontext / Chroma, Wan, Qwen-Image; docs/support-matrix.md).
# TeaCache's sets for HunyuanVideo, LTX-Video, Mochi, Lumina 2, HiDream and Cosmos are not offered: no signal of
# those families is read, so TeaCache does nothing there (RETIRED: saved workflows naming them still load).
COEFFICIENTS: dict[str, tuple[float, ...]] = {
    "flux": (4.98651651e2, -2.83781631e2, 5.58554382e1, -3.82021401, 2.64230861e-1),  # TeaCache4FLUX
}
# "auto": which published set fits a layout family's signal. Our Wan signal is e0 (the block's modulation
# input); the Wan 2.1 sets in methods.md were fitted on e, so Wan gets "raw". Qwen-Image and Chroma have
# no published set in our sources.
AUTO_BY_FAMILY: dict[str, str] = {"flux": "flux"}
CHOICES = ("auto", "flux", "raw")
# choices offered before issue 20 (coefficient sets of families TeaCache does not act on): a saved workflow with
# one of them loads, and the node runs "auto" after a warning
RETIRED = ("hunyuan_video", "ltx_video", "mochi", "lumina2", "hidream", "cosmos")
# rel_l1_threshold -1 ("auto"): the starting value for the coefficients in use. Flux-scale (published
# coefficients): TeaCache4FLUX's 0.4 (about 1.8x); raw relative L1 has a smaller scale: 0.1 (docs/benchmarks.md:
# 1.8-2.9x at 35-44 dB on the trained Wan- and Qwen-Image-class models, where 0.4 fell below 30 dB)
AUTO_THRESHOLD: dict[str, float] = {"flux": 0.4, "raw": 0.1}


def resolve_coefficients(choice: str, family: str) -> tuple[str, tuple[float, ...] | None]:
    """(name, coefficients or None for raw) for a node choice and a layout family (a RETIRED choice: as "auto")."""
    if choice == "auto" or choice in RETIRED:
        name = AUTO_BY_FAMILY.get(family, "raw")
    else:
        name = choice
    if name == "raw":
        return "raw", None
    if name not in COEFFICIENTS:
        raise ValueError(f"unknown TeaCache coefficients {shown(choice)}; choose one of {', '.join(CHOICES)}")
    return name, COEFFICIENTS[name]


def auto_threshold(coefficients_name: str) -> float:
    """The threshold "auto" (-1) stands for with these coefficients."""
    return AUTO_THRESHOLD.get(coefficients_name, AUTO_THRESHOLD["raw"])


@dataclass(frozen=True)
class TeaCacheConfig(GatedConfig):
    """threshold: accumulated (rescaled) relative L1 change that still skips (TeaCache4FLUX: 0.25 ≈ 1.5x,
    0.4 ≈ 1.8x, 0.6 ≈ 2.0x, 0.8 ≈ 2.25x). coefficients: rescaling polynomial, None = raw relative L1."""

    threshold: float = 0.4
    coefficients: Sequence[float] | None = field(default=None, metadata=HIDDEN)  # shown by name
    coefficients_name: str = field(default="raw", metadata={SETTING: "coefficients"})
    warmup_steps: int = field(default=0, kw_only=True, metadata=HIDDEN)  # the first step always computes anyway

    def __post_init__(self) -> None:
        check_range("threshold", self.threshold, 0.0, 100.0)
        if self.coefficients is not None:
            if not self.coefficients or not all(math.isfinite(float(c)) for c in self.coefficients):
                raise ValueError("TeaCache coefficients must be a non-empty list of finite numbers")
        super().__post_init__()

    def rescale(self, x: float) -> float:
        if self.coefficients is None:
            return x
        y = 0.0
        for c in self.coefficients:
            y = y * x + float(c)
        return y


class _TeaState:
    def __init__(self, run: RunInfo) -> None:
        self.run = run
        self.prev: torch.Tensor | None = None
        self.acc = 0.0
        self.pending: float | None = None
        self.last_step = False


class TeaCachePolicy(Policy):
    name = "TeaCache"
    probe = Probe.SIGNAL

    def new_run_state(self, run: RunInfo) -> _TeaState:
        return _TeaState(run)

    def begin_stream_call(self, state: _TeaState, info: StreamCall) -> None:
        sig = state.run.sigmas
        # the last step always computes: the call at (or after) the schedule's last start sigma
        state.last_step = bool(sig and len(sig) >= 2 and info.sigma is not None and info.sigma <= sig[-2])

    metric_width = 4

    def metric(self, state: _TeaState, probe: torch.Tensor | None) -> float | None:
        state.pending = None
        if probe is None or state.prev is None or state.prev.shape != probe.shape:
            return None
        prev = state.prev
        delta = ((probe.float() - prev).abs().mean() / prev.abs().mean().clamp_min(1e-12)).item()
        return self._accumulate(state, delta)

    def _accumulate(self, state: _TeaState, delta: float) -> float:
        state.pending = state.acc + self.config.rescale(delta)
        return state.pending

    def metric_sums(self, state: _TeaState, probe: torch.Tensor | None) -> torch.Tensor | None:
        if probe is None or state.prev is None or state.prev.shape != probe.shape:
            return None
        return distributed.relative_l1_sums(probe, state.prev)

    def metric_from_sums(self, state: _TeaState, sums: torch.Tensor | None) -> float | None:
        state.pending = None
        if sums is None:
            return None
        return self._accumulate(state, distributed.mean_at(sums, 0) / max(distributed.mean_at(sums, 2), 1e-12))

    def wants_skip(self, state: _TeaState, metric: float | None) -> bool:
        return (metric is not None and math.isfinite(metric) and metric < self.config.threshold
                and not state.last_step)

    def commit(self, state: _TeaState, probe: torch.Tensor | None, computed: bool) -> None:
        state.acc = 0.0 if computed or state.pending is None else state.pending
        if probe is not None:
            state.prev = probe.detach().float()



register(MethodSpec(
    key="teacache", label="TeaCache", config=TeaCacheConfig, policy=TeaCachePolicy,
    nodes=("teacache_node:ApplyTeaCache",), hosts=("comfy",),
    tune=TuneKnob("rel_l1_threshold", 0.05, 1.5)))
