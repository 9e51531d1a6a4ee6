"""The whole loop on a trained tiny classifier: serve, feedback, export, retrain from the parent, gate, promote
under load with no failed request, roll back."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from tests.conftest import tiny_config
from tests.serve.conftest import Running
from tunesmith import api
from tunesmith.errors import TunesmithError

FEEDBACK = [f"a {w} {n} film about the sea" for n in ("long", "short", "dull", "grand") for w in
            ("quiet", "loud", "odd", "brave", "tired", "warm", "cold", "bright", "slow", "kind")]  # fmt: skip


@pytest.fixture(scope="module")
def loop(tiny_model, fixtures, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loop")
    cfg = tiny_config(tiny_model, fixtures / "sst2_train.tsv", tmp, name="sent")
    cfg["train"] |= {"epochs": 1}
    first = api.train(cfg, quiet=True)
    app = api.serve_app([first], log_text=True, max_tokens=8)
    running = Running(app)
    yield running, first, cfg, tmp
    running.stop()


def test_feedback_round_trip_retrains_gates_and_promotes(loop):
    server, first, cfg, tmp = loop
    for text in FEEDBACK:
        r = httpx.post(server.url + "/v1/classify", json={"model": "sent", "input": text}, timeout=30).json()
        label = "1" if ("grand" in text or "long" in text) else "0"  # what users say the right label is
        ok = httpx.post(server.url + "/v1/feedback", json={"request_id": r["id"], "label": label}, timeout=30)
        assert ok.status_code == 200
    rows, held = tmp / "rows.jsonl", tmp / "held.jsonl"
    counts = api.export_feedback(first, rows, holdout=0.25, holdout_to=held)
    assert counts["rows"] == 30 and counts["holdout_rows"] == 10 and counts["skipped"] == {}
    assert {json.loads(ln)["label"] for ln in rows.read_text().splitlines()} == {"0", "1"}

    second_cfg = tiny_config(cfg["model"], rows, tmp, name="sent",
                             data={"train": str(rows), "text": "text", "label": "label", "test_fraction": 0.2},
                             continual={"strategy": "replay"})  # fmt: skip
    second_cfg["train"] |= {"epochs": 4}
    second = api.train(second_cfg, continue_from=str(first), quiet=True)
    result = api.gate(second, first, held, tolerance=0.2)
    assert set(result["accuracy"]) == {"test", "feedback"} and (second / "gate.json").is_file()
    assert result["accuracy"]["feedback"]["new"] >= result["accuracy"]["feedback"]["served"]

    with pytest.raises(TunesmithError, match="not gated yet"):
        api.promote(first, server.url)  # the first run was never gated
    if not result["passed"]:
        with pytest.raises(TunesmithError, match="gate failed"):
            api.promote(second, server.url)
    errors, done = [], threading.Event()

    def hammer():
        with httpx.Client(timeout=30) as client:
            while not done.is_set():
                r = client.post(server.url + "/v1/classify", json={"model": "sent", "input": "a fine film"})
                if r.status_code != 200:
                    errors.append(r.status_code)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        switched = api.promote(second, server.url, force=not result["passed"])
        versions = {m["id"]: m["version"] for m in httpx.get(server.url + "/v1/models").json()["data"]}
        assert versions["sent"] == switched["version"] != switched["previous"]
        back = api.rollback("sent", server.url)
        assert back["version"] == switched["previous"]
    finally:
        done.set()
        for t in threads:
            t.join(10)
    assert errors == []
    with pytest.raises(TunesmithError, match="never promoted"):
        api.rollback("sent", server.url)
