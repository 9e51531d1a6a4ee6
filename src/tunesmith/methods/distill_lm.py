"""Distillation of a fine-tuned causal LM (an sft run) into a smaller student, in one of two ways:

- `mode: token`: at every target token of the training replies, KL from the teacher's temperature-softened next-
  token distribution (scaled by T^2), beside the cross-entropy on the reference token (weight 1 - alpha). Teacher
  and student must share a vocabulary.
- `mode: sequence` (Kim and Rush's sequence-level distillation): the teacher answers every training prompt
  greedily, and the student is fine-tuned on those answers in place of the references.

The student is `model:` (an alias or folder), or the teacher cut to `distill-lm.layers` of its layers. The teacher
is loaded, frozen, in the loop's setup hook; sequence-level answers are generated before training. The report
scores the student before and after, and the teacher, on the same test rows (sft's scores).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from tunesmith.config import RunConfig, Strict
from tunesmith.data.prepared import data_shape, read_rows
from tunesmith.errors import TunesmithError
from tunesmith.infer.generator import Generator, Sampling
from tunesmith.lm.chat import as_messages
from tunesmith.lm.logprobs import target_logits
from tunesmith.methods import Method
from tunesmith.methods.distill import teacher_run
from tunesmith.methods.sft import LM_SCORES, PANELS, SFT_OPTIONS, Scores, make_task, tokens_of
from tunesmith.models import zoo
from tunesmith.models.build import build_causal_lm, freeze_embeddings
from tunesmith.models.layers import keep_layers
from tunesmith.models.saved import CAUSAL_LM, load_causal_lm, save_merged
from tunesmith.train.loop import Batch, fit


class DistillLMConfig(Strict):
    teacher: str  # a finished sft run: name, registry id or folder
    mode: Literal["token", "sequence"] = "token"
    layers: int | None = Field(None, gt=0)  # the student is the teacher cut to this many layers; else `model:`
    temperature: float = Field(2.0, gt=0)  # token mode: softens both next-token distributions
    alpha: float = Field(0.5, ge=0.0, le=1.0)  # token mode: weight of the KL term; 1 - alpha on the reference
    max_new_tokens: int = Field(128, gt=0)  # sequence mode: the longest teacher answer


def run(cfg: RunConfig, run_dir: Path, *, resume: bool = False, quiet: bool = False) -> dict:
    """Teacher checked -> student built -> (sequence: teacher answers) -> train -> save -> student vs teacher."""
    from transformers import AutoTokenizer

    d: DistillLMConfig = cfg.section()
    teacher_dir = teacher_run(d.teacher, CAUSAL_LM, "distill-lm")
    start = teacher_dir / "model" if d.layers else zoo.resolve(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(start)
    teacher_tok = AutoTokenizer.from_pretrained(teacher_dir / "model")
    if d.mode == "token" and tokenizer.get_vocab() != teacher_tok.get_vocab():
        raise TunesmithError(
            f"distill-lm.teacher {d.teacher}: the student's vocabulary differs from the teacher's, so their next-token "
            "distributions cannot be compared; use distill-lm.mode: sequence, or a student of the teacher's family"
        )
    shape = data_shape(run_dir / "data")
    rows = read_rows(run_dir / "data")
    answered = 0
    if d.mode == "sequence":
        rows["train"], answered = _teacher_answers(teacher_dir, rows["train"], d.max_new_tokens)
    tokens = {name: tokens_of(tokenizer, split, shape, cfg, name) for name, split in rows.items()}
    if not len(tokens["train"]):
        raise TunesmithError(f"no training example has a target token within train.max_length={cfg.train.max_length}")
    torch.manual_seed(cfg.train.seed)
    student = build_causal_lm(start, dropout=cfg.train.dropout, lora=None if d.layers else cfg.lora)
    kept = keep_layers(student, d.layers) if d.layers else None
    freeze_embeddings(student, cfg.train, cfg.lora)
    scores = Scores(cfg, tokenizer, tokens, rows.get("test"))
    base = scores(student) if cfg.eval.baseline else None
    task = make_task(student, tokens["train"], tokens.get("val"), cfg)
    if d.mode == "token":
        task = dataclasses.replace(task, **_token_kl(teacher_dir, d))
    result = fit(task, cfg.train, run_dir, resume=resume, quiet=quiet)
    student = save_merged(student, tokenizer, cfg, start, run_dir / "model")
    tuned = scores(student)
    teacher_model = load_causal_lm(teacher_dir / "model")[0]
    teacher = scores(teacher_model)
    report = {"data": {name: tok.report() for name, tok in tokens.items()}, "train": result.summary(), "tuned": tuned,
              "teacher": teacher, "test_rows": len(tokens["test"]) if "test" in tokens else 0}  # fmt: skip
    if base:
        report["baseline"] = base
    report["distill"] = {"teacher": str(teacher_dir), "mode": d.mode, "layers_kept": kept,
                         "teacher_answers": answered, "student_params": sum(p.numel() for p in student.parameters()),
                         "teacher_params": sum(p.numel() for p in teacher_model.parameters())}  # fmt: skip
    return report


def _token_kl(teacher_dir: Path, d: DistillLMConfig) -> dict:
    """The loop's setup (load the teacher, frozen, where the student trains) and loss (KL + CE per target)."""
    held: dict = {}

    def setup(device: torch.device) -> None:
        teacher = load_causal_lm(teacher_dir / "model")[0].to(device)
        held["teacher"] = teacher.requires_grad_(False)

    def loss(m: torch.nn.Module, batch: Batch):
        logits, targets, _ = target_logits(m, batch)
        with torch.no_grad():
            soft, _, _ = target_logits(held["teacher"], batch)
        temp = d.temperature
        kl = F.kl_div(F.log_softmax(logits.float() / temp, -1), F.log_softmax(soft.float() / temp, -1),
                      log_target=True, reduction="sum") * temp**2  # fmt: skip
        ce = F.cross_entropy(logits.float(), targets, reduction="sum")
        return d.alpha * kl + (1 - d.alpha) * ce, {"kl": kl.detach(), "ce": ce.detach()}

    return {"setup": setup, "loss": loss}


def _teacher_answers(teacher_dir: Path, rows: list[dict], max_new_tokens: int) -> tuple[list[dict], int]:
    """Each training row with its last assistant reply replaced by the teacher's greedy answer to the same turns."""
    gen = Generator(*load_causal_lm(teacher_dir / "model")[:2])
    prompts = [as_messages(r)[:-1] for r in rows]
    said = gen.replies(prompts, Sampling(max_new_tokens, repetition_penalty=1.0))
    out = [{"messages": p + [{"role": "assistant", "content": s}]} for p, s in zip(prompts, said) if s.strip()]
    if not out:
        raise TunesmithError(f"distill-lm.teacher {teacher_dir}: the teacher answered every training prompt with "
                             "nothing; train it further, or use distill-lm.mode: token")  # fmt: skip
    return out, len(out)


METHODS = (
    Method(
        name="distill-lm",
        summary="a smaller causal LM taught by a fine-tuned one: token-level KL, or the teacher's answers",
        shapes=("chat", "instruction"),
        run=run,
        scores=LM_SCORES,
        val_metrics=("loss", "perplexity"),
        headline=("perplexity",),
        section=DistillLMConfig,
        options=SFT_OPTIONS,
        figures=("before_after",),
        panels=PANELS,
    ),
)
