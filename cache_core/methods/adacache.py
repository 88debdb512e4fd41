"""AdaCache (Kahatapitiya et al., "Adaptive Caching for Faster Video Generation with Diffusion Transformers",
arXiv 2411.02397): a content-adaptive caching schedule. Our implementation on the shared block runner.

After every computed call of a CFG stream, the residual (output minus input) of one chosen block is compared with
the one of the stream's previous computed call, ``k`` calls earlier:
``c = mean|r - r_prev| / mean|r_prev| / k`` (the paper's rate of change of the residual, an L1 distance per step;
we divide by ``mean|r_prev|`` so the codebook does not depend on the model's feature scale). A codebook of
(distance threshold, caching rate) entries turns ``c`` into a rate ``n``: the first entry (thresholds ascending)
with ``c < threshold`` gives ``n``, past the last threshold the last entry's rate. The next ``n - 1`` calls reuse
the cached residuals of every block; the call ``n`` after this one computes and decides again. So decisions need
no probe on skipped calls: every block is skipped.

Motion regularisation (MoReg, paper sec. 3.2): videos with more motion need more computation. On a video (the host
reports more than one latent frame) the chosen block's residual is split into frames and the motion score is the
normalised L1 difference of frames ``stride`` apart, ``m = sum|f[i+s] - f[i]| / (sum|f[i+s]| + sum|f[i]|)``.
The regulariser ``g = (m / motion_pivot) ** motion_power`` plus its motion gradient
``|motion_gradient_weight * (g - g_prev) / k|`` multiplies ``c`` before the lookup: high-motion content gets a
larger distance and so a lower rate, static content a smaller distance and a higher rate. It applies inside the
motion window only (default 10 %-90 % of the schedule; elsewhere, and on images, the factor is 1); the gradient
needs two decisions inside the window.

Defaults, from the authors' released configuration (AdaCache-DiT/AdaCache, Open-Sora 30 steps): the "fast"
codebook 0.08:6, 0.16:5, 0.24:4, 0.32:3, 0.40:2, 1.00:1 (their "slow" one: 0.08:3, 0.16:2, 0.24:1, 0.32:1,
0.40:1, 1.00:1; 100 steps: 0.03:12, 0.05:10, 0.07:8, 0.09:6, 0.11:4, 1.00:3), MoReg pivot 0.385, power 8,
gradient weight 10, frame stride 1, window steps 10-90 of 100. They observe a middle block (13 of 28); block -1
here means the middle block of whatever model runs.

Not the "Adaptive Cache" of ``methods/adaptive.py`` (EasyCache-style): that one decides at every call from how much
the input changed; AdaCache decides only on computed calls, from the change of a block's residual, how many of
the following calls are skipped outright.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import distributed
from ..config import HIDDEN, GatedConfig, check_int, check_range
from ..policy import Policy, Probe, RunInfo, StreamCall
from ..registry import MethodSpec, TuneKnob, register
from ..text import shown
from .magcache import schedule_position

FAST_30 = "0.08:6, 0.16:5, 0.24:4, 0.32:3, 0.40:2, 1.00:1"  # the authors' 30-step "fast" codebook
SLOW_30 = "0.08:3, 0.16:2, 0.24:1, 0.32:1, 0.40:1, 1.00:1"  # ... their 30-step "slow" one
STEPS_100 = "0.03:12, 0.05:10, 0.07:8, 0.09:6, 0.11:4, 1.00:3"  # ... and their 100-step one
MAX_RATE = 1000


def parse_codebook(text: str) -> tuple[tuple[float, int], ...]:
    """``"threshold:rate, ..."`` -> ((threshold, rate), ...) by ascending threshold. ValueError naming the problem:
    not that form, a threshold not finite and positive, a rate not a whole number 1-1000, a threshold twice, or a
    rate that grows with the threshold (a larger change must not cache longer)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"codebook must be text such as {FAST_30!r}, got {shown(text)}")
    entries: dict[float, int] = {}
    for part in text.replace(";", ",").split(","):
        if not part.strip():
            continue
        threshold, sep, rate = part.partition(":")
        try:
            t, n = float(threshold), int(rate)
        except ValueError:
            raise ValueError(f"codebook entry {shown(part.strip())} is not threshold:rate (e.g. 0.08:6)") from None
        if not sep or not math.isfinite(t) or t <= 0:
            raise ValueError(f"codebook entry {shown(part.strip())}: the threshold must be a positive number")
        if not 1 <= n <= MAX_RATE:
            raise ValueError(f"codebook entry {shown(part.strip())}: the rate must be between 1 and {MAX_RATE}")
        if t in entries:
            raise ValueError(f"codebook threshold {t:g} appears twice")
        entries[t] = n
    if not entries:
        raise ValueError(f"codebook must list at least one threshold:rate entry, got {shown(text)}")
    ordered = tuple(sorted(entries.items()))
    for (t0, n0), (t1, n1) in itertools.pairwise(ordered):
        if n1 > n0:
            raise ValueError(f"codebook: rate {n1} at threshold {t1:g} is above rate {n0} at the smaller threshold "
                             f"{t0:g}; rates must not grow with the distance")
    return ordered


@dataclass(frozen=True)
class AdaCacheConfig(GatedConfig):
    """codebook: "threshold:rate, ..." (see :func:`parse_codebook`). threshold_scale: multiplies every threshold
    (above 1 = longer caching; 0 = the distance is never under a threshold, the last rate always). block: the
    observed block (flat index over every segment; -1 = the middle block; past the last = the last).
    motion_regularization: MoReg on videos; its pivot, power, gradient weight, frame stride and window."""

    codebook: str = FAST_30
    threshold_scale: float = 1.0
    block: int = -1
    motion_regularization: bool = True
    motion_pivot: float = 0.385
    motion_power: float = 8.0
    motion_gradient_weight: float = 10.0
    motion_stride: int = 1
    motion_start_percent: float = 0.1
    motion_end_percent: float = 0.9
    entries: tuple[tuple[float, int], ...] = field(init=False, repr=False, compare=False, metadata=HIDDEN)

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", parse_codebook(self.codebook))
        check_range("threshold_scale", self.threshold_scale, 0.0, 100.0)
        check_int("block", self.block, -1)
        if not isinstance(self.motion_regularization, bool):
            raise ValueError(f"motion_regularization must be true or false, got {shown(self.motion_regularization)}")
        check_range("motion_pivot", self.motion_pivot, 1e-6, 1.0)
        check_range("motion_power", self.motion_power, 0.0, 32.0)
        check_range("motion_gradient_weight", self.motion_gradient_weight, 0.0, 1000.0)
        check_int("motion_stride", self.motion_stride, 1)
        check_range("motion_start_percent", self.motion_start_percent, 0.0, 1.0)
        check_range("motion_end_percent", self.motion_end_percent, 0.0, 1.0)
        if self.motion_start_percent >= self.motion_end_percent:
            raise ValueError(f"motion_start_percent ({self.motion_start_percent}) must be smaller than "
                             f"motion_end_percent ({self.motion_end_percent})")
        super().__post_init__()

    def rate_for(self, distance: float) -> int:
        """The codebook's caching rate for a (regularised) distance."""
        for threshold, rate in self.entries:
            if distance < threshold * self.threshold_scale:
                return rate
        return self.entries[-1][1]


def motion_sums(residual: torch.Tensor, frames: int | None, stride: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(sum|f[i+s] - f[i]|, sum|f[i+s]| + sum|f[i]|) over the frames ``stride`` apart of one stream's hidden
    residual; None for an image, too few frames or tokens that do not split into ``frames`` equal parts."""
    if not frames or frames <= stride or residual.ndim < 2:
        return None
    # (batch, frames, height, width, dim) hidden states (Cosmos), or (batch, frames x tokens per frame, dim)
    if not ((residual.ndim == 5 and residual.shape[1] == frames)
            or (residual.ndim == 3 and residual.shape[1] % frames == 0)):
        return None
    x = residual.reshape(residual.shape[0], frames, -1).float()
    later, earlier = x[:, stride:], x[:, :-stride]
    return (later - earlier).abs().sum(), later.abs().sum() + earlier.abs().sum()


def motion_score(residual: torch.Tensor, frames: int | None, stride: int) -> float | None:
    """Normalised L1 difference of frames ``stride`` apart in one stream's hidden residual, in [0, 1]; None for an
    image, too few frames or tokens that do not split into ``frames`` equal parts."""
    sums = motion_sums(residual, frames, stride)
    if sums is None:
        return None
    scale = sums[1].item()
    return sums[0].item() / scale if scale > 0 else 0.0


@dataclass
class _Decision:
    call_index: int
    rate: int
    distance: float  # c, the change per call
    motion: float  # the factor c was multiplied with (1: no motion term)


class _AdaState:
    def __init__(self, run: RunInfo) -> None:
        self.run = run
        self.call = StreamCall(0, None)
        self.last_call: int | None = None  # call index of the last computed call
        self.prev: torch.Tensor | None = None  # the observed block's residual at that call
        self.prev_g: float | None = None  # the motion regulariser of the previous decision in the window
        self.rate = 1
        self.regularised: float | None = None  # c x motion factor of the last decision
        self.decisions: list[_Decision] = []


class AdaCachePolicy(Policy):
    """Decides before any block runs: skip while fewer calls than the chosen rate passed since the last computed
    call; every computed call observes the chosen block and chooses the next rate."""

    name = "AdaCache"
    probe = Probe.NONE
    observed = True

    def __init__(self, config: AdaCacheConfig) -> None:
        super().__init__(config)
        self.threshold = config.entries[0][0] * config.threshold_scale  # the panel's line: the longest caching

    def observed_block(self, total_blocks: int) -> int:
        b = self.config.block
        return total_blocks // 2 if b < 0 else min(b, total_blocks - 1)

    def new_run_state(self, run: RunInfo) -> _AdaState:
        return _AdaState(run)

    def begin_stream_call(self, state: _AdaState, info: StreamCall) -> None:
        state.call = info

    def metric(self, state: _AdaState, probe_residual: torch.Tensor | None) -> float | None:
        return state.regularised  # what chose the rate now running (None before the first decision)

    def wants_skip(self, state: _AdaState, metric: float | None) -> bool:
        return state.last_call is not None and state.call.call_index - state.last_call < state.rate

    def motion_factor(self, state: _AdaState, m: float | None, k: int) -> float:
        """MoReg's factor for this decision from the motion score ``m`` (None: an image, or MoReg off):
        regulariser plus motion gradient, or 1 (image, off, outside the window)."""
        cfg = self.config
        # without the run's schedule (diffusers pipelines) the whole run is inside the window
        position = schedule_position(state.run, state.call, fallback_steps=0) if state.run.sigmas else None
        in_window = position is None or cfg.motion_start_percent <= position <= cfg.motion_end_percent
        if m is None or not in_window:
            state.prev_g = None
            return 1.0
        g = (m / cfg.motion_pivot) ** cfg.motion_power
        gradient = 0.0 if state.prev_g is None else cfg.motion_gradient_weight * (g - state.prev_g) / k
        state.prev_g = g
        return g + abs(gradient)

    def _comparable(self, state: _AdaState, r: torch.Tensor) -> bool:
        prev, last = state.prev, state.last_call
        return not (prev is None or last is None or prev.shape != r.shape or state.call.call_index <= last)

    def _rate_from(self, state: _AdaState, r: torch.Tensor, ref: float, change: float, m: float | None) -> None:
        """Move the reference to ``r`` (this call) and choose the next rate from the change since the last one."""
        now, last = state.call.call_index, state.last_call
        state.prev, state.last_call = r, now
        k = now - last
        c = change / ref / k if ref > 0 else (0.0 if change == 0 else math.inf)
        factor = self.motion_factor(state, m, k)
        regularised = c * factor
        if not math.isfinite(regularised):  # a residual that appeared from zero, or NaN: compute next call
            state.rate, state.regularised = 1, None
            return
        state.rate, state.regularised = self.config.rate_for(regularised), regularised
        state.decisions.append(_Decision(now, state.rate, c, factor))

    def _restart(self, state: _AdaState, r: torch.Tensor) -> None:
        """Nothing to compare with: keep ``r`` as the reference and compute the next call."""
        state.prev, state.last_call = r, state.call.call_index
        state.rate, state.regularised, state.prev_g = 1, None, None

    def _motion(self, r: torch.Tensor, frames: int | None) -> float | None:
        cfg = self.config
        return motion_score(r, frames, cfg.motion_stride) if cfg.motion_regularization else None

    def observe_block_residual(self, state: _AdaState, residual: torch.Tensor) -> None:
        r = residual.detach()
        if not self._comparable(state, r):
            self._restart(state, r)
            return
        prev = state.prev
        ref = prev.float().abs().mean().item()
        change = (r.float() - prev.float()).abs().mean().item()
        self._rate_from(state, r, ref, change, self._motion(r, state.call.frames))

    # several ranks: (sum|r_prev|, n, sum|r - r_prev|, n, the motion score's difference and scale sums, 1 where
    # the motion score applies); each rank's motion sums cover the frame pairs inside its own shard
    observe_width = 7

    def observe_sums(self, state: _AdaState, residual: torch.Tensor) -> torch.Tensor | None:
        r = residual.detach()
        if not self._comparable(state, r):
            return None
        sums = distributed.abs_sums(state.prev, r.float() - state.prev.float())
        motion = motion_sums(r, state.call.frames, self.config.motion_stride) \
            if self.config.motion_regularization else None
        extra = [0.0, 0.0, 0.0] if motion is None else [float(motion[0]), float(motion[1]), 1.0]
        return torch.cat([sums, torch.tensor(extra, dtype=torch.float64)])

    def observe_from_sums(self, state: _AdaState, residual: torch.Tensor, sums: torch.Tensor | None) -> None:
        r = residual.detach()
        if sums is None:
            self._restart(state, r)
            return
        m = None if sums[6] == 0 else (float(sums[4] / sums[5]) if sums[5] > 0 else 0.0)
        self._rate_from(state, r, distributed.mean_at(sums, 0), distributed.mean_at(sums, 2), m)

    def run_details(self, streams: list[tuple[str, Any]]) -> dict[str, Any]:
        """Per stream: the rate each decision chose, their mean, each decision's distance and motion factor."""
        rates = {label: [d.rate for d in s.decisions] for label, s in streams}
        return {
            "rates": rates,
            "mean_rate": {label: round(sum(r) / len(r), 3) if r else None for label, r in rates.items()},
            "distances": {label: [round(d.distance, 5) for d in s.decisions] for label, s in streams},
            "motion_factors": {label: [round(d.motion, 5) for d in s.decisions] for label, s in streams},
        }


register(MethodSpec(
    key="adacache", label="AdaCache", config=AdaCacheConfig, policy=AdaCachePolicy,
    nodes=("adacache_node:ApplyAdaCache",),
    tune=TuneKnob("threshold_scale", 0.25, 4.0)))
