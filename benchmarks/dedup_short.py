"""How often near-duplicate detection merges two *different* short texts: on Banking77 train (10,003 customer
questions, 77 intents), every pair of distinct texts at MinHash Jaccard >= the threshold (character 3-grams, as
tunesmith dedups), by the length of the shorter text, and how many of them are different intents (a false merge
for sure: one changed word made another question). This sets data.dedup.near_min_chars.

    python benchmarks/dedup_short.py [--data ../shared/data/banking77] -> benchmarks/results/dedup_short.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import rensa

from tunesmith.config import DedupConfig
from tunesmith.data.dedup import SEED, dedup_key, shingles

BUCKETS = ((0, 30), (30, 50), (50, 80), (80, 10**9))


def jaccard(a: bytes, b: bytes, n: int) -> float:
    x, y = set(shingles(a, n)), set(shingles(b, n))
    return len(x & y) / len(x | y)


def near_pairs(keys: list[bytes], cfg: DedupConfig) -> list[tuple[int, int, float]]:
    """Pairs of distinct keys that LSH proposes, with their exact Jaccard."""
    sketches = rensa.RMinHash.from_token_sets([shingles(k, cfg.ngram) for k in keys], cfg.num_perm, SEED)
    index = rensa.RMinHashDeduplicator(cfg.threshold, cfg.num_perm, True)
    index.add_pairs([(str(i), s) for i, s in enumerate(sketches)])
    found = set()
    for i, sketch in enumerate(sketches):
        for j in map(int, index.get_duplicates(sketch)):
            if j != i and keys[i] != keys[j]:
                found.add((min(i, j), max(i, j)))
    return [(i, j, jaccard(keys[i], keys[j], cfg.ngram)) for i, j in sorted(found)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/banking77")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dedup_short.json")
    args = ap.parse_args()
    train = args.data / "train.csv"
    if not train.is_file():
        sys.exit(f"missing {train}: this benchmark reads Banking77 from ../shared/data/banking77 (or --data)")
    rows = list(csv.DictReader(train.open(encoding="utf-8")))
    keys = [dedup_key(r["text"]) for r in rows]
    cfg = DedupConfig()
    pairs = [(i, j, jac) for i, j, jac in near_pairs(keys, cfg) if jac >= cfg.threshold]
    out = {"data": str(train), "rows": len(rows), "threshold": cfg.threshold, "ngram": cfg.ngram, "by_length": {}}
    for lo, hi in BUCKETS:
        inside = [(i, j) for i, j, _ in pairs if lo <= min(len(keys[i]), len(keys[j])) < hi]
        other = sum(rows[i]["category"] != rows[j]["category"] for i, j in inside)
        name = f"{lo}-{hi - 1}" if hi < 10**9 else f"{lo}+"
        out["by_length"][name] = {"near_pairs": len(inside), "different_intent": other}
        print(f"shorter text {name:>6} chars: {len(inside):4d} near pairs, {other:3d} of them different intents")
    out["examples_different_intent"] = [
        [rows[i]["text"], rows[j]["text"]] for i, j, _ in pairs if rows[i]["category"] != rows[j]["category"]
    ][:10]
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
