"""Named points where the fault tests stop the process, at the most dangerous moment of each write: everything
is written, nothing is renamed into place yet. TUNESMITH_KILL_AT=name[@N][:SIGNAL][,...] sends SIGNAL (default
SIGKILL) the Nth time (default the first) the process reaches that point; with TUNESMITH_KILL_RANK=R, only the
process of that rank of a multi-process run does. Unset, a point does nothing."""

from __future__ import annotations

import os
import signal
from collections import Counter

_reached: Counter = Counter()


def point(name: str) -> None:
    plan = os.environ.get("TUNESMITH_KILL_AT")
    if not plan or os.environ.get("TUNESMITH_KILL_RANK", os.environ.get("RANK", "0")) != os.environ.get("RANK", "0"):
        return
    _reached[name] += 1
    for item in plan.split(","):
        where, _, how = item.partition(":")
        point_name, _, nth = where.partition("@")
        if point_name == name and _reached[name] == int(nth or 1):
            os.kill(os.getpid(), getattr(signal, how or "SIGKILL"))
