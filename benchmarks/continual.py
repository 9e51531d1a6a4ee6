"""Benchmark: continual learning on two streams of tasks, each strategy against joint training.

For each stream, task 1 is trained once (plain `method: classify`, minilm-l6, its defaults or the stream's
RECIPES); each strategy then continues from it, task after task (`api.train(..., continue_from=previous)`),
with the same settings: naive, replay (replay_ratio REPLAY_RATIO), ewc and l2 (weight given below). The last
run's eval.json holds the accuracy matrix (after task i, on the test rows of task j), avg_acc, bwt and fwt.
joint is one run on every task's training rows at once, scored on each task's test rows: the upper reference.

Streams:
- sentiment: ../shared/data/sentiment_stream, amazon, then yelp, then imdb (1,000 sentences each, 0/1), each
  split 80/20 into train and test with a fixed seed (domain-incremental: the labels stay);
- banking77: ../shared/data/banking77, its 77 intents in 4 groups (sorted by name, 20/19/19/19), class-
  incremental: the head grows by each group's intents; at most --rows training rows per group (seeded), all of
  the group's test rows.

    .venv/bin/python benchmarks/continual.py                    (both streams, ~30 minutes on 2 cores)
    .venv/bin/python benchmarks/continual.py --streams sentiment --out /tmp/continual.json

Writes benchmarks/results/continual.json: {stream: {"settings", strategy: {avg_acc, bwt, fwt, matrix}, "joint": {...}}};
a stream run alone replaces its own figures and keeps the other's.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tunesmith.config import ContinualConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "continual.json"
STRATEGIES = ("naive", "replay", "ewc", "l2")
REPLAY_RATIO = ContinualConfig.model_fields["replay_ratio"].default  # the strategy as a user gets it
WEIGHTS = {"l2": 1.0, "ewc": 1.0}  # EWC's Fisher is scaled to a mean of 1: the same lambda pulls alike on average
SEED = 13
# train settings beside minilm-l6's defaults: Banking77's 77 intents take examples/banking77.yaml's recipe (a fresh
# head at its own, faster rate), without which a few hundred rows per group leave every strategy under-trained
RECIPES = {"sentiment": {}, "banking77": {"lr": 1e-4, "head_lr": 1e-3, "max_length": 64}}


def sentiment_tasks(data: Path, rows: int) -> list[tuple[str, list, list]]:
    out = []
    for name in ("amazon_cells_labelled", "yelp_labelled", "imdb_labelled"):
        text = (data / "sentiment_stream" / f"{name}.txt").read_text(encoding="utf-8")
        lines = [ln.rsplit("\t", 1) for ln in text.split("\n") if ln.strip()]  # imdb's texts hold U+0085 (NEL)
        pairs = [(t.strip(), y.strip()) for t, y in lines]
        order = np.random.default_rng(SEED).permutation(len(pairs))
        cut = int(0.8 * len(pairs))
        out.append((name.split("_")[0], [pairs[i] for i in order[:cut][:rows]], [pairs[i] for i in order[cut:]]))
    return out


def banking_tasks(data: Path, rows: int, groups: int = 4) -> list[tuple[str, list, list]]:
    def read(name: str) -> list[tuple[str, str]]:
        with (data / "banking77" / name).open(newline="", encoding="utf-8") as f:
            return [(r["text"], r["category"]) for r in csv.DictReader(f)]

    train, test = read("train.csv"), read("test.csv")
    intents = sorted({y for _, y in train})
    out = []
    for g, chunk in enumerate(np.array_split(np.array(intents), groups)):
        keep = set(chunk.tolist())
        group = [r for r in train if r[1] in keep]
        pick = np.sort(np.random.default_rng(SEED + g).permutation(len(group))[:rows])
        out.append((f"intents-{g + 1}", [group[i] for i in pick], [r for r in test if r[1] in keep]))
    return out


def write_csv(rows: list, path: Path) -> str:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return str(path)


def config(name: str, train: str, test: str, work: Path, recipe: dict, **continual) -> dict:
    return {
        "name": name,
        "model": "minilm-l6",
        "output_dir": str(work / "runs"),
        "data": {"train": train, "test": test, "text": "text", "label": "label", "val_fraction": 0.0,
                 "dedup": {"exact": False, "near": False}},
        "train": {"seed": SEED} | recipe,
        "eval": {"calibrate": False},
        "continual": continual,
    }  # fmt: skip


def stream(tasks: list, work: Path, strategies: list[str], recipe: dict, ratio: float, joint: bool = True) -> dict:
    from tunesmith import api

    files = [(name, write_csv(tr, work / f"{name}-train.csv"), write_csv(te, work / f"{name}-test.csv"))
             for name, tr, te in tasks]  # fmt: skip
    start = time.perf_counter()
    first = api.train(config(files[0][0], files[0][1], files[0][2], work, recipe), quiet=True)
    out: dict = {"tasks": [name for name, _, _ in tasks], "rows": [[len(tr), len(te)] for _, tr, te in tasks]}
    out["first_task_s"] = round(time.perf_counter() - start, 1)
    for strategy in strategies:
        start, parent = time.perf_counter(), first
        options = {"strategy": strategy} | ({"replay_ratio": ratio} if strategy == "replay" else {})
        options |= {"weight": WEIGHTS[strategy]} if strategy in WEIGHTS else {}
        key = f"replay_{ratio:g}" if strategy == "replay" and ratio != REPLAY_RATIO else strategy
        for name, train, test in files[1:]:
            parent = api.train(config(f"{strategy}-{name}", train, test, work, recipe, **options),
                               continue_from=str(parent),
                               quiet=True)  # fmt: skip
        report = json.loads((parent / "eval.json").read_text())["continual"]
        out[key] = {k: report[k] for k in ("avg_acc", "bwt", "fwt", "matrix")} | {
            "seconds": round(time.perf_counter() - start, 1)
        }
        print(f"{key}: {json.dumps(out[key])}", flush=True)
    if not joint:
        return out
    start = time.perf_counter()
    joint_train = write_csv([r for _, tr, _ in tasks for r in tr], work / "joint-train.csv")
    joint = api.train(config("joint", joint_train, files[0][2], work, recipe), quiet=True)
    accs = [api.evaluate(joint, test, baseline=False)["tuned"]["accuracy"] for _, _, test in files]
    out["joint"] = {"avg_acc": float(np.mean(accs)), "per_task": accs, "seconds": round(time.perf_counter() - start, 1)}
    print(f"joint: {json.dumps(out['joint'])}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", nargs="+", default=["sentiment", "banking77"], choices=["sentiment", "banking77"])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--rows", type=int, default=1000, help="at most this many training rows per task")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--replay-ratio", type=float, default=REPLAY_RATIO, help="a ratio but the default: replay_R")
    parser.add_argument("--add", action="store_true", help="add these strategies to the stream's figures (no joint)")
    args = parser.parse_args()
    need = {"sentiment": args.data / "sentiment_stream", "banking77": args.data / "banking77"}
    missing = [str(need[s]) for s in args.streams if not need[s].is_dir()]
    if missing:
        sys.exit(f"missing data: {', '.join(missing)} (this benchmark reads ../shared/data)")
    import torch

    # a stream run alone replaces its own figures and keeps the other stream's; each stream says how it ran
    out = json.loads(args.out.read_text()) if args.out.is_file() else {}
    out.pop("settings", None)  # the file's one-settings layout before figures per stream
    build = {"sentiment": sentiment_tasks, "banking77": banking_tasks}
    for name in args.streams:
        settings = {
            "strategies": args.strategies,
            "rows": args.rows,
            "replay_ratio": args.replay_ratio,
            "weights": WEIGHTS,
            "recipe": RECIPES[name],
            "machine": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        with tempfile.TemporaryDirectory() as tmp:
            tasks = build[name](args.data, args.rows)
            ran = stream(tasks, Path(tmp), args.strategies, RECIPES[name], args.replay_ratio, not args.add)
        if args.add:
            result = out.get(name, {}) | {k: v for k, v in ran.items() if k.startswith(tuple(STRATEGIES))}
            result[f"settings_{'_'.join(args.strategies)}_{args.replay_ratio:g}"] = settings
        else:
            result = {"settings": settings} | ran
        naive, joint = result.get("naive"), result.get("joint")
        for key in [k for k in result if k.startswith("replay") and isinstance(result[k], dict) and "bwt" in result[k]]:
            if naive and joint and naive["bwt"]:  # targets: forgetting ratio <= 0.5, gap to joint >= -0.02
                result[f"{key}_forgetting_ratio"] = round(result[key]["bwt"] / naive["bwt"], 3)
                result[f"{key}_gap_to_joint"] = round(result[key]["avg_acc"] - joint["avg_acc"], 4)
        out[name] = result
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
