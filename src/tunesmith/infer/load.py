"""A run's saved model folder, found by run directory, registry id or name."""

from __future__ import annotations

from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.runs import find_run_dir


def model_dir(run: str | Path, output_dir: str | Path = "runs") -> Path:
    """run_dir/model, or an error that says why the run has none."""
    run_dir = find_run_dir(run, output_dir)
    folder = run_dir / "model"
    if not (folder / "tunesmith.json").is_file():
        raise TunesmithError(
            f"{run}: {run_dir} holds no saved model (model/tunesmith.json); the run failed or has not finished: "
            f"see `tunesmith runs show {run}`"
        )
    return folder
