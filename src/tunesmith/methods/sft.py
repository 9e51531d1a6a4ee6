"""Causal-LM fine-tuning: `sft` on chat and instruction data (loss on the assistant's tokens, end-of-turn
included, so the tuned model learns to stop), and `pretrain` on raw-text chunks (loss on every token), for
domain adaptation. One recipe serves both; the loop lives in train/loop.py, the shared LM pieces in lm/.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from tunesmith import continual
from tunesmith.config import RunConfig
from tunesmith.data.prepared import data_shape, read_rows
from tunesmith.errors import TunesmithError
from tunesmith.eval import forgetting
from tunesmith.eval.forgetting import Forgetting
from tunesmith.infer.generator import Generator, Sampling
from tunesmith.lm.chat import as_messages
from tunesmith.lm.logprobs import loss_metrics, mean_loss, token_loss
from tunesmith.lm.tokens import Packed, Tokens
from tunesmith.methods import Method
from tunesmith.models import zoo
from tunesmith.models.build import build_causal_lm, freeze_embeddings
from tunesmith.models.saved import save_merged
from tunesmith.train.batches import order_batches, splitter
from tunesmith.train.loop import Task, fit


def make_task(model: torch.nn.Module, tokens: Tokens, val: Tokens | None, cfg: RunConfig) -> Task:
    t = cfg.train
    train = Packed(tokens, t.max_length, t.seed) if t.packing else tokens

    def batches(epoch: int) -> list[np.ndarray]:
        return order_batches(train.lengths, t.batch_size, t.seed + epoch, t.group_by_length)

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        return loss_metrics(mean_loss(m, val, t.batch_size))

    return Task(
        model=model,
        batches=batches,
        loss=token_loss,
        collate=train.collate,
        split=splitter(train.lengths),
        evaluate=evaluate if val is not None and len(val) else None,
        minimise=("loss", "perplexity"),
    )


class Scores:
    """What is scored before training and again after: test loss, generation metrics, general-text loss."""

    def __init__(self, cfg: RunConfig, tokenizer, tokens: dict[str, Tokens], test_rows: list[dict] | None):
        self.cfg, self.tokenizer, self.tokens = cfg, tokenizer, tokens
        self.forgetting = Forgetting(tokenizer, cfg)
        rows = (test_rows or [])[: cfg.eval.generate]
        self.prompts = [as_messages(r)[:-1] for r in rows]
        self.references = [r.get("references") or [as_messages(r)[-1]["content"]] for r in rows]

    def __call__(self, model) -> dict:
        from tunesmith.eval.generation import text_metrics

        model.eval()
        out, test, bs = {}, self.tokens.get("test"), self.cfg.train.batch_size
        if test is not None and len(test):
            out |= loss_metrics(mean_loss(model, test, bs))
        out |= self.forgetting.scores(model)
        if self.prompts:
            sampling = Sampling(self.cfg.eval.max_new_tokens, repetition_penalty=self.cfg.eval.repetition_penalty)
            said = Generator(model, self.tokenizer).replies(self.prompts, sampling)
            out |= text_metrics(said, self.references) | {"replies_scored": len(said)}
            out["samples"] = [
                {"prompt": p[-1]["content"][:500], "reply": r[:500], "reference": ref[0][:500]}
                for p, r, ref in list(zip(self.prompts, said, self.references))[:5]
            ]
        return out


# ---- the recipe: read top to bottom ---------------------------------------------------------------------


def run(cfg: RunConfig, run_dir: Path, *, resume: bool = False, quiet: bool = False) -> dict:
    """Prepared data -> base model's test loss -> fine-tune -> save model/ (LoRA merged) -> tuned test loss."""
    from transformers import AutoTokenizer

    model_dir = zoo.resolve(cfg.model)
    zoo.quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    shape = data_shape(run_dir / "data")
    rows = read_rows(run_dir / "data")
    parent = continual.parent_of(cfg)  # --continue-from: start from that run's model, keep what it learnt
    own_rows = rows["train"]
    if parent is not None and cfg.continual.strategy == "replay":
        c = cfg.continual
        rows["train"] = own_rows + continual.replayed(parent, len(own_rows), c.replay_ratio, cfg.train.seed, shape)
    tokens = {name: tokens_of(tokenizer, split, shape, cfg, name) for name, split in rows.items()}
    if not len(tokens["train"]):
        raise TunesmithError(f"no training example has a target token within train.max_length={cfg.train.max_length}")
    torch.manual_seed(cfg.train.seed)
    start = parent.dir / "model" if parent is not None else model_dir
    model = build_causal_lm(start, dropout=cfg.train.dropout, lora=cfg.lora)
    freeze_embeddings(model, cfg.train, cfg.lora)
    scores = Scores(cfg, tokenizer, tokens, rows.get("test") if shape != "text" else None)
    base = scores(model) if cfg.eval.baseline or parent is not None else None
    task = make_task(model, tokens["train"], tokens.get("val"), cfg)
    if parent is not None:
        anchor = continual.anchor_for(model, cfg, token_loss, parent_batches(parent, tokenizer, cfg))
        task = dataclasses.replace(task, loss=continual.regularised(task.loss, anchor))
    result = fit(task, cfg.train, run_dir, resume=resume, quiet=quiet)
    model = save_merged(model, tokenizer, cfg, model_dir, run_dir / "model")
    continual.write_replay(run_dir, own_rows, parent, cfg.continual, cfg.train.seed)
    report = {"data": {name: tok.report() for name, tok in tokens.items()}, "train": result.summary()}
    tuned = scores(model)
    if tuned:
        report |= {"test_rows": len(tokens["test"]) if "test" in tokens else 0, "tuned": tuned}
        if base:
            report["baseline"] = base
        report |= scores.forgetting.report(base, tuned)
    if parent is not None and "loss" in tuned:
        now = [
            loss_on(model, tokenizer, rows, data_shape(d / "data"), cfg) for d, rows in continual.earlier_tests(parent)
        ]
        report["continual"] = {"parent": str(parent.dir), "strategy": cfg.continual.strategy} | continual.transfer(
            parent, run_dir, [*now, tuned["loss"]], base.get("loss"), None, "loss"
        )
        report["continual"]["replayed_rows"] = len(rows["train"]) - len(own_rows)
    return report


def tokens_of(tokenizer, rows: list[dict], shape: str, cfg: RunConfig, split: str) -> Tokens:
    t = cfg.train
    return Tokens(tokenizer, rows, t.max_length, shape, split=split, on_error=cfg.data.on_error, loss_on=t.loss_on)


def loss_on(model, tokenizer, rows: list[dict], shape: str, cfg: RunConfig) -> float:
    """The mean loss per target token on an earlier task's test rows."""
    return mean_loss(model.eval(), tokens_of(tokenizer, rows, shape, cfg, "test"), cfg.train.batch_size)


def parent_batches(parent: continual.Parent, tokenizer, cfg: RunConfig):
    """Batches of 4 of n of the parent's training rows: what EWC estimates the Fisher information on."""

    def make(n: int) -> list:
        shape = data_shape(parent.dir / "data")
        tokens = tokens_of(tokenizer, continual.parent_rows(parent, n, cfg.train.seed), shape, cfg, "train")
        return [tokens.collate(np.arange(at, min(at + 4, len(tokens)))) for at in range(0, len(tokens), 4)]

    return make


LM_SCORES = (
    ("loss", True),
    ("perplexity", True),
    ("rouge1", False),
    ("rouge2", False),
    ("rougeL", False),
    ("bleu", False),
    ("exact_match", False),
    ("general_perplexity", True),
)
PANELS = (
    ("perplexity (lower is better)", ("perplexity", "general_perplexity")),
    ("generation scores, 0-100 (higher is better)", ("rouge1", "rouge2", "rougeL", "bleu", "exact_match")),
)
FORGETTING = forgetting.OPTIONS | {"train.packing", "train.batch_tokens"} | continual.OPTIONS
SFT_OPTIONS = FORGETTING | {"train.loss_on", "eval.generate", "eval.max_new_tokens", "eval.repetition_penalty"}
METHODS = (
    Method(
        name="sft",
        summary="chat or instruction tuning of a causal LM: loss on the assistant's replies",
        shapes=("chat", "instruction"),
        run=run,
        scores=LM_SCORES,
        val_metrics=("loss", "perplexity"),
        headline=("perplexity",),
        options=SFT_OPTIONS,
        figures=("before_after",),
        panels=PANELS,
    ),
    Method(
        name="pretrain",
        summary="domain adaptation: continued pretraining of a causal LM on raw text (every token)",
        shapes=("text",),
        run=run,
        scores=LM_SCORES,
        val_metrics=("loss", "perplexity"),
        headline=("perplexity",),
        options=FORGETTING,
        figures=("before_after",),
        panels=PANELS,
    ),
)
