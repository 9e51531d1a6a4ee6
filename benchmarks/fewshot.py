"""Benchmark: few-shot classification, side by side on the same sampled rows and seeds.

Sides, each trained on the same n labeled rows per class (sampled per seed from the training file) and scored on
the same test rows:
- tunesmith: `method: fewshot` (contrastive tuning of minilm-l6, then logistic regression), its defaults;
- setfit: the SetFit library on the same base model, its documented recipe (batch 16, one epoch, body learning
  rate 2e-5, logistic-regression head) with num_iterations 20, the SetFit paper's setting: 40 pairs per row;
  tunesmith's fewshot.pairs default is the same 40 (--pairs sets both: Banking77's 77 classes at 40 pairs per row
  are 1,540 SetFit steps, about 26 minutes a seed on 2 cores);
- classify: plain `method: classify` fine-tuning of minilm-l6 on the same rows (its defaults, 10 epochs, since
  3 epochs of 16 rows are 3 steps);
- icl: smollm2-135m-instruct with labeled examples in its prompt, no training; a test row's label is the label
  name with the highest log-probability after the prompt. The shots are drawn from the same sampled rows, as
  many per class as fit in ICL_BUDGET tokens, at least one per class. fp32, or bf16 autocast with --icl-bf16
  (Banking77's 77 label names cost about 0.45 s a test row in fp32 on 2 cores, 0.2 s in bf16 on AMX).

train_s is the training time: for setfit trainer.train() (the contrastive phase and the head), for tunesmith the
same two (eval.json's train seconds, the loop, plus head_seconds); for classify the loop.

Data: ../shared/data/sst2 (train.tsv, dev.tsv) and ../shared/data/banking77 (train.csv, test.csv).

    .venv/bin/python benchmarks/fewshot.py                       (the full grid: long)
    .venv/bin/python benchmarks/fewshot.py --seeds 1 --sizes 8 --test-rows 200 --out /tmp/fewshot.json   (quick)

Writes benchmarks/results/fewshot.json: {dataset: {n: {side: {acc_mean, acc_std, train_s, accs, run}}}}, run saying
which invocation measured that side (command, date, seeds, pairs, versions). A run replaces the cells it measures
and keeps the others, so a grid can be filled in several runs.
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
from jobs import scratch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "fewshot.json"
DATASETS = {  # name: (train file, test file, text column, label column)
    "sst2": ("sst2/train.tsv", "sst2/dev.tsv", "sentence", "label"),
    "banking77": ("banking77/train.csv", "banking77/test.csv", "text", "category"),
}
SST2_NAMES = {"0": "negative", "1": "positive"}
ICL_BUDGET = 1500  # prompt tokens of labeled examples
SIDES = ("tunesmith", "setfit", "classify", "icl")


def read_rows(path: Path, text: str, label: str) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ",", quoting=csv.QUOTE_MINIMAL)
        return [(r[text].strip(), r[label].strip()) for r in reader]


def sample(rows: list[tuple[str, str]], per_class: int, seed: int) -> list[tuple[str, str]]:
    """per_class rows of every label, or all of a label's rows where it has fewer (as SetFit's sample_dataset)."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for i, (_, y) in enumerate(rows):
        by_label.setdefault(y, []).append(i)
    picked = [i for y in sorted(by_label) for i in rng.choice(by_label[y], min(per_class, len(by_label[y])), False)]
    return [rows[i] for i in sorted(picked)]


def write_csv(rows: list[tuple[str, str]], path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


def tunesmith_side(method: str, train: list, test_file: Path, seed: int, work: Path, pairs: int) -> tuple[float, float]:
    from tunesmith import api

    cfg = {
        "name": f"{method}-{seed}",
        "method": method,
        "model": "minilm-l6",
        "output_dir": str(work / "runs"),
        "data": {"train": str(write_csv(train, work / f"train-{seed}.csv")), "test": str(test_file), "text": "text",
                 "label": "label", "val_fraction": 0.0, "dedup": {"exact": False, "near": False}},
        "train": {"seed": seed} | ({"epochs": 10} if method == "classify" else {}),
        "eval": {"baseline": False, "calibrate": False},
    } | ({"fewshot": {"pairs": pairs}} if method == "fewshot" else {})  # fmt: skip
    ev = json.loads((api.train(cfg, quiet=True) / "eval.json").read_text())
    return ev["tuned"]["accuracy"], ev["train"]["seconds"] + ev["train"].get("head_seconds", 0.0)


def setfit_side(train: list, test: list, seed: int, work: Path, pairs: int) -> tuple[float, float]:
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    from tunesmith.models import zoo

    model = SetFitModel.from_pretrained(str(zoo.resolve("minilm-l6")))
    data = Dataset.from_dict({"text": [t for t, _ in train], "label": [y for _, y in train]})
    args = TrainingArguments(
        output_dir=str(work / "setfit"), save_strategy="no", batch_size=16, num_epochs=1, num_iterations=pairs // 2,
        seed=seed, report_to="none",
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=data)
    start = time.perf_counter()
    trainer.train()  # the contrastive phase and the head, as tunesmith's train seconds and head_seconds
    seconds = time.perf_counter() - start
    predicted = [str(p) for p in model.predict([t for t, _ in test], batch_size=64)]
    return accuracy(predicted, test), seconds


class Icl:
    """smollm2-135m-instruct scoring every label name after a prompt of labeled examples (its KV cache reused)."""

    def __init__(self, bf16: bool):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tunesmith.models import zoo

        path = zoo.resolve("smollm2-135m-instruct")
        self.torch, self.tok = torch, AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.bf16 = bf16

    def __call__(self, dataset: str, train: list, test: list, seed: int) -> tuple[float, float]:
        torch = self.torch
        names = {y: SST2_NAMES.get(y, y.replace("_", " ")) if dataset == "sst2" else y.replace("_", " ")
                 for _, y in train}  # fmt: skip
        shots = self.shots(train, seed)
        task = "sentiment" if dataset == "sst2" else "intent"
        prefix = f"Label the {task} of each text. Labels: {', '.join(sorted(set(names.values())))}.\n\n"
        prefix += "".join(f"Text: {t}\nLabel: {names[y]}\n\n" for t, y in shots)
        labels = sorted(names)
        label_ids = [self.tok(" " + names[y])["input_ids"] for y in labels]
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            past = self.model(torch.tensor([self.tok(prefix)["input_ids"]]), use_cache=True).past_key_values
            predicted = [labels[int(np.argmax(self.score(past, text, label_ids)))] for text, _ in test]
        return accuracy(predicted, test), time.perf_counter() - start

    def shots(self, train: list, seed: int) -> list:
        rng = np.random.default_rng(seed)
        by_label: dict[str, list] = {}
        for row in train:
            by_label.setdefault(row[1], []).append(row)
        cost = sum(len(self.tok(t)["input_ids"]) + 8 for t, _ in train) / len(train)
        per_class = max(1, min(min(map(len, by_label.values())), int(ICL_BUDGET / cost / len(by_label))))
        picked = [r for y in sorted(by_label) for r in by_label[y][:per_class]]
        return [picked[i] for i in rng.permutation(len(picked))]

    def score(self, cache, text: str, label_ids: list[list[int]]) -> list[float]:
        """Summed log-probability of each label's tokens after `Text: ...\nLabel:`, every label in one forward
        pass over the prompt's cache: the query once, then each label's tokens but its last as a branch that sees
        the prompt, the query and itself only (a 4D mask), the way lm/tokens.branch_rows reads replies."""
        torch = self.torch
        query = self.tok(f"Text: {text}\nLabel:")["input_ids"]
        prefix, q = cache.get_seq_length(), len(query)
        ids, segment, position, starts = list(query), [0] * q, list(range(q)), []
        for j, lab in enumerate(label_ids):
            starts.append(len(ids))
            ids += lab[:-1]
            segment += [j + 1] * (len(lab) - 1)
            position += range(q, q + len(lab) - 1)
        seg = torch.tensor(segment)
        allowed = ((seg[:, None] == seg[None, :]) | (seg[None, :] == 0)) & torch.tril(
            torch.ones(len(ids), len(ids), dtype=torch.bool)
        )
        mask = torch.zeros((1, 1, len(ids), prefix + len(ids)))
        mask[..., prefix:] = torch.zeros(allowed.shape).masked_fill_(~allowed, torch.finfo(torch.float32).min)
        pos = torch.tensor([position]) + prefix
        logp = self.model(torch.tensor([ids]), past_key_values=cache, attention_mask=mask, position_ids=pos).logits[0]
        logp = logp.log_softmax(-1)
        cache.crop(prefix - cache.get_seq_length())
        out = []
        for at, lab in zip(starts, label_ids):
            rows = torch.tensor([q - 1, *range(at, at + len(lab) - 1)])
            out.append(float(logp[rows, torch.tensor(lab)].sum()))
        return out


def accuracy(predicted: list[str], test: list) -> float:
    return float(np.mean([p == y for p, (_, y) in zip(predicted, test)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[8, 64])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    parser.add_argument(
        "--pairs", type=int, default=40, help="contrastive pairs per row, both sides (SetFit: 2 x num_iterations)"
    )
    parser.add_argument("--test-rows", type=int, default=None, help="a seeded subset of the test rows (all sides)")
    parser.add_argument("--icl-bf16", action="store_true", help="ICL scores under bf16 autocast (about 2x on AMX)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    missing = [args.data / f for d in args.datasets for f in DATASETS[d][:2] if not (args.data / f).is_file()]
    if missing:
        sys.exit(f"missing data: {', '.join(map(str, missing))} (this benchmark reads ../shared/data)")
    import setfit
    import torch
    import transformers

    out = json.loads(args.out.read_text()) if args.out.is_file() else {}  # cells of earlier runs are kept
    run = {
        "command": " ".join(["benchmarks/fewshot.py", *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "seeds": args.seeds,
        "pairs": args.pairs,
        "icl_precision": "bf16" if args.icl_bf16 else "fp32",
        "setfit": setfit.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    icl = Icl(args.icl_bf16) if "icl" in args.sides else None
    for dataset in args.datasets:
        train_file, test_file, text, label = DATASETS[dataset]
        pool, test = read_rows(args.data / train_file, text, label), read_rows(args.data / test_file, text, label)
        if args.test_rows and args.test_rows < len(test):
            keep = np.random.default_rng(0).choice(len(test), args.test_rows, replace=False)
            test = [test[i] for i in sorted(keep)]
        out.setdefault(dataset, {})
        test_csv = write_csv(test, scratch("fewshot-") / f"{dataset}-test.csv")
        for n in args.sizes:
            runs: dict[str, list[tuple[float, float]]] = {side: [] for side in args.sides}
            for seed in range(args.seeds):
                train = sample(pool, n, seed)
                with tempfile.TemporaryDirectory() as tmp:
                    for side in args.sides:
                        if side == "setfit":
                            runs[side].append(setfit_side(train, test, seed, Path(tmp), args.pairs))
                        elif side == "icl":
                            runs[side].append(icl(dataset, train, test, seed))
                        else:
                            method = "fewshot" if side == "tunesmith" else side
                            runs[side].append(tunesmith_side(method, train, test_csv, seed, Path(tmp), args.pairs))
                        acc, secs = runs[side][-1]
                        print(f"{dataset} n={n} seed={seed} {side}: acc {acc:.4f} in {secs:.1f} s", flush=True)
            cell = out[dataset].setdefault(str(n), {})
            cell["train_rows"] = len(train)  # below n x classes where a label has fewer than n training rows
            cell.update({side: summarise(r) | {"test_rows": len(test), "run": run} for side, r in runs.items()})
            if "tunesmith" in cell and "setfit" in cell:
                cell["speed_ratio"] = round(cell["setfit"]["train_s"] / cell["tunesmith"]["train_s"], 2)
                cell["acc_gap"] = round(cell["tunesmith"]["acc_mean"] - cell["setfit"]["acc_mean"], 4)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(out, indent=2) + "\n")  # after every cell: a long run keeps its figures
    print(json.dumps(out, indent=2))


def summarise(runs: list[tuple[float, float]]) -> dict:
    accs = [a for a, _ in runs]
    return {"acc_mean": round(float(np.mean(accs)), 4), "acc_std": round(float(np.std(accs)), 4),
            "train_s": round(float(np.mean([s for _, s in runs])), 2), "accs": [round(a, 4) for a in accs]}  # fmt: skip


if __name__ == "__main__":
    main()
