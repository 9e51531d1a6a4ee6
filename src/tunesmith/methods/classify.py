"""Sequence classification: an encoder (or any model with a sequence-classification head) fine-tuned on
text + label, fully or with LoRA. The loop lives in train/loop.py; this module builds what it needs.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tunesmith import zoo
from tunesmith.config import LoraConfig, RunConfig
from tunesmith.data.classify import Split, read_prepared
from tunesmith.errors import TunesmithError
from tunesmith.eval.baseline import frozen_baseline_logits
from tunesmith.eval.calibration import fit_temperature, reliability, softmax
from tunesmith.eval.metrics import classification_report
from tunesmith.train.loop import Batch, Task, fit

HEAD_NAMES = ("classifier", "score", "pre_classifier", "pooler")


def set_dropout(config, p: float) -> None:
    """Every dropout probability in a transformers config (names differ per architecture)."""
    for key, value in config.to_dict().items():
        if "dropout" in key and isinstance(value, float):
            setattr(config, key, p)


def build_model(
    model_dir, labels: list[str], *, dropout: float | None = None, lora: LoraConfig | None = None
) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    zoo.quiet_transformers()
    config = AutoConfig.from_pretrained(
        model_dir,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    if dropout is not None:
        set_dropout(config, dropout)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, config=config, dtype=torch.float32)
    if model.config.pad_token_id is None and getattr(model.config, "eos_token_id", None) is not None:
        model.config.pad_token_id = model.config.eos_token_id
    return add_lora(model, lora) if lora else model


def freeze_embeddings(model: torch.nn.Module, cfg: RunConfig) -> None:
    """train.freeze_embeddings: the input token embeddings stay as pretrained (LoRA freezes them anyway)."""
    if cfg.train.freeze_embeddings and cfg.lora is None:
        model.get_input_embeddings().weight.requires_grad_(False)


def add_lora(model: torch.nn.Module, lora: LoraConfig) -> torch.nn.Module:
    from peft import LoraConfig as PeftLora
    from peft import TaskType, get_peft_model

    zoo.quiet_transformers()
    peft_cfg = PeftLora(
        task_type=TaskType.SEQ_CLS,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.targets,
    )
    return get_peft_model(model, peft_cfg)


class Encoded:
    """Token ids of one split, unpadded, with labels as ids. The ids are one flat int32 array with per-row offsets:
    as lists of Python ints they would hold about 40 MB more for SST-2's 67k rows, through all of training."""

    CHUNK = 8192  # rows tokenized at a time, so their Python lists never all exist at once

    def __init__(self, tokenizer, split: Split, labels: list[str], max_length: int):
        index = {name: i for i, name in enumerate(labels)}
        flat, lengths = [np.zeros(0, np.int32)], [np.zeros(0, np.int64)]
        for at in range(0, len(split), self.CHUNK):
            ids = tokenizer(split.texts[at : at + self.CHUNK], truncation=True, max_length=max_length)["input_ids"]
            lengths.append(np.fromiter(map(len, ids), np.int64, len(ids)))
            flat.append(np.fromiter(itertools.chain.from_iterable(ids), np.int32, int(lengths[-1].sum())))
        self.flat = np.concatenate(flat)
        self.lengths = np.concatenate(lengths)
        self.starts = np.cumsum(self.lengths) - self.lengths
        self.labels = np.array([index[y] for y in split.labels], dtype=np.int64)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.truncated = int((self.lengths >= max_length).sum())

    def __len__(self) -> int:
        return len(self.lengths)

    def subset(self, idx: np.ndarray) -> Encoded:
        out = object.__new__(Encoded)
        out.flat, out.starts, out.lengths, out.labels = self.flat, self.starts[idx], self.lengths[idx], self.labels[idx]
        out.pad_id, out.truncated = self.pad_id, 0
        return out

    def collate(self, idx) -> Batch:
        width = int(self.lengths[idx].max())
        input_ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            start, n = self.starts[i], self.lengths[i]
            input_ids[row, :n] = torch.from_numpy(self.flat[start : start + n])
            mask[row, :n] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "labels": torch.from_numpy(self.labels[idx]),
            "n": len(idx),
            "examples": len(idx),
        }


def order_batches(lengths: np.ndarray, batch_size: int, seed: int, group_by_length: bool) -> list[np.ndarray]:
    """Shuffled batches. With grouping, the shuffled rows are cut into windows of about 50 batches, each
    sorted by length so that a batch pads little, and the batches are then shuffled again so that lengths do
    not drift through the epoch. The longest batch of all comes first: out-of-memory shows at step 1."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    if group_by_length:
        parts = np.array_split(order, max(1, -(-len(order) // (batch_size * 50))))
        order = np.concatenate([w[np.argsort(-lengths[w], kind="stable")] for w in parts])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
        longest = max(range(len(batches)), key=lambda i: lengths[batches[i]].max())
        batches[0], batches[longest] = batches[longest], batches[0]
    return batches


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
        evaluate=evaluate if val is not None and len(val) else None,
        head_names=HEAD_NAMES,
    )


@torch.no_grad()
def predict_logits(model: torch.nn.Module, data: Encoded, batch_size: int = 64) -> np.ndarray:
    """Logits in the data's order; batches run longest first so that each pads little."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = np.argsort(-data.lengths, kind="stable")
    out = np.zeros((len(data), model.config.num_labels), dtype=np.float32)
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        b = data.collate(idx)
        logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)).logits
        out[idx] = logits.float().cpu().numpy()
    model.train(was_training)
    return out


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
    enc = {name: Encoded(tokenizer, split, prep.labels, cfg.train.max_length) for name, split in prep.splits.items()}
    torch.manual_seed(cfg.train.seed)
    model = build_model(model_dir, prep.labels, dropout=cfg.train.dropout, lora=cfg.lora)
    freeze_embeddings(model, cfg)
    task = make_task(model, enc["train"], enc.get("val"), cfg)
    result = fit(task, cfg.train, run_dir, resume=resume, quiet=quiet)

    temperature = 1.0
    if cfg.eval.calibrate and "val" in enc and len(enc["val"]):
        temperature = fit_temperature(predict_logits(model, enc["val"]), enc["val"].labels)
    meta = {
        "method": "classify",
        "base_model": cfg.model,
        "base_path": str(model_dir),
        "labels": prep.labels,
        "temperature": temperature,
        "max_length": cfg.train.max_length,
        "lora": cfg.lora is not None,
    }
    save_model(model, tokenizer, meta, run_dir / "model")

    report = {
        "labels": prep.labels,
        "temperature": temperature,
        "train": {
            "steps": result.steps,
            "epochs": round(result.epochs_done, 3),
            "examples": result.examples,
            "seconds": round(result.train_seconds, 2),
            "examples_per_s": round(result.examples_per_s, 2),
            "precision": result.precision,
            "precision_reason": result.precision_reason,
            "device": result.device,
            "stopped_early": result.stopped_early,
            "best_val": result.best,
            "truncated_train_examples": enc["train"].truncated,
        },
    }
    if "test" in enc and len(enc["test"]):
        report |= score_test(model, model_dir, enc, prep.labels, temperature, cfg)
    return report


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


def save_model(model, tokenizer, meta: dict, out: Path) -> None:
    """model/ appears whole or not at all: written to model.tmp/ and renamed."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "tunesmith.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def load_model(model_dir: Path) -> tuple[torch.nn.Module, object, dict]:
    """A saved classifier (full weights, or base + LoRA adapter), its tokenizer and tunesmith.json."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    zoo.quiet_transformers()
    meta = json.loads((model_dir / "tunesmith.json").read_text())
    if meta.get("method", "classify") != "classify":
        raise TunesmithError(
            f"{model_dir.parent}: a {meta['method']} run is a text generator, not a classifier; "
            f"use tunesmith generate or tunesmith chat (its test loss and perplexity are in eval.json)"
        )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if meta["lora"]:
        from peft import PeftModel

        base = build_model(zoo.resolve(meta["base_model"]), meta["labels"])
        model = PeftModel.from_pretrained(base, model_dir)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    return model.eval(), tokenizer, meta
