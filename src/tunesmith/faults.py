"""Named points where the fault tests kill the process (TUNESMITH_KILL_AT=name[,name...], or name:SIGINT),
at the most dangerous moment of each write: everything is written, nothing is renamed into place yet."""

from __future__ import annotations

import os
import signal


def point(name: str) -> None:
    for item in os.environ.get("TUNESMITH_KILL_AT", "").split(","):
        where, _, how = item.partition(":")
        if where == name:
            os.kill(os.getpid(), getattr(signal, how or "SIGKILL"))
