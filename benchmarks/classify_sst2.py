"""Benchmark: fine-tune minilm-l6 on SST-2 with tunesmith and with Hugging Face Trainer, side by side.

What it measures, for each side: dev accuracy after one epoch on the full SST-2 train set (67,349 rows),
training throughput (examples per second of the training loop) and peak resident memory of the whole process.
Both sides use the same model, data, batch size (32), max length (128), learning rate (5e-5), seed (13),
AdamW with weight decay 0.01 (none on biases and norms), 6% linear warmup then linear decay, and a
checkpoint every 500 steps (tunesmith's default and HF Trainer's).

- tunesmith runs with its own defaults otherwise; it picks its precision (bf16 or fp32) at run time.
- HF Trainer (the peer) runs at its fastest setting on this machine: each of --peer-settings (bf16 on/off x
  random/group_by_length sampling) is timed on a short probe (the first 60 optimiser steps), and the
  fastest one runs the full epoch. Every probe's throughput is recorded.

Each run is a child process (this script re-invoked with --side), so that a side's peak RSS is its own:
the parent reads it from os.wait4. The parent imports neither torch nor transformers, because a child
inherits the parent's RSS high-water mark when it is started.

Run it on an otherwise idle machine (two full epochs and four probes: long on a small CPU):
    make bench    (= .venv/bin/python benchmarks/classify_sst2.py)
Quick check, not a result:
    .venv/bin/python benchmarks/classify_sst2.py --rows 400 --out /tmp/sst2.json
Result: benchmarks/results/classify_sst2.json; speed_ratio and rss_ratio are tunesmith / HF Trainer.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

MODEL = "minilm-l6"
EPOCHS = 1
BATCH_SIZE = 32
MAX_LENGTH = 128
LR = 5e-5
WEIGHT_DECAY = 0.01
WARMUP = 0.06
SEED = 13
PROBE_STEPS = 60
CHECKPOINT_EVERY = 500  # both sides checkpoint as often as tunesmith does by default (HF's default too)
PRECISIONS = ("fp32", "bf16")
SAMPLINGS = ("random", "group_by_length")
PEER_SETTINGS = [f"{p}-{s}" for p in PRECISIONS for s in SAMPLINGS]
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "classify_sst2.json"


# ---- the children: one training run each, result written as JSON ----------------------------------------


def versions() -> dict:
    import tokenizers
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "torch_threads": torch.get_num_threads(),
        "mkldnn_bf16_supported": torch.ops.mkldnn._is_mkldnn_bf16_supported(),
    }


def run_tunesmith(train: Path, dev: Path, workdir: Path) -> dict:
    import yaml

    from tunesmith import api

    config = {
        "name": "bench-sst2",
        "model": MODEL,
        "output_dir": str(workdir / "tunesmith"),
        "data": {
            "train": str(train),
            "test": str(dev),
            "text": "sentence",
            "label": "label",
            "val_fraction": 0,
            "dedup": {"exact": False, "near": False},
        },  # the very rows HF Trainer reads
        "train": {"epochs": EPOCHS, "batch_size": BATCH_SIZE, "lr": LR, "max_length": MAX_LENGTH, "precision": "auto"},
        "eval": {"baseline": False, "calibrate": False},
    }
    run_dir = api.train(config, quiet=True)
    report = json.loads((run_dir / "eval.json").read_text())
    t = report["train"]
    return {
        "dev_accuracy": report["tuned"]["accuracy"],
        "examples_per_s": t["examples_per_s"],
        "examples": t["examples"],
        "seconds": t["seconds"],
        "precision": t["precision"],
        "precision_reason": t["precision_reason"],
        "config": yaml.safe_load((run_dir / "config.yaml").read_text()),
        "versions": versions(),
    }


def read_tsv(path: Path) -> tuple[list[str], list[int]]:
    import csv

    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"].strip() for r in rows], [int(r["label"]) for r in rows]


def encode(tokenizer, path: Path) -> list[dict]:
    """Unpadded token ids per row (DataCollatorWithPadding pads each batch)."""
    texts, labels = read_tsv(path)
    enc = tokenizer(texts, truncation=True, max_length=MAX_LENGTH, return_token_type_ids=False)
    return [
        {"input_ids": ids, "attention_mask": mask, "labels": y}
        for ids, mask, y in zip(enc["input_ids"], enc["attention_mask"], labels)
    ]


def run_hf(train: Path, dev: Path, workdir: Path, setting: str, max_steps: int | None) -> dict:
    """One epoch with HF Trainer, or only `max_steps` optimiser steps (a probe: throughput only)."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from tunesmith.models import zoo

    zoo.quiet_transformers()  # the same as tunesmith: no load reports or progress bars
    precision, sampling = setting.split("-", 1)
    folder = zoo.resolve(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    train_rows = encode(tokenizer, train)
    set_seed(SEED)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    args = TrainingArguments(  # use_cpu: on a machine without CUDA, bf16 is refused without it
        output_dir=str(workdir / f"hf-{setting}"),
        num_train_epochs=EPOCHS,
        max_steps=max_steps or -1,
        per_device_train_batch_size=BATCH_SIZE,
        per_device_eval_batch_size=64,
        learning_rate=LR,
        weight_decay=WEIGHT_DECAY,
        warmup_steps=WARMUP,
        lr_scheduler_type="linear",
        bf16=precision == "bf16",
        train_sampling_strategy=sampling,
        logging_steps=100,
        save_strategy="steps",
        save_steps=CHECKPOINT_EVERY,
        report_to=[],
        seed=SEED,
        dataloader_num_workers=0,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    seconds = trainer.train().metrics["train_runtime"]
    examples = min(max_steps * BATCH_SIZE, len(train_rows)) if max_steps else len(train_rows)
    result = {
        "setting": setting,
        "examples": examples,
        "seconds": seconds,
        "examples_per_s": round(examples / seconds, 2),
    }
    if not max_steps:
        pred = trainer.predict(encode(tokenizer, dev))
        result["dev_accuracy"] = float((pred.predictions.argmax(-1) == pred.label_ids).mean())
    return result


def child(args: argparse.Namespace) -> None:
    if args.side == "tunesmith":
        result = run_tunesmith(args.train, args.dev, args.workdir)
    else:
        result = run_hf(args.train, args.dev, args.workdir, args.setting, args.max_steps)
    args.result.write_text(json.dumps(result, indent=2))


# ---- the parent: data, children, probes, the JSON ---------------------------------------------------------


def check_data(folder: Path) -> tuple[Path, Path]:
    missing = [folder / name for name in ("train.tsv", "dev.tsv") if not (folder / name).is_file()]
    if missing:
        sys.exit(
            f"SST-2 data not found: missing {', '.join(map(str, missing))}.\n"
            f"Expected a folder with train.tsv and dev.tsv (header: sentence<TAB>label); pass it with --data DIR."
        )
    return folder / "train.tsv", folder / "dev.tsv"


def count_rows(path: Path) -> int:
    with path.open(encoding="utf-8") as f:
        return sum(1 for _ in f) - 1  # minus the header; one row per line (the TSV does not quote)


def first_rows(path: Path, rows: int, workdir: Path) -> Path:
    """The header and the first `rows` rows of a TSV, as a new file in workdir."""
    out = workdir / path.name
    with path.open(encoding="utf-8") as src, out.open("w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            if i > rows:
                break
            dst.write(line)
    return out


def run_child(
    side: str, train: Path, dev: Path, workdir: Path, setting: str | None = None, max_steps: int | None = None
) -> dict:
    """Run one side in its own process; its result plus its own peak RSS (os.wait4, ru_maxrss in KiB)."""
    label = side + (f" {setting}" if setting else "") + (f" probe of {max_steps} steps" if max_steps else "")
    result_path = workdir / f"result-{side}-{setting or 'auto'}-{max_steps or 'full'}.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--side",
        side,
        "--train",
        str(train),
        "--dev",
        str(dev),
        "--workdir",
        str(workdir),
        "--result",
        str(result_path),
    ]
    if setting:
        cmd += ["--setting", setting]
    if max_steps:
        cmd += ["--max-steps", str(max_steps)]
    print(f"== {label}", flush=True)
    env = os.environ | {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{label} failed (exit code {proc.returncode}); see its output above")
    result = json.loads(result_path.read_text())
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    print(f"   {result['examples_per_s']} examples/s, peak RSS {result['peak_rss_mb']} MB", flush=True)
    return result


def probe_peer(settings: list[str], train: Path, dev: Path, workdir: Path, steps: int) -> dict[str, float]:
    return {s: run_child("hf", train, dev, workdir, s, max_steps=steps)["examples_per_s"] for s in settings}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def side_summary(result: dict) -> dict:
    """The three headline keys first, then the details."""
    head = ("dev_accuracy", "examples_per_s", "peak_rss_mb")
    return {k: result[k] for k in head} | {k: v for k, v in result.items() if k not in head}


def parent(args: argparse.Namespace) -> None:
    train, dev = check_data(args.data)
    workdir = Path(tempfile.mkdtemp(prefix="bench-sst2-"))
    try:
        if args.rows:
            train = first_rows(train, args.rows, workdir)
        n_train = count_rows(train)
        probe_steps = min(PROBE_STEPS, max(1, math.ceil(n_train / BATCH_SIZE) // 2))
        started = datetime.now(UTC).isoformat(timespec="seconds")
        load = os.getloadavg()

        ours = run_child("tunesmith", train, dev, workdir)
        if args.skip_probe:
            setting, probes = args.skip_probe, {}
        elif len(args.peer_settings) == 1:
            setting, probes = args.peer_settings[0], {}
        else:
            probes = probe_peer(args.peer_settings, train, dev, workdir, probe_steps)
            setting = max(probes, key=probes.get)
        peer = run_child("hf", train, dev, workdir, setting)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    env = ours.pop("versions")
    out = {
        "benchmark": "classify_sst2",
        "date": started,
        "model": MODEL,
        "task": {
            "train_rows": n_train,
            "dev_rows": count_rows(dev),
            "epochs": EPOCHS,
            "batch_size": BATCH_SIZE,
            "max_length": MAX_LENGTH,
            "lr": LR,
            "seed": SEED,
        },
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": sys.version.split()[0],
            "loadavg_at_start": [round(x, 2) for x in load],
            **env,
        },
        "tunesmith": side_summary(ours),
        "hf_trainer": side_summary(peer) | {"probe_steps": probe_steps if probes else None, "probes": probes},
        "speed_ratio": round(ours["examples_per_s"] / peer["examples_per_s"], 3),
        "rss_ratio": round(ours["peak_rss_mb"] / peer["peak_rss_mb"], 3),
        "notes": "ratios are tunesmith / HF Trainer; examples_per_s = training examples / training-loop seconds; "
        "peak_rss_mb = ru_maxrss of the side's own process, in MiB",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    print(f"tunesmith:  {ours['examples_per_s']} ex/s, {ours['peak_rss_mb']} MB, dev acc {ours['dev_accuracy']:.4f}")
    print(
        f"HF Trainer: {peer['examples_per_s']} ex/s, {peer['peak_rss_mb']} MB, "
        f"dev acc {peer['dev_accuracy']:.4f} ({setting})"
    )
    print(f"speed_ratio {out['speed_ratio']}  rss_ratio {out['rss_ratio']}  (tunesmith / HF Trainer)")


# ---- command line ---------------------------------------------------------------------------------------


def peer_setting(value: str) -> str:
    precision, _, sampling = value.partition("-")
    if precision not in PRECISIONS or sampling not in SAMPLINGS:
        raise argparse.ArgumentTypeError(f"{value!r}: expected one of {', '.join(PEER_SETTINGS)}")
    return value


def peer_settings(value: str) -> list[str]:
    return [peer_setting(v.strip()) for v in value.split(",") if v.strip()]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with SST-2 train.tsv and dev.tsv")
    p.add_argument("--rows", type=int, help="use only the first N train rows (quick checks); default all")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the result JSON")
    p.add_argument(
        "--peer-settings",
        type=peer_settings,
        default=PEER_SETTINGS,
        help=f"comma-separated HF Trainer settings to probe; default {','.join(PEER_SETTINGS)}",
    )
    p.add_argument(
        "--skip-probe", type=peer_setting, metavar="SETTING", help="run HF Trainer with this setting, no probes"
    )
    # used by the parent to start a child
    p.add_argument("--side", choices=("tunesmith", "hf"), help=argparse.SUPPRESS)
    p.add_argument("--setting", type=peer_setting, help=argparse.SUPPRESS)
    p.add_argument("--max-steps", type=int, help=argparse.SUPPRESS)
    p.add_argument("--train", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--dev", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rows is not None and args.rows < 1:
        p.error("--rows must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    if args.side:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
