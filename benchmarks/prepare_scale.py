"""Data preparation at scale: 1,000,000 rows built from the real SST-2 train set, with planted near duplicates.

Rows: pairs of SST-2 sentences ("A B", label of A), so that a million rows are distinct; then a share of them
of 60 characters or more is followed, a little later in the file, by a near copy made with one edit (a typo,
a word dropped, added or swapped, a change of case and punctuation) and a few carry an e-mail or phone number.
`tunesmith prepare`
runs with cleaning, exact and MinHash near dedup and regex-level PII (no NER) in a child process. prepare works in
several processes (workers, a dedup process), so memory is measured twice: peak_rss_mb is the largest of them
(os.wait4's ru_maxrss), and peak_total_pss_mb the peak of the sum of their proportional set sizes (PSS counts a
page shared by forked processes once), sampled every 0.2 s with psutil. A planted copy counts as found when it is
not among the kept rows.

    python benchmarks/prepare_scale.py [--rows 1000000] [--data ../shared/data/sst2]
Writes benchmarks/results/prepare_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "sst2"
# A copy counts as a near duplicate when its one edit changes a small share of the text: one word in a 60+
# character row (a word swapped in a 20-character row is a different text, Jaccard ~0.5 by any shingling).
MIN_PLANT_CHARS = 60
FILLERS = ["really", "quite", "just", "very", "still", "also", "even", "truly"]


def edit(text: str, rng: random.Random) -> str:
    """One small edit of the kind real near duplicates show."""
    words = text.split()
    kind = rng.randrange(5)
    i = rng.randrange(len(words))
    if kind == 0 and len(words[i]) > 3:  # a typo: two letters swapped
        w = words[i]
        j = rng.randrange(len(w) - 1)
        words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    elif kind == 1 and len(words) > 8:
        del words[i]
    elif kind == 2:
        words.insert(i, rng.choice(FILLERS))
    elif kind == 3:
        words[i] = rng.choice(FILLERS)
    else:
        return text.upper().replace(" .", "!") if text.endswith(".") else text.capitalize() + " !"
    return " ".join(words)


def build(
    sentences: list[tuple[str, str]], rows: int, planted_share: float, path: Path, seed: int = 0
) -> tuple[int, set]:
    rng = random.Random(seed)
    planted, pending, n = set(), [], 0
    with path.open("w", encoding="utf-8") as f:
        f.write("text\tlabel\n")
        while n < rows:
            if pending and (rng.random() < 0.5 or len(pending) > 1000):
                text, label = pending.pop(rng.randrange(len(pending)))
                planted.add(text)
            else:
                (a, label), (b, _) = rng.choice(sentences), rng.choice(sentences)
                text = f"{a} {b}"
                if rng.random() < 0.01:
                    text += rng.choice([f" write to fan{n}@example.org", f" call +44 20 7946 {n % 10000:04d}"])
                if len(text) >= MIN_PLANT_CHARS and rng.random() < planted_share:
                    copy = edit(text, rng)
                    if copy != text:
                        pending.append((copy, label))
            f.write(f"{text}\t{label}\n")
            n += 1
    return n, planted


def tree_pss(pid: int) -> int:
    """The summed PSS of a process and its descendants, in bytes (0 for those gone meanwhile)."""
    import psutil

    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def child(config: dict, out: Path, result: Path) -> None:
    from tunesmith.config import config_from_dict
    from tunesmith.data.prepare import prepare

    cfg = config_from_dict(config)
    start = time.perf_counter()
    report = prepare(cfg.data, cfg.train.seed, out)
    result.write_text(json.dumps({"seconds": time.perf_counter() - start, "report": report}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--planted", type=float, default=0.12, help="share of rows followed by a planted near copy")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with SST-2 train.tsv")
    p.add_argument("--threshold", type=float, help="data.dedup.threshold (default: tunesmith's default)")
    p.add_argument("--ngram", type=int, help="data.dedup.ngram (default: tunesmith's default)")
    args = p.parse_args()
    src = args.data / "train.tsv"
    if not src.is_file():
        sys.exit(f"SST-2 not found: missing {src}. Pass the folder holding train.tsv (sentence<TAB>label) with --data.")
    sentences = [tuple(line.split("\t")) for line in src.read_text(encoding="utf-8").splitlines()[1:]]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows, planted = build(sentences, args.rows, args.planted, tmp / "rows.tsv")
        config = {
            "name": "scale",
            "model": "minilm-l6",
            "data": {
                "train": str(tmp / "rows.tsv"),
                "shape": "classify",
                "pii": {"entities": ["EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "IP_ADDRESS", "URL"]},
            },
        }
        dedup = {"threshold": args.threshold, "ngram": args.ngram}
        config["data"]["dedup"] = {k: v for k, v in dedup.items() if v}
        result = tmp / "result.json"
        pid = os.fork()
        if pid == 0:
            try:
                child(config, tmp / "out", result)
                os._exit(0)
            except BaseException as err:  # the parent reports it
                print(f"prepare failed: {err}", file=sys.stderr)
                os._exit(1)
        peak_total = 0
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                break
            peak_total = max(peak_total, tree_pss(pid))
            time.sleep(0.2)
        if status != 0:
            sys.exit("the prepare child failed (see above)")
        peak_mb = usage.ru_maxrss / 1024
        run = json.loads(result.read_text())
        kept = set()
        for split in run["report"]["rows"]:
            kept.update(pq.read_table(tmp / "out" / f"{split}.parquet", columns=["text"]).column("text").to_pylist())
    found = sum(1 for t in planted if t not in kept)
    base_removed = (
        rows - len(kept) - found
    )  # rows that were not planted copies and still went: false positives or real repeats
    report = run["report"]
    removed = report["files"]["train"]["steps"]
    out = {
        "benchmark": "prepare_scale",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_at_start": os.getloadavg(),
        },
        "rows": rows,
        "seconds": round(run["seconds"], 2),
        "rows_per_s": round(rows / run["seconds"], 1),
        "peak_rss_mb": round(peak_mb, 1),
        "peak_total_pss_mb": round(peak_total / 2**20, 1),
        "near_dups_planted": len(planted),
        "near_dups_found": found,
        "found_share": round(found / max(len(planted), 1), 4),
        "other_rows_removed": base_removed,
        "rows_kept": sum(report["rows"].values()),
        "removed_by_step": {s["step"]: s["removed"] for s in removed},
        "pii_replaced": report["pii"]["replaced"],
        "config": config["data"] | {"train": "(generated)"},
        "planting": {
            "share": args.planted,
            "min_chars": MIN_PLANT_CHARS,
            "edits": "one of: two letters swapped, a word "
            "dropped (rows of 9+ words), a filler word added or swapped in, case and punctuation changed",
        },
        "targets": {
            "rows_per_s": ">= 20000",
            "peak_rss_mb": "<= 4000 (held by peak_total_pss_mb too)",
            "found_share": ">= 0.95",
        },
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "prepare_scale.json").write_text(json.dumps(out, indent=2) + "\n")
    print(
        json.dumps(
            {
                k: out[k]
                for k in (
                    "rows",
                    "seconds",
                    "rows_per_s",
                    "peak_rss_mb",
                    "peak_total_pss_mb",
                    "near_dups_planted",
                    "near_dups_found",
                    "found_share",
                    "other_rows_removed",
                    "rows_kept",
                )
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
