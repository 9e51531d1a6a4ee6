"""Security and bad input: an API key, size and queue limits, and 4xx answers that name the field at fault."""

from __future__ import annotations

import httpx
import pytest

from tests.serve.conftest import Running

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}


@pytest.fixture(scope="module")
def guarded(runs, tmp_path_factory):
    from tunesmith import api

    app = api.serve_app([runs / "chat"], api_key="s3cret", store=tmp_path_factory.mktemp("g") / "s.sqlite",
                        max_tokens=16, max_body_bytes=2000)  # fmt: skip
    running = Running(app)
    yield running
    running.stop()


def post(server, path, body=None, **kw):
    return httpx.post(server.url + path, json=body, timeout=30, **kw)


def test_every_endpoint_but_healthz_needs_the_key(guarded):
    assert httpx.get(guarded.url + "/healthz").status_code == 200
    for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/chat/completions")):
        r = httpx.request(method, guarded.url + path, json=CHAT)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", path
    wrong = post(guarded, "/v1/chat/completions", CHAT, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = post(guarded, "/v1/chat/completions", CHAT, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["role"] == "assistant"


def test_the_openai_client_passes_its_key(guarded):
    from openai import AuthenticationError, OpenAI

    good = OpenAI(base_url=guarded.url + "/v1", api_key="s3cret", max_retries=0)
    assert [m.id for m in good.models.list()] == ["chat"]
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=guarded.url + "/v1", api_key="bad", max_retries=0).models.list()


def test_limits_answer_413_and_400_naming_the_field(guarded):
    key = {"Authorization": "Bearer s3cret"}
    big = CHAT | {"messages": [{"role": "user", "content": "x" * 5000}]}
    r = post(guarded, "/v1/chat/completions", big, headers=key)
    assert r.status_code == 413 and "at most 2000" in r.json()["error"]["message"]
    r = post(guarded, "/v1/chat/completions", CHAT | {"max_tokens": 17}, headers=key)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


def test_a_full_queue_answers_429(server):
    worker = server.app.state.served["chat"].worker
    worker.max_queue = 0
    try:
        r = post(server, "/v1/chat/completions", CHAT)
    finally:
        worker.max_queue = 256
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize(
    "body, param",
    [
        (CHAT | {"temperature": 3}, "temperature"),
        (CHAT | {"messages": []}, "messages"),
        (CHAT | {"logprobs": True}, "logprobs"),
        (CHAT | {"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        (CHAT | {"n": 0}, "n"),
        (CHAT | {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({k: v for k, v in CHAT.items() if k != "model"}, "model"),
    ],
)
def test_invalid_fields_are_400_naming_them(server, body, param):
    r = post(server, "/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_wrong_model_and_kind_and_json(server):
    r = post(server, "/v1/chat/completions", CHAT | {"model": "gpt-4"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = post(server, "/v1/chat/completions", CHAT | {"model": "clf"})
    assert r.status_code == 400 and "classifier" in r.json()["error"]["message"]
    r = post(server, "/v1/classify", {"model": "chat", "input": "hi"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = httpx.post(server.url + "/v1/chat/completions", content=b"{not json", timeout=30,
                   headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = post(server, "/v1/classify", {"model": "clf", "input": ["fine", "  "]})
    assert r.status_code == 400 and "input[1]" in r.json()["error"]["message"]


def test_the_server_binds_to_loopback_by_default():
    import inspect

    from tunesmith import api
    from tunesmith.serve import server

    assert inspect.signature(api.serve).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(server.run).parameters["host"].default == "127.0.0.1"
