"""Feedback tied to request ids, the request log in SQLite, and what /metrics shows."""

from __future__ import annotations

import json
import sqlite3

import httpx


def post(server, path, body):
    return httpx.post(server.url + path, json=body, timeout=60)


def test_feedback_is_stored_against_its_request(server):
    r = post(server, "/v1/classify", {"model": "clf", "input": "a good film"})
    rid = r.json()["id"]
    assert r.headers["x-request-id"] == rid
    f = post(server, "/v1/feedback", {"request_id": rid, "rating": "down", "label": "pos", "comment": "wrong"})
    assert f.status_code == 200 and f.json()["stored"] is True
    con = sqlite3.connect(server.app.state.store.path)
    row = con.execute("SELECT thumb, score, label, comment, model FROM feedback WHERE id = ?", (f.json()["id"],))
    assert row.fetchone() == (-1, None, "pos", "wrong", "clf")
    logged = con.execute(
        "SELECT endpoint, prediction, confidence, prompt FROM requests WHERE id = ?", (rid,)
    ).fetchone()
    assert logged[0] == "classification" and json.loads(logged[1]) == [r.json()["data"][0]["label"]]
    assert logged[2] == r.json()["data"][0]["confidence"] and logged[3] is None  # no text without --log-text
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_feedback_on_a_chat_reply(server):
    r = post(server, "/v1/chat/completions", {"model": "chat", "messages": [{"role": "user", "content": "hi"}],
                                              "max_tokens": 4})  # fmt: skip
    f = post(server, "/v1/feedback", {"request_id": r.json()["id"], "rating": 4, "preferred": "Hello!"})
    assert f.status_code == 200


def test_bad_feedback_names_the_field(server):
    rid = post(server, "/v1/classify", {"model": "clf", "input": "fine"}).json()["id"]
    cases = [
        ({"request_id": "nope", "rating": "up"}, 404, "request_id"),
        ({"request_id": rid, "label": "maybe"}, 400, "label"),
        ({"request_id": rid, "rating": 9}, 400, "rating"),
        ({"request_id": rid}, 400, None),
    ]
    for body, status, param in cases:
        r = post(server, "/v1/feedback", body)
        assert r.status_code == status and r.json()["error"]["param"] == param, (body, r.text)


def test_metrics_count_requests_and_feedback(server):
    post(server, "/v1/classify", {"model": "clf", "input": ["one", "two"]})
    text = httpx.get(server.url + "/metrics").text
    assert 'tunesmith_requests_total{endpoint="classification",model="clf",status="200"}' in text
    assert 'tunesmith_queue_depth{model="chat"} 0.0' in text
    assert "tunesmith_request_seconds_bucket" in text and 'tunesmith_drift_flagged{model="clf"}' in text
    count = [ln for ln in text.splitlines() if ln.startswith('tunesmith_requests_total{endpoint="classification"')]
    assert float(count[0].split()[-1]) >= 2


def test_feedback_names_one_text_of_several(server, tmp_path):

    r = post(server, "/v1/classify", {"model": "clf", "input": ["first text", "second text"]}).json()
    assert post(server, "/v1/feedback", {"request_id": r["id"], "index": 2, "label": "pos"}).json()["error"][
        "param"
    ] == ("index")
    assert post(server, "/v1/feedback", {"request_id": r["id"], "index": 1, "label": "pos"}).status_code == 200
    store = server.app.state.store
    con = sqlite3.connect(store.path)
    assert con.execute("SELECT item FROM feedback WHERE request_id = ?", (r["id"],)).fetchone() == (1,)


def test_old_requests_expire_after_the_retention(tmp_path):
    import time

    from tunesmith.serve.store import Store

    store = Store(tmp_path / "s.sqlite", retention_days=1, anonymise=None)
    old = {"id": "old", "time": time.time() - 2 * 86400, "endpoint": "chat", "model": "m", "run_path": "r",
           "status": 200}  # fmt: skip
    store.log_request(old)
    store.add_feedback("old", "m", {"thumb": 1})
    store.log_request(old | {"id": "new", "time": time.time()})
    assert store.expire() == 1 and store.request("old") is None and store.request("new") is not None
    assert store.feedback() == []
