"""No acknowledged record is lost: feedback posted while the server is killed with SIGKILL is all on disk."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(run, store, port) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tunesmith.cli", "serve", str(run), "--port", str(port), "--store", str(store)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read()}")
    proc.kill()
    raise RuntimeError("the server did not start in 60 s")


def test_sigkill_loses_no_acknowledged_feedback(runs, tmp_path):
    store, port = tmp_path / "serve.sqlite", free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start(runs / "clf", store, port)
    rid = httpx.post(url + "/v1/classify", json={"model": "clf", "input": "a good film"}, timeout=30).json()["id"]
    acked: list[int] = []
    stop = threading.Event()

    def post_until_refused():
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                try:
                    r = client.post(url + "/v1/feedback", json={"request_id": rid, "rating": "up", "comment": "x"})
                except httpx.TransportError:
                    continue  # refused or cut mid-request: not acknowledged
                if r.status_code == 200:
                    acked.append(r.json()["id"])

    posters = [threading.Thread(target=post_until_refused) for _ in range(4)]
    for t in posters:
        t.start()
    while len(acked) < 40:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    time.sleep(0.3)
    stop.set()
    for t in posters:
        t.join(10)
    restarted = start(runs / "clf", store, port)  # the store opens again after the kill (WAL recovery)
    try:
        assert httpx.post(url + "/v1/feedback", json={"request_id": rid, "rating": 5}, timeout=30).status_code == 200
    finally:
        restarted.terminate()
        restarted.wait(10)
    con = sqlite3.connect(store)
    stored = {row[0] for row in con.execute("SELECT id FROM feedback")}
    lost = set(acked) - stored
    assert len(acked) >= 40 and not lost, f"{len(lost)} of {len(acked)} acknowledged records lost"
