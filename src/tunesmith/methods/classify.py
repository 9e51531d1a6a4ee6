"""Sequence classification: an encoder (or any model with a sequence-classification head) fine-tuned on
text + label, fully or with LoRA; scored against a logistic regression on the frozen encoder, with calibration.
The loop lives in train/loop.py; this module builds what it needs.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tunesmith import continual
from tunesmith.config import DataConfig, RunConfig, load_config
from tunesmith.data.prepare import Preparer
from tunesmith.data.prepared import Split, read_prepared, read_split
from tunesmith.errors import TunesmithError
from tunesmith.eval.baseline import frozen_baseline_logits
from tunesmith.eval.calibration import choose_temperature, reliability, softmax
from tunesmith.eval.metrics import classification_report
from tunesmith.files import write_json
from tunesmith.infer.classifier import Encoded, predict_logits
from tunesmith.methods import Method
from tunesmith.models import zoo
from tunesmith.models.build import HEAD_NAMES, build_classifier, freeze_embeddings
from tunesmith.models.saved import CLASSIFIER, load_classifier, save_model
from tunesmith.train.batches import order_batches, splitter
from tunesmith.train.loop import Batch, Task, fit
from tunesmith.train.precision import pick_device

LARGE_TRAIN = 32_000  # training rows: 1,000 steps of 32 an epoch


def recipe(cfg: RunConfig, data: dict) -> dict:
    """The default recipe by the size of the prepared training split (the keys a config sets are kept; README
    "Measured", time to accuracy, says what each part gave).

    - No dropout: the model's own (0.1 for BERT-like encoders) is regularisation that a fine-tune of a few epochs
      does not need, and on a CPU torch's dropout draws a float per element: minilm-l6, batches of 32 SST-2 rows,
      bf16 on 2 cores of an AMX Xeon, 298 examples/s with it and 326 without (benchmarks/classify_levers.py).
    - Large sets (>= LARGE_TRAIN rows): one epoch of batches of 128 at twice the learning rate, the input token
      embeddings frozen, and on a CPU in parts of 512 tokens. Batches of 128 share a step's fixed cost (the
      optimiser over every weight, clipping) among 4x the rows; freezing takes minilm's largest tensor (30,522 x
      384, half its weights, of which a batch uses a few hundred rows) out of every step; parts of 512 tokens keep
      the peak memory under HF Trainer's. classify_levers.py, 60 steps of SST-2: batches of 32 346 examples/s,
      128 in parts of 1,024 500, frozen 592 (1,421 MB), in parts of 512 447 (1,286 MB). End to end on SST-2
      (classify_sst2.py, 3 seeds): HF Trainer's dev accuracy within 0.002 in 1/1.5 of its time, at 0.89x its
      memory.
    """
    out: dict = {"train.dropout": 0.0}
    if data.get("rows", {}).get("train", 0) >= LARGE_TRAIN:
        out |= {
            "train.batch_size": 128,
            "train.lr": 2 * cfg.train.lr,
            "train.epochs": 1.0,
            "train.freeze_embeddings": True,
        }
        if pick_device(cfg.train.device).type == "cpu":  # a GPU runs whole batches (train.batch_tokens auto)
            out["train.batch_tokens"] = 512
    return out


def make_task(model: torch.nn.Module, train: Encoded, val: Encoded | None, cfg: RunConfig) -> Task:
    t = cfg.train

    def batches(epoch: int) -> list[np.ndarray]:
        return order_batches(train.lengths, t.batch_size, t.seed + epoch, t.group_by_length)

    def loss(m: torch.nn.Module, batch: Batch) -> torch.Tensor:
        logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, C)
        return F.cross_entropy(logits.float(), batch["labels"], reduction="sum")

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        logits = predict_logits(m, val, batch_size=max(t.batch_size, 64))
        return logit_metrics(logits, val.labels)

    return Task(
        model=model,
        batches=batches,
        loss=loss,
        collate=train.collate,
        split=splitter(train.lengths),
        evaluate=evaluate if val is not None and len(val) else None,
        head_names=HEAD_NAMES,
    )


def logit_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score

    pred = logits.argmax(-1)
    loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    return {
        "loss": loss,
        "accuracy": float((pred == labels).mean()),
        "macro_f1": float(f1_score(labels, pred, average="macro", zero_division=0)),
    }


# ---- the recipe: read top to bottom ---------------------------------------------------------------------


def run(cfg: RunConfig, run_dir: Path, *, resume: bool = False, quiet: bool = False) -> dict:
    """Prepared data in run_dir/data -> fine-tune -> calibrate -> save model/ -> eval.json (tuned vs baseline)."""
    from transformers import AutoTokenizer

    prep = read_prepared(run_dir / "data")
    model_dir = zoo.resolve(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    parent = continual.parent_of(cfg)  # --continue-from: start from that run's model, keep what it learnt
    labels = continual.grown_labels(parent, prep.labels)
    splits = dict(prep.splits)
    if parent is not None and cfg.continual.strategy == "replay":
        c = cfg.continual
        again = continual.replayed(parent, len(splits["train"]), c.replay_ratio, cfg.train.seed, "classify")
        train = splits["train"]
        splits["train"] = Split(train.texts + [r["text"] for r in again], train.labels + [r["label"] for r in again])
    enc = {name: Encoded(tokenizer, split, labels, cfg.train.max_length) for name, split in splits.items()}
    torch.manual_seed(cfg.train.seed)
    if parent is None:
        model = build_classifier(model_dir, labels, dropout=cfg.train.dropout, lora=cfg.lora)
    else:
        model = continual.start_classifier(parent, labels, cfg)
    freeze_embeddings(model, cfg.train, cfg.lora)
    task = make_task(model, enc["train"], enc.get("val"), cfg)
    has_test = "test" in enc and len(enc["test"])
    if parent is not None:
        before = continual.accuracy(model.eval(), enc["test"]) if has_test else None
        anchor = continual.anchor_for(model, cfg, task.loss, parent_batches(parent, tokenizer, labels, cfg),
                                      free=grown_head(model, parent, labels))  # fmt: skip
        task = dataclasses.replace(task, loss=continual.regularised(task.loss, anchor))
    result = fit(task, cfg.train, run_dir, resume=resume, quiet=quiet)
    model.eval()
    rows = [{"text": t, "label": y} for t, y in zip(prep.splits["train"].texts, prep.splits["train"].labels)]
    continual.write_replay(run_dir, rows, parent, cfg.continual, cfg.train.seed)

    report = save_and_score(model, tokenizer, model_dir, enc, labels, cfg, run_dir, result)
    if parent is not None:
        now = continual.accuracy_on_tasks(model, tokenizer, labels, parent, cfg.train.max_length)
        now.append(report["tuned"]["accuracy"] if has_test else float("nan"))
        baseline = report.get("baseline", {}).get("accuracy")
        report["continual"] = {"parent": str(parent.dir), "strategy": cfg.continual.strategy} | continual.transfer(
            parent, run_dir, now, before, baseline, "accuracy"
        )
        report["continual"]["replayed_rows"] = len(enc["train"]) - len(prep.splits["train"])
    return report


def save_and_score(model, tokenizer, model_dir: Path, enc: dict[str, Encoded], labels: list[str], cfg: RunConfig,
                   run_dir: Path, result, **meta) -> dict:  # fmt: skip
    """A trained classifier: calibrated on validation, saved to model/ (with `meta` in tunesmith.json), and
    scored on the test rows beside the baseline; returns eval.json's content so far."""
    calibration = {"temperature": 1.0, "chosen": "none", "why": "eval.calibrate is off, or no validation rows"}
    if cfg.eval.calibrate and "val" in enc and len(enc["val"]):
        val = enc["val"]
        calibration = choose_temperature(predict_logits(model, val), val.labels, cfg.eval.bins, seed=cfg.train.seed)
    temperature = calibration["temperature"]
    meta = {
        "method": cfg.method,
        "kind": CLASSIFIER,
        "base_model": cfg.model,
        "base_path": str(model_dir),
        "labels": labels,
        "temperature": temperature,
        "max_length": cfg.train.max_length,
        "lora": cfg.lora is not None,
        "parent": cfg.continual.parent,
    } | meta
    save_model(model, tokenizer, meta, run_dir / "model")

    report = {
        "labels": labels,
        "temperature": temperature,
        "calibration": calibration,
        "train": result.summary() | {"truncated_train_examples": enc["train"].truncated},
    }
    if "test" in enc and len(enc["test"]):
        report |= score_test(model, model_dir, enc, labels, temperature, cfg)
    return report


def grown_head(model, parent: continual.Parent, labels: list[str]) -> frozenset[str]:
    """A head grown by new labels has no parent value to be pulled towards: it is left free."""
    if len(labels) == len(parent.meta["labels"]):
        return frozenset()
    return frozenset(n for n, _ in model.named_parameters() if any(h in n for h in HEAD_NAMES))


def parent_batches(parent: continual.Parent, tokenizer, labels: list[str], cfg: RunConfig):
    """Batches of 8 of n of the parent's training rows: what EWC estimates the Fisher information on."""

    def make(n: int) -> list:
        rows = continual.parent_rows(parent, n, cfg.train.seed)
        split = Split([r["text"] for r in rows], [r["label"] for r in rows])
        enc = Encoded(tokenizer, split, labels, cfg.train.max_length)
        return [enc.collate(np.arange(at, min(at + 8, len(enc)))) for at in range(0, len(enc), 8)]

    return make


def score_test(
    model, model_dir: Path, enc: dict[str, Encoded], labels: list[str], temperature: float, cfg: RunConfig
) -> dict:
    """Tuned and baseline models on the same test rows, with calibration before and after temperature scaling."""
    test = enc["test"]
    out = {
        "test_rows": len(test),
        "tuned": score_logits(predict_logits(model, test), test.labels, labels, temperature, cfg.eval.bins),
    }
    if cfg.eval.baseline:
        logits, info = frozen_baseline_logits(model_dir, enc["train"], test, len(labels), cfg.train.seed)
        out["baseline"] = score_logits(logits, test.labels, labels, 1.0, cfg.eval.bins) | {"info": info}
    return out


def score_logits(logits: np.ndarray, y: np.ndarray, labels: list[str], temperature: float, bins: int) -> dict:
    raw = reliability(softmax(logits), y, bins)
    scaled = reliability(softmax(logits, temperature), y, bins)
    return classification_report(y, logits.argmax(-1), labels) | {
        "ece": raw["ece"],
        "ece_calibrated": scaled["ece"],
        "reliability": raw["bins"],
        "reliability_calibrated": scaled["bins"],
    }


EVAL_OPTIONS = {
    "data.on_error: skip": "--on-error skip",
    "data.text": "--text",
    "data.label": "--label",
    "data.format": "--format",
    "data.delimiter": "--delimiter",
}


def evaluate(
    run_dir: Path,
    data: str | Path,
    *,
    text: str | None = None,
    label: str | None = None,
    fmt: str | None = None,
    delimiter: str | None = None,
    baseline: bool = True,
    on_error: str = "fail",
    write: bool = True,
) -> dict:
    """Score a run's model (and the untuned baseline, refitted on the run's training split) on another file, read
    the way the run read its data unless told otherwise (format, delimiter, columns, text and label fields)."""
    cfg = load_config(run_dir / "config.yaml")
    same_format = fmt is None or fmt == cfg.data.format
    changed = {
        "train": str(data), "val": None, "test": None, "split_column": None, "on_error": on_error, "max_rows": None,
        "sample": None, "shape": "classify", "text": text or cfg.data.text, "label": label or cfg.data.label,
        "format": fmt or cfg.data.format, "delimiter": delimiter or (cfg.data.delimiter if same_format else None),
        "columns": cfg.data.columns if same_format else None, "dedup": {"exact": False, "near": False},
    }  # fmt: skip
    if delimiter is not None and len(delimiter) != 1:
        raise TunesmithError(f"--delimiter must be one character, got {delimiter!r}")
    try:
        data_cfg = DataConfig(**(cfg.data.model_dump() | changed))
        with tempfile.TemporaryDirectory() as tmp:  # the same reading, cleaning and PII as training, without dedup
            pool, funnel = Preparer(data_cfg, cfg.train.seed).pool("eval", str(data), Path(tmp), None)
            split, read_report = read_split(pool), funnel.report()
    except TunesmithError as err:  # the messages name eval's own options, not the config keys
        message = str(err)
        for key, option in EVAL_OPTIONS.items():
            message = message.replace(key, option)
        raise TunesmithError(message) from None
    model, tokenizer, meta = load_classifier(run_dir / "model")
    unknown = sorted(set(split.labels) - set(meta["labels"]))
    if unknown:
        raise TunesmithError(f"{data}: labels the model was not trained on: {unknown[:10]}; it knows {meta['labels']}")
    if not len(split):
        raise TunesmithError(f"{data}: no rows to evaluate")
    enc = {"test": Encoded(tokenizer, split, meta["labels"], meta["max_length"])}
    if baseline:  # the baseline is refitted on the run's own training split
        train_split = read_prepared(run_dir / "data").splits["train"]
        enc["train"] = Encoded(tokenizer, train_split, meta["labels"], meta["max_length"])
    cfg.eval.baseline = baseline
    report = score_test(model, Path(meta["base_path"]), enc, meta["labels"], meta["temperature"], cfg)
    report |= {"data": str(data), "read": read_report}
    if write:
        write_json(run_dir / f"eval-{Path(data).stem}.json", report)
    return report


METHODS = (
    Method(
        name="classify",
        summary="a label per text: an encoder with a classification head, calibrated, vs a frozen-encoder baseline",
        shapes=("classify",),
        run=run,
        scores=(("accuracy", False), ("macro_f1", False), ("ece", True), ("ece_calibrated", True)),
        val_metrics=("macro_f1", "accuracy", "loss"),
        headline=("accuracy", "macro_f1"),
        options=frozenset({"train.head_lr", "train.batch_tokens", "eval.calibrate", "eval.bins", *continual.OPTIONS}),
        curve=("accuracy", "macro_f1"),
        figures=("confusion", "reliability"),
        evaluate=evaluate,
        recipe=recipe,
    ),
)
