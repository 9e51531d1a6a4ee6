"""A run's saved model folder, found by run directory, registry id or name."""

from __future__ import annotations

from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.runs import find_run_dir


def model_dir(run: str | Path, output_dir: str | Path | None = None) -> Path:
    """run_dir/model of a done run (by name: the latest done run of that name), or an error that says why."""
    run_dir = find_run_dir(run, output_dir, done=True)
    folder = run_dir / "model"
    if not (folder / "tunesmith.json").is_file():
        raise TunesmithError(
            f"{run}: {run_dir} holds no saved model (model/tunesmith.json); the run failed or has not finished: "
            f"see `tunesmith runs show {run}`"
        )
    return folder
