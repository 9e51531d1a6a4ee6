"""Checkpoints written atomically (a temp folder renamed into place), so a kill never leaves half a checkpoint."""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tunesmith.errors import TunesmithError
from tunesmith.files import staged_dir


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_weights(model: torch.nn.Module, folder: Path, weights: dict | None = None) -> None:
    """The trainable weights alone (all of them for full fine-tuning, the adapter for LoRA; `weights`: already
    gathered from a sharded model), atomically."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with staged_dir(folder, replace=True) as tmp:
        save_file(trainable_state(model) if weights is None else _contiguous(weights), tmp / "weights.safetensors")


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in state.items()}


def save_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loop_state: dict,
    keep: int,
    weights: dict | None = None,
    optim: dict | None = None,
    strategy: str = "ddp",
) -> Path:
    """checkpoints/step-N/: weights, optimiser, RNG and the loop's position; older ones pruned to `keep`. Under an
    engine (FSDP, DeepSpeed) the weights and optimiser come gathered, the optimiser keyed by parameter name."""
    final = folder / f"step-{loop_state['step']}"
    folder.mkdir(parents=True, exist_ok=True)
    with staged_dir(final, replace=True, fault="checkpoint") as tmp:
        save_file(trainable_state(model) if weights is None else _contiguous(weights), tmp / "weights.safetensors")
        state = {"optimizer": optimizer.state_dict() if optim is None else optim, "strategy": strategy}
        torch.save(state | {"loop": loop_state, "rng": rng_state()}, tmp / "state.pt")
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    found = [p for p in folder.glob("step-*") if re.fullmatch(r"step-\d+", p.name) and (p / "state.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def restore_checkpoint(
    path: Path,
    saved: dict,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    strategy: str = "ddp",
    engine=None,
) -> dict:
    """Weights from path, optimiser and RNG from `saved` (its state.pt, already loaded); the loop state back.
    `engine`: DeepSpeed's, which holds the model and optimiser under strategy deepspeed."""
    was = saved.get("strategy") or ("fsdp" if saved.get("sharded") else "ddp")  # "sharded": before DeepSpeed
    if was != strategy:
        raise TunesmithError(f"{path}: written under train.distributed.strategy {was}; resume with that strategy")
    if strategy == "fsdp":
        from tunesmith.train.dist import load_full_state

        load_full_state(model, optimizer, load_file(path / "weights.safetensors"), saved["optimizer"])
    elif strategy == "deepspeed":
        from tunesmith.train import zero

        zero.load_full_state(engine, load_file(path / "weights.safetensors"), saved["optimizer"])
    else:
        load_trainable(model, load_file(path / "weights.safetensors"))
        optimizer.load_state_dict(saved["optimizer"])
    set_rng_state(saved["rng"])
    return saved["loop"]
