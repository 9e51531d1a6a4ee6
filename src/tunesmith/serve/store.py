"""What the server saw: one row per request and one per piece of feedback, in SQLite (WAL) beside the run registry.

A record is acknowledged only once it is committed with synchronous=FULL, so a server killed at any moment has
lost no record it acknowledged. Request text is kept only when asked (--log-text), and then anonymised.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    time REAL NOT NULL,
    endpoint TEXT NOT NULL,
    model TEXT NOT NULL,
    run_path TEXT NOT NULL,
    status INTEGER NOT NULL,
    latency_ms REAL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    prediction TEXT,
    confidence REAL,
    reply_chars INTEGER,
    prompt TEXT,
    reply TEXT,
    filtered TEXT
);
CREATE INDEX IF NOT EXISTS requests_time ON requests (time);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL REFERENCES requests (id),
    time REAL NOT NULL,
    model TEXT NOT NULL,
    thumb INTEGER,
    score INTEGER,
    label TEXT,
    preferred TEXT,
    comment TEXT,
    item INTEGER
);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback (request_id);
"""

EXPIRE_EVERY = 1000  # requests logged between two passes of the retention

ADDED_COLUMNS = (("feedback", "item", "INTEGER"), ("requests", "filtered", "TEXT"))  # 2026-12-04, 2026-12-05
REQUEST_FIELDS = (
    "id", "time", "endpoint", "model", "run_path", "status", "latency_ms", "prompt_tokens", "completion_tokens",
    "prediction", "confidence", "reply_chars", "prompt", "reply", "filtered",
)  # fmt: skip


class Store:
    """One connection, used under a lock by the server's threads."""

    def __init__(
        self, path: Path, *, retention_days: float | None = None, anonymise: Callable[[list[str]], list[str]] | None
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.retention_days, self.anonymise = path, retention_days, anonymise
        self.lock = threading.Lock()
        self.con = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
        self.con.row_factory = sqlite3.Row
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("PRAGMA synchronous=FULL")
        self.con.executescript(SCHEMA)
        for table, column, kind in ADDED_COLUMNS:  # a store written before the column existed
            if column not in {r["name"] for r in self.con.execute(f"PRAGMA table_info({table})")}:
                self.con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        self.logged = 0
        self.expire()

    def log_request(self, row: dict) -> None:
        """Keeps the request; its texts (a list: the prompt's turns or the texts classified) and the reply only when
        the server logs text, anonymised. Predictions are a list too, one per text."""
        row = dict(row)
        turns = row.get("prompt") or []  # texts, or chat turns ({role, content})
        texts = [t["content"] if isinstance(t, dict) else t for t in turns]
        texts += [row["reply"]] if row.get("reply") is not None else []
        if self.anonymise is None or not texts:
            row["prompt"] = row["reply"] = None
        else:
            clean = self.anonymise(texts)
            kept = [t | {"content": c} if isinstance(t, dict) else c for t, c in zip(turns, clean)]
            row["prompt"] = json.dumps(kept)
            row["reply"] = clean[-1] if row.get("reply") is not None else None
        for key in ("prediction", "filtered"):  # lists: a label per text; the output filter's reasons per refusal
            if row.get(key) is not None:
                row[key] = json.dumps(row[key])
        values = [row.get(k) for k in REQUEST_FIELDS]
        self.logged += 1
        if self.logged % EXPIRE_EVERY == 0:
            self.expire()
        with self.lock:
            self.con.execute(
                f"INSERT OR REPLACE INTO requests ({', '.join(REQUEST_FIELDS)}) "
                f"VALUES ({', '.join('?' * len(REQUEST_FIELDS))})",
                values,
            )

    def request(self, request_id: str) -> dict | None:
        with self.lock:
            row = self.con.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
        return dict(row) if row else None

    def add_feedback(self, request_id: str, model: str, fields: dict) -> int:
        """Committed before this returns: the id is the acknowledgement."""
        with self.lock:
            cur = self.con.execute(
                "INSERT INTO feedback (request_id, time, model, thumb, score, label, preferred, comment, item) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request_id,
                    time.time(),
                    model,
                    fields.get("thumb"),
                    fields.get("score"),
                    fields.get("label"),
                    fields.get("preferred"),
                    fields.get("comment"),
                    fields.get("item"),
                ),
            )
            return int(cur.lastrowid)

    def feedback(self, model: str | None = None) -> list[dict]:
        query = "SELECT f.*, r.prompt AS prompt, r.reply AS reply, r.prediction AS prediction FROM feedback f "
        query += "JOIN requests r ON r.id = f.request_id"
        with self.lock:
            rows = self.con.execute(query + (" WHERE f.model = ?" if model else ""), (model,) if model else ())
            return [dict(r) for r in rows]

    def recent(self, model: str, since: float) -> list[dict]:
        """The requests to a model since a time (drift windows, the dashboard)."""
        with self.lock:
            rows = self.con.execute(
                "SELECT time, endpoint, status, latency_ms, prediction, confidence, completion_tokens FROM requests "
                "WHERE model = ? AND time >= ? ORDER BY time",
                (model, since),
            )
            return [dict(r) for r in rows]

    def counts(self) -> dict:
        with self.lock:
            requests = self.con.execute("SELECT model, COUNT(*) FROM requests GROUP BY model").fetchall()
            ratings = self.con.execute(
                "SELECT model, COUNT(*), SUM(thumb > 0 OR score >= 4), SUM(thumb < 0 OR score <= 2), "
                "SUM(label IS NOT NULL), SUM(preferred IS NOT NULL) "
                "FROM feedback GROUP BY model"
            ).fetchall()
        return {
            "requests": {m: n for m, n in requests},
            "feedback": {
                m: {"total": n, "positive": up or 0, "negative": down or 0, "labels": lab or 0, "preferred": pref or 0}
                for m, n, up, down, lab, pref in ratings
            },
        }

    def expire(self) -> int:
        """Drops requests (and their feedback) older than the retention; returns how many requests went."""
        if not self.retention_days:
            return 0
        cutoff = time.time() - self.retention_days * 86400
        with self.lock:
            self.con.execute("BEGIN")
            self.con.execute(
                "DELETE FROM feedback WHERE request_id IN (SELECT id FROM requests WHERE time < ?)", (cutoff,)
            )
            gone = self.con.execute("DELETE FROM requests WHERE time < ?", (cutoff,)).rowcount
            self.con.execute("COMMIT")
        return gone

    def close(self) -> None:
        with self.lock:
            self.con.close()
