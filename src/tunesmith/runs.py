"""The run directory (the contract every command reads) and the SQLite registry of runs."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path

from tunesmith.errors import TunesmithError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    config_hash TEXT NOT NULL,
    model TEXT NOT NULL,
    method TEXT NOT NULL,
    metrics TEXT,
    error TEXT,
    path TEXT NOT NULL UNIQUE,
    started REAL NOT NULL,
    finished REAL
)
"""


def new_run_dir(output_dir: str | Path, name: str) -> Path:
    """A new folder <output_dir>/<name>-<timestamp>[-n]; two jobs starting in the same second get two."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    root = Path(output_dir).resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
        for n in range(1, 10_000):
            path = root / (f"{name}-{stamp}" + (f"-{n}" if n > 1 else ""))
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    except OSError as err:
        raise TunesmithError(f"output_dir {output_dir}: cannot create a run folder there ({err.strerror})") from None
    raise TunesmithError(f"output_dir {output_dir}: too many runs named {name} in one second")


def config_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Registry:
    """runs/registry.sqlite: one row per run, its status moving running -> done | failed."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir).resolve() / "registry.sqlite"

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=30)
        con.row_factory = sqlite3.Row
        con.execute(SCHEMA)
        return con

    def start(self, run_dir: Path, name: str, cfg_hash: str, model: str, method: str) -> None:
        with closing(self._connect()) as con, con:
            con.execute(
                "INSERT INTO runs (name, status, config_hash, model, method, path, started) "
                "VALUES (?, 'running', ?, ?, ?, ?, ?) "
                "ON CONFLICT(path) DO UPDATE SET status='running', error=NULL, finished=NULL",
                (name, cfg_hash, model, method, str(run_dir), time.time()),
            )

    def finish(self, run_dir: Path, status: str, metrics: dict | None = None, error: str | None = None) -> None:
        with closing(self._connect()) as con, con:
            con.execute(
                "UPDATE runs SET status=?, metrics=?, error=?, finished=? WHERE path=?",
                (status, json.dumps(metrics) if metrics else None, error, time.time(), str(run_dir)),
            )

    def list(self) -> list[dict]:
        if not self.path.exists():
            return []
        with closing(self._connect()) as con:
            return [_row(r) for r in con.execute("SELECT * FROM runs ORDER BY id")]

    def find(self, key: str) -> dict:
        """A run by id, by name (the latest of that name) or by path."""
        rows = self.list()
        path = str(Path(key).resolve())
        for match in (
            lambda r: str(r["id"]) == key,
            lambda r: r["path"] == path,
            lambda r: Path(r["path"]).name == key,
            lambda r: r["name"] == key,
        ):
            found = [r for r in rows if match(r)]
            if found:
                return found[-1]
        raise TunesmithError(f"no run {key!r} in {self.path}; see `tunesmith runs list`")


def _row(r: sqlite3.Row) -> dict:
    d = dict(r)
    d["metrics"] = json.loads(d["metrics"]) if d["metrics"] else {}
    return d


def find_run_dir(key: str | Path, output_dir: str | Path = "runs") -> Path:
    """A run directory given as a path, or by registry id / name."""
    path = Path(key)
    if (path / "config.yaml").is_file():
        return path.resolve()
    return Path(Registry(output_dir).find(str(key))["path"])
