"""The one training loop. Every method hands it a Task (model, batches, loss, evaluate); the numerics that
must never drift between methods live here once: loss normalisation over accumulation, example counting,
the LR schedule, clipping, precision, early stopping, checkpoints and resume.
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith.config import TrainConfig
from tunesmith.errors import TunesmithError
from tunesmith.train.checkpoint import (
    list_checkpoints,
    load_trainable,
    restore_checkpoint,
    save_checkpoint,
    save_weights,
)
from tunesmith.train.optim import build_optimizer, lr_at, warmup_steps
from tunesmith.train.precision import autocast, pick_device, pick_precision
from tunesmith.train.progress import Progress

Batch = dict[str, torch.Tensor | int]


@dataclass
class Task:
    """What a method hands the loop.

    batches(epoch) returns the epoch's plan: one cheap item per micro-batch (e.g. row indices), the same for
    the same epoch every time (resume relies on it); collate(item) turns an item into tensors just in time.
    A batch carries "n", the loss denominator (examples or tokens), and "examples".
    loss(model, batch) returns the loss *summed* over the batch; the loop divides by the accumulated n.
    """

    model: torch.nn.Module
    batches: Callable[[int], Sequence]
    loss: Callable[[torch.nn.Module, Batch], torch.Tensor]
    collate: Callable[[object], Batch] = lambda item: item
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None
    head_names: tuple[str, ...] = ()  # parameter-name parts that get train.head_lr


@dataclass
class FitResult:
    steps: int
    epochs_done: float
    examples: int
    train_seconds: float
    precision: str
    precision_reason: str
    device: str
    best: dict | None = None  # validation metrics of the restored best evaluation
    last_eval: dict | None = None
    stopped_early: bool = False

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.train_seconds if self.train_seconds else 0.0


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MAP_FROM = 4 << 20  # bytes


@functools.cache
def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:  # not glibc (e.g. musl): its heap is not tuned this way
        return None


def release_freed_memory() -> None:
    """Hand freed heap back to the OS (glibc keeps it otherwise): once before training, so the data pipeline's
    leftovers do not add to the peak, and after each checkpoint. Not every step: that costs 25% speed."""
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)


def map_big_blocks() -> None:
    """Blocks of 4 MiB and more (activations of long batches, gradients) get their own mapping, which goes back
    to the OS when freed. glibc's default threshold rises to 32 MiB as such blocks are freed, after which they
    are carved from its heap and fragment it: on a minilm-l6 SST-2 step loop peak RSS settled 80-90 MB higher
    (1,750 vs 1,657-1,675 MB, 400 steps; speed within run-to-run noise, 150 vs 148 ex/s). 2 MiB saves more but
    costs 8% speed in page faults.
    Process-wide, and fixed from then on (mallopt turns glibc's dynamic threshold off)."""
    libc = _glibc()
    if libc:
        libc.mallopt(M_MMAP_THRESHOLD, MAP_FROM)


def _better(value: float, best: float | None, metric: str, min_delta: float) -> bool:
    if best is None:
        return True
    return value < best - min_delta if metric == "loss" else value > best + min_delta


def _move(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class MetricsLog:
    """metrics.jsonl (one line per logged step and per evaluation) and TensorBoard, side by side."""

    def __init__(self, run_dir: Path, resume_step: int | None):
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            # Lines written after the checkpoint we resume from would be written again: drop them.
            kept = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        self.file = self.path.open("a")
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step)

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        prefix = row.get("split", "train")
        for key, value in row.items():
            if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                self.tb.add_scalar(f"{prefix}/{key}", value, row["step"])

    def close(self) -> None:
        self.file.close()
        self.tb.close()


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
    optimizer = build_optimizer(
        model, lr=cfg.lr, weight_decay=cfg.weight_decay, head_lr=cfg.head_lr, head_names=task.head_names, device=device
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
    stop_cfg = cfg.early_stopping

    state = {
        "step": 0,
        "epoch": 0,
        "batch": 0,
        "examples": 0,
        "train_seconds": 0.0,
        "precision": precision,
        "best": None,
        "best_metrics": None,
        "bad_evals": 0,
        "last_eval": None,
        "stopped_early": False,
    }
    if saved:
        state = restore_checkpoint(found[-1], saved, model, optimizer)
    log = MetricsLog(run_dir, state["step"] if resume else None)
    log.write(
        {
            "step": state["step"],
            "split": "setup",
            "precision": precision,
            "precision_reason": reason,
            "device": str(device),
            "total_steps": total,
            "warmup_steps": warmup,
            "resumed": resume,
        }
    )
    progress = Progress(total, quiet=quiet, start=state["step"])
    model.train()
    running, running_n = 0.0, 0
    clock = time.perf_counter()  # train_seconds: wall time of the loop (batching and checkpoints included)
    try:
        while state["step"] < total and not state["stopped_early"]:
            epoch = state["epoch"]
            batches = first_plan if epoch == 0 else task.batches(epoch)
            while state["epoch"] == epoch and state["step"] < total and not state["stopped_early"]:
                group = [task.collate(item) for item in batches[state["batch"] : state["batch"] + cfg.grad_accum]]
                lr = lr_at(state["step"], warmup=warmup, total=total, peak=cfg.lr, schedule=cfg.schedule)
                for g in optimizer.param_groups:
                    g["lr"] = lr * g["base_lr"] / cfg.lr
                denom = sum(int(b["n"]) for b in group)
                step_loss = 0.0
                for batch in group:
                    with autocast(device, precision):
                        loss = task.loss(model, _move(batch, device)) / denom
                    (scaler.scale(loss) if scaler else loss).backward()
                    step_loss += loss.item()
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
                state["examples"] += sum(int(b["examples"]) for b in group)
                state["step"] += 1
                state["batch"] += len(group)
                if state["batch"] >= len(batches):
                    state["epoch"], state["batch"] = state["epoch"] + 1, 0
                running, running_n = running + step_loss, running_n + 1
                step = state["step"]
                state["train_seconds"], clock = (
                    state["train_seconds"] + time.perf_counter() - clock,
                    time.perf_counter(),
                )
                speed = state["examples"] / max(state["train_seconds"], 1e-9)
                progress.update(step, running / running_n, speed)
                if step % cfg.log_every == 0 or step == total:
                    log.write(
                        {
                            "step": step,
                            "epoch": round(step / steps_per_epoch, 4),
                            "loss": running / running_n,
                            "lr": lr,
                            "grad_norm": grad_norm,
                            "examples_per_s": speed,
                        }
                    )
                    running, running_n = 0.0, 0
                if task.evaluate and (step % eval_every == 0 or step == total):
                    _evaluate(task, model, state, stop_cfg, log, progress, ckpt_dir)
                    clock = time.perf_counter()  # validation is not training time
                if step % cfg.checkpoint_every == 0 and step < total:
                    save_checkpoint(ckpt_dir, model, optimizer, state, cfg.keep_checkpoints)
                    release_freed_memory()  # the serialisation buffers (weights + optimiser) were just freed
    finally:
        progress.close()
        log.close()
    if stop_cfg and state["best_metrics"] is not None:
        from safetensors.torch import load_file

        load_trainable(model, load_file(ckpt_dir / "best" / "weights.safetensors"))
    return FitResult(
        steps=state["step"],
        epochs_done=state["step"] / steps_per_epoch,
        examples=state["examples"],
        train_seconds=state["train_seconds"],
        precision=precision,
        precision_reason=reason,
        device=str(device),
        best=state["best_metrics"],
        last_eval=state["last_eval"],
        stopped_early=state["stopped_early"],
    )


def _evaluate(
    task: Task, model: torch.nn.Module, state: dict, stop_cfg, log: MetricsLog, progress: Progress, ckpt_dir: Path
) -> None:
    model.eval()
    with torch.no_grad():
        metrics = task.evaluate(model)
    model.train()
    state["last_eval"] = metrics
    log.write({"step": state["step"], "split": "val", **metrics})
    progress.note(f"step {state['step']}: " + ", ".join(f"val {k} {v:.4f}" for k, v in metrics.items()))
    if not stop_cfg:
        return
    if stop_cfg.metric not in metrics:
        raise TunesmithError(
            f"train.early_stopping.metric {stop_cfg.metric!r} is not a validation metric; "
            f"choose one of {sorted(metrics)}"
        )
    value = metrics[stop_cfg.metric]
    if _better(value, state["best"], stop_cfg.metric, stop_cfg.min_delta):
        state["best"], state["best_metrics"], state["bad_evals"] = value, {"step": state["step"], **metrics}, 0
        save_weights(model, ckpt_dir / "best")
    else:
        state["bad_evals"] += 1
        if state["bad_evals"] >= stop_cfg.patience:
            state["stopped_early"] = True
            progress.note(
                f"early stop at step {state['step']}: no better {stop_cfg.metric} in {stop_cfg.patience} evaluations"
            )
