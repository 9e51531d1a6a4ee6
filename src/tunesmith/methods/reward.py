"""A pairwise (Bradley-Terry) reward model: a scalar head on a causal LM or on an encoder (e.g. minilm-l6), trained
on preference pairs so that the chosen reply scores above the rejected one,

    loss = -log sigmoid(r(prompt, chosen) - r(prompt, rejected)).

It is scored by held-out preference accuracy, tuned against the untuned model (the same base with its fresh,
seeded head), and saved as a plain sequence-classification folder (LoRA merged) that scores any
(prompt, completion) by run name: infer.reward.RewardModel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tunesmith.config import RunConfig
from tunesmith.data.prepared import read_rows
from tunesmith.errors import TunesmithError
from tunesmith.infer.reward import conversation_ids, rewards
from tunesmith.lm.tokens import pad_id, pad_rows
from tunesmith.methods import Method
from tunesmith.models import zoo
from tunesmith.models.build import HEAD_NAMES, build_classifier, freeze_embeddings
from tunesmith.models.saved import REWARD, save_merged
from tunesmith.train.batches import order_batches
from tunesmith.train.loop import Batch, Task, fit


class RewardPairs:
    """Token ids of the chosen and the rejected conversation of each pair (a long prompt loses its start)."""

    def __init__(self, tokenizer, rows: list[dict], max_length: int, *, split: str = "", on_error: str = "fail"):
        self.chosen, self.rejected, self.same = [], [], 0
        for n, row in enumerate(rows):
            better = conversation_ids(tokenizer, row["prompt"], row["chosen"], max_length)
            worse = conversation_ids(tokenizer, row["prompt"], row["rejected"], max_length)
            if better == worse:
                if on_error == "fail":
                    raise TunesmithError(
                        f"{split} pair {n + 1} (data/{split}.parquet): chosen and rejected are the same tokens "
                        f"within train.max_length={max_length}; raise it, fix the row, or set data.on_error: skip"
                    )
                self.same += 1
                continue
            self.chosen.append(better)
            self.rejected.append(worse)
        self.lengths = np.array([max(len(c), len(r)) for c, r in zip(self.chosen, self.rejected)], np.int64)
        self.pad_id = pad_id(tokenizer)

    def __len__(self) -> int:
        return len(self.chosen)

    def collate(self, idx) -> Batch:
        """(2B, T): the B chosen conversations, then their B rejected ones."""
        input_ids, mask = pad_rows([self.chosen[i] for i in idx] + [self.rejected[i] for i in idx], self.pad_id)
        return {"input_ids": input_ids, "attention_mask": mask, "n": len(idx), "examples": len(idx)}

    def report(self) -> dict:
        return {"pairs": len(self), "dropped_same_tokens": self.same}


def pair_loss(scores: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bradley-Terry loss summed over B pairs from (2B,) rewards (chosen then rejected), with its metrics."""
    chosen, rejected = scores.float().chunk(2)
    margin = chosen - rejected
    metrics = {"reward_accuracy": (margin > 0).float().sum(), "reward_margin": margin.detach().sum()}
    return -F.logsigmoid(margin).sum(), metrics


@torch.no_grad()
def split_scores(model: torch.nn.Module, pairs: RewardPairs, batch_size: int) -> dict[str, float]:
    """Held-out preference accuracy (chosen scored above rejected), mean margin and loss."""
    device = next(model.parameters()).device
    margins = []
    for at in range(0, len(pairs), batch_size):
        b = pairs.collate(range(at, min(at + batch_size, len(pairs))))
        chosen, rejected = rewards(model, b["input_ids"].to(device), b["attention_mask"].to(device)).chunk(2)
        margins.append((chosen - rejected).cpu())
    m = torch.cat(margins) if margins else torch.zeros(0)
    return {"preference_accuracy": float((m > 0).float().mean()), "reward_margin": float(m.mean()),
            "loss": float(-F.logsigmoid(m).mean())}  # fmt: skip


def make_task(model: torch.nn.Module, pairs: dict[str, RewardPairs], cfg: RunConfig) -> Task:
    t, train, val = cfg.train, pairs["train"], pairs.get("val")

    def batches(epoch: int) -> list[np.ndarray]:
        return order_batches(train.lengths, t.batch_size, t.seed + epoch, t.group_by_length)

    def loss(m: torch.nn.Module, batch: Batch):
        return pair_loss(rewards(m, batch["input_ids"], batch["attention_mask"]))

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        return split_scores(m, val, t.batch_size)

    return Task(model=model, batches=batches, loss=loss, collate=train.collate, head_names=HEAD_NAMES,
                evaluate=evaluate if val is not None and len(val) else None)  # fmt: skip


# ---- the recipe: read top to bottom ---------------------------------------------------------------------


def run(cfg: RunConfig, run_dir: Path, *, resume: bool = False, quiet: bool = False) -> dict:
    """Prepared pairs -> untuned scores -> Bradley-Terry training -> save model/ (LoRA merged) -> tuned scores."""
    from transformers import AutoTokenizer

    model_dir = zoo.resolve(cfg.model)
    zoo.quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pairs = {name: RewardPairs(tokenizer, rows, cfg.train.max_length, split=name, on_error=cfg.data.on_error)
             for name, rows in read_rows(run_dir / "data").items()}  # fmt: skip
    if not len(pairs["train"]):
        raise TunesmithError("no training pair is left")
    torch.manual_seed(cfg.train.seed)
    model = build_classifier(model_dir, ["reward"], dropout=cfg.train.dropout, lora=cfg.lora)
    freeze_embeddings(model, cfg.train, cfg.lora)
    test = pairs.get("test")
    base = split_scores(model.eval(), test, cfg.train.batch_size) if test and len(test) and cfg.eval.baseline else None
    result = fit(make_task(model, pairs, cfg), cfg.train, run_dir, resume=resume, quiet=quiet)
    model.eval()
    report = {"data": {name: p.report() for name, p in pairs.items()}, "train": result.summary()}
    if test is not None and len(test):
        report |= {"test_rows": len(test), "tuned": split_scores(model, test, cfg.train.batch_size)}
        if base:
            report["baseline"] = base | {"note": "the untuned base model with a fresh, seeded scalar head"}
    save_merged(model, tokenizer, cfg, model_dir, run_dir / "model", kind=REWARD)
    return report


METHODS = (
    Method(
        name="reward",
        summary="a pairwise (Bradley-Terry) reward model: a scalar head scoring chosen above rejected replies",
        shapes=("preference",),
        run=run,
        scores=(("preference_accuracy", False), ("reward_margin", False), ("loss", True)),
        val_metrics=("loss", "preference_accuracy"),
        headline=("preference_accuracy",),
        options=frozenset({"train.head_lr"}),
        curve=("preference_accuracy", "reward_accuracy"),
        figures=("before_after",),
        panels=(("preference accuracy on held-out pairs", ("preference_accuracy",)),),
    ),
)
