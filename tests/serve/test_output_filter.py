"""A blocked reply never reaches the client, streamed or not, and each refusal is counted."""

from __future__ import annotations

import json
import re
import sqlite3

import httpx
import pytest

from tests.serve.conftest import Running
from tunesmith.infer.output_filter import FilterSpec, OutputFilter

MESSAGES = [{"role": "user", "content": "the film was good"}]


@pytest.fixture(scope="module")
def reply(server):
    """What the unfiltered server says: the filter below is built to refuse it."""
    body = {"model": "chat", "messages": MESSAGES, "max_tokens": 12, "temperature": 0}
    text = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60).json()["choices"][0]["message"]
    assert text["content"].strip()
    return text["content"]


@pytest.fixture(scope="module")
def filtered(runs, reply, tmp_path_factory):
    from tunesmith import api

    tail = reply.strip()[-4:]  # the last characters: a streamed reply has sent all the rest before they come
    flt = OutputFilter(FilterSpec(patterns=[re.escape(tail)], refusal="I cannot answer that."))
    store = tmp_path_factory.mktemp("filtered") / "serve.sqlite"
    app = api.serve_app([runs / "chat"], store=store, output_filter=flt, max_tokens=64, wait_ms=20)
    running = Running(app)
    yield running, store
    running.stop()


def test_blocked_replies_never_reach_the_client_streamed_or_not(filtered, reply):
    from openai import OpenAI

    running, store = filtered
    client = OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    whole = client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=12, temperature=0)
    assert whole.choices[0].message.content == "I cannot answer that."
    assert whole.choices[0].finish_reason == "content_filter"
    body = {"model": "chat", "messages": MESSAGES, "max_tokens": 12, "temperature": 0, "stream": True}
    with httpx.stream("POST", running.url + "/v1/chat/completions", json=body, timeout=60) as r:
        wire = r.read().decode()
    chunks = [json.loads(line[6:]) for line in wire.splitlines() if line.startswith("data: {")]
    sent = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert sent == "I cannot answer that." and reply.strip()[:3] not in wire
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    metrics = httpx.get(running.url + "/metrics", timeout=30).text
    assert 'tunesmith_filter_refusals_total{model="chat",reason="pattern"} 2.0' in metrics
    rows = sqlite3.connect(store).execute("SELECT filtered FROM requests ORDER BY time").fetchall()
    assert [json.loads(r[0]) for r in rows] == [["pattern"], ["pattern"]]


def test_replies_that_pass_are_unchanged(filtered, reply):
    running, _ = filtered
    body = {"model": "chat", "messages": [{"role": "user", "content": "a different prompt"}], "max_tokens": 12,
            "temperature": 0, "stream": True}  # fmt: skip
    with httpx.stream("POST", running.url + "/v1/chat/completions", json=body, timeout=60) as r:
        wire = r.read().decode()
    chunks = [json.loads(line[6:]) for line in wire.splitlines() if line.startswith("data: {")]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
