"""A benchmark's job in a process of its own: its peak RSS (ru_maxrss from os.wait4) is then its own, since a child
starts with its parent's high-water mark and the parents never import torch. The script runs itself with
`--child FILE` (the job as JSON) and writes its result to FILE.out."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path

TAIL_LINES = 25  # of a failed child's stderr, in its error
TRL = "TRL: .venv/bin/pip install -e '.[bench]' (TRL 1.16.0)"


def scratch(prefix: str) -> Path:
    """A temporary folder for a benchmark's runs (a GB or so each), removed when the benchmark's process ends."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, work, True)
    return work


def run_job(script: str | Path, job: dict, what: str) -> dict:
    """The job's result with its peak_rss_mb; SystemExit naming `what` and ending with the last lines the child
    wrote to stderr when it fails (passed through as they come, and kept, since a long run's log loses them)."""
    with tempfile.TemporaryDirectory(prefix="bench-job-") as folder:  # the job and its answer, removed after
        job_file = Path(folder) / "job.json"
        job_file.write_text(json.dumps(job))
        cmd = [sys.executable, str(script), "--child", str(job_file)]
        proc = subprocess.Popen(cmd, cwd=Path(script).resolve().parents[1], stderr=subprocess.PIPE, text=True,
                                errors="replace")  # fmt: skip
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        for line in proc.stderr:
            sys.stderr.write(line)
            tail.append(line)
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            raise SystemExit(f"{what} job failed (status {status}); its stderr ended:\n" + "".join(tail).rstrip())
        got = json.loads(Path(f"{job_file}.out").read_text())
    return got | {"peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def answer(job_file: str, run: Callable[[dict], dict]) -> None:
    """The child's side: run the job in job_file and write its result where run_job reads it."""
    Path(job_file + ".out").write_text(json.dumps(run(json.loads(Path(job_file).read_text()))))


def peer_versions(packages: tuple[str, ...], install: str) -> dict[str, str]:
    """The installed versions of the peer library and what it runs on; SystemExit saying how to install it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return {p: version(p) for p in packages}
    except PackageNotFoundError:
        raise SystemExit(f"this benchmark needs {install}") from None
