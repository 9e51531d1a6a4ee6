"""Benchmark: `tunesmith tune` on Banking77 (77 intents) with minilm-l6, 20 trials, with and without pruning.

Two studies with the same TPE seed and search space, one pruning (median, after 5 trials that run to the end) and
one not; the test set (Banking77's test.csv, 3,080 rows) is read once per study, by its best trial's model, and
once by a run of the config as given (the default recipe: lr 5e-5, 3 epochs, batch 32). It records the best
config's test accuracy against the default config's, each study's wall time and how many trials were pruned.
Trials train on a seeded sample of the training rows (--sample, default 2,000) so that 40 trials fit in an hour on
2 cores; the validation split (10%) comes from the training file. The untuned baseline is tunesmith's usual one: a
logistic regression on the frozen encoder's embeddings of the same training rows.

    .venv/bin/python benchmarks/tune_banking77.py            # about 60 minutes on 2 cores
Needs ../shared/data/banking77 (train.csv, test.csv). Result: benchmarks/results/tune.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "tune.json"
SPACE = {
    "train.lr": {"low": 1.0e-5, "high": 1.0e-3, "log": True},
    "train.head_lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True},  # the fresh 77-way head
    "train.epochs": {"low": 2, "high": 6},
    "train.batch_size": {"choices": [16, 32, 64]},
    "train.dropout": {"low": 0.0, "high": 0.3},
}


def config(data: Path, sample: int, out: Path, pruner: str) -> dict:
    return {
        "name": "banking77",
        "model": "minilm-l6",
        "output_dir": str(out),
        "data": {
            "train": str(data / "train.csv"),
            "test": str(data / "test.csv"),
            "text": "text",
            "label": "category",
            "sample": sample,
        },  # fmt: skip
        "train": {"max_length": 64, "checkpoint_every": 100_000},
        "search": {"space": SPACE, "pruner": pruner, "metric": "accuracy"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--sample", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs in this folder")
    args = parser.parse_args()
    if not (args.data / "train.csv").is_file():
        sys.exit(f"missing {args.data / 'train.csv'}: this benchmark reads Banking77 from ../shared/data/banking77")
    from tunesmith import api

    result: dict = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "model": "minilm-l6"}
    result |= {"trials": args.trials, "train_sample": args.sample, "space": SPACE, "studies": {}}
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp)
        for pruner in ("median", "none"):
            cfg = config(args.data, args.sample, out, pruner)
            folder = api.tune(cfg, args.trials, study=f"banking77-{pruner}", compare_default=pruner == "median")
            study = json.loads((folder / "tune.json").read_text())
            result["studies"][pruner] = {
                "wall_seconds": study["wall_seconds"],
                "pruned": study["pruned"],
                "best_val_accuracy": study["best"]["value"],
                "best_params": study["best"]["params"],
                "best_test_accuracy": study["best"]["test"]["tuned"]["accuracy"],
                "untuned_test_accuracy": study["best"]["test"]["baseline"]["accuracy"],
                "importances": study["importances"],
                "trials": [
                    {k: t[k] for k in ("number", "state", "value", "pruned_at", "seconds", "params")}
                    for t in study["trials"]
                ],  # fmt: skip
            }
            if "default" in study:
                result["default_test_accuracy"] = study["default"]["tuned"]["accuracy"]
                result["default_val_accuracy"] = study["default"]["val"]["accuracy"]
            print(json.dumps({pruner: {k: v for k, v in result["studies"][pruner].items() if k != "trials"}}))
    med, full = result["studies"]["median"], result["studies"]["none"]
    result["wall_ratio_pruned_vs_not"] = round(med["wall_seconds"] / full["wall_seconds"], 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("studies", "space")}))


if __name__ == "__main__":
    main()
