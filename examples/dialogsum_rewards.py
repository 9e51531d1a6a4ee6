"""Rewards for GRPO on DialogSum (examples/dialogsum_grpo.yaml): a summary should be short, name the dialogue's
speakers and keep its numbers without inventing any. Each takes the prompts (which hold the dialogue), the
completions and the rows' reference summaries, and returns one float in [0, 1] per completion.
"""

from __future__ import annotations

import re

SPEAKER = re.compile(r"#Person\d+#")
NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")
BUDGET = 50  # words: DialogSum's reference summaries have a median of about 20


def under_budget(prompts, completions, **_) -> list[float]:
    """1 up to BUDGET words, falling linearly to 0 at twice that; 0 for an empty summary."""
    out = []
    for c in completions:
        words = len(c.split())
        out.append(0.0 if words == 0 else max(0.0, min(1.0, 2 - words / BUDGET)))
    return out


def keeps_speakers(prompts, completions, **_) -> list[float]:
    """The share of the dialogue's speaker tags (#Person1#, ...) that the summary names."""
    out = []
    for p, c in zip(prompts, completions):
        speakers = set(SPEAKER.findall(p))
        out.append(len(speakers & set(SPEAKER.findall(c))) / len(speakers) if speakers else 1.0)
    return out


def keeps_numbers(prompts, completions, references, **_) -> list[float]:
    """The mean of two shares: the dialogue's numbers that a reference summary keeps and this one keeps too, and
    the summary's numbers that the dialogue holds (an invented number costs)."""
    out = []
    for p, c, refs in zip(prompts, completions, references):
        said, dialogue = _numbers(c), _numbers(p)
        needed = dialogue & {n for r in refs for n in _numbers(r)}
        kept = len(needed & said) / len(needed) if needed else 1.0
        faithful = len(said & dialogue) / len(said) if said else 1.0
        out.append((kept + faithful) / 2)
    return out


def _numbers(text: str) -> set[str]:
    return set(NUMBER.findall(SPEAKER.sub(" ", text)))


def rouge_l(prompts, completions, references, **_) -> list[float]:
    """ROUGE-L F1 against the best reference, as eval.generate scores it; give it weight 0 to report it only."""
    from tunesmith.eval.generation import text_metrics

    return [text_metrics([c], [refs])["rougeL"] / 100 for c, refs in zip(completions, references)]
