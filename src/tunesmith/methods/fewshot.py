"""Few-shot classification, the SetFit recipe (Tunstall et al. 2022): with a handful of labeled rows per class,
first tune a sentence encoder contrastively (two rows of one label: similar; of two labels: dissimilar), then fit
a logistic regression on the tuned embeddings.

Where SetFit encodes two sentences per pair, each contrastive batch here is a set of B sentences, a few from each
of several classes, and every one of its B(B-1)/2 pairs counts: one forward pass over B sentences yields
B(B-1)/2 pairs instead of B/2. The loss is SetFit's (squared error between cosine similarity and 1 or 0), with
positive and negative pairs weighted equally, as SetFit's oversampling weights them.

The untuned baseline is the same recipe without the contrastive step: the frozen encoder's embeddings and a
logistic regression on the same rows.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from tunesmith.config import RunConfig, Strict
from tunesmith.data.prepared import read_prepared
from tunesmith.errors import TunesmithError
from tunesmith.eval.calibration import choose_temperature
from tunesmith.infer.classifier import Encoded, predict_logits
from tunesmith.methods import Method, classify
from tunesmith.methods.classify import evaluate, logit_metrics, score_test
from tunesmith.models import zoo
from tunesmith.models.build import freeze_embeddings
from tunesmith.models.pooled import PooledClassifier
from tunesmith.models.saved import CLASSIFIER, save_model
from tunesmith.train.checkpoint import list_checkpoints
from tunesmith.train.loop import Batch, Task, fit


class FewshotConfig(Strict):
    # contrastive pairs per training row and epoch (SetFit's num_iterations of 20 gives 40)
    pairs: int = Field(40, gt=0)
    c: float = Field(1.0, gt=0)  # the inverse regularisation strength of the logistic-regression head
    # logistic: the regression is the head; end_to_end: it starts a linear head, then head and encoder train
    # together on cross-entropy for head_epochs (the head at train.head_lr, when set)
    head: Literal["logistic", "end_to_end"] = "logistic"
    head_epochs: float = Field(2.0, gt=0)


def rows_by_class(labels: np.ndarray, names: list[str]) -> list[np.ndarray]:
    """Training rows per class; a class needs two rows to give a positive pair."""
    groups = [np.flatnonzero(labels == c) for c in range(len(names))]
    present = [g for g in groups if len(g)]
    short = [names[c] for c, g in enumerate(groups) if len(g) == 1]
    if short or len(present) < 2:
        why = f"these have one: {short[:10]}" if short else f"it has {len(present)} class(es)"
        raise TunesmithError(
            "fewshot: contrastive pairs need at least 2 training rows per class and 2 classes; "
            f"{why}. Add rows, or lower data.val_fraction/data.test_fraction so fewer leave the training split"
        )
    return present


def contrastive_batches(groups: list[np.ndarray], size: int, steps: int, seed: int) -> list[np.ndarray]:
    """Batches of `size` rows: a few rows from each of several classes, so that every batch holds positive pairs."""
    rng = np.random.default_rng(seed)
    per_class = max(2, size // len(groups))
    out = []
    for _ in range(steps):
        picked: list[int] = []
        for c in rng.permutation(len(groups)):
            picked.extend(rng.choice(groups[c], min(per_class, len(groups[c])), replace=False))
            if len(picked) >= size:
                break
        out.append(np.array(picked[:size]))
    return out


def pair_loss(emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Squared error of every pair's cosine similarity against 1 (same label) or 0, positives and negatives each
    weighted half."""
    emb = torch.nn.functional.normalize(emb.float(), dim=-1)
    sim = emb @ emb.T  # (B, B)
    upper = torch.triu(torch.ones_like(sim, dtype=torch.bool), diagonal=1)
    same = (labels[:, None] == labels[None, :]) & upper
    other = ~(labels[:, None] == labels[None, :]) & upper
    pos = (sim[same] - 1).pow(2).mean() if same.any() else sim.new_zeros(())
    neg = sim[other].pow(2).mean() if other.any() else sim.new_zeros(())
    metrics = {"pos_similarity": sim[same].mean().detach(), "neg_similarity": sim[other].mean().detach()}
    return (pos + neg) / 2, metrics


def make_task(model: PooledClassifier, train: Encoded, cfg: RunConfig, groups: list[np.ndarray]) -> Task:
    t, section = cfg.train, cfg.section()
    size = min(t.batch_size, len(train))
    steps = math.ceil(section.pairs * len(train) / (size * (size - 1) / 2))

    def collate(idx: np.ndarray) -> Batch:
        return train.collate(idx) | {"n": 1}  # the loss is already a mean over the batch's pairs

    def loss(m: PooledClassifier, batch: Batch):
        return pair_loss(m.embed(batch["input_ids"], batch["attention_mask"]), batch["labels"])

    return Task(
        model=model,
        batches=lambda epoch: contrastive_batches(groups, size, steps, t.seed + epoch),
        loss=loss,
        collate=collate,
    )


@torch.no_grad()
def fit_head(model: PooledClassifier, train: Encoded, c: float) -> None:
    """Logistic regression on the tuned embeddings, written into the model's linear head: the same softmax."""
    from sklearn.linear_model import LogisticRegression

    x = embeddings(model, train)
    head = LogisticRegression(max_iter=2000, C=c).fit(x, train.labels)
    coef, bias = head.coef_, head.intercept_
    if len(head.classes_) == 2:  # one weight vector: p(second) = sigmoid(w.x + b)
        coef, bias = np.stack([np.zeros_like(coef[0]), coef[0]]), np.array([0.0, bias[0]])
    weight = torch.zeros_like(model.classifier.weight)
    full = torch.full_like(model.classifier.bias, -1e4)  # a label with no training rows is never predicted
    weight[head.classes_] = torch.as_tensor(coef, dtype=weight.dtype)
    full[head.classes_] = torch.as_tensor(bias, dtype=full.dtype)
    model.classifier.weight.copy_(weight)
    model.classifier.bias.copy_(full)


@torch.no_grad()
def embeddings(model: PooledClassifier, data: Encoded, batch_size: int = 64) -> np.ndarray:
    device = next(model.parameters()).device
    order = np.argsort(-data.lengths, kind="stable")
    out = np.zeros((len(data), model.config.hidden_size), dtype=np.float32)
    for i in range(0, len(order), batch_size):
        b = data.collate(order[i : i + batch_size])
        out[order[i : i + batch_size]] = (
            model.embed(b["input_ids"].to(device), b["attention_mask"].to(device)).float().cpu().numpy()
        )
    return out


def run(cfg: RunConfig, run_dir: Path, *, resume: bool = False, quiet: bool = False) -> dict:
    """Prepared data -> contrastive tuning -> logistic-regression head -> calibrate -> model/ -> eval.json."""
    from transformers import AutoTokenizer

    if cfg.lora is not None:
        raise TunesmithError("fewshot tunes the whole encoder (it is small and the rows are few); remove lora:")
    prep = read_prepared(run_dir / "data")
    model_dir = zoo.resolve(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    labels = prep.labels
    enc = {name: Encoded(tokenizer, split, labels, cfg.train.max_length) for name, split in prep.splits.items()}
    groups = rows_by_class(enc["train"].labels, labels)
    per_class = np.bincount(enc["train"].labels, minlength=len(labels))
    torch.manual_seed(cfg.train.seed)
    model = PooledClassifier.from_base(model_dir, len(labels), cfg.train.dropout)
    freeze_embeddings(model, cfg.train, None)
    result = fit(make_task(model, enc["train"], cfg, groups), cfg.train, run_dir, resume=resume, quiet=quiet)
    model.eval()
    start = time.perf_counter()
    fit_head(model, enc["train"], cfg.section().c)
    if cfg.section().head == "end_to_end":  # its own loop run in its own folder, so that resume finds each
        head_run = run_dir / "end_to_end"
        head_train = cfg.train.model_copy(update={"epochs": cfg.section().head_epochs, "max_steps": None})
        task = classify.make_task(model, enc["train"], enc.get("val"), cfg)
        fit(task, head_train, head_run, resume=bool(list_checkpoints(head_run / "checkpoints")), quiet=quiet)
        model.eval()
    head_seconds = time.perf_counter() - start

    has_val = "val" in enc and len(enc["val"])
    calibration = {"temperature": 1.0, "chosen": "none", "why": "eval.calibrate is off, or no validation rows"}
    if cfg.eval.calibrate and has_val:
        calibration = choose_temperature(predict_logits(model, enc["val"]), enc["val"].labels, cfg.eval.bins)
    meta = {
        "method": cfg.method,
        "kind": CLASSIFIER,
        "head": "pooled",
        "base_model": cfg.model,
        "base_path": str(model_dir),
        "labels": labels,
        "temperature": calibration["temperature"],
        "max_length": cfg.train.max_length,
        "lora": False,
    }
    save_model(model, tokenizer, meta, run_dir / "model")
    report = {
        "labels": labels,
        "temperature": calibration["temperature"],
        "calibration": calibration,
        "train": result.summary()
        | {"head_seconds": round(head_seconds, 2), "rows_per_class": dict(zip(labels, map(int, per_class)))},
    }
    if has_val:
        report["val"] = logit_metrics(predict_logits(model, enc["val"]), enc["val"].labels)
    if "test" in enc and len(enc["test"]):
        report |= score_test(model, model_dir, enc, labels, calibration["temperature"], cfg)
    return report


METHODS = (
    Method(
        name="fewshot",
        summary="a label per text from a few rows per class: SetFit's contrastive encoder tuning + logistic regression",
        shapes=("classify",),
        run=run,
        scores=(("accuracy", False), ("macro_f1", False), ("ece", True), ("ece_calibrated", True)),
        val_metrics=("loss",),
        headline=("accuracy", "macro_f1"),
        section=FewshotConfig,
        options=frozenset({"train.head_lr", "eval.calibrate", "eval.bins"}),
        figures=("confusion", "reliability"),
        evaluate=evaluate,
    ),
)
