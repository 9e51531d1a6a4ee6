"""The one training loop. Every method hands it a Task (model, batches, loss, evaluate); the numerics that
must never drift between methods live here once: loss normalisation over accumulation, example counting,
the LR schedule, clipping, precision, early stopping, checkpoints and resume.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith import faults
from tunesmith.config import TrainConfig
from tunesmith.errors import TunesmithError
from tunesmith.train import dist, frozen, zero
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
from tunesmith.train.precision import autocast, compute_dtype, pick_device, pick_precision
from tunesmith.train.progress import Progress
from tunesmith.train.state import FitResult, LoopState

Batch = dict[str, torch.Tensor | int]
# Called with (step, validation metrics) after every validation, e.g. by a hyperparameter search that stops (prunes)
# a trial that trails others by raising from it. Set around a call of api.train; unset, nothing is called.
ON_EVAL: ContextVar[Callable[[int, dict[str, float]], None] | None] = ContextVar("on_eval", default=None)
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
    samples_from_model: bool = False  # collate generates with the model (RL): it must be the model that trains


def fit(task: Task, cfg: TrainConfig, run_dir: Path, *, resume: bool = False, quiet: bool = False) -> FitResult:
    run_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    strategy = cfg.distributed.strategy
    sharded = strategy != "ddp"  # an engine (FSDP, DeepSpeed's ZeRO) holds shards and reduces the gradients itself
    world = dist.start(device.type, cfg.distributed.timeout_s, sharded)  # one of several processes: train/dist.py
    device = dist.device_for(device, world)
    ckpt_dir = run_dir / "checkpoints"
    found = list_checkpoints(ckpt_dir) if resume else []
    if resume and not found:
        raise TunesmithError(f"nothing to resume: {ckpt_dir} holds no complete checkpoint")
    saved = torch.load(found[-1] / "state.pt", weights_only=False) if found else None
    if saved:  # keep the original run's choice: a timing probe may answer differently this time
        precision, reason = saved["loop"]["precision"], "as before resuming"
    else:
        precision, reason = pick_precision(cfg.precision, device)
    precision, reason = dist.broadcast((precision, reason), world)  # a timing probe could answer per rank
    if sharded and (precision == "fp16" or task.samples_from_model):
        why = "fp16 (use bf16 or fp32)" if precision == "fp16" else "a method that samples from the model it trains"
        raise TunesmithError(f"train.distributed.strategy {strategy} does not run {why}; or use strategy: ddp")
    threads = cfg.threads or (dist.threads_for(world) if world.size > 1 else None)
    if threads:
        torch.set_num_threads(threads)
    map_big_blocks()
    release_freed_memory()
    model = task.model.to(device)
    if task.setup:
        task.setup(device)
    dist.same_start(model, world)
    net = model  # what trains
    if strategy == "fsdp":
        net = dist.shard(model, world, device, cfg.distributed.fsdp_layers)
    elif strategy == "deepspeed":
        net = dist.training_copy(model, device)
    ranks_averaged = world.size if sharded else 1  # the engines average gradients over the ranks; the loop sums them
    trainable = [p for p in net.parameters() if p.requires_grad]
    optimizer = build_optimizer(
        net,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        head_lr=cfg.head_lr,
        head_names=task.head_names,
        device=device,
    )
    engine = None  # DeepSpeed's, which then steps the optimiser
    if strategy == "deepspeed":
        engine = zero.engine(net, optimizer, cfg.distributed.zero_stage, cfg.max_grad_norm)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    first_plan = task.batches(0)
    micro_per_epoch = len(first_plan)
    if micro_per_epoch == 0:
        raise TunesmithError("no training batches: the training split is empty")
    per_step = cfg.grad_accum * world.size  # micro-batches of the plan that one optimiser step takes, all ranks
    steps_per_epoch = math.ceil(micro_per_epoch / per_step)
    total = max(1, math.floor(cfg.epochs * steps_per_epoch))
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    warmup = warmup_steps(cfg.warmup, total)
    eval_every = cfg.eval_every or steps_per_epoch
    budget = token_budget(cfg.batch_tokens, device.type) if task.split else None

    state = LoopState(precision=precision)
    if saved:
        state = LoopState(**restore_checkpoint(found[-1], saved, net, optimizer, strategy, engine))
    log = MetricsLog(run_dir, state.step if resume else None) if world.main else None
    _write(
        log,
        {
            "step": state.step,
            "split": "setup",
            "precision": precision,
            "precision_reason": reason,
            "device": str(device),
            "total_steps": total,
            "warmup_steps": warmup,
            "resumed": resume,
            "processes": world.size,
        },
    )
    progress = Progress(total, quiet=quiet or not world.main, start=state.step)
    net.train()
    running, running_n, running_metrics = 0.0, 0, defaultdict(float)
    # LoRA's frozen weights in bf16/fp16 (train/frozen.py), just before the try whose finally puts them back
    held = frozen.held(precision, strategy, task.samples_from_model)
    restore = frozen.hold(model, compute_dtype(precision), run_dir if world.main else None) if held else None
    clock = time.perf_counter()  # train_seconds: wall time of the loop (batching and checkpoints included)
    try:
        while state.step < total and not state.stopped_early:
            epoch = state.epoch
            batches = first_plan if epoch == 0 else task.batches(epoch)
            while state.epoch == epoch and state.step < total and not state.stopped_early:
                items = batches[state.batch : state.batch + per_step]
                mine = items[world.rank * cfg.grad_accum : (world.rank + 1) * cfg.grad_accum]
                # a rank past the end of the epoch's plan runs the first item weighted 0: the collectives still match
                weight = 1.0 if mine else 0.0
                parts = (
                    [p for item in mine or items[:1] for p in task.split(item, budget)] if budget else mine or items[:1]
                )
                weights = [weight] * len(parts)
                if sharded and world.size > 1:  # an engine's collectives run in each forward and backward: as many
                    extra = dist.most(len(parts), world) - len(parts)  # on every rank (the extra ones weighted 0)
                    parts, weights = parts + parts[:1] * extra, weights + [0.0] * extra
                with torch.no_grad():
                    group = [task.collate(part) for part in parts]
                lr = lr_at(state.step, warmup=warmup, total=total, peak=cfg.lr, schedule=cfg.schedule)
                for g in optimizer.param_groups:
                    g["lr"] = lr * g["base_lr"] / cfg.lr
                (denom,) = dist.sum_floats([sum(w * int(b["n"]) for w, b in zip(weights, group))], world)
                step_loss, step_metrics = 0.0, defaultdict(float)
                for w, batch in zip(weights, group):
                    with autocast(device, precision):
                        # through DeepSpeed's engine, whose forward marks a new micro-batch (ZeRO-3 would else
                        # overwrite the gradients of a step's earlier parts instead of adding to them)
                        loss, metrics = _split(task.loss(engine or net, _move(batch, device)))
                        loss = loss * (w / denom)
                    scaled = scaler.scale(loss) if scaler else loss * ranks_averaged
                    engine.backward(scaled) if engine else scaled.backward()
                    step_loss += loss.item()
                    for key, value in metrics.items():
                        step_metrics[key] += w * float(value) / denom
                if not sharded:  # an engine has reduce-scattered them in the backward
                    synced = time.perf_counter()
                    dist.sum_gradients(trainable, world)
                    state.sync_seconds += time.perf_counter() - synced
                counts = [
                    sum(w * int(b.get(k, 0)) for w, b in zip(weights, group))
                    for k in ("examples", "tokens", "target_tokens")
                ]
                keys = sorted(step_metrics)
                step_loss, *summed = dist.sum_floats([step_loss, *counts, *(step_metrics[k] for k in keys)], world)
                examples, tokens, target_tokens = (int(round(c)) for c in summed[:3])
                for key, value in zip(keys, summed[3:]):
                    running_metrics[key] += value
                grad_norm = zero.step(engine) if engine else _step(optimizer, scaler, trainable, cfg.max_grad_norm)
                faults.point("step")
                state.examples += examples
                state.tokens += tokens
                state.target_tokens += target_tokens
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
                    # cumulative, so that any window of steps gives its own rate (without the first steps' warm-up)
                    row |= {"examples": state.examples, "train_s": state.train_seconds}
                    if state.tokens:
                        row |= {"tokens": state.tokens, "target_tokens": state.target_tokens}
                    if world.size > 1:  # cumulative: the share of training spent summing gradients across processes
                        row["sync_s"] = state.sync_seconds
                    _write(log, row)
                    running, running_n, running_metrics = 0.0, 0, defaultdict(float)
                if task.evaluate and (step % eval_every == 0 or step == total):
                    _evaluate(task, net, state, cfg, log, progress, ckpt_dir, world)
                    state.eval_seconds += time.perf_counter() - clock  # validation is not training time
                    clock = time.perf_counter()
                if step % cfg.checkpoint_every == 0 and step < total:
                    _checkpoint(net, engine or optimizer, state, cfg, ckpt_dir, world, strategy)
        if strategy == "fsdp":
            dist.unshard_into(model, net, world, device)
        elif strategy == "deepspeed":
            zero.gather_into(model, net, world.main, device)
    finally:
        if restore:
            restore()
        progress.close()
        if log:
            log.close()
        if engine:
            zero.finish(engine)
    dist.finish(world)
    if not world.main:
        raise dist.WorkerDone
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
        processes=world.size,
        sync_seconds=state.sync_seconds,
    )


def _split(out: Loss) -> tuple[torch.Tensor, dict]:
    """A loss alone, or a loss with its metrics."""
    return out if isinstance(out, tuple) else (out, {})


def _step(optimizer, scaler, params: list[torch.nn.Parameter], max_norm: float | None) -> float | None:
    """Clip (fp16: after unscaling), step and zero the gradients; the norm clipped by."""
    if scaler:
        scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if max_norm else None
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if norm is None:
        return None
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a sharded norm


def _checkpoint(net, optimizer, state: LoopState, cfg: TrainConfig, ckpt_dir: Path, world: dist.World, strategy: str):
    """Rank 0 writes it; under an engine every rank first takes part in gathering the whole weights and optimiser
    (`optimizer`: DeepSpeed's engine under strategy deepspeed)."""
    gathered = (None, None)
    if strategy == "fsdp":
        gathered = (dist.full_state(net, world), dist.full_optimizer_state(net, optimizer))
    elif strategy == "deepspeed":
        gathered = (zero.full_weights(net), zero.full_optimizer_state(optimizer, state.step))
    if world.main:
        save_checkpoint(ckpt_dir, net, optimizer, state.to_dict(), cfg.keep_checkpoints, *gathered, strategy)
        release_freed_memory()  # the serialisation buffers (weights + optimiser) were just freed


def _write(log: MetricsLog | None, row: dict) -> None:
    if log is not None:  # rank 0's
        log.write(row)


def _move(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _evaluate(
    task: Task,
    model: torch.nn.Module,
    state: LoopState,
    cfg: TrainConfig,
    log: MetricsLog | None,
    progress: Progress,
    ckpt_dir: Path,
    world: dist.World,
) -> None:
    """Rank 0 validates (under FSDP every rank, since each forward gathers from all); every rank takes rank 0's
    metrics, so that all stop early at the same step."""
    sharded = dist.is_sharded(model)  # FSDP, ZeRO-3
    metrics = None
    if world.main or sharded:
        model.eval()
        with torch.no_grad():
            metrics = task.evaluate(model)
        model.train()
    metrics = dist.broadcast(metrics, world)
    state.last_eval = metrics
    _write(log, {"step": state.step, "split": "val", **metrics})
    if ON_EVAL.get() is not None:
        ON_EVAL.get()(state.step, metrics)
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
        weights = dist.full_state(model, world) if sharded else None  # ZeRO-2: whole on every rank
        if world.main:
            save_weights(model, ckpt_dir / "best", weights)
    else:
        state.bad_evals += 1
        if state.bad_evals >= stop.patience:
            state.stopped_early = True
            progress.note(f"early stop at step {state.step}: no better {metric} in {stop.patience} evaluations")
