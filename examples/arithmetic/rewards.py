"""Rewards for the arithmetic GRPO example (grpo.rewards: function: examples/arithmetic/rewards.py:NAME)."""

from __future__ import annotations

import re

FINAL = re.compile(r"Answer:\s*(-?\d+)\s*\.?\s*$")
NUMBER = re.compile(r"-?\d+")


def _expected(references: list[str]) -> int:
    return int(NUMBER.findall(references[0])[-1])


def exact_answer(prompts, completions, references, **_) -> list[float]:
    """1 when the last number of the completion is the answer, else 0."""
    out = []
    for completion, refs in zip(completions, references):
        found = NUMBER.findall(completion)
        out.append(float(bool(found) and int(found[-1]) == _expected(refs)))
    return out


def answer_format(prompts, completions, **_) -> list[float]:
    """A small reward for ending with 'Answer: <number>', right or wrong."""
    return [0.2 if FINAL.search(c.strip()) else 0.0 for c in completions]
