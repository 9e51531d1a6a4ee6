"""The run directory (the contract every command reads) and the SQLite registry of runs."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path

import psutil

from tunesmith.errors import TunesmithError
from tunesmith.models.zoo import home

HOST = socket.gethostname()

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'killed', 'pruned')),
    config_hash TEXT NOT NULL,
    model TEXT NOT NULL,
    method TEXT NOT NULL,
    metrics TEXT,
    error TEXT,
    path TEXT NOT NULL UNIQUE,
    started REAL NOT NULL,
    finished REAL,
    pid INTEGER,
    pid_created REAL,
    host TEXT,
    parent TEXT,
    study TEXT
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


class NoSuchRun(TunesmithError):
    """No run of that id, path or name in a registry: the next registry may have it."""


class Registry:
    """<output_dir>/registry.sqlite: one row per run, its status moving running -> done | failed | killed. A row
    records the process that runs it, so a run whose process is gone reads as killed, not running for ever."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir).resolve() / "registry.sqlite"

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=60)
        con.row_factory = sqlite3.Row
        con.execute(SCHEMA)
        if "'pruned'" not in con.execute("SELECT sql FROM sqlite_master WHERE name = 'runs'").fetchone()[0]:
            _migrate(con)
        return con

    def start(
        self,
        run_dir: Path,
        name: str,
        cfg_hash: str,
        model: str,
        method: str,
        parent: str | None = None,
        study: str | None = None,
    ) -> None:
        """A running row; `parent` is the run folder this one continues from (continual learning), `study` the
        hyperparameter search it is a trial of."""
        me = psutil.Process()
        with closing(self._connect()) as con, con:
            con.execute(
                "INSERT INTO runs (name, status, config_hash, model, method, path, started, pid, pid_created, host, "
                "parent, study) VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(path) DO UPDATE SET status='running', error=NULL, finished=NULL, "
                "pid=excluded.pid, pid_created=excluded.pid_created, host=excluded.host",
                (name, cfg_hash, model, method, str(run_dir), time.time(), me.pid, me.create_time(), HOST, parent,
                 study),
            )  # fmt: skip
        _remember(self.path)

    def finish(self, run_dir: Path, status: str, metrics: dict | None = None, error: str | None = None) -> None:
        with closing(self._connect()) as con, con:
            con.execute(
                "UPDATE runs SET status=?, metrics=?, error=?, finished=? WHERE path=?",
                (status, json.dumps(metrics) if metrics else None, error, time.time(), str(run_dir)),
            )

    def list(self) -> list[dict]:
        """Every row, oldest first; a running row whose process is gone reads as killed."""
        if not self.path.exists():
            return []
        with closing(self._connect()) as con:
            return [_row(r) for r in con.execute("SELECT * FROM runs ORDER BY id")]

    def clean(self) -> list[dict]:
        """Mark every running row whose process is gone as killed; returns those rows."""
        if not self.path.exists():
            return []
        with closing(self._connect()) as con, con:
            gone = [dict(r) for r in con.execute("SELECT * FROM runs WHERE status='running'") if not _alive(dict(r))]
            for r in gone:
                r["status"] = "killed"
                r["error"] = f"killed: its process {r['pid']} on {r['host']} ended without finishing the run"
                con.execute(
                    "UPDATE runs SET status='killed', error=?, finished=? WHERE id=? AND status='running'",
                    (r["error"], time.time(), r["id"]),
                )
        return gone

    def find(self, key: str, done: bool = False) -> dict:
        """A run by id, by path or folder name, or by name. By name, with `done`, the latest run of that name that
        is done; a run found by id or path that is not done is then an error saying its status."""
        rows = self.list()
        path = str(Path(key).resolve())
        for match in (
            lambda r: str(r["id"]) == key,
            lambda r: r["path"] == path,
            lambda r: Path(r["path"]).name == key,
        ):
            found = [r for r in rows if match(r)]
            if found:
                return _usable(found[-1], key) if done else found[-1]
        named = [r for r in rows if r["name"] == key]
        if named and done:
            finished = [r for r in named if r["status"] == "done"]
            return finished[-1] if finished else _usable(named[-1], key)
        if named:
            return named[-1]
        raise NoSuchRun(f"no run {key!r} in {self.path}; see `tunesmith runs list`")

    def row(self, run_dir: Path) -> dict | None:
        """The row of the run in this folder, if the registry has one."""
        return next((r for r in self.list() if r["path"] == str(run_dir)), None)


def _usable(row: dict, key: str) -> dict:
    if row["status"] == "done":
        return row
    why = f" ({row['error']})" if row["error"] else ""
    raise TunesmithError(
        f"run {key!r} ({row['path']}) is {row['status']}{why}, so it has no model to use; see "
        f"`tunesmith runs show {row['id']}`" + (", or resume it: --resume" if row["status"] == "killed" else "")
    )


def _migrate(con: sqlite3.Connection) -> None:
    """A registry from an earlier schema (before pid/host, parent, study, or the killed and pruned statuses): rebuilt
    in one transaction, every row and every column it had kept."""
    with con:
        old = [r["name"] for r in con.execute("PRAGMA table_info(runs)")]
        con.execute("ALTER TABLE runs RENAME TO runs_old")
        con.execute(SCHEMA)
        kept = ", ".join(c for c in old if c in {r["name"] for r in con.execute("PRAGMA table_info(runs)")})
        con.execute(f"INSERT INTO runs ({kept}) SELECT {kept} FROM runs_old")
        con.execute("DROP TABLE runs_old")


def _row(r: sqlite3.Row) -> dict:
    d = dict(r)
    d["metrics"] = json.loads(d["metrics"]) if d["metrics"] else {}
    if d["status"] == "running" and not _alive(d):
        d["status"] = "killed"
    return d


def _alive(row: dict) -> bool:
    """The run's own process still exists (the same process: its creation time matches, so a reused pid is not
    mistaken for it). A run on another host cannot be checked from here and counts as alive."""
    if row["pid"] is None or row["host"] != HOST:
        return True
    try:
        proc = psutil.Process(row["pid"])
        return abs(proc.create_time() - row["pid_created"]) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def known_registries() -> list[Path]:
    """Every registry this user's runs were recorded in (TUNESMITH_HOME/registries.txt), that still exists."""
    index = home() / "registries.txt"
    lines = index.read_text().splitlines() if index.is_file() else []
    return [Path(p) for p in dict.fromkeys(lines) if Path(p).is_file()]


def _remember(registry: Path) -> None:
    index = home() / "registries.txt"
    if str(registry) in (index.read_text().splitlines() if index.is_file() else []):
        return
    try:
        index.parent.mkdir(parents=True, exist_ok=True)
        with index.open("a") as f:
            f.write(f"{registry}\n")
    except OSError:
        pass  # the index only saves typing --dir; a run does not depend on it


def default_dir() -> Path:
    return Path(os.environ.get("TUNESMITH_RUNS", "runs"))


def find_run_dir(key: str | Path, output_dir: str | Path | None = None, *, done: bool = False) -> Path:
    """A run directory given as a path, or by registry id or name: first in `output_dir` (default TUNESMITH_RUNS
    or ./runs), then in every other registry this user has run in. With `done`, it must be a finished run."""
    path = Path(key)
    if (path / "config.yaml").is_file():
        run_dir = path.resolve()
        row = Registry(run_dir.parent).row(run_dir) if done else None
        if row is not None:
            _usable(row, str(run_dir))
        return run_dir
    first = Registry(output_dir or default_dir())
    try:
        return Path(first.find(str(key), done=done)["path"])
    except NoSuchRun as err:
        missing = err
    for registry in known_registries():
        if registry != first.path:
            try:
                return Path(Registry(registry.parent).find(str(key), done=done)["path"])
            except NoSuchRun:
                continue
    raise missing
