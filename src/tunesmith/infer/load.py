"""A run's saved model folder, or one of its exports, found by run directory, registry id or name."""

from __future__ import annotations

from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.runs import find_run_dir


def model_dir(run: str | Path, output_dir: str | Path | None = None, *, fmt: str | None = None) -> Path:
    """run_dir/model of a done run (by name: the latest done run of that name), or run_dir/exports/FMT with
    `fmt`; an error that says why when it is not there."""
    run_dir = find_run_dir(run, output_dir, done=True)
    folder = run_dir / "model" if fmt is None else run_dir / "exports" / fmt
    if not (folder / "tunesmith.json").is_file():
        if fmt is not None:
            raise TunesmithError(f"{run}: {run_dir} has no {fmt} export; make it with `tunesmith export {run} "
                                 f"--format {fmt}`")  # fmt: skip
        raise TunesmithError(
            f"{run}: {run_dir} holds no saved model (model/tunesmith.json); the run failed or has not finished: "
            f"see `tunesmith runs show {run}`"
        )
    return folder
