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
from tunesmith.data.prepared import Split
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


def write_replay(run_dir: Path, train: list[dict], parent: Parent | None, cfg: ContinualConfig, seed: int) -> None:
    """replay.parquet: up to cfg.buffer training rows (as the data stage prepared them), shared out equally among
    this run's task and every earlier one (the parent's own replay rows), each a seeded sample."""
    tasks: dict[str, list[dict]] = {}
    if parent is not None and (parent.dir / REPLAY).is_file():
        for task, row in _replay_rows(parent.dir / REPLAY):
            tasks.setdefault(task, []).append(row)
    tasks[run_dir.name] = train
    share = max(cfg.buffer // len(tasks), 1)
    rng = np.random.default_rng(seed)
    kept = {"task": [], "row": []}
    for name, rows in tasks.items():
        for i in np.sort(rng.permutation(len(rows))[:share]):
            kept["task"].append(name)
            kept["row"].append(json.dumps(rows[i], ensure_ascii=False))
    tmp = run_dir / f".{REPLAY}.tmp"
    pq.write_table(pa.table(kept), tmp)
    tmp.replace(run_dir / REPLAY)


def _replay_rows(path: Path) -> list[tuple[str, dict]]:
    table = pq.read_table(path).to_pylist()
    if table and "row" not in table[0]:  # replay files of classifiers written before rows were kept whole
        return [(r["task"], {"text": r["text"], "label": r["label"]}) for r in table]
    return [(r["task"], json.loads(r["row"])) for r in table]


def replayed(parent: Parent, n_new: int, ratio: float, seed: int, shape: str) -> list[dict]:
    """round(ratio * n_new) rows of the parent's replay sample (all of them if it holds fewer), seeded."""
    from tunesmith.data.prepared import data_shape
    from tunesmith.lm.chat import as_messages

    path = parent.dir / REPLAY
    if not path.is_file():
        raise TunesmithError(f"continual.strategy replay: the parent run {parent.dir} kept no replay rows ({REPLAY})")
    earlier = data_shape(parent.dir / "data")
    as_chat = (earlier, shape) == ("instruction", "chat")  # an instruction row is a one-turn conversation
    if earlier != shape and not as_chat:
        raise TunesmithError(
            f"continual.strategy replay: the parent run {parent.dir} trained on {earlier} rows and this run's data "
            f"is {shape}; replay mixes rows of one shape: use strategy l2 or ewc, or data of the parent's shape"
        )
    rows = [row for _, row in _replay_rows(path)]
    take = np.sort(np.random.default_rng(seed).permutation(len(rows))[: round(ratio * n_new)])
    if as_chat:
        return [{"messages": as_messages(rows[i])} for i in take]
    return [rows[i] for i in take]


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
    """The diagonal empirical Fisher of every trained weight (the mean squared gradient of the loss per batch),
    scaled to a mean of 1 over all of them: raw values are tiny and depend on the model and the batch size (on
    minilm-l6, lambda 1000 changed nothing), so that continual.weight means for EWC what it means for L2 on an
    average weight, while the important weights are held harder and the unimportant ones left freer."""
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
    mean = sum(float(t.sum()) for t in total.values()) / max(1, sum(t.numel() for t in total.values()))
    return {n: t / mean for n, t in total.items()} if mean > 0 else total


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


def transfer(
    parent: Parent | None, run_dir: Path, now: list[float], before: float, baseline: float | None, metric: str
) -> dict:
    """The score matrix with this run's row (the score on every task so far, this one last; accuracy for a
    classifier, test loss for a causal LM), the score on this task before training on it, and from those: the
    average, backward transfer (mean change on earlier tasks since each was learnt, signed so that negative is
    forgetting: a rise in loss counts against) and forward transfer (the score on a task before training on it,
    better than the untuned baseline's by this much)."""
    sign = -1.0 if metric == "loss" else 1.0
    earlier = (parent.report.get("continual") or _first(parent, metric)) if parent else None
    tasks = [*(earlier["tasks"] if earlier else []), {"run": str(run_dir), "name": run_dir.name}]
    matrix = [*(earlier["matrix"] if earlier else []), [round(a, 4) for a in now]]
    before_rows = [*(earlier["before"] if earlier else []), None if parent is None else round(before, 4)]
    baselines = [*(earlier["baselines"] if earlier else []), baseline]
    learnt = [matrix[j][j] for j in range(len(tasks) - 1)]
    fwt = [sign * (b - base) for b, base in zip(before_rows, baselines) if b is not None and base is not None]
    return {
        "metric": metric,
        "tasks": tasks,
        "matrix": matrix,
        "before": before_rows,
        "baselines": baselines,
        "avg_acc" if metric == "accuracy" else f"avg_{metric}": float(np.mean(now)),
        "bwt": float(np.mean([sign * (now[j] - learnt[j]) for j in range(len(learnt))])) if learnt else None,
        "fwt": float(np.mean(fwt)) if fwt else None,
    }


def _first(parent: Parent, metric: str) -> dict:
    """A parent that continued from nothing is the first task: its own test score is its row."""
    tuned, base = parent.report.get("tuned", {}), parent.report.get("baseline", {})
    return {
        "tasks": [{"run": str(parent.dir), "name": parent.dir.name}],
        "matrix": [[round(tuned[metric], 4)]] if metric in tuned else [[None]],
        "before": [None],
        "baselines": [base.get(metric)],
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


def anchor_for(model, cfg: RunConfig, task_loss, parent_batches, free: frozenset[str] = frozenset()) -> Anchor | None:
    """The L2 or EWC pull (None for naive and replay); EWC's Fisher information is estimated on the batches that
    parent_batches(n) makes of n of the parent's training rows. The `free` weights are not pulled."""
    c = cfg.continual
    if c.strategy not in ("l2", "ewc"):
        return None
    fisher = fisher_information(model, task_loss, parent_batches(c.fisher_rows)) if c.strategy == "ewc" else None
    return Anchor(model, c.weight, fisher, free)


def parent_rows(parent: Parent, n: int, seed: int) -> list[dict]:
    """A seeded sample of n of the parent's training rows, as prepared."""
    from tunesmith.data.prepared import read_rows

    rows = read_rows(parent.dir / "data")["train"]
    return [rows[i] for i in np.sort(np.random.default_rng(seed).permutation(len(rows))[:n])]


def earlier_tests(parent: Parent) -> list[tuple[Path, list[dict]]]:
    """The test rows of every earlier task of the chain, oldest first (each run folder with its rows)."""
    from tunesmith.data.prepared import read_rows

    metric = "accuracy" if parent.meta["kind"] == "classifier" else "loss"
    out = []
    for task in (parent.report.get("continual") or _first(parent, metric))["tasks"]:
        test = read_rows(Path(task["run"]) / "data").get("test")
        if not test:
            raise TunesmithError(f"{task['run']}: an earlier task of this chain has no test split to score on")
        out.append((Path(task["run"]), test))
    return out


def accuracy_on_tasks(model, tokenizer, labels: list[str], parent: Parent, max_length: int) -> list[float]:
    """Accuracy on the test split of every earlier task, oldest first."""
    from tunesmith.infer.classifier import Encoded

    out = []
    for _, rows in earlier_tests(parent):
        split = Split([r["text"] for r in rows], [r["label"] for r in rows])
        out.append(accuracy(model, Encoded(tokenizer, split, labels, max_length)))
    return out


def accuracy(model, enc) -> float:
    from tunesmith.infer.classifier import predict_logits

    return float((predict_logits(model, enc).argmax(-1) == enc.labels).mean())
