"""Statistics of one sampling run: one record per CFG stream per model call."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class CallRecord:
    """What the cache decided for one CFG stream in one model call."""

    stream: str
    call_index: int  # calls of this stream so far in the run (the step index for one-call-per-step samplers)
    sigma: float | None
    skipped: bool
    metric: float | None  # the method's decision metric (None where it was not computed)
    threshold: float
    reason: str  # why: "metric", "warmup", "window", "max_skips", "max_cached", "no_cache", "weights", "batch"
    wall_s: float = 0.0  # wall time of the whole model call this stream took part in
    # the weights this call ran with, numbered per run in first-seen order (StreamRunner.weights_id); None: the
    # model's own weights (no hooks)
    weights: int | None = None


@dataclass
class RunStats:
    """All records of one sampling run of one patched model."""

    method: str
    settings: dict[str, Any]
    model: str
    started: float = field(default_factory=time.time)
    records: list[CallRecord] = field(default_factory=list)
    calls: int = 0
    skipped_calls: int = 0
    wall_s: float = 0.0
    cache_bytes: int = 0
    # attention-level methods: per part ("attention", "uncond"), [reused, total] over the run
    reuse: dict[str, list[int]] = field(default_factory=dict)
    # component-level methods: the same per component kind ("spatial", "cross", "ffn"), over every stream
    reuse_by_kind: dict[str, list[int]] = field(default_factory=dict)
    # what a skipped call still costs as a share of a computed one (UNets: the shallow branch, measured); 0 for
    # DiT methods, whose skipped calls run a block or two of dozens
    skipped_cost: float = 0.0
    # a method's own end-of-run figures (Policy.run_details; AdaCache: the caching rates it chose), by name
    details: dict[str, Any] = field(default_factory=dict)

    def add_call(self, records: list[CallRecord], skipped: bool, wall_s: float) -> None:
        for r in records:
            r.wall_s = wall_s
        self.records.extend(records)
        self.calls += 1
        self.skipped_calls += int(skipped)
        self.wall_s += wall_s

    def count(self, part: str, reused: int, total: int) -> None:
        entry = self.reuse.setdefault(part, [0, 0])
        entry[0] += reused
        entry[1] += total

    @property
    def computed_calls(self) -> int:
        return self.calls - self.skipped_calls

    @property
    def ideal_speedup(self) -> float:
        """Model calls over calls that ran the full block stack (what the skips could save at most), a skipped
        call counted at its measured ``skipped_cost``."""
        work = self.computed_calls + self.skipped_calls * self.skipped_cost
        return self.calls / work if work > 0 else 1.0

    def streams(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.records:
            seen.setdefault(r.stream, None)
        return list(seen)

    def summary(self) -> str:
        reuse = "".join(f", reused {r}/{t} {part} computations" for part, (r, t) in self.reuse.items())
        return (
            f"{self.method}: skipped {self.skipped_calls}/{self.calls} model calls "
            f"(ideal {self.ideal_speedup:.2f}x){reuse}, streams {','.join(self.streams()) or '-'}, "
            f"{self.wall_s:.2f}s in the model"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["computed_calls"] = self.computed_calls
        d["ideal_speedup"] = self.ideal_speedup
        return d
