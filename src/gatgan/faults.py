"""Named crash points for the fault-injection tests: `GATGAN_FAULT=<point>[:<n>]` kills the process
with SIGKILL the n-th time (default the first) it passes `fault_point(<point>)`.

A kill at a chosen line is the only way to test deterministically that every file write of a run
survives an interruption (a random-time kill almost never lands inside a millisecond-long write).
Without the variable a crash point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "GATGAN_FAULT"
_passes: dict[str, int] = {}


def fault_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, count = spec.partition(":")
    if point != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
