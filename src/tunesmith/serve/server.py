"""Build the app from run names, and run it under uvicorn."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from tunesmith.data.pii import anonymiser
from tunesmith.errors import TunesmithError
from tunesmith.infer.output_filter import OutputFilter
from tunesmith.serve.drift import DriftRule
from tunesmith.serve.served import Limits, load_all
from tunesmith.serve.store import Store


def make_app(
    runs: list[str | Path],
    *,
    api_key: str | None = None,
    limits: Limits = Limits(),
    log_text: bool = False,
    retention_days: float | None = 30.0,
    store: Path | None = None,
    drift_rule: DriftRule = DriftRule(),
    fmt: str | None = None,
    output_filter: OutputFilter | None = None,
) -> FastAPI:
    """The app serving these runs (or their `fmt` exports). Requests and feedback go to `store` (default:
    serve.sqlite beside the first run's registry)."""
    from tunesmith.serve.app import create_app

    if not runs:
        raise TunesmithError("name at least one run to serve (a run name, registry id or folder)")
    served = load_all(runs, limits, fmt)
    path = store or next(iter(served.values())).run_dir.parent / "serve.sqlite"
    anonymise = anonymiser() if log_text else None
    return create_app(served, Store(path, retention_days=retention_days, anonymise=anonymise), api_key=api_key,
                      limits=limits, log_text=log_text, drift_rule=drift_rule, output_filter=output_filter)  # fmt: skip


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
