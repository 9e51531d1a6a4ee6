"""Benchmark: 1 against 2 processes (`tunesmith train --nproc`), minilm-l6 on SST-2, the same global batch.

Strong scaling on this machine: one process with batch 32 (all cores), then two processes with batch 16 each
(the cores shared out: cores/2 threads each), the same rows, steps and learning rate. It records training
examples/s (validation not counted) and the seconds per step spent summing gradients across processes (the
loop's sync_s: one flat all-reduce of minilm's 22.7M weights over gloo).

    .venv/bin/python benchmarks/scaling.py            # about 6 minutes on 2 cores
Needs ../shared/data/sst2 (train.tsv). Result: benchmarks/results/scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "scaling.json"
GLOBAL_BATCH = 32


def config(data: Path, rows: int, steps: int, out: Path, per_process: int) -> dict:
    return {
        "name": f"scaling-{GLOBAL_BATCH // per_process}p",
        "model": "minilm-l6",
        "output_dir": str(out),
        "data": {"train": str(data / "train.tsv"), "text": "sentence", "label": "label", "max_rows": rows},
        "train": {"batch_size": per_process, "max_steps": steps, "checkpoint_every": 10_000, "log_every": 10},
        "eval": {"baseline": False, "calibrate": False},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if not (args.data / "train.tsv").is_file():
        sys.exit(f"missing {args.data / 'train.tsv'}: this benchmark reads SST-2 from ../shared/data/sst2")
    from tunesmith import api

    cores = len(os.sched_getaffinity(0))
    result: dict = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "cores": cores, "model": "minilm-l6"}
    result |= {"global_batch": GLOBAL_BATCH, "steps": args.steps, "rows": args.rows, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for nproc in (1, 2):
            cfg = config(args.data, args.rows, args.steps, Path(tmp), GLOBAL_BATCH // nproc)
            run_dir = api.train(cfg, quiet=True, nproc=nproc)
            train = json.loads((run_dir / "eval.json").read_text())["train"]
            result["runs"][str(nproc)] = {
                "processes": nproc,
                "batch_per_process": GLOBAL_BATCH // nproc,
                "threads_per_process": max(1, cores // nproc),
                "examples_per_s": train["examples_per_s"],
                "seconds": train["seconds"],
                "sync_ms_per_step": round(1000 * train.get("sync_seconds", 0.0) / train["steps"], 2),
                "precision": train["precision"],
                "val_accuracy": (train["best_val"] or train["last_val"] or {}).get("accuracy"),
            }
            print(json.dumps(result["runs"][str(nproc)]))
    one, two = result["runs"]["1"], result["runs"]["2"]
    result["speedup"] = round(two["examples_per_s"] / one["examples_per_s"], 3)
    result["sync_share"] = round(two["sync_ms_per_step"] * args.steps / 1000 / two["seconds"], 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("speedup", "sync_share")}))


if __name__ == "__main__":
    main()
