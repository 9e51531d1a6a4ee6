"""Exact and near-duplicate removal within and across splits (MinHash LSH via rensa).

Splits are fed test first, then val, then train: a row that repeats an earlier split's row is leakage
and is counted as such; a row that repeats a row of its own split is a plain duplicate.

A row is a near duplicate when it is within the Jaccard threshold of any earlier row, kept or removed. So a
cluster of near copies keeps one row however far its members drift from it (A ~ B ~ C with B removed as a
copy of A: C goes too, as union-find clustering of MinHash candidates would decide).
"""

from __future__ import annotations

import re

from tunesmith.config import DedupConfig

PUNCT = re.compile(r"[^\w\s]+")
SEED = 42
LEVELS = 2  # removed-row indexes per split: see Deduper._remember


# ASCII text folds with one table lookup per byte: letters to lower case, punctuation and whitespace to a space.
_ASCII_FOLD = bytes((c | 0x20) if 65 <= c <= 90 else c if chr(c).isalnum() or c == 95 else 32 for c in range(256))


def dedup_key(text: str) -> bytes:
    """Two texts are "the same" when they match after folding case, punctuation and whitespace (UTF-8 bytes)."""
    if text.isascii():
        return b" ".join(text.encode().translate(_ASCII_FOLD).split())
    return " ".join(PUNCT.sub(" ", text.casefold()).split()).encode()


def shingles(key: bytes, n: int) -> list[bytes]:
    """Overlapping n-grams of the key's bytes (about twice as fast to cut as str)."""
    return [key[i : i + n] for i in range(len(key) - n + 1)] or [key]


def minhashes(keys: list[bytes], cfg: DedupConfig) -> list:
    """MinHash sketches of byte n-grams (rensa); picklable, so worker processes can make them."""
    import rensa

    return rensa.RMinHash.from_token_sets([shingles(k, cfg.ngram) for k in keys], cfg.num_perm, SEED)


class Deduper:
    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg
        self.seen: dict[int, str] = {}  # hash of a key -> the split it was first seen in
        self.kept: dict[str, object] = {}  # split -> a rensa index of its kept rows
        self.removed: dict[
            str, list
        ] = {}  # split -> rensa indexes (LEVELS at most) of its rows removed as near duplicates
        self.rows = 0

    def check(
        self, split: str, hashes: list[int], sketches: list | None, lengths: list[int] | None = None, keep: bool = False
    ) -> list[str | None]:
        """Per row: None to keep it, else the reason it goes. Kept rows are remembered for later rows.
        `hashes` are hash(dedup_key), `sketches` the keys' minhashes() (made by a worker; None when near dedup is
        off) and `lengths` the keys' lengths (rows shorter than near_min_chars are matched exactly only). With
        `keep` (a test file the user gave), every row stays and is still remembered, so later rows near it go."""
        verdict: list[str | None] = [None] * len(hashes)
        if self.cfg.exact:
            for i, h in enumerate(hashes):
                first = self.seen.get(h)
                if first is None:
                    self.seen[h] = split
                else:
                    verdict[i] = _reason("exact duplicate", first, split)
        if self.cfg.near:
            short = [n < self.cfg.near_min_chars for n in lengths] if lengths else [False] * len(hashes)
            self._near(split, sketches, verdict, short)
        return [None] * len(verdict) if keep else verdict

    def _near(self, split: str, sketches: list, verdict: list[str | None], short: list[bool]) -> None:
        """Earlier splits' rows, then this split's removed rows, then its kept rows (rensa adds the rows it keeps);
        then a row kept in this batch goes after all if it is near a row removed before it in this batch."""
        pairs = {
            i: (f"{split}:{self.rows + i}", sketches[i]) for i, v in enumerate(verdict) if v is None and not short[i]
        }
        self.rows += len(sketches)
        todo = list(pairs)
        for other in [s for s in self.kept if s != split]:
            for index in [self.kept[other], *self.removed[other]]:
                todo = self._mark(todo, pairs, index, _reason("near duplicate", other, split), verdict)
        kept, removed = self._indexes(split)
        for index in removed:
            todo = self._mark(todo, pairs, index, "near duplicate", verdict)
        for i, added in zip(todo, kept.add_pairs([pairs[i] for i in todo])):
            if not added:
                verdict[i] = "near duplicate"
        fresh = [i for i in pairs if (verdict[i] or "").startswith("near")]
        while fresh:
            self._remember(split, [pairs[i] for i in fresh])
            fresh = _after_removed([i for i in pairs if verdict[i] is None and i > fresh[0]], pairs, removed)
            for i in fresh:
                kept.remove(pairs[i][0])
                verdict[i] = "near duplicate"

    def _remember(self, split: str, rows: list) -> None:
        """Adds removed rows to the first of the split's removed-row indexes that does not refuse them as near
        duplicates of its own rows (rensa keeps one row per cluster), up to LEVELS indexes."""
        import rensa

        levels = self.removed[split]
        for level in range(LEVELS):
            if level == len(levels):
                levels.append(rensa.RMinHashDeduplicator(self.cfg.threshold, self.cfg.num_perm, True))
            rows = [row for row, added in zip(rows, levels[level].add_pairs(rows)) if not added]
            if not rows:
                return

    def _indexes(self, split: str) -> tuple:
        import rensa

        if split not in self.kept:
            self.kept[split] = rensa.RMinHashDeduplicator(self.cfg.threshold, self.cfg.num_perm, True)
            self.removed[split] = []
        return self.kept[split], self.removed[split]

    @staticmethod
    def _mark(todo: list[int], pairs: dict, index, reason: str, verdict: list[str | None]) -> list[int]:
        """Marks the rows of `todo` that are near a row of `index`; returns the others."""
        if not todo:
            return todo
        hits = index.is_duplicate_pairs([pairs[i] for i in todo])
        for i, hit in zip(todo, hits):
            if hit:
                verdict[i] = reason
        return [i for i, hit in zip(todo, hits) if not hit]


def _after_removed(todo: list[int], pairs: dict, removed: list) -> list[int]:
    """The rows of `todo` that are near a removed row that came before them. rensa's check has no order, and a
    row's own later copy must not remove it."""
    near = set()
    for index in removed:
        near.update(i for i, hit in zip(todo, index.is_duplicate_pairs([pairs[i] for i in todo])) if hit)
    return [
        i
        for i in sorted(near)
        if any(_number(k) < _number(pairs[i][0]) for index in removed for k in index.get_duplicates(pairs[i][1]))
    ]


def _number(key: str) -> int:
    return int(key.rpartition(":")[2])


def _reason(kind: str, first: str, split: str) -> str:
    return kind if first == split else f"{kind} of a {first} row"
