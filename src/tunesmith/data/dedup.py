"""Exact and near-duplicate removal within and across splits (MinHash LSH via rensa).

Splits are fed test first, then val, then train: a row that repeats an earlier split's row is leakage
and is counted as such; a row that repeats a row of its own split is a plain duplicate.
"""

from __future__ import annotations

import re

from tunesmith.config import DedupConfig

PUNCT = re.compile(r"[^\w\s]+")
SEED = 42


def dedup_key(text: str) -> str:
    """Two texts are "the same" when they match after folding case, punctuation and whitespace."""
    return " ".join(PUNCT.sub(" ", text.casefold()).split())


def shingles(key: str | bytes, n: int) -> list:
    """Overlapping n-grams (of the UTF-8 bytes when given bytes: about twice as fast to cut as str)."""
    return [key[i:i + n] for i in range(len(key) - n + 1)] or [key]


def minhashes(keys: list[str], cfg: DedupConfig) -> list:
    """MinHash sketches of character n-grams (rensa); picklable, so worker processes can make them."""
    import rensa

    return rensa.RMinHash.from_token_sets([shingles(k.encode(), cfg.ngram) for k in keys], cfg.num_perm, SEED)


class Deduper:
    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg
        self.seen: dict[int, str] = {}  # hash of a key -> the split it was first seen in
        self.index: dict[str, object] = {}  # split -> a rensa index of its kept rows
        self.rows = 0

    def check(self, split: str, keys: list[str], sketches: list | None) -> list[str | None]:
        """Per key: None to keep it, else the reason it goes. Kept keys are remembered for later rows.
        `sketches` are the keys' minhashes() (made by a worker); None when near dedup is off."""
        verdict: list[str | None] = [None] * len(keys)
        if self.cfg.exact:
            for i, key in enumerate(keys):
                h = hash(key)
                first = self.seen.get(h)
                if first is None:
                    self.seen[h] = split
                else:
                    verdict[i] = _reason("exact duplicate", first, split)
        if self.cfg.near:
            self._near(split, sketches, verdict)
        return verdict

    def _near(self, split: str, sketches: list, verdict: list[str | None]) -> None:
        import rensa

        todo = [i for i, v in enumerate(verdict) if v is None]
        pairs = {i: (f"{split}:{self.rows + i}", sketches[i]) for i in todo}
        self.rows += len(sketches)
        for other, index in self.index.items():
            if todo:
                hits = index.is_duplicate_pairs([pairs[i] for i in todo])
                for i, hit in zip(todo, hits):
                    if hit:
                        verdict[i] = _reason("near duplicate", other, split)
                todo = [i for i, hit in zip(todo, hits) if not hit]
        if split not in self.index:
            self.index[split] = rensa.RMinHashDeduplicator(self.cfg.threshold, self.cfg.num_perm, True)
        for i, added in zip(todo, self.index[split].add_pairs([pairs[i] for i in todo])):
            if not added:
                verdict[i] = "near duplicate"


def _reason(kind: str, first: str, split: str) -> str:
    return kind if first == split else f"{kind} of a {first} row"
