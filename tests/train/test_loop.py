"""The loop on a tiny model: numerics (accumulation), early stopping, checkpoints and exact resume."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tunesmith.config import EarlyStopping, TrainConfig
from tunesmith.train.batches import split_by_tokens
from tunesmith.train.checkpoint import list_checkpoints
from tunesmith.train.loop import Task, fit
from tunesmith.train.memory import _glibc


def toy_task(seed: int = 0, batch: int = 8, n: int = 64, dropout: float = 0.0) -> Task:
    """A small MLP on a fixed synthetic problem; batches are a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed(123)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.Dropout(dropout), torch.nn.ReLU(), torch.nn.Linear(16, 2)
    )

    def batches(epoch):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        return [
            {
                "x": x[order[i : i + batch]],
                "y": y[order[i : i + batch]],
                "n": len(order[i : i + batch]),
                "examples": len(order[i : i + batch]),
            }
            for i in range(0, n, batch)
        ]

    def loss(m, b):
        return torch.nn.functional.cross_entropy(m(b["x"]), b["y"], reduction="sum")

    def evaluate(m):
        pred = m(x).argmax(-1)
        return {
            "loss": torch.nn.functional.cross_entropy(m(x), y).item(),
            "accuracy": (pred == y).float().mean().item(),
        }

    return Task(model=model, batches=batches, loss=loss, evaluate=evaluate)


def cfg(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=8, lr=0.05, warmup=0, precision="fp32", log_every=1, checkpoint_every=1000)
    return TrainConfig(**(base | kw))


def weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_loss_falls_and_metrics_are_logged(tmp_path):
    task = toy_task()
    result = fit(task, cfg(), tmp_path, quiet=True)
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r and "split" not in r]
    assert train[-1]["loss"] < train[0]["loss"] and result.steps == 24
    # cumulative examples and training seconds: any window of steps gives its own rate
    assert all(a["examples"] < b["examples"] and a["train_s"] < b["train_s"] for a, b in zip(train, train[1:]))
    assert train[-1]["examples"] == result.examples
    assert [r["step"] for r in rows if r.get("split") == "val"] == [8, 16, 24]
    assert result.last_eval["accuracy"] > 0.8 and (tmp_path / "tb").is_dir()


def test_accumulation_normalises_over_the_whole_group(tmp_path):
    """Batches of 8 with 2 accumulation steps == batches of 16: the same update, up to float rounding."""
    a = toy_task(batch=16)
    fit(a, cfg(epochs=1, batch_size=16, max_grad_norm=None), tmp_path / "a", quiet=True)
    b = toy_task(batch=8)

    def paired(epoch):  # the same 16-example groups as task a, split in halves
        big = a.batches(epoch)
        return [
            {"x": t["x"][h], "y": t["y"][h], "n": 8, "examples": 8} for t in big for h in (slice(0, 8), slice(8, 16))
        ]

    b.batches = paired
    fit(b, cfg(epochs=1, batch_size=8, grad_accum=2, max_grad_norm=None), tmp_path / "b", quiet=True)
    assert torch.allclose(weights(a.model), weights(b.model), atol=1e-6)


def test_a_batch_run_in_parts_makes_the_same_update(tmp_path):
    """train.batch_tokens: a task that can split its batches runs each in parts of at most that many tokens (here
    one token a row, so 3 rows a part); the gradients add up to the whole batch's update."""

    def plan_task(split: bool) -> Task:
        task = toy_task(batch=8)
        rows = task.batches(0)
        x, y = torch.cat([b["x"] for b in rows]), torch.cat([b["y"] for b in rows])
        lengths = np.ones(len(x), dtype=int)
        task.batches = lambda epoch: [np.arange(i, i + 8) for i in range(0, len(x), 8)]
        task.collate = lambda idx: {"x": x[idx], "y": y[idx], "n": len(idx), "examples": len(idx)}
        if split:
            task.split = lambda idx, budget: split_by_tokens(idx, lengths, budget)
        return task

    whole, parts = plan_task(False), plan_task(True)
    fit(whole, cfg(epochs=1, batch_tokens=3), tmp_path / "whole", quiet=True)
    fit(parts, cfg(epochs=1, batch_tokens=3), tmp_path / "parts", quiet=True)
    assert torch.allclose(weights(whole.model), weights(parts.model), atol=1e-6)
    assert not torch.allclose(weights(whole.model), weights(toy_task(batch=8).model))  # it trained


def test_early_stopping_restores_the_best_weights(tmp_path):
    task = toy_task()
    result = fit(
        task,
        cfg(epochs=30, lr=0.5, eval_every=1, early_stopping=EarlyStopping(metric="loss", patience=3)),
        tmp_path,
        quiet=True,
    )
    assert result.stopped_early and result.steps < 240
    best_step = result.best["step"]
    assert result.steps == best_step + 3
    assert task.evaluate(task.model)["loss"] == pytest.approx(result.best["loss"], rel=1e-5)


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    fit(toy_task(), cfg(checkpoint_every=4, keep_checkpoints=2), tmp_path, quiet=True)
    (tmp_path / "checkpoints" / ".step-99.tmp").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-16", "step-20"]


def test_resume_ends_with_the_same_weights(tmp_path):
    """A crash in step 11 (the checkpoint of step 8 survives), then resume: identical to an uninterrupted run."""
    full = toy_task(dropout=0.2)
    fit(full, cfg(checkpoint_every=4), tmp_path / "full", quiet=True)

    cut = toy_task(dropout=0.2)
    calls = {"n": 0}
    plain_loss = cut.loss

    def crashing_loss(m, b):
        calls["n"] += 1
        if calls["n"] == 11:
            raise RuntimeError("killed")
        return plain_loss(m, b)

    cut.loss = crashing_loss
    with pytest.raises(RuntimeError, match="killed"):
        fit(cut, cfg(checkpoint_every=4), tmp_path / "cut", quiet=True)
    assert list_checkpoints(tmp_path / "cut" / "checkpoints")[-1].name == "step-8"

    resumed = toy_task(seed=0, dropout=0.2)
    torch.manual_seed(999)  # the resumed process starts with other RNG state; the checkpoint must restore it
    result = fit(resumed, cfg(checkpoint_every=4), tmp_path / "cut", resume=True, quiet=True)
    assert result.steps == 24
    assert torch.equal(weights(full.model), weights(resumed.model))
    rows = [json.loads(ln) for ln in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r and "split" not in r]
    assert steps == list(range(1, 25)), "steps logged after the checkpoint are dropped, then logged once more"


def test_loss_metrics_are_averaged_like_the_loss_and_logged(tmp_path):
    """A loss may return (loss, metrics), each summed over its batch: the loop divides by the same n."""
    task = toy_task()
    plain = task.loss

    def with_metrics(m, b):
        correct = (m(b["x"]).argmax(-1) == b["y"]).sum()
        return plain(m, b), {"hits": correct, "ones": float(b["n"])}

    task.loss = with_metrics
    fit(task, cfg(epochs=1, log_every=2), tmp_path, quiet=True)
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r and "split" not in r]
    assert [r["ones"] for r in train] == pytest.approx([1.0] * 4) and all(0 <= r["hits"] <= 1 for r in train)
    assert train[-1]["hits"] > train[0]["hits"] - 0.25


def test_setup_runs_once_on_the_device_before_a_checkpoint_is_restored(tmp_path):
    seen = []
    task = toy_task()
    task.setup = lambda device: seen.append((device.type, weights(task.model).clone()))
    fit(task, cfg(checkpoint_every=4), tmp_path, quiet=True)
    resumed = toy_task()
    resumed.setup = lambda device: seen.append((device.type, weights(resumed.model).clone()))
    fit(resumed, cfg(epochs=4, checkpoint_every=4), tmp_path, resume=True, quiet=True)
    assert [d for d, _ in seen] == ["cpu", "cpu"]
    assert torch.equal(seen[0][1], seen[1][1]), "setup sees the untrained weights, also when resuming"


def online_task(seed: int = 0) -> Task:
    """Batches produced during training: each step's targets are the model's own sampled predictions (as RL
    samples completions from the policy); the plan holds only which rows to use."""
    task = toy_task(seed=seed)
    g = torch.Generator().manual_seed(123)
    x = torch.randn(64, 6, generator=g)

    def batches(epoch):
        order = torch.randperm(64, generator=torch.Generator().manual_seed(seed + epoch))
        return [order[i : i + 8] for i in range(0, 64, 8)]

    def collate(rows):
        probs = torch.softmax(task.model(x[rows]), -1)  # sampling from the model being trained
        return {"x": x[rows], "y": torch.multinomial(probs, 1)[:, 0], "n": len(rows), "examples": len(rows)}

    task.batches, task.collate = batches, collate
    return task


def test_batches_sampled_from_the_model_being_trained_resume_exactly(tmp_path):
    """A run stopped after step 10 (its last checkpoint: step 8) and resumed ends as one that never stopped
    (a constant LR, so that the shorter run's schedule is the same)."""
    full = online_task()
    fit(full, cfg(checkpoint_every=4, schedule="constant"), tmp_path / "full", quiet=True)
    cut = online_task()
    fit(cut, cfg(checkpoint_every=4, schedule="constant", max_steps=10), tmp_path / "cut", quiet=True)
    resumed = online_task()
    torch.manual_seed(999)
    fit(resumed, cfg(checkpoint_every=4, schedule="constant"), tmp_path / "cut", resume=True, quiet=True)
    assert torch.equal(weights(full.model), weights(resumed.model))
    assert not torch.equal(weights(full.model), weights(online_task().model))


@pytest.mark.skipif(_glibc() is None, reason="glibc's mallopt is what is tested")
def test_big_blocks_get_their_own_mapping():
    """Once glibc's threshold has risen (here set to 32 MiB, its dynamic maximum), a 6 MiB block is carved from its
    heap, where freed memory stays resident; after map_big_blocks it is mapped on its own, and unmapped when freed.
    mallinfo2's hblkhd counts the bytes in such mappings. A fresh process each, since mallopt is process-wide."""
    script = """
import ctypes, sys, torch
from tunesmith.train.memory import M_MMAP_THRESHOLD, map_big_blocks
class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks")
        + ("fordblks", "keepcost")
    ]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
if sys.argv[1] == "mapped":
    map_big_blocks()
before = libc.mallinfo2().hblkhd
block = torch.ones(6 << 18)
print((libc.mallinfo2().hblkhd - before) >> 20)
"""
    mapped_mb = {
        arm: int(subprocess.run([sys.executable, "-c", script, arm], capture_output=True, text=True, check=True).stdout)
        for arm in ("heap", "mapped")
    }
    assert mapped_mb == {"heap": 0, "mapped": 6}, mapped_mb
