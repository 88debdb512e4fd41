"""AdaCache on toy blocks, in closed form: the codebook, the countdown the chosen rate starts, and motion
regularisation (a moving clip gets a lower rate than a static one with the same residual change)."""
from __future__ import annotations

import pytest
import torch

from dit_cache.cache_core import CallInfo
from dit_cache.cache_core.methods.adacache import (FAST_30, SLOW_30, STEPS_100, AdaCacheConfig, AdaCachePolicy,
                                                   motion_score, parse_codebook)
from dit_cache.cache_core.policy import RunInfo

from toy_blocks import make

FRAMES, PER_FRAME, DIM = 4, 6, 3
PATTERN = torch.randn(1, 1, PER_FRAME, DIM, generator=torch.Generator().manual_seed(0))


def clip(moving: bool) -> torch.Tensor:
    """(1, frames x tokens per frame, dim): the same frame repeated, or shifted by one token per frame."""
    frames = [PATTERN.roll(f if moving else 0, dims=2) for f in range(FRAMES)]
    return torch.cat(frames, dim=1).reshape(1, FRAMES * PER_FRAME, DIM)


def call(runner, residual: torch.Tensor, frames: int | None = FRAMES) -> list[int]:
    """One model call of a 4-block toy: block 2 (the middle one, observed) adds ``residual``, the others 1."""
    img = torch.zeros_like(residual)
    runner.begin_call(CallInfo([("c", "cond")], None, frames=frames))
    ran = []
    for i in range(4):
        def run(st, i=i):
            ran.append(i)
            return {"img": st["img"] + (residual if i == 2 else 1.0)}
        img = runner.block(0, i, {"img": img}, run)["img"]
    runner.end_call(0.0)
    return ran


def sample(config: AdaCacheConfig, residuals: list[torch.Tensor], frames: int | None = FRAMES):
    policy = AdaCachePolicy(config)
    runner, stats = make(policy, run=RunInfo())  # no schedule: every call inside the motion window
    computed = [i for i, r in enumerate(residuals) if call(runner, r, frames)]
    runner.finish(True)
    return computed, stats


def test_codebook_parses_sorted_and_looks_up_the_first_threshold_above():
    assert parse_codebook(FAST_30) == ((0.08, 6), (0.16, 5), (0.24, 4), (0.32, 3), (0.4, 2), (1.0, 1))
    assert parse_codebook("1.0:3; 0.03:12, 0.05:10") == ((0.03, 12), (0.05, 10), (1.0, 3))
    for text in (SLOW_30, STEPS_100):
        parse_codebook(text)
    cfg = AdaCacheConfig()
    assert [cfg.rate_for(d) for d in (0.0, 0.079, 0.08, 0.2, 0.39, 0.99, 1.0, 50.0)] == [6, 6, 5, 4, 2, 1, 1, 1]
    assert AdaCacheConfig(threshold_scale=2.0).rate_for(0.15) == 6  # thresholds doubled
    assert AdaCacheConfig(codebook=STEPS_100).rate_for(2.0) == 3  # past the last threshold: the last rate


@pytest.mark.parametrize("kwargs,words", [
    ({"codebook": "0.1:2, 0.2:5"}, "rates must not grow"),
    ({"codebook": "0.1"}, "not threshold:rate"),
    ({"codebook": "0.1:0"}, "rate must be between 1"),
    ({"codebook": "-0.1:3"}, "positive"),
    ({"codebook": "0.1:3, 0.1:2"}, "appears twice"),
    ({"codebook": " , "}, "at least one"),
    ({"threshold_scale": -1.0}, "threshold_scale"),
    ({"block": -2}, "block"),
    ({"motion_regularization": 1}, "motion_regularization"),
    ({"motion_start_percent": 0.9, "motion_end_percent": 0.1}, "motion_start_percent"),
])
def test_config_rejects_what_cannot_work(kwargs, words):
    with pytest.raises(ValueError, match=words):
        AdaCacheConfig(**kwargs)


def test_the_chosen_rate_skips_the_next_rate_minus_one_calls():
    # change per call of the observed residual: 0.1 -> fast codebook rate 5 (0.08 <= 0.1 < 0.16); an image
    base = clip(moving=False)
    residuals = [base, base * 1.1] + [base * 1.1] * 4 + [base * 1.1 * 1.5] + [base] * 3
    computed, stats = sample(AdaCacheConfig(), residuals, frames=1)
    # call 0: nothing to compare -> rate 1; call 1: c = 0.1 -> rate 5 (calls 2-5 reuse); call 6: the residual
    # grew by half over 5 calls, c = 0.5 / 5 = 0.1 -> rate 5 again; calls 7-9 reuse
    assert computed == [0, 1, 6]
    assert stats.details["rates"] == {"cond": [5, 5]}
    assert stats.details["motion_factors"] == {"cond": [1.0, 1.0]}  # an image: no motion term
    metrics = [r.metric for r in stats.records]
    assert metrics[0] is None and metrics[1] is None and metrics[2] == pytest.approx(0.1)
    assert {r.threshold for r in stats.records} == {0.08}


def test_skipped_calls_run_no_block_and_reuse_every_residual():
    policy = AdaCachePolicy(AdaCacheConfig())
    runner, _ = make(policy, run=RunInfo())
    base = clip(moving=False)
    assert call(runner, base, 1) == [0, 1, 2, 3]
    assert call(runner, base, 1) == [0, 1, 2, 3]  # c = 0 -> rate 6
    assert call(runner, base * 7, 1) == []  # skipped: whatever block 2 would add now, nothing runs


def test_motion_score_is_zero_for_a_static_clip_and_large_for_a_moving_one():
    assert motion_score(clip(moving=False), FRAMES, 1) == 0.0
    assert motion_score(clip(moving=True), FRAMES, 1) > 0.3
    assert motion_score(clip(moving=True), 1, 1) is None  # an image
    assert motion_score(clip(moving=True), 5, 1) is None  # tokens do not split into 5 frames
    five_d = clip(moving=True).reshape(1, FRAMES, 2, 3, DIM)  # (batch, frames, h, w, dim) hidden states
    assert motion_score(five_d, FRAMES, 1) == pytest.approx(motion_score(clip(moving=True), FRAMES, 1))


def test_motion_regularisation_lowers_the_rate_of_a_moving_clip():
    # the same residual change per call (c = 0.1, rate 5 without motion) for a static and a moving clip
    def rates(moving: bool, **kwargs) -> list[int]:
        base = clip(moving)
        _, stats = sample(AdaCacheConfig(**kwargs), [base, base * 1.1] + [base * 1.1] * 8)
        return stats.details["rates"]["cond"]

    static, moving = rates(False), rates(True)
    assert static[0] == 6  # m = 0: the regulariser scales the distance to 0, the longest caching
    assert moving[0] == 1  # m ~ 0.5 > the 0.385 pivot: (m / 0.385) ** 8 pushes it past every threshold
    assert rates(True, motion_regularization=False)[0] == rates(False, motion_regularization=False)[0] == 5


def test_motion_factor_is_the_regulariser_plus_its_gradient():
    config = AdaCacheConfig(codebook="100:1")  # rate 1: every call computes and decides
    base = clip(moving=True)
    # the clip moves more from call to call: the second frame half gets brighter
    clips = [base, base * 1.1, base * 1.2 + torch.linspace(0, 1, FRAMES * PER_FRAME).view(1, -1, 1)]
    _, stats = sample(config, clips)
    g = [(motion_score(c, FRAMES, 1) / 0.385) ** 8 for c in clips[1:]]
    factors = stats.details["motion_factors"]["cond"]
    assert factors[0] == pytest.approx(g[0], rel=1e-4)  # the first decision: no gradient yet
    assert factors[1] == pytest.approx(g[1] + 10.0 * abs(g[1] - g[0]) / 1, rel=1e-4)


def test_observed_block_defaults_to_the_middle_and_clamps():
    assert AdaCachePolicy(AdaCacheConfig()).observed_block(28) == 14
    assert AdaCachePolicy(AdaCacheConfig(block=3)).observed_block(28) == 3
    assert AdaCachePolicy(AdaCacheConfig(block=99)).observed_block(28) == 27
