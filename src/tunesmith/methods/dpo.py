"""Direct preference optimisation (Rafailov et al., 2023): a causal LM learns to prefer the chosen reply over
the rejected one, by more than the untuned model (the reference) did. With the log-ratio gap of a pair

    h = (log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))

on the reply tokens only, the loss is -log sigmoid(beta * h) (sigmoid; with label smoothing e, conservative DPO:
-(1 - e) log sigmoid(beta * h) - e log sigmoid(-beta * h)), or IPO's (h - 1 / (2 beta))^2 on per-token log-probs.
The reference is never a second copy of the model: under LoRA it is the same model with the adapter switched
off; under full fine-tuning its log-probabilities are computed once, before training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from tunesmith.config import RunConfig, Strict
from tunesmith.data.prepared import read_rows
from tunesmith.errors import TunesmithError
from tunesmith.eval import forgetting
from tunesmith.eval.forgetting import Forgetting
from tunesmith.lm.logprobs import precompute_references, reference_logprobs, sequence_logprobs, split_logprobs
from tunesmith.lm.tokens import branch_rows, has_targets, no_target_error, pad_id, reply_tokens, shared_start
from tunesmith.methods import Method
from tunesmith.models import zoo
from tunesmith.models.build import build_causal_lm, freeze_embeddings
from tunesmith.models.saved import save_merged
from tunesmith.train.batches import order_batches, splitter
from tunesmith.train.loop import Batch, Task, fit


class DpoConfig(Strict):
    beta: float = Field(0.1, gt=0)  # how far the model may move from the reference: higher keeps it closer
    # sigmoid: DPO (Rafailov et al. 2023); ipo: the squared loss of IPO (Azar et al. 2023) on length-normalised
    # log-probs, which does not push the margin to infinity on pairs the model already separates
    loss: Literal["sigmoid", "ipo"] = "sigmoid"
    # sigmoid only: the chance a pair's preference is wrong (conservative DPO); 0 trusts every pair
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)

    @model_validator(mode="after")
    def _smoothing_is_for_sigmoid(self) -> DpoConfig:
        if self.loss == "ipo" and self.label_smoothing:
            raise ValueError("label_smoothing applies to loss sigmoid only; IPO has no label noise term")
        return self


class Pairs:
    """Token ids and reply targets of the chosen and the rejected conversation of each pair in one split."""

    def __init__(self, tokenizer, rows: list[dict], max_length: int, *, split: str = "", on_error: str = "fail"):
        self.chosen: list[tuple[list[int], list[int]]] = []
        self.rejected: list[tuple[list[int], list[int]]] = []
        self.truncated = self.dropped = self.same = 0
        for n, row in enumerate(rows):
            sides = []
            for reply in (row["chosen"], row["rejected"]):
                ids, targets, cut = reply_tokens(tokenizer, row["prompt"], reply, max_length)
                self.truncated += cut
                sides.append((ids, targets))
            if not all(has_targets(t) for _, t in sides):
                if on_error == "fail":
                    raise no_target_error(split, n, max_length)
                self.dropped += 1
                continue
            if sides[0][0] == sides[1][0]:
                if on_error == "fail":
                    raise TunesmithError(
                        f"{split} pair {n + 1} (data/{split}.parquet): chosen and rejected are the same tokens, so "
                        f"there is no preference to learn; fix the row, or set data.on_error: skip to skip and count"
                    )
                self.same += 1
                continue
            self.chosen.append(sides[0])
            self.rejected.append(sides[1])
        # one row per pair: the shared prompt once, then both replies (branch_rows)
        self.lengths = np.array(
            [len(c[0]) + len(r[0]) - shared_start([c, r]) for c, r in zip(self.chosen, self.rejected)], np.int64
        )
        self.pad_id = pad_id(tokenizer)
        self.ref: torch.Tensor | None = None  # (N, 2) reference log-probs of chosen, rejected, once computed

    def __len__(self) -> int:
        return len(self.chosen)

    def collate(self, idx) -> Batch:
        """One row per pair (the prompt read once); its log-probs come out as the B chosen, then the B rejected."""
        batch = branch_rows([[self.chosen[i], self.rejected[i]] for i in idx], self.pad_id)
        batch |= {"n": len(idx), "examples": len(idx)}
        if self.ref is not None:
            batch["ref"] = self.ref[torch.as_tensor(np.asarray(idx))].T.reshape(-1)  # (2B,) chosen then rejected
        return batch

    def report(self) -> dict:
        return {"pairs": len(self), "truncated_sequences": self.truncated, "dropped_no_target_left": self.dropped,
                "dropped_same_reply": self.same}  # fmt: skip


def pair_losses(h: torch.Tensor, cfg: DpoConfig) -> torch.Tensor:
    """(B,) losses from h = (chosen - ref chosen) - (rejected - ref rejected), the log-ratio gap of each pair."""
    if cfg.loss == "ipo":
        return (h - 1 / (2 * cfg.beta)) ** 2
    margin, eps = cfg.beta * h, cfg.label_smoothing
    return -(1 - eps) * F.logsigmoid(margin) - eps * F.logsigmoid(-margin)


def dpo_loss(policy: torch.Tensor, ref: torch.Tensor, cfg: DpoConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss summed over B pairs, from (2B,) log-probs (chosen then rejected), with the metrics logged each step
    (summed too: the loop averages both)."""
    chosen, rejected = policy.chunk(2)
    ref_chosen, ref_rejected = ref.chunk(2)
    h = (chosen - ref_chosen) - (rejected - ref_rejected)
    margin = cfg.beta * h  # (B,) implicit reward of chosen - rejected
    metrics = {
        "reward_margin": margin.sum().detach(),
        "reward_accuracy": (margin > 0).float().sum(),
        "logp_chosen": chosen.sum().detach(),
        "logp_rejected": rejected.sum().detach(),
    }
    return pair_losses(h, cfg).sum(), metrics


def scores(policy: torch.Tensor, ref: torch.Tensor | None, cfg: DpoConfig) -> dict[str, float]:
    """Over (N, 2) log-probs: how often the model itself puts the chosen reply above the rejected one (comparable
    between tuned and untuned), and, against a reference, DPO's implicit-reward accuracy, margin and loss."""
    gap = policy[:, 0] - policy[:, 1]
    out = {"preference_accuracy": float((gap > 0).float().mean()), "logp_margin": float(gap.mean())}
    if ref is not None:
        h = gap - (ref[:, 0] - ref[:, 1])
        out |= {"reward_accuracy": float((h > 0).float().mean()), "reward_margin": float(cfg.beta * h.mean()),
                "loss": float(pair_losses(h, cfg).mean())}  # fmt: skip
    return out


def make_task(model: torch.nn.Module, pairs: dict[str, Pairs], cfg: RunConfig) -> Task:
    t, dpo, train, val = cfg.train, cfg.section(), pairs["train"], pairs.get("val")
    mean = dpo.loss == "ipo"

    def setup(device: torch.device) -> None:
        precompute_references(model, pairs, cfg.lora is not None, t.batch_size, mean)

    def batches(epoch: int) -> list[np.ndarray]:
        return order_batches(train.lengths, t.batch_size, t.seed + epoch, t.group_by_length)

    def loss(m: torch.nn.Module, batch: Batch):
        return dpo_loss(sequence_logprobs(m, batch, mean), reference_logprobs(m, batch, mean), dpo)

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        return scores(split_logprobs(m, val, t.batch_size, mean), val.ref, dpo)

    # each pair's loss is its own, so a batch's parts add up to it
    return Task(model=model, batches=batches, loss=loss, collate=train.collate, setup=setup,
                split=splitter(train.lengths),
                evaluate=evaluate if val is not None and len(val) else None)  # fmt: skip


# ---- the recipe: read top to bottom ---------------------------------------------------------------------


def run(cfg: RunConfig, run_dir: Path, *, resume: bool = False, quiet: bool = False) -> dict:
    """Prepared pairs -> untuned scores -> DPO -> save model/ (LoRA merged) -> tuned scores on the same pairs."""
    from transformers import AutoTokenizer

    model_dir = zoo.resolve(cfg.model)
    zoo.quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = read_rows(run_dir / "data")
    pairs = {name: Pairs(tokenizer, split, cfg.train.max_length, split=name, on_error=cfg.data.on_error)
             for name, split in rows.items()}  # fmt: skip
    if not len(pairs["train"]):
        raise TunesmithError(f"no training pair is left within train.max_length={cfg.train.max_length}")
    torch.manual_seed(cfg.train.seed)
    model = build_causal_lm(model_dir, dropout=cfg.train.dropout, lora=cfg.lora)
    freeze_embeddings(model, cfg.train, cfg.lora)
    forgets = Forgetting(tokenizer, cfg)
    general_before = forgets.scores(model.eval()) if cfg.eval.baseline else {}
    result = fit(make_task(model, pairs, cfg), cfg.train, run_dir, resume=resume, quiet=quiet)
    dpo = cfg.section()
    report = {**dpo.model_dump(), "data": {name: p.report() for name, p in pairs.items()}, "train": result.summary()}
    test = pairs.get("test")
    if test is not None and len(test):
        model.eval()
        report |= {
            "test_rows": len(test),
            "tuned": scores(split_logprobs(model, test, cfg.train.batch_size, dpo.loss == "ipo"), test.ref, dpo),
            "reward_note": "implicit rewards are beta * log(tuned / untuned): the untuned model's are all zero",
        }
        report["tuned"] |= forgets.scores(model)
        if cfg.eval.baseline:
            report |= forgets.report(general_before, report["tuned"])
            report["baseline"] = general_before | scores(test.ref, None, dpo)
    save_merged(model, tokenizer, cfg, model_dir, run_dir / "model")
    return report


METHODS = (
    Method(
        name="dpo",
        summary="preference tuning of a causal LM (DPO): chosen over rejected replies, the untuned model as reference",
        shapes=("preference",),
        run=run,
        scores=(
            ("preference_accuracy", False),
            ("logp_margin", False),
            ("reward_accuracy", False),
            ("reward_margin", False),
            ("loss", True),
            ("general_perplexity", True),
        ),  # fmt: skip
        val_metrics=("loss", "reward_accuracy", "reward_margin", "preference_accuracy"),
        headline=("preference_accuracy",),
        section=DpoConfig,
        options=forgetting.OPTIONS | {"train.batch_tokens"},
        curve=("preference_accuracy", "reward_accuracy"),
        figures=("before_after",),
        panels=(("preference accuracy on held-out pairs", ("preference_accuracy",)), forgetting.PANEL),
    ),
)
