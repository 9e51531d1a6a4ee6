"""Concurrent requests share forward passes.

A Worker owns one model: one thread takes the requests waiting in its bounded queue, as many as fit together,
and runs them at once. Generation batches the requests that sample the same way (temperature, top_p, seed):
their prompts, left-padded, go through transformers' generate as one batch, and each row's text reaches its
request as it grows. A row that ends (end of turn, its own max_tokens, a stop string, or its client gone) is
finished at once, so its client is answered and the batch stops with its last live row. Texts to classify or
embed are batched the same way, across requests.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from tunesmith.infer.generator import Sampling, StopFilter
from tunesmith.infer.output_filter import Held
from tunesmith.lm.tokens import pad_id, pad_rows


class Busy(Exception):
    """The queue is full: the client should retry later (HTTP 429)."""


class Outbox:
    """Events from the worker thread to the request's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.events = loop, asyncio.Queue()
        self.cancelled = False  # the client went away: the worker drops the request

    def put(self, event: tuple) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


@dataclass
class GenerationJob:
    """One request: n replies to one prompt. Events: ("text", choice, piece), ("end", choice, finish_reason,
    completion_tokens), ("error", message)."""

    prompt_ids: list[int]
    sampling: Sampling
    n: int
    seed: int | None
    outbox: Outbox
    held: Held | None = None  # the output filter's hold on the replies, for the server (the worker never reads it)

    @property
    def key(self) -> tuple:
        """Requests with the same key can share a batch."""
        s = self.sampling
        return (s.temperature, s.top_p if s.temperature > 0 else 1.0, s.repetition_penalty, self.seed)

    @property
    def size(self) -> int:
        return self.n

    @property
    def gone(self) -> bool:
        return self.outbox.cancelled


@dataclass
class TextJob:
    """Texts to classify or embed, as (what, text) pairs; the result (one per text) or the error goes to `future`."""

    texts: list[tuple[str, str]]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    cancelled: bool = False

    @property
    def key(self) -> tuple:
        return ()

    @property
    def size(self) -> int:
        return len(self.texts)

    @property
    def gone(self) -> bool:
        return self.cancelled or self.future.cancelled()


class Worker:
    """One thread that runs batches of waiting jobs. A job joins the batch of the oldest waiting job when it has
    the same key and the batch stays within max_batch rows (the oldest always runs, whatever its size)."""

    def __init__(self, run: Callable[[list], None], *, max_batch: int, max_queue: int, wait_s: float, name: str):
        self.run, self.max_batch, self.max_queue, self.wait_s = run, max_batch, max_queue, wait_s
        self.pending: deque = deque()
        self.cond = threading.Condition()
        self.busy_since: float | None = None
        self.batches = 0  # batches run so far
        self.retired = False  # no new jobs: the thread ends once the queue is empty
        self.thread = threading.Thread(target=self._loop, name=f"tunesmith-{name}", daemon=True)
        self.thread.start()

    def submit(self, job) -> None:
        with self.cond:
            if self.retired:
                raise Busy("the model was just replaced; retry")
            if len(self.pending) >= self.max_queue:
                raise Busy(f"{len(self.pending)} requests are waiting (the limit, --max-queue); retry later")
            self.pending.append(job)
            self.cond.notify()

    def depth(self) -> int:
        return len(self.pending)

    def retire(self) -> None:
        """Runs what is queued, then ends the thread (its model was replaced)."""
        with self.cond:
            self.retired = True
            self.cond.notify()

    def _take(self) -> list | None:
        with self.cond:
            while not self.pending:
                if self.retired:
                    return None
                self.cond.wait()
        if self.wait_s:
            time.sleep(self.wait_s)  # a moment for requests sent together to arrive together
        with self.cond:
            first = self.pending.popleft()
            batch, rows, rest = [first], first.size, deque()
            while self.pending:
                job = self.pending.popleft()
                if job.key == first.key and rows + job.size <= self.max_batch:
                    batch.append(job)
                    rows += job.size
                else:
                    rest.append(job)
            self.pending.extendleft(reversed(rest))
        return [job for job in batch if not job.gone]

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if not batch:
                continue
            self.busy_since = time.monotonic()
            self.batches += 1
            try:
                self.run(batch)
            finally:
                self.busy_since = None


# ---- generation -------------------------------------------------------------------------------------------


@dataclass
class _Row:
    """One reply being generated."""

    job: GenerationJob
    choice: int
    tokenizer: object
    ids: list[int] = field(default_factory=list)
    decoded: str = ""
    finished: bool = False

    def __post_init__(self):
        self.stop = StopFilter(self.job.sampling)

    def take(self, token: int, eos: set[int]) -> None:
        if self.job.outbox.cancelled:
            self.finished = True
            return
        self.ids.append(token)
        if token in eos:
            return self.finish("stop")
        self._show(final=False)
        if self.stop.sampling.end(self.stop.text) is not None:
            self.finish("stop")
        elif len(self.ids) >= self.job.sampling.max_new_tokens:
            self.finish("length")

    def _show(self, final: bool) -> None:
        """Passes on the newly decoded text; until the end, not while a character is incomplete (a trailing
        replacement character: its next byte has not come yet)."""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if final or not text.endswith("\ufffd"):
            piece, self.decoded = text[len(self.decoded) :], text
            if shown := self.stop.feed(piece):
                self.job.outbox.put(("text", self.choice, shown))

    def finish(self, reason: str) -> None:
        self._show(final=True)
        if rest := self.stop.finish():
            self.job.outbox.put(("text", self.choice, rest))
        self.job.outbox.put(("end", self.choice, reason, len(self.ids)))
        self.finished = True


class _Rows:
    """generate's stopping criterion: it sees each new token of every row first, hands it to its row, and says
    which rows are finished."""

    def __init__(self, rows: list[_Row], eos: set[int]):
        self.rows, self.eos = rows, eos

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        for row, token in zip(self.rows, input_ids[:, -1].tolist()):
            if not row.finished:
                row.take(token, self.eos)
        return torch.tensor([row.finished for row in self.rows], device=input_ids.device)


def generate_batch(model: torch.nn.Module, tokenizer, jobs: Sequence[GenerationJob]) -> None:
    """Every reply of every job, as one left-padded batch; each job hears of its rows as they grow."""
    from transformers import StoppingCriteriaList

    rows = [_Row(job, c, tokenizer) for job in jobs for c in range(job.n)]
    try:
        input_ids, mask = pad_rows([row.job.prompt_ids for row in rows], pad_id(tokenizer), left=True)
        device = next(model.parameters()).device
        first = jobs[0]
        if first.seed is not None:
            torch.manual_seed(first.seed)
        s = first.sampling
        sample = (
            {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p}
            if s.temperature > 0
            else {"do_sample": False}
        )
        eos = _eos_ids(model, tokenizer)
        with torch.inference_mode():
            model.generate(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max(row.job.sampling.max_new_tokens for row in rows),
                pad_token_id=pad_id(tokenizer),
                repetition_penalty=s.repetition_penalty,
                stopping_criteria=StoppingCriteriaList([_Rows(rows, eos)]),
                **sample,
            )
        for row in rows:
            if not row.finished:
                row.finish("length")
    except Exception as err:  # the model failed (e.g. out of memory): every waiting client hears why
        for job in jobs:
            job.outbox.put(("error", f"generation failed: {type(err).__name__}: {err}"))


def _eos_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


# ---- texts --------------------------------------------------------------------------------------------------


def text_batch(fn: Callable[[list], Sequence]) -> Callable[[list[TextJob]], None]:
    """A Worker's run for text jobs: fn over all their texts at once, each job answered with its own part."""

    def run(jobs: list[TextJob]) -> None:
        texts = [t for job in jobs for t in job.texts]
        try:
            results = list(fn(texts))
        except Exception as err:
            for job in jobs:
                _answer(job, error=RuntimeError(f"{type(err).__name__}: {err}"))
            return
        at = 0
        for job in jobs:
            _answer(job, result=results[at : at + len(job.texts)])
            at += len(job.texts)

    return run


def _answer(job: TextJob, *, result=None, error: Exception | None = None) -> None:
    def settle():
        if not job.future.done():
            job.future.set_exception(error) if error else job.future.set_result(result)

    job.loop.call_soon_threadsafe(settle)
