"""A server on a loopback port over two hand-made runs of the tiny models: a classifier and a chat model."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import torch

from tunesmith.models.build import build_classifier
from tunesmith.models.saved import CAUSAL_LM, CLASSIFIER, save_model

LABELS = ["neg", "neutral", "pos"]


def make_run(folder, model, tokenizer, meta):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"name: {folder.name}\n")
    save_model(model, tokenizer, meta, folder / "model")
    return folder


@pytest.fixture(scope="session")
def runs(tiny_model, tiny_lm, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("served")
    torch.manual_seed(3)
    clf = build_classifier(tiny_model, LABELS)
    meta = {"method": "classify", "kind": CLASSIFIER, "base_model": str(tiny_model), "labels": LABELS,
            "temperature": 1.3, "max_length": 32, "lora": False}  # fmt: skip
    make_run(root / "clf", clf, AutoTokenizer.from_pretrained(tiny_model), meta)
    lm = AutoModelForCausalLM.from_pretrained(tiny_lm)
    make_run(root / "chat", lm, AutoTokenizer.from_pretrained(tiny_lm), {"method": "sft", "kind": CAUSAL_LM})
    return root


class Running:
    """uvicorn serving an app in a thread, on a free port."""

    def __init__(self, app):
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    from tunesmith import api

    app = api.serve_app([runs / "clf", runs / "chat"], store=tmp_path_factory.mktemp("store") / "serve.sqlite",
                        max_tokens=64, wait_ms=20)  # fmt: skip
    running = Running(app)
    yield running
    running.stop()
