"""Scoring (prompt, completion) pairs with a trained reward model, found by run name, id or folder: the reward
that GRPO and evaluation use. No per-call state on shared objects, so threads may share one loaded model."""

from __future__ import annotations

from pathlib import Path

import torch

from tunesmith.infer.load import model_dir
from tunesmith.lm.chat import render
from tunesmith.lm.tokens import pad_id, pad_rows
from tunesmith.models.saved import load_reward


def conversation_ids(tokenizer, prompt: list[dict], reply: str, max_length: int) -> list[int]:
    """Token ids of the prompt turns and the reply, as the model's chat template renders them (an encoder
    without one: the fallback template with its [CLS]/[SEP]). Too long, the prompt loses its start."""
    text, _ = render(tokenizer, [*prompt, {"role": "assistant", "content": reply}])
    specials = not tokenizer.chat_template
    ids = tokenizer(text, add_special_tokens=specials)["input_ids"]
    if len(ids) <= max_length:
        return ids
    return ids[:1] + ids[len(ids) - max_length + 1 :] if specials else ids[-max_length:]


def rewards(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) scalar rewards (right-padded rows: the head reads the last real token or the first, per architecture)."""
    return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()


class RewardModel:
    """A reward run's model: score(prompts, completions) -> one float per pair."""

    def __init__(self, model: torch.nn.Module, tokenizer, max_length: int):
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        self.pad_id = pad_id(tokenizer)

    @classmethod
    def load(cls, run: str | Path) -> RewardModel:
        model, tokenizer, meta = load_reward(model_dir(run))
        return cls(model, tokenizer, meta["max_length"])

    @torch.no_grad()
    def score(self, prompts: list[str | list[dict]], completions: list[str], batch_size: int = 16) -> list[float]:
        out: list[float] = []
        device = next(self.model.parameters()).device
        for at in range(0, len(prompts), batch_size):
            rows = [
                conversation_ids(self.tokenizer, _turns(p), c, self.max_length)
                for p, c in zip(prompts[at : at + batch_size], completions[at : at + batch_size])
            ]
            ids, mask = pad_rows(rows, self.pad_id)
            out += rewards(self.model, ids.to(device), mask.to(device)).tolist()
        return out


def _turns(prompt: str | list[dict]) -> list[dict]:
    return prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
