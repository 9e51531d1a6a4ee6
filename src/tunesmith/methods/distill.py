"""Distillation of a fine-tuned classifier into a smaller student: the student learns the teacher's temperature-
softened probabilities (KL, scaled by T^2 as Hinton et al. do) beside the hard labels, and on unlabeled text
(data.unlabeled) from the teacher's alone, which is where distillation pays most. The student is a model given by
alias or folder (`model:`), or the teacher itself cut to `distill.layers` of its layers (evenly spaced, every
other one at half, as DistilBERT), keeping the teacher's head.

The teacher stays frozen: its logits on every training row are computed once, in the loop's setup hook, and it is
freed before the first step. The report scores student and teacher on the same test rows.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from tunesmith.config import RunConfig, Strict
from tunesmith.data.prepared import Split, read_prepared
from tunesmith.data.readers import read_records
from tunesmith.errors import TunesmithError
from tunesmith.infer.classifier import Encoded, predict_logits
from tunesmith.methods import Method
from tunesmith.methods.classify import make_task, save_and_score, score_logits
from tunesmith.models import zoo
from tunesmith.models.build import build_classifier, freeze_embeddings
from tunesmith.models.layers import keep_layers
from tunesmith.models.saved import CLASSIFIER, load_classifier, read_meta
from tunesmith.runs import find_run_dir
from tunesmith.train.loop import Batch, fit


class DistillConfig(Strict):
    teacher: str  # a finished classify (or distill) run: name, registry id or folder
    layers: int | None = Field(None, gt=0)  # the student is the teacher cut to this many layers; else `model:`
    temperature: float = Field(2.0, gt=0)  # softens both distributions in the KL term
    alpha: float = Field(0.5, ge=0.0, le=1.0)  # weight of the KL term on labelled rows; 1 - alpha on the labels


def run(cfg: RunConfig, run_dir: Path, *, resume: bool = False, quiet: bool = False) -> dict:
    """Teacher checked -> student built -> teacher logits (setup) -> train -> calibrate, save -> student vs teacher."""
    from transformers import AutoTokenizer

    d: DistillConfig = cfg.section()
    teacher_dir = teacher_run(d.teacher)
    meta = read_meta(teacher_dir / "model")
    labels = meta["labels"]
    prep = read_prepared(run_dir / "data")
    unknown = sorted(set(prep.labels) - set(labels))
    if unknown:
        raise TunesmithError(
            f"distill.teacher {d.teacher}: the data has labels the teacher was not trained on: {unknown[:10]}; "
            f"it knows {labels}"
        )
    if d.layers and (meta.get("lora") or cfg.lora):
        raise TunesmithError(
            "distill.layers cuts a fully fine-tuned teacher into a student trained fully: the teacher "
            f"{d.teacher} was trained with LoRA, or this config sets lora; drop one of them"
        )
    start = teacher_dir / "model" if d.layers else zoo.resolve(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(start)
    splits = dict(prep.splits)
    unlabeled = _unlabeled(cfg)
    labelled = len(splits["train"])
    train = splits["train"]
    splits["train"] = Split(train.texts + unlabeled, train.labels + [labels[0]] * len(unlabeled))  # label unused
    enc = {name: Encoded(tokenizer, split, labels, cfg.train.max_length) for name, split in splits.items()}
    has_label = torch.arange(len(enc["train"])) < labelled
    torch.manual_seed(cfg.train.seed)
    student = build_classifier(start, labels, dropout=cfg.train.dropout, lora=cfg.lora)
    kept = keep_layers(student, d.layers) if d.layers else None
    freeze_embeddings(student, cfg.train, cfg.lora)
    soft: dict[str, torch.Tensor] = {}

    def setup(device: torch.device) -> None:  # the teacher's logits on every training row, then it is freed
        teacher, teacher_tok, _ = load_classifier(teacher_dir / "model")
        rows = Encoded(teacher_tok, splits["train"], labels, meta["max_length"])
        soft["logits"] = torch.from_numpy(predict_logits(teacher.to(device), rows))

    def loss(m: torch.nn.Module, batch: Batch):
        logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        temp = d.temperature
        kl = F.kl_div(F.log_softmax(logits / temp, -1), F.log_softmax(batch["soft"] / temp, -1), log_target=True,
                      reduction="none").sum(-1) * temp**2  # fmt: skip
        ce = F.cross_entropy(logits, batch["labels"], reduction="none")
        hard = batch["hard"]
        total = torch.where(hard, d.alpha * kl + (1 - d.alpha) * ce, kl)
        return total.sum(), {"kl": kl.detach().sum(), "ce": (ce * hard).detach().sum()}

    def collate(idx) -> Batch:
        return enc["train"].collate(idx) | {"soft": soft["logits"][idx], "hard": has_label[idx]}

    task = dataclasses.replace(make_task(student, enc["train"], enc.get("val"), cfg), loss=loss, collate=collate,
                               setup=setup)  # fmt: skip
    result = fit(task, cfg.train, run_dir, resume=resume, quiet=quiet)
    student.eval()
    base = zoo.resolve(cfg.model)  # the baseline: model's frozen encoder, as for classify, fitted on labelled rows
    labelled_rows = enc["train"].subset(np.arange(labelled))
    labelled_rows.truncated = enc["train"].truncated
    scored = enc | {"train": labelled_rows}
    report = save_and_score(student, tokenizer, base, scored, labels, cfg, run_dir, result, teacher=str(teacher_dir))
    report["distill"] = {"teacher": str(teacher_dir), "unlabeled_rows": len(unlabeled), "layers_kept": kept}
    if "test" in enc and len(enc["test"]):
        teacher, teacher_tok, teacher_meta = load_classifier(teacher_dir / "model")
        teacher_test = Encoded(teacher_tok, splits["test"], labels, teacher_meta["max_length"])
        logits = predict_logits(teacher, teacher_test)
        report["teacher"] = score_logits(
            logits, teacher_test.labels, labels, teacher_meta["temperature"], cfg.eval.bins
        )
        report["distill"] |= _sizes_and_speed((student, enc["test"]), (teacher, teacher_test))
        share = report["tuned"]["accuracy"] / max(report["teacher"]["accuracy"], 1e-9)
        report["distill"]["accuracy_share_of_teacher"] = share
    return report


def teacher_run(key: str, kind: str = CLASSIFIER, method: str = "distill") -> Path:
    """The finished run `key` names, whose model must be of `kind` (a classifier, or a causal LM for distill-lm)."""
    run_dir = find_run_dir(key, done=True)
    if read_meta(run_dir / "model")["kind"] != kind:
        takes = "a classify run's model" if kind == CLASSIFIER else "an sft run's model"
        raise TunesmithError(f"{method}.teacher {key}: not a {kind} run; {method} takes {takes}")
    return run_dir


def _unlabeled(cfg: RunConfig) -> list[str]:
    """The texts of data.unlabeled (its data.text field; a list of fields is joined as for training)."""
    if not cfg.data.unlabeled:
        return []
    field = cfg.data.text or "text"
    fields = field if isinstance(field, list) else [field]
    texts = []
    for record in read_records(cfg.data.unlabeled, encoding=cfg.data.encoding, text_field=fields[0]):
        row = record.fields or {}
        missing = [f for f in fields if not isinstance(row.get(f), str)]
        if record.fields is None or missing:
            if cfg.data.on_error == "skip":
                continue
            why = record.error or f"no text field {missing[0]!r} (data.text)"
            raise TunesmithError(f"{record.where}: {why}; or set data.on_error: skip")
        texts.append(cfg.data.text_separator.join(row[f] for f in fields))
    if not texts:
        raise TunesmithError(f"data.unlabeled {cfg.data.unlabeled}: no text rows")
    return texts


def _sizes_and_speed(student: tuple[torch.nn.Module, Encoded], teacher: tuple[torch.nn.Module, Encoded]) -> dict:
    """Weights and the median latency of one test row at a time (up to 100 rows), each model on its own tokens."""
    out = {}
    for who, (model, test) in (("student", student), ("teacher", teacher)):
        out[f"{who}_params"] = sum(p.numel() for p in model.parameters())
        out[f"{who}_p50_ms"] = _p50_ms(model, test)
    out["latency_ratio"] = out["student_p50_ms"] / out["teacher_p50_ms"]
    return out


@torch.no_grad()
def _p50_ms(model: torch.nn.Module, data: Encoded) -> float:
    device = next(model.parameters()).device
    times = []
    for i in range(min(len(data), 100)):
        b = data.collate(np.array([i]))
        began = time.perf_counter()
        model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device))
        times.append(time.perf_counter() - began)
    return float(np.median(times) * 1000)


METHODS = (
    Method(
        name="distill",
        summary="a smaller classifier taught by a fine-tuned one: KL to its softened labels, and unlabeled text",
        shapes=("classify",),
        run=run,
        scores=(("accuracy", False), ("macro_f1", False), ("ece", True), ("ece_calibrated", True)),
        val_metrics=("macro_f1", "accuracy", "loss"),
        headline=("accuracy", "macro_f1"),
        section=DistillConfig,
        options=frozenset({"train.head_lr", "train.batch_tokens", "eval.calibrate", "eval.bins", "data.unlabeled"}),
        curve=("accuracy", "macro_f1"),
        figures=("confusion", "reliability"),
    ),
)
