"""`train --nproc N`: the same run in N processes on this machine, through Accelerate's launcher (torchrun under
it). The launched processes run `tunesmith train` again; rank 0 does everything a one-process run does, the
other ranks only train (train/dist.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tunesmith.config import RunConfig, dump_config
from tunesmith.errors import TunesmithError
from tunesmith.train import dist

RUN_DIR_FILE = "TUNESMITH_RUN_DIR_FILE"  # where rank 0 tells the launching process its run folder


def launch(cfg: RunConfig | None, nproc: int, *, resume: str | Path | None, overrides: list[str] | None,
           continue_from: str | Path | None, quiet: bool) -> Path:  # fmt: skip
    """Run `tunesmith train` in nproc processes and return rank 0's run folder. The config was validated here, so
    a mistake in it is reported once, before any process starts."""
    dist.check_nproc(nproc)
    with tempfile.TemporaryDirectory(prefix="tunesmith-launch-") as tmp:
        told = Path(tmp) / "run_dir"
        args = ["--resume", str(resume), *(a for o in overrides or [] for a in ("--set", o))] if resume else []
        if cfg is not None:
            (Path(tmp) / "config.yaml").write_text(dump_config(cfg))
            args = [str(Path(tmp) / "config.yaml"), *args]
        if continue_from is not None:
            args += ["--continue-from", str(continue_from)]
        argv = [
            *("--multi_gpu", "--num_machines", "1", "--num_processes", str(nproc)),
            *("--main_process_port", str(dist.free_port()), "--mixed_precision", "no", "--dynamo_backend", "no"),
            *("-m", "tunesmith", "train", *args, *(["--quiet"] if quiet else [])),
        ]
        failed = _run_launcher(argv, told)
        run_dir = Path(told.read_text()) if told.is_file() else None
    if failed:
        where = f"; run folder {run_dir} (its registry row says why)" if run_dir else ""
        raise TunesmithError(f"the {nproc}-process run failed: {failed}{where}")
    if run_dir is None:
        raise TunesmithError(f"the {nproc}-process run ended without telling its run folder")
    return run_dir


_told = False


def told_run_dir() -> bool:
    return _told


def _run_launcher(argv: list[str], told: Path) -> str | None:
    """Accelerate's launcher (its torchrun agent starts the ranks) in a process of its own, so that its signal
    handlers, environment and threads never touch the caller's: None when every rank ended well, else which rank
    failed first and how (its own error is printed above)."""
    failure = told.with_name("failure")
    env = os.environ | {RUN_DIR_FILE: str(told)}
    code = subprocess.run([sys.executable, "-m", "tunesmith.launch", str(failure), *argv], env=env).returncode
    if code == 0:
        return None
    return failure.read_text() if failure.is_file() else f"the launcher stopped (exit code {code})"


def _agent(failure: Path, argv: list[str]) -> int:
    """The launcher process: 0 when every rank ended well, else 1 with what failed first in `failure`."""
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        launch_command(launch_command_parser().parse_args(argv))
    except ChildFailedError as err:
        rank, how = err.get_first_failure()
        why = f"it was killed by {how.signal_name()}" if how.exitcode < 0 else f"exit code {how.exitcode}"
        failure.write_text(f"process {rank} stopped first ({why})")
        return 1
    return 0


def tell_run_dir(run_dir: Path | None, world: dist.World) -> Path | None:
    """Rank 0's run folder on every rank (None: rank 0 stopped before training); the launching process is told.
    Once per process: every rank but 0 waits for it."""
    global _told
    _told = True
    if world.size == 1:
        return run_dir
    if world.main and run_dir is not None and os.environ.get(RUN_DIR_FILE):
        Path(os.environ[RUN_DIR_FILE]).write_text(str(run_dir))
    found = dist.broadcast(None if run_dir is None else str(run_dir), world)
    return None if found is None else Path(found)


def fail_on_sigterm() -> None:
    """The launcher stops every process when one fails (SIGTERM): the run is then marked failed, not left running."""

    me = os.getpid()

    def stop(signum, frame):
        if os.getpid() != me:  # a forked helper (the data stage's pool) stops as it would have
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise TunesmithError("stopped: another process of this run failed (or the launcher was stopped)")

    signal.signal(signal.SIGTERM, stop)


if __name__ == "__main__":
    sys.exit(_agent(Path(sys.argv[1]), sys.argv[2:]))
