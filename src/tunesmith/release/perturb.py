"""Seeded perturbations of test texts, for the audit's robustness check.

Written here rather than taken from nlpaug or CheckList, the two on the package index: nlpaug's last release
(1.1.11) is from July 2022 and brings gdown for the models its word-level augmenters download, which no machine
here can reach; CheckList's (0.0.11) is from May 2021. What the audit needs is small: a few seeded edits per text,
each a function here, and spaCy's NER (already installed for PII) to find the named entities to swap.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

KEYBOARD = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]
NEIGHBOURS = {
    c: "".join(row[j] for j in (i - 1, i + 1) if 0 <= j < len(row)) for row in KEYBOARD for i, c in enumerate(row)
}
SWAPS = {  # a named entity of each kind becomes another of the same kind
    "PERSON": ["Maria Lopez", "Kenji Sato", "Amara Okafor", "John Smith"],
    "GPE": ["Norway", "Peru", "Kenya", "Vietnam"],
    "ORG": ["Acme Corp", "Globex", "Initech", "Umbrella Inc"],
    "LOC": ["the Alps", "the Sahara", "Lake Tahoe"],
    "NORP": ["Canadian", "Brazilian", "Japanese"],
}
AUXILIARIES = r"\b(is|are|was|were|am|do|does|did|has|have|had|can|could|will|would|should|must)(?=\s)"


def typos(text: str, rng: random.Random) -> str:
    """About one word in five gets a neighbouring key, a dropped letter or two letters swapped."""
    words = text.split(" ")
    for i, w in enumerate(words):
        if len(w) > 3 and w.isalpha() and rng.random() < 0.2:
            j = rng.randrange(1, len(w) - 1)
            kind = rng.choice(("key", "drop", "swap"))
            if kind == "key" and NEIGHBOURS.get(w[j].lower()):
                w = w[:j] + rng.choice(NEIGHBOURS[w[j].lower()]) + w[j + 1 :]
            elif kind == "drop":
                w = w[:j] + w[j + 1 :]
            else:
                w = w[: j - 1] + w[j] + w[j - 1] + w[j + 1 :]
            words[i] = w
    return " ".join(words)


def casing(text: str, rng: random.Random) -> str:
    return rng.choice((str.upper, str.lower, str.title))(text)


def punctuation(text: str, rng: random.Random) -> str:
    """Punctuation removed, or a run of exclamation marks added at the end."""
    stripped = re.sub(r"[^\w\s]", "", text)
    return stripped if stripped != text and rng.random() < 0.5 else text.rstrip() + "!!!"


def negation(text: str, rng: random.Random) -> str | None:
    """'not' after the first auxiliary verb; None where there is none (the text is left out of this check)."""
    out, n = re.subn(AUXILIARIES, r"\1 not", text, count=1, flags=re.IGNORECASE)
    return out if n else None


def entity_swapper(nlp) -> Callable[[str, random.Random], str | None]:
    """Each named entity spaCy finds replaced by another of its kind; None where it finds none."""

    def swap(text: str, rng: random.Random) -> str | None:
        ents = [e for e in nlp(text).ents if e.label_ in SWAPS]
        if not ents:
            return None
        for e in reversed(ents):
            choices = [s for s in SWAPS[e.label_] if s != e.text]
            text = text[: e.start_char] + rng.choice(choices) + text[e.end_char :]
        return text

    return swap


def perturbations(nlp=None) -> dict[str, Callable[[str, random.Random], str | None]]:
    out = {"typos": typos, "casing": casing, "punctuation": punctuation, "negation": negation}
    if nlp is not None:
        out["entity_swap"] = entity_swapper(nlp)
    return out
