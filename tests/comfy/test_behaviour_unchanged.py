"""Behaviour kept across refactors: every method on the tiny Flux and Wan through ``comfy.sample`` gives the
latents and per-call decisions recorded before the structure change (tests/support/behaviour_record.py),
bit for bit."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import behaviour_record


@pytest.fixture(scope="module")
def rerun(pack, tmp_path_factory):
    return behaviour_record.record(pack, str(tmp_path_factory.mktemp("calibrations")))


def test_every_case_was_recorded(rerun):
    decisions, latents = rerun
    baseline = json.loads(behaviour_record.BASELINE_JSON.read_text())
    assert sorted(decisions) == sorted(baseline)
    assert sorted(latents) == sorted(load_file(str(behaviour_record.BASELINE_LATENTS)))
    # the record is worth keeping only if every method acted on both models
    for key, run in baseline.items():
        acted = any(d[2] for d in run["decisions"]) or any(r for r, _ in run["reuse"].values())
        assert acted, f"{key}: nothing was skipped or reused in the baseline"


@pytest.mark.parametrize("case", [f"{f}/{c[0]}" for f in behaviour_record.FAMILIES for c in behaviour_record.CASES])
def test_decisions_and_latents_unchanged(rerun, case):
    decisions, latents = rerun
    baseline = json.loads(behaviour_record.BASELINE_JSON.read_text())[case]
    now = json.loads(json.dumps(decisions[case]))  # the same JSON round trip the baseline went through
    assert now["decisions"] == baseline["decisions"]
    assert now["reuse"] == baseline["reuse"]
    assert now["reuse_by_kind"] == baseline["reuse_by_kind"]
    expected = load_file(str(behaviour_record.BASELINE_LATENTS))
    assert torch.equal(latents[case], expected[case]), f"{case}: latents differ from the recorded run"
    family = case.split("/")[0]
    assert torch.equal(latents[f"{family}/uncached"], expected[f"{family}/uncached"])
