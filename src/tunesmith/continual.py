"""Continual learning: a run that continues from a finished run (its parent) on new data, and keeps what the
parent learnt by replaying a bounded sample of earlier training rows, or by pulling its weights towards the
parent's (L2, or EWC: weighted by the Fisher information of the parent's task). Every run keeps its sample of
rows (replay.parquet), so a chain of runs replays all its earlier tasks; every child scores itself on every
earlier task's test split, which gives the accuracy matrix, average accuracy, and backward and forward transfer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tunesmith.config import ContinualConfig, RunConfig
from tunesmith.data.prepared import Split, read_split
from tunesmith.errors import TunesmithError
from tunesmith.models.saved import read_meta

REPLAY = "replay.parquet"
OPTIONS = frozenset(f"continual.{key}" for key in ContinualConfig.model_fields)  # declared by methods that continue


@dataclass(frozen=True)
class Parent:
    dir: Path
    meta: dict  # its model's tunesmith.json
    report: dict  # its eval.json


def resolve_parent(cfg: RunConfig) -> Path | None:
    """The parent's run folder, checked: a finished run of the same method from the same base model."""
    from tunesmith.runs import find_run_dir

    key = cfg.continual.parent
    if key is None:
        return None
    run_dir = find_run_dir(key, cfg.output_dir, done=True)
    if not (run_dir / "model" / "tunesmith.json").is_file():
        raise TunesmithError(f"--continue-from {key}: {run_dir} has no saved model to continue from")
    meta = read_meta(run_dir / "model")
    if meta["method"] != cfg.method:
        raise TunesmithError(
            f"--continue-from {key}: that is a {meta['method']} run, and this config's method is {cfg.method}; "
            f"a run continues from a run of its own method"
        )
    if meta["base_model"] != cfg.model:
        raise TunesmithError(
            f"--continue-from {key}: that run was trained from model {meta['base_model']!r}, and this config "
            f"names {cfg.model!r}; set model: {meta['base_model']} to continue from it"
        )
    return run_dir


def parent_of(cfg: RunConfig) -> Parent | None:
    if cfg.continual.parent is None:
        return None
    run_dir = Path(cfg.continual.parent)
    return Parent(run_dir, read_meta(run_dir / "model"), json.loads((run_dir / "eval.json").read_text()))


# ---- replay ---------------------------------------------------------------------------------------------------


def write_replay(run_dir: Path, train: Split, parent: Parent | None, cfg: ContinualConfig, seed: int) -> None:
    """replay.parquet: up to cfg.buffer training rows, shared out equally among this run's task and every earlier
    one (the parent's own replay rows), each a seeded sample."""
    tasks: dict[str, Split] = {}
    if parent is not None and (parent.dir / REPLAY).is_file():
        earlier = pq.read_table(parent.dir / REPLAY).to_pylist()
        for row in earlier:
            task = tasks.setdefault(row["task"], Split())
            task.texts.append(row["text"])
            task.labels.append(row["label"])
    tasks[run_dir.name] = train
    share = max(cfg.buffer // len(tasks), 1)
    rng = np.random.default_rng(seed)
    rows = {"task": [], "text": [], "label": []}
    for name, split in tasks.items():
        for i in np.sort(rng.permutation(len(split))[:share]):
            rows["task"].append(name)
            rows["text"].append(split.texts[i])
            rows["label"].append(split.labels[i])
    tmp = run_dir / f".{REPLAY}.tmp"
    pq.write_table(pa.table(rows), tmp)
    tmp.replace(run_dir / REPLAY)


def replayed(parent: Parent, n_new: int, ratio: float, seed: int) -> Split:
    """round(ratio * n_new) rows of the parent's replay sample (all of them if it holds fewer), seeded."""
    path = parent.dir / REPLAY
    if not path.is_file():
        raise TunesmithError(f"continual.strategy replay: the parent run {parent.dir} kept no replay rows ({REPLAY})")
    rows = read_split(path)
    take = np.sort(np.random.default_rng(seed).permutation(len(rows))[: round(ratio * n_new)])
    return Split([rows.texts[i] for i in take], [rows.labels[i] for i in take])


# ---- a pull towards the parent's weights -------------------------------------------------------------------------


class Anchor:
    """weight/2 * sum F * (w - w_parent)^2 over the trained weights (F = 1 for L2, the diagonal Fisher information
    for EWC), except the `free` ones, which have no parent value to hold on to (a head grown by new labels). Taken
    when training starts, where every such weight is the parent's."""

    def __init__(
        self,
        model: torch.nn.Module,
        weight: float,
        fisher: dict[str, torch.Tensor] | None = None,
        free: frozenset[str] = frozenset(),
    ):
        self.weight, self.fisher = weight, fisher
        self.start = {
            n: p.detach().clone()
            for n, p in model.named_parameters()
            if p.requires_grad and n not in free and (fisher is None or n in fisher)
        }

    def __call__(self, model: torch.nn.Module) -> torch.Tensor:
        terms = []
        for name, param in model.named_parameters():
            if name in self.start:
                d2 = (param - self.start[name]) ** 2
                terms.append((d2 * self.fisher[name] if self.fisher else d2).sum())
        return 0.5 * self.weight * torch.stack(terms).sum() if terms else torch.zeros(())


def fisher_information(model: torch.nn.Module, loss, batches: list) -> dict[str, torch.Tensor]:
    """The diagonal empirical Fisher of every trained weight: the mean squared gradient of the loss per batch."""
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}
    was_training = model.training
    model.eval()
    for batch in batches:
        model.zero_grad(set_to_none=True)
        out = loss(model, batch)
        ((out[0] if isinstance(out, tuple) else out) / int(batch["n"])).backward()
        for n, p in model.named_parameters():
            if p.grad is not None and n in total:
                total[n] += p.grad.detach() ** 2 / len(batches)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return total


def regularised(loss, anchor: Anchor | None):
    """The method's loss plus the anchor's pull, once per optimizer step: the loop sums micro-batch losses and
    divides by the examples of the step, so each micro-batch adds the pull times its own examples."""
    if anchor is None:
        return loss

    def with_pull(model, batch):
        out = loss(model, batch)
        pull = anchor(model).to(out[0].device if isinstance(out, tuple) else out.device) * int(batch["n"])
        return (out[0] + pull, out[1]) if isinstance(out, tuple) else out + pull

    return with_pull


# ---- the measures -----------------------------------------------------------------------------------------------


def transfer(parent: Parent | None, run_dir: Path, now: list[float], before: float, baseline: float | None) -> dict:
    """The accuracy matrix with this run's row (accuracy on every task so far, this one last), the accuracy on
    this task before training on it, and from those: average accuracy, backward transfer (mean change on earlier
    tasks since each was learnt: negative is forgetting) and forward transfer (accuracy on a task before training
    on it, above the untuned baseline's)."""
    earlier = (parent.report.get("continual") or _first(parent)) if parent else None
    tasks = [*(earlier["tasks"] if earlier else []), {"run": str(run_dir), "name": run_dir.name}]
    matrix = [*(earlier["matrix"] if earlier else []), [round(a, 4) for a in now]]
    before_rows = [*(earlier["before"] if earlier else []), None if parent is None else round(before, 4)]
    baselines = [*(earlier["baselines"] if earlier else []), baseline]
    learnt = [matrix[j][j] for j in range(len(tasks) - 1)]
    fwt = [b - base for b, base in zip(before_rows, baselines) if b is not None and base is not None]
    return {
        "tasks": tasks,
        "matrix": matrix,
        "before": before_rows,
        "baselines": baselines,
        "avg_acc": float(np.mean(now)),
        "bwt": float(np.mean([now[j] - learnt[j] for j in range(len(learnt))])) if learnt else None,
        "fwt": float(np.mean(fwt)) if fwt else None,
    }


def _first(parent: Parent) -> dict:
    """A parent that continued from nothing is the first task: its own test accuracy is its row."""
    tuned, base = parent.report.get("tuned", {}), parent.report.get("baseline", {})
    return {
        "tasks": [{"run": str(parent.dir), "name": parent.dir.name}],
        "matrix": [[round(tuned["accuracy"], 4)]] if "accuracy" in tuned else [[None]],
        "before": [None],
        "baselines": [base.get("accuracy")],
    }


# ---- classifiers ----------------------------------------------------------------------------------------------


def grown_labels(parent: Parent | None, labels: list[str]) -> list[str]:
    """The parent's labels in its order, then the new ones: new classes extend the head."""
    if parent is None:
        return labels
    old = parent.meta["labels"]
    return old + [name for name in labels if name not in old]


def start_classifier(parent: Parent, labels: list[str], cfg: RunConfig) -> torch.nn.Module:
    """The parent's classifier (a LoRA adapter merged in) as the new base: its head grown by any new labels, the
    run's dropout and LoRA on top."""
    import tempfile

    from tunesmith.models.build import build_classifier
    from tunesmith.models.saved import load_classifier

    old, _, meta = load_classifier(parent.dir / "model")
    if meta["lora"]:
        old = old.merge_and_unload()
    with tempfile.TemporaryDirectory() as tmp:
        old.save_pretrained(tmp)
        grown = len(labels) != len(meta["labels"])
        return build_classifier(
            Path(tmp), labels, dropout=cfg.train.dropout, lora=cfg.lora, head_from=old.state_dict() if grown else None
        )


def anchor_for(model, parent: Parent, labels: list[str], task_loss, tokenizer, cfg: RunConfig) -> Anchor | None:
    """The L2 or EWC pull (None for naive and replay). A head grown by new labels is left free."""
    from tunesmith.data.prepared import read_prepared
    from tunesmith.infer.classifier import Encoded
    from tunesmith.models.build import HEAD_NAMES

    c = cfg.continual
    if c.strategy not in ("l2", "ewc"):
        return None
    grown = len(labels) != len(parent.meta["labels"])
    free = frozenset(n for n, _ in model.named_parameters() if grown and any(h in n for h in HEAD_NAMES))
    fisher = None
    if c.strategy == "ewc":
        rows = read_prepared(parent.dir / "data").splits["train"]
        pick = np.sort(np.random.default_rng(cfg.train.seed).permutation(len(rows))[: c.fisher_rows])
        enc = Encoded(tokenizer, Split([rows.texts[i] for i in pick], [rows.labels[i] for i in pick]), labels,
                      cfg.train.max_length)  # fmt: skip
        batches = [enc.collate(np.arange(at, min(at + 8, len(enc)))) for at in range(0, len(enc), 8)]
        fisher = fisher_information(model, task_loss, batches)
    return Anchor(model, c.weight, fisher, free)


def accuracy_on_tasks(model, tokenizer, labels: list[str], parent: Parent, max_length: int) -> list[float]:
    """Accuracy on the test split of every earlier task, oldest first."""
    from tunesmith.data.prepared import read_prepared
    from tunesmith.infer.classifier import Encoded

    earlier = (parent.report.get("continual") or _first(parent))["tasks"]
    out = []
    for task in earlier:
        test = read_prepared(Path(task["run"]) / "data").splits.get("test")
        if test is None or not len(test):
            raise TunesmithError(f"{task['run']}: an earlier task of this chain has no test split to score on")
        out.append(accuracy(model, Encoded(tokenizer, test, labels, max_length)))
    return out


def accuracy(model, enc) -> float:
    from tunesmith.infer.classifier import predict_logits

    return float((predict_logits(model, enc).argmax(-1) == enc.labels).mean())
