"""The real openai client against the server: chat, completions, streaming, embeddings, models."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunesmith.infer.classifier import Classifier
from tunesmith.infer.generator import Generator, Sampling


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def alone(runs):
    """The chat run's model answering one conversation at a time: what every batched reply must equal."""
    folder = runs / "chat" / "model"
    return Generator(AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder))


def test_chat_completion_is_the_models_greedy_reply(client, alone):
    messages = [{"role": "user", "content": "the film was good"}]
    out = client.chat.completions.create(model="chat", messages=messages, max_tokens=12, temperature=0)
    assert out.object == "chat.completion" and out.model == "chat" and out.id.startswith("chatcmpl-")
    assert out.choices[0].message.content == alone.replies([messages], Sampling(12))[0]
    assert out.choices[0].finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens > 0 and 0 < out.usage.completion_tokens <= 12
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_streamed_chat_joins_to_the_whole_reply(client):
    messages = [{"role": "user", "content": "a long and winding story"}]
    whole = client.chat.completions.create(model="chat", messages=messages, max_tokens=16, temperature=0)
    stream = client.chat.completions.create(
        model="chat", messages=messages, max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_sse_wire_format_ends_with_done(server):
    body = {"model": "chat", "prompt": "the film", "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines) and lines[-1] == "data: [DONE]"
    assert r.headers["x-request-id"].startswith("cmpl-")


def test_completion_stops_before_a_stop_string(client):
    full = client.completions.create(model="chat", prompt="the film was", max_tokens=20, temperature=0)
    text = full.choices[0].text
    assert full.object == "text_completion" and text
    stop = text.strip()[2:4]
    cut = client.completions.create(model="chat", prompt="the film was", max_tokens=20, temperature=0, stop=[stop])
    assert stop not in cut.choices[0].text and text.startswith(cut.choices[0].text)
    assert cut.choices[0].finish_reason == "stop"


def test_n_choices_with_a_seed_repeat(client):
    ask = {"model": "chat", "messages": [{"role": "user", "content": "bad"}], "max_tokens": 8, "temperature": 1.0,
           "n": 3, "seed": 7}  # fmt: skip
    first, again = client.chat.completions.create(**ask), client.chat.completions.create(**ask)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]


def test_concurrent_requests_share_batches_and_equal_solo_replies(server, alone):
    from concurrent.futures import ThreadPoolExecutor

    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60)
    prompts = ["bad", "the film was good and the actors were better", "a dog", "rain that would not stop"] * 3
    worker = server.app.state.served["chat"].worker
    before = worker.batches

    def ask(p):
        out = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": p}], max_tokens=10,
                                             temperature=0)  # fmt: skip
        return out.choices[0].message.content

    with ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(ask, prompts))
    assert replies == alone.replies([[{"role": "user", "content": p}] for p in prompts], Sampling(10))
    assert worker.batches - before < len(prompts)  # some requests ran together


def test_models_lists_both_runs(client):
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"clf", "chat"}
    assert models["clf"].model_extra["kind"] == "classifier" and models["clf"].model_extra["labels"] == [
        "neg",
        "neutral",
        "pos",
    ]


def test_embeddings_are_unit_vectors_of_the_encoder(client, runs):
    out = client.embeddings.create(model="clf", input=["a good film", "bad"])
    vectors = np.array([d.embedding for d in out.data])
    assert vectors.shape[0] == 2 and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    expected = Classifier.load(runs / "clf").embed(["a good film", "bad"])
    assert np.allclose(vectors, expected, atol=1e-5)


def test_classify_gives_the_calibrated_probabilities(server, runs):
    texts = ["a good film", "bad", "the rain would not stop"]
    r = httpx.post(server.url + "/v1/classify", json={"model": "clf", "input": texts}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    expected = Classifier.load(runs / "clf").predict(texts)
    assert [d["label"] for d in body["data"]] == [e["label"] for e in expected]
    for got, want in zip(body["data"], expected):
        assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-5)
        assert sum(got["probs"].values()) == pytest.approx(1.0, abs=1e-5)


def test_a_client_gone_mid_stream_frees_its_row(server):
    """Slowed to 30 ms a token, a 64-token stream is cut after its first piece: the row stops there (logged 499)."""
    import sqlite3
    import time

    model = server.app.state.served["chat"].model
    handle = model.register_forward_pre_hook(lambda *a: time.sleep(0.03))
    body = {"model": "chat", "prompt": "the film", "max_tokens": 64, "temperature": 0, "stream": True}
    try:
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
            rid = r.headers["x-request-id"]
            next(r.iter_lines())
        worker = server.app.state.served["chat"].worker
        deadline = time.monotonic() + 1.0  # 64 tokens would take about 2 s more
        while worker.busy_since is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert worker.busy_since is None
    finally:
        handle.remove()
    con = sqlite3.connect(server.app.state.store.path)
    status, tokens = con.execute("SELECT status, completion_tokens FROM requests WHERE id = ?", (rid,)).fetchone()
    assert status == 499 and tokens < 64
