"""The one training loop. Every method hands it a Task (model, batches, loss, evaluate); the numerics that
must never drift between methods live here once: loss normalisation over accumulation, example counting,
the LR schedule, clipping, precision, early stopping, checkpoints and resume.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith.config import TrainConfig
from tunesmith.errors import TunesmithError
from tunesmith.train.batches import token_budget
from tunesmith.train.checkpoint import (
    list_checkpoints,
    load_trainable,
    restore_checkpoint,
    save_checkpoint,
    save_weights,
)
from tunesmith.train.log import MetricsLog
from tunesmith.train.memory import map_big_blocks, release_freed_memory
from tunesmith.train.optim import build_optimizer, lr_at, warmup_steps
from tunesmith.train.precision import autocast, pick_device, pick_precision
from tunesmith.train.progress import Progress
from tunesmith.train.state import FitResult, LoopState

Batch = dict[str, torch.Tensor | int]
Loss = torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor | float]]


@dataclass
class Task:
    """What a method hands the loop.

    batches(epoch) returns the epoch's plan: one cheap item per micro-batch (e.g. row indices), the same for
    the same epoch every time (resume relies on it); collate(item) turns an item into tensors just in time,
    under torch.no_grad. A batch may be produced during training: collate may sample from the model being
    trained (it is the same object as `model`), and resume still holds, since the plan, the weights and the
    RNG state are all restored.
    A batch carries "n", the loss denominator (examples or tokens), and "examples"; a causal LM's batch also
    "tokens" (input tokens computed, padding not counted) and "target_tokens" (those with a loss), for tokens/s.
    loss(model, batch) returns the loss *summed* over the batch, or (loss, metrics) with metrics summed over
    the batch the same way; the loop divides both by the accumulated n and logs the metrics beside the loss.
    setup(device), if given, runs once with the model on its device, before the optimiser and before a
    checkpoint is restored: it places extra models (a frozen reference or teacher) or computes what the
    untrained model must give (reference log-probabilities).
    """

    model: torch.nn.Module
    batches: Callable[[int], Sequence]
    loss: Callable[[torch.nn.Module, Batch], Loss]
    collate: Callable[[object], Batch] = lambda item: item
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None
    setup: Callable[[torch.device], None] | None = None
    # split(item, tokens): the item's parts of at most `tokens` padded tokens each (train.batch_tokens), which
    # collate and the loss then take one at a time; their sums make the same step as the whole item's
    split: Callable[[object, int], Sequence] | None = None
    head_names: tuple[str, ...] = ()  # parameter-name parts that get train.head_lr
    minimise: tuple[str, ...] = ("loss",)  # validation metrics where lower is better (the rest: higher)


def fit(task: Task, cfg: TrainConfig, run_dir: Path, *, resume: bool = False, quiet: bool = False) -> FitResult:
    run_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    ckpt_dir = run_dir / "checkpoints"
    found = list_checkpoints(ckpt_dir) if resume else []
    if resume and not found:
        raise TunesmithError(f"nothing to resume: {ckpt_dir} holds no complete checkpoint")
    saved = torch.load(found[-1] / "state.pt", weights_only=False) if found else None
    if saved:  # keep the original run's choice: a timing probe may answer differently this time
        precision, reason = saved["loop"]["precision"], "as before resuming"
    else:
        precision, reason = pick_precision(cfg.precision, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    map_big_blocks()
    release_freed_memory()
    model = task.model.to(device)
    if task.setup:
        task.setup(device)
    optimizer = build_optimizer(
        model,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        head_lr=cfg.head_lr,
        head_names=task.head_names,
        device=device,
    )
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    first_plan = task.batches(0)
    micro_per_epoch = len(first_plan)
    if micro_per_epoch == 0:
        raise TunesmithError("no training batches: the training split is empty")
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
    total = max(1, math.floor(cfg.epochs * steps_per_epoch))
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    warmup = warmup_steps(cfg.warmup, total)
    eval_every = cfg.eval_every or steps_per_epoch
    budget = token_budget(cfg.batch_tokens, device.type) if task.split else None

    state = LoopState(precision=precision)
    if saved:
        state = LoopState(**restore_checkpoint(found[-1], saved, model, optimizer))
    log = MetricsLog(run_dir, state.step if resume else None)
    log.write(
        {
            "step": state.step,
            "split": "setup",
            "precision": precision,
            "precision_reason": reason,
            "device": str(device),
            "total_steps": total,
            "warmup_steps": warmup,
            "resumed": resume,
        }
    )
    progress = Progress(total, quiet=quiet, start=state.step)
    model.train()
    running, running_n, running_metrics = 0.0, 0, defaultdict(float)
    clock = time.perf_counter()  # train_seconds: wall time of the loop (batching and checkpoints included)
    try:
        while state.step < total and not state.stopped_early:
            epoch = state.epoch
            batches = first_plan if epoch == 0 else task.batches(epoch)
            while state.epoch == epoch and state.step < total and not state.stopped_early:
                items = batches[state.batch : state.batch + cfg.grad_accum]
                parts = [p for item in items for p in task.split(item, budget)] if budget else items
                with torch.no_grad():
                    group = [task.collate(part) for part in parts]
                lr = lr_at(state.step, warmup=warmup, total=total, peak=cfg.lr, schedule=cfg.schedule)
                for g in optimizer.param_groups:
                    g["lr"] = lr * g["base_lr"] / cfg.lr
                denom = sum(int(b["n"]) for b in group)
                step_loss = 0.0
                for batch in group:
                    with autocast(device, precision):
                        loss, metrics = _split(task.loss(model, _move(batch, device)))
                        loss = loss / denom
                    (scaler.scale(loss) if scaler else loss).backward()
                    step_loss += loss.item()
                    for key, value in metrics.items():
                        running_metrics[key] += float(value) / denom
                if scaler:
                    scaler.unscale_(optimizer)
                grad_norm = (
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm).item()
                    if cfg.max_grad_norm
                    else None
                )
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state.examples += sum(int(b["examples"]) for b in group)
                state.tokens += sum(int(b.get("tokens", 0)) for b in group)
                state.target_tokens += sum(int(b.get("target_tokens", 0)) for b in group)
                state.step += 1
                state.batch += len(items)
                if state.batch >= len(batches):
                    state.epoch, state.batch = state.epoch + 1, 0
                running, running_n = running + step_loss, running_n + 1
                step = state.step
                state.train_seconds, clock = state.train_seconds + time.perf_counter() - clock, time.perf_counter()
                speed = state.examples / max(state.train_seconds, 1e-9)
                means = {k: v / running_n for k, v in running_metrics.items()}
                progress.update(step, running / running_n, speed, means)
                if step % cfg.log_every == 0 or step == total:
                    row = {"step": step, "epoch": round(step / steps_per_epoch, 4), "loss": running / running_n}
                    row |= means | {"lr": lr, "grad_norm": grad_norm, "examples_per_s": speed}
                    if state.tokens:  # cumulative, so that any window of steps gives its own rate
                        row |= {"tokens": state.tokens, "target_tokens": state.target_tokens}
                        row["train_s"] = state.train_seconds
                    log.write(row)
                    running, running_n, running_metrics = 0.0, 0, defaultdict(float)
                if task.evaluate and (step % eval_every == 0 or step == total):
                    _evaluate(task, model, state, cfg, log, progress, ckpt_dir)
                    state.eval_seconds += time.perf_counter() - clock  # validation is not training time
                    clock = time.perf_counter()
                if step % cfg.checkpoint_every == 0 and step < total:
                    save_checkpoint(ckpt_dir, model, optimizer, state.to_dict(), cfg.keep_checkpoints)
                    release_freed_memory()  # the serialisation buffers (weights + optimiser) were just freed
    finally:
        progress.close()
        log.close()
    if cfg.early_stopping and state.best_metrics is not None:
        from safetensors.torch import load_file

        load_trainable(model, load_file(ckpt_dir / "best" / "weights.safetensors"))
    return FitResult(
        steps=state.step,
        epochs_done=state.step / steps_per_epoch,
        examples=state.examples,
        tokens=state.tokens,
        target_tokens=state.target_tokens,
        train_seconds=state.train_seconds,
        precision=precision,
        precision_reason=reason,
        device=str(device),
        best=state.best_metrics,
        last_eval=state.last_eval,
        stopped_early=state.stopped_early,
        eval_seconds=state.eval_seconds,
    )


def _split(out: Loss) -> tuple[torch.Tensor, dict]:
    """A loss alone, or a loss with its metrics."""
    return out if isinstance(out, tuple) else (out, {})


def _move(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _evaluate(
    task: Task,
    model: torch.nn.Module,
    state: LoopState,
    cfg: TrainConfig,
    log: MetricsLog,
    progress: Progress,
    ckpt_dir: Path,
) -> None:
    model.eval()
    with torch.no_grad():
        metrics = task.evaluate(model)
    model.train()
    state.last_eval = metrics
    log.write({"step": state.step, "split": "val", **metrics})
    progress.note(f"step {state.step}: " + ", ".join(f"val {k} {v:.4f}" for k, v in metrics.items()))
    stop = cfg.early_stopping
    if not stop:
        return
    metric = stop.metric or "loss"
    if metric not in metrics:
        raise TunesmithError(
            f"train.early_stopping.metric {metric!r} is not a validation metric; choose one of {sorted(metrics)}"
        )
    value = metrics[metric]
    lower = metric in task.minimise
    if state.best is None or (value < state.best - stop.min_delta if lower else value > state.best + stop.min_delta):
        state.best, state.best_metrics, state.bad_evals = value, {"step": state.step, **metrics}, 0
        save_weights(model, ckpt_dir / "best")
    else:
        state.bad_evals += 1
        if state.bad_evals >= stop.patience:
            state.stopped_early = True
            progress.note(f"early stop at step {state.step}: no better {metric} in {stop.patience} evaluations")
