"""The per-call wrapper every host puts around one model call: begin, run, end (or forget on an error)."""
from __future__ import annotations

import contextlib
import time
from typing import Iterator

from .streams import CallInfo, StreamRunner


@contextlib.contextmanager
def model_call(runner: StreamRunner, info: CallInfo) -> Iterator[None]:
    """Inside: one model call of ``runner``'s run. A call that raises (an error, an interrupt) is forgotten —
    nothing is committed — and the exception goes on; a call that returns is committed with its wall time."""
    runner.begin_call(info)
    t0 = time.perf_counter()
    try:
        yield
    except BaseException:
        runner.abort_call()
        raise
    runner.end_call(time.perf_counter() - t0)
