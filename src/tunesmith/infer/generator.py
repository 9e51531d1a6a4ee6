"""Replies of a causal LM: batched for many prompts, streamed piece by piece for one, cut at stop strings.

Nothing here changes per call on a shared object: prompts are padded by hand (the tokenizer's padding_side is
never touched), the model's mode is never switched, and each stream has its own streamer and stop filter.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from threading import Thread

import torch

from tunesmith.config import REPETITION_PENALTY
from tunesmith.infer.load import model_dir
from tunesmith.infer.output_filter import OutputFilter
from tunesmith.lm.chat import prompt_text
from tunesmith.lm.tokens import pad_id, pad_rows
from tunesmith.models.saved import load_causal_lm


@dataclass(frozen=True)
class Sampling:
    """How replies are drawn: greedy at temperature 0. A reply ends at the end-of-turn token, after max_new_tokens,
    or before the first stop string (which, as in the OpenAI API, is not part of it)."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    repetition_penalty: float = REPETITION_PENALTY  # > 1 makes tokens already in the text less likely (CTRL's)

    def kwargs(self, tokenizer) -> dict:
        pad = pad_id(tokenizer)
        out = {
            "max_new_tokens": self.max_new_tokens,
            "pad_token_id": pad,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.temperature > 0:
            out |= {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
        else:
            out |= {"do_sample": False}
        return out | ({"stop_strings": list(self.stop), "tokenizer": tokenizer} if self.stop else {})

    def end(self, text: str) -> int | None:
        """Where the first stop string starts in text, if one does."""
        found = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def cut(self, text: str) -> str:
        """text up to its first stop string."""
        return text[: self.end(text)]


class StopFilter:
    """The text of a stream up to its first stop string, given out as it grows. Text that may be the start of a
    stop string is held back until it is known not to be one."""

    def __init__(self, sampling: Sampling):
        self.sampling = sampling
        self.text, self.shown = "", 0
        self.hold = max(map(len, sampling.stop), default=1) - 1

    def feed(self, piece: str) -> str:
        """What may be shown now that `piece` has arrived."""
        self.text += piece
        end = self.sampling.end(self.text)
        return self._show(end if end is not None else len(self.text) - self.hold)

    def finish(self) -> str:
        """What is left to show once the stream has ended."""
        return self._show(len(self.sampling.cut(self.text)))

    def _show(self, upto: int) -> str:
        if upto <= self.shown:
            return ""
        out, self.shown = self.text[self.shown : upto], upto
        return out


class Generator:
    """A causal LM in eval mode with its tokenizer and chat template."""

    def __init__(self, model: torch.nn.Module, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.pad_id = pad_id(tokenizer)

    @classmethod
    def load(cls, run: str | Path, fmt: str | None = None) -> Generator:
        """A run's causal LM, or its `fmt` export (gguf, int8, merged)."""
        model, tokenizer, _ = load_causal_lm(model_dir(run, fmt=fmt))
        return cls(model, tokenizer)

    @torch.no_grad()
    def replies(
        self, conversations: list[list[dict]], sampling: Sampling = Sampling(), *, batch_size: int = 16
    ) -> list[str]:
        """The next assistant reply to each conversation, in batches of prompts of similar length (left-padded)."""
        texts = [prompt_text(self.tokenizer, c) for c in conversations]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        device = next(self.model.parameters()).device
        out: list[str] = [""] * len(texts)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            ids = self.tokenizer([texts[i] for i in batch], add_special_tokens=False)["input_ids"]
            input_ids, mask = pad_rows(ids, self.pad_id, left=True)
            rows = self.model.generate(
                input_ids=input_ids.to(device), attention_mask=mask.to(device), **sampling.kwargs(self.tokenizer)
            )
            for i, r in zip(batch, rows):
                said = self.tokenizer.decode(r[input_ids.shape[1] :], skip_special_tokens=True)
                out[i] = sampling.cut(said).strip()
        return out

    def stream(self, conversation: list[dict], sampling: Sampling = Sampling()) -> Iterator[str]:
        """The next assistant reply, piece by piece as it is generated, ending before the first stop string."""
        from transformers import TextIteratorStreamer

        ids = self.tokenizer(prompt_text(self.tokenizer, conversation), add_special_tokens=False)["input_ids"]
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "streamer": streamer}
        worker = Thread(target=self.model.generate, kwargs=kwargs | sampling.kwargs(self.tokenizer))
        worker.start()
        stop = StopFilter(sampling)
        for piece in streamer:
            if shown := stop.feed(piece):
                yield shown
        worker.join()
        if rest := stop.finish():
            yield rest


class ChatSession:
    """A conversation with a run's model: send() streams the reply and keeps the history."""

    def __init__(
        self,
        generator: Generator,
        *,
        system: str | None = None,
        sampling: Sampling = Sampling(256, 0.7, 0.9),
        output_filter: OutputFilter | None = None,
    ):
        self.generator, self.sampling, self.filter = generator, sampling, output_filter
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.refusals = 0

    def send(self, text: str) -> Iterator[str]:
        """Yields the reply as it is generated; under an output filter, once whole and passed (or the refusal).
        The history keeps what was shown."""
        self.messages.append({"role": "user", "content": text})
        pieces = []
        for piece in self.generator.stream(self.messages, self.sampling):
            pieces.append(piece)
            if self.filter is None:
                yield piece
        reply = "".join(pieces).strip()
        if self.filter is not None:
            verdict = self.filter.check([reply])[0]
            reply, self.refusals = verdict.text, self.refusals + (verdict.reason is not None)
            yield reply
        self.messages.append({"role": "assistant", "content": reply})
