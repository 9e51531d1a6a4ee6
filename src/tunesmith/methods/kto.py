"""Kahneman-Tversky optimisation (Ethayarajh et al., 2024): a causal LM learns from unpaired feedback, each
completion marked desirable or not (thumbs up/down), with no pairs needed. With r = log pi(y|x) - log ref(y|x)
and z, an estimate of KL(pi || ref) from mismatched prompt/completion rows (held constant in the gradient),

    loss = w_d * (1 - sigmoid(beta * (r - z)))  for a desirable completion,
           w_u * (1 - sigmoid(beta * (z - r)))  for an undesirable one,

on the completion tokens only. It trains on the feedback shape (prompt, completion, label), or on preference
pairs (the chosen reply desirable, the rejected one not). The reference is the adapter switched off under LoRA,
or log-probs computed once before training under full fine-tuning: never a second copy of the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from sklearn.metrics import roc_auc_score

from tunesmith.config import RunConfig, Strict
from tunesmith.data.prepared import data_shape, read_rows
from tunesmith.errors import TunesmithError
from tunesmith.eval import forgetting
from tunesmith.eval.forgetting import Forgetting
from tunesmith.lm.logprobs import precompute_references, reference_logprobs, sequence_logprobs, split_logprobs
from tunesmith.lm.tokens import has_targets, no_target_error, pad_id, reply_tokens, target_rows
from tunesmith.methods import Method
from tunesmith.models import zoo
from tunesmith.models.build import build_causal_lm, freeze_embeddings
from tunesmith.models.saved import save_merged
from tunesmith.train.batches import order_batches
from tunesmith.train.loop import Batch, Task, fit


class KtoConfig(Strict):
    beta: float = Field(0.1, gt=0)  # how far the model may move from the reference: higher keeps it closer
    desirable_weight: float = Field(1.0, gt=0)  # weigh the rarer kind up, so that w_d * n_d ~ w_u * n_u
    undesirable_weight: float = Field(1.0, gt=0)


def unpaired(rows: list[dict], shape: str) -> list[tuple[list[dict], str, bool]]:
    """(prompt turns, completion, desirable) per example: feedback rows as they are, a pair as two examples."""
    if shape == "feedback":
        return [(r["prompt"], r["completion"], bool(r["label"])) for r in rows]
    return [(r["prompt"], reply, good) for r in rows for reply, good in ((r["chosen"], True), (r["rejected"], False))]


class Completions:
    """Token ids and completion targets of each example, and of its mismatched twin (this prompt with the next
    example's completion), whose log-ratios estimate the KL term."""

    def __init__(self, tokenizer, examples: list, max_length: int, *, split: str = "", on_error: str = "fail"):
        def encoded(prompt: list[dict], completion: str) -> tuple[list[int], list[int]]:
            return reply_tokens(tokenizer, prompt, completion, max_length)[:2]

        kept = []
        self.dropped = 0
        for n, (prompt, completion, good) in enumerate(examples):
            ids, targets = encoded(prompt, completion)
            if not has_targets(targets):
                if on_error == "fail":
                    raise no_target_error(split, n, max_length)
                self.dropped += 1
                continue
            kept.append((prompt, completion, good, ids, targets))
        self.rows = [(ids, targets) for *_, ids, targets in kept]
        self.twins = [encoded(kept[i][0], kept[(i + 1) % len(kept)][1]) for i in range(len(kept))]
        self.good = np.array([good for _, _, good, *_ in kept], dtype=bool)
        self.lengths = np.array([max(len(a[0]), len(b[0])) for a, b in zip(self.rows, self.twins)], np.int64)
        self.pad_id = pad_id(tokenizer)
        self.ref: torch.Tensor | None = None  # (N, 2) reference log-probs of the example and of its twin

    def __len__(self) -> int:
        return len(self.rows)

    def collate(self, idx) -> Batch:
        """(2B, T): the B examples, then their B mismatched twins."""
        sides = [self.rows[i] for i in idx] + [self.twins[i] for i in idx]
        batch = target_rows(sides, self.pad_id)
        batch |= {"n": len(idx), "examples": len(idx),
                 "good": torch.as_tensor(self.good[np.asarray(idx)])}  # fmt: skip
        if self.ref is not None:
            batch["ref"] = self.ref[torch.as_tensor(np.asarray(idx))].T.reshape(-1)  # (2B,)
        return batch

    def report(self) -> dict:
        return {"examples": len(self), "desirable": int(self.good.sum()), "dropped_no_target_left": self.dropped}


def example_losses(r: torch.Tensor, z: torch.Tensor, good: torch.Tensor, cfg: KtoConfig) -> torch.Tensor:
    """(B,) KTO losses from the log-ratios r, the KL estimate z and the desirable flags."""
    desirable = cfg.desirable_weight * (1 - torch.sigmoid(cfg.beta * (r - z)))
    undesirable = cfg.undesirable_weight * (1 - torch.sigmoid(cfg.beta * (z - r)))
    return torch.where(good, desirable, undesirable)


def kto_loss(policy: torch.Tensor, ref: torch.Tensor, good: torch.Tensor, cfg: KtoConfig):
    """The loss summed over B examples from (2B,) log-probs (examples, then twins), and the step's metrics (summed:
    the loop averages them)."""
    ratios = policy - ref
    r, twin = ratios.chunk(2)
    z = twin.mean().clamp(min=0).detach()  # the KL estimate is a baseline, not a target
    b = len(r)
    metrics = {
        "kl": z * b,
        "reward_accuracy": ((r > 0) == good).float().sum(),
        "reward_margin": (cfg.beta * r.detach() * (2 * good.float() - 1)).sum(),
    }
    return example_losses(r, z, good, cfg).sum(), metrics


def scores(policy: torch.Tensor, ref: torch.Tensor | None, good: np.ndarray, cfg: KtoConfig) -> dict[str, float]:
    """Over (N, 2) log-probs of the examples (and twins): how well the model's own per-example log-prob tells
    desirable from undesirable completions (AUC, comparable between tuned and untuned), and against a reference
    KTO's implicit-reward accuracy and loss."""
    lp = policy[:, 0].numpy()
    out = {"logp_gap": float(lp[good].mean() - lp[~good].mean()) if good.any() and (~good).any() else 0.0}
    if good.any() and (~good).any():
        out["desirable_auc"] = float(roc_auc_score(good, lp))
    if ref is not None:
        r, z = policy[:, 0] - ref[:, 0], (policy[:, 1] - ref[:, 1]).mean().clamp(min=0)
        flags = torch.as_tensor(good)
        out |= {"reward_accuracy": float(((r > 0) == flags).float().mean()), "kl": float(z),
                "loss": float(example_losses(r, z, flags, cfg).mean())}  # fmt: skip
    return out


def make_task(model: torch.nn.Module, data: dict[str, Completions], cfg: RunConfig) -> Task:
    t, kto, train, val = cfg.train, cfg.section(), data["train"], data.get("val")

    def setup(device: torch.device) -> None:
        precompute_references(model, data, cfg.lora is not None, t.batch_size)

    def batches(epoch: int) -> list[np.ndarray]:
        return order_batches(train.lengths, t.batch_size, t.seed + epoch, t.group_by_length)

    def loss(m: torch.nn.Module, batch: Batch):
        good = batch["good"].to(batch["input_ids"].device)
        return kto_loss(sequence_logprobs(m, batch), reference_logprobs(m, batch), good, kto)

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        return scores(split_logprobs(m, val, t.batch_size), val.ref, val.good, kto)

    return Task(model=model, batches=batches, loss=loss, collate=train.collate, setup=setup,
                evaluate=evaluate if val is not None and len(val) else None)  # fmt: skip


# ---- the recipe: read top to bottom ---------------------------------------------------------------------


def run(cfg: RunConfig, run_dir: Path, *, resume: bool = False, quiet: bool = False) -> dict:
    """Prepared feedback (or pairs) -> KTO -> save model/ (LoRA merged) -> tuned and untuned scores, same rows."""
    from transformers import AutoTokenizer

    model_dir = zoo.resolve(cfg.model)
    zoo.quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    shape = data_shape(run_dir / "data")
    data = {name: Completions(tokenizer, unpaired(rows, shape), cfg.train.max_length, split=name,
                              on_error=cfg.data.on_error)
            for name, rows in read_rows(run_dir / "data").items()}  # fmt: skip
    if not len(data["train"]):
        raise TunesmithError(f"no training example is left within train.max_length={cfg.train.max_length}")
    torch.manual_seed(cfg.train.seed)
    model = build_causal_lm(model_dir, dropout=cfg.train.dropout, lora=cfg.lora)
    freeze_embeddings(model, cfg.train, cfg.lora)
    forgets = Forgetting(tokenizer, cfg)
    general_before = forgets.scores(model.eval()) if cfg.eval.baseline else {}
    result = fit(make_task(model, data, cfg), cfg.train, run_dir, resume=resume, quiet=quiet)
    kto = cfg.section()
    report = {**kto.model_dump(), "data": {n: c.report() for n, c in data.items()}, "train": result.summary()}
    test = data.get("test")
    if test is not None and len(test):
        model.eval()
        report |= {
            "test_rows": len(test),
            "tuned": scores(split_logprobs(model, test, cfg.train.batch_size), test.ref, test.good, kto),
            "reward_note": "implicit rewards are beta * log(tuned / untuned): the untuned model's are all zero",
        }
        report["tuned"] |= forgets.scores(model)
        if cfg.eval.baseline:
            report |= forgets.report(general_before, report["tuned"])
            report["baseline"] = general_before | scores(test.ref, None, test.good, kto)
    save_merged(model, tokenizer, cfg, model_dir, run_dir / "model")
    return report


METHODS = (
    Method(
        name="kto",
        summary="tuning a causal LM on unpaired feedback (KTO): desirable vs undesirable completions, thumbs up/down",
        shapes=("feedback", "preference"),
        run=run,
        scores=(
            ("desirable_auc", False),
            ("logp_gap", False),
            ("reward_accuracy", False),
            ("kl", True),
            ("loss", True),
            ("general_perplexity", True),
        ),  # fmt: skip
        val_metrics=("loss", "reward_accuracy", "desirable_auc"),
        headline=("desirable_auc",),
        section=KtoConfig,
        options=forgetting.OPTIONS,
        curve=("desirable_auc", "reward_accuracy"),
        figures=("before_after",),
        panels=(("desirable-vs-undesirable AUC of held-out completions", ("desirable_auc",)), forgetting.PANEL),
    ),
)
