"""The worker that batches requests: a queue bound, company for a batch, and cancelled rows that stop costing."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunesmith.infer.generator import Sampling
from tunesmith.serve.batching import Busy, GenerationJob, Worker, generate_batch


class Box:
    """An outbox that records events in the worker thread; `cancel_after` texts, it says its client has gone."""

    def __init__(self, cancel_after: int | None = None):
        self.events, self.cancelled, self.cancel_after = [], False, cancel_after

    def put(self, event):
        self.events.append(event)
        if self.cancel_after is not None and sum(e[0] == "text" for e in self.events) >= self.cancel_after:
            self.cancelled = True


def job(ids, n=1, max_new=40, cancel_after=None):
    return GenerationJob(ids, Sampling(max_new, repetition_penalty=1.0), n, None, Box(cancel_after))


@pytest.fixture(scope="module")
def lm(tiny_lm, tokenizer):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_lm).eval(), tokenizer


def forwards(model):
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def test_a_cancelled_row_stops_the_batch_when_it_is_the_last(lm):
    model, tok = lm
    ids = tok("the film was good")["input_ids"]
    calls, handle = forwards(model)
    try:
        gone = job(ids, max_new=40, cancel_after=1)
        generate_batch(model, tok, [gone])
        alone = len(calls)
        calls.clear()
        kept = job(ids, max_new=40)
        generate_batch(model, tok, [kept])
    finally:
        handle.remove()
    assert not any(e[0] == "end" for e in gone.outbox.events)
    ends = [e for e in kept.outbox.events if e[0] == "end"]
    assert alone <= 3 and (ends[0][2] == "stop" or len(calls) >= 40)


def test_rows_of_one_batch_end_on_their_own_max_tokens(lm):
    model, tok = lm
    short, long = job(tok("bad")["input_ids"], max_new=3), job(tok("a dog and a cat")["input_ids"], n=2, max_new=9)
    generate_batch(model, tok, [short, long])
    ends = {(e[1], e[3]) for e in long.outbox.events if e[0] == "end"}
    assert [e[3] for e in short.outbox.events if e[0] == "end"][0] <= 3
    assert {c for c, _ in ends} == {0, 1} and all(n <= 9 for _, n in ends)


def test_the_worker_batches_what_waits_and_refuses_past_the_bound():
    ran, gate = [], threading.Event()

    def run(batch):
        gate.wait(5)
        ran.append([j.size for j in batch])

    worker = Worker(run, max_batch=4, max_queue=3, wait_s=0.0, name="t")
    blocker = job([1], n=1)
    worker.submit(blocker)
    time.sleep(0.1)  # the worker holds the blocker; the next ones wait
    for n in (2, 2, 1):
        worker.submit(job([1], n=n))
    with pytest.raises(Busy):
        worker.submit(job([1]))
    gate.set()
    deadline = time.monotonic() + 5
    while sum(map(len, ran)) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ran[0] == [1] and ran[1] == [2, 2] and ran[2] == [1]  # 2+2 fit in 4 rows; the 1 waits for the next
