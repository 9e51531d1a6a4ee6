"""Checkpoints written atomically (a temp folder renamed into place), so a kill never leaves half a checkpoint."""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

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


def save_weights(model: torch.nn.Module, folder: Path) -> None:
    """The trainable weights alone (all of them for full fine-tuning, the adapter for LoRA), atomically."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with staged_dir(folder, replace=True) as tmp:
        save_file(trainable_state(model), tmp / "weights.safetensors")


def save_checkpoint(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loop_state: dict, keep: int
) -> Path:
    """checkpoints/step-N/: weights, optimiser, RNG and the loop's position; older ones pruned to `keep`."""
    final = folder / f"step-{loop_state['step']}"
    folder.mkdir(parents=True, exist_ok=True)
    with staged_dir(final, replace=True, fault="checkpoint") as tmp:
        save_file(trainable_state(model), tmp / "weights.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "loop": loop_state, "rng": rng_state()}, tmp / "state.pt")
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    found = [p for p in folder.glob("step-*") if re.fullmatch(r"step-\d+", p.name) and (p / "state.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def restore_checkpoint(path: Path, saved: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Weights from path, optimiser and RNG from `saved` (its state.pt, already loaded); the loop state back."""
    load_trainable(model, load_file(path / "weights.safetensors"))
    optimizer.load_state_dict(saved["optimizer"])
    set_rng_state(saved["rng"])
    return saved["loop"]
