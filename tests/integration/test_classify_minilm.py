"""minilm-l6 (the real bundled encoder) on real SST-2 slices: it learns, it beats its frozen baseline, and a
run killed with SIGKILL and resumed ends with the same weights as one that was never interrupted."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tunesmith import api

pytestmark = pytest.mark.integration


def sst2_config(fixtures, tmp_path, **train) -> dict:
    return {
        "name": "sst2-slice",
        "model": "minilm-l6",
        "output_dir": str(tmp_path / "runs"),
        "data": {
            "train": str(fixtures / "sst2_train.tsv"),
            "test": str(fixtures / "sst2_dev.tsv"),
            "text": "sentence",
            "label": "label",
            "val_fraction": 0.1,
        },
        "train": {"epochs": 2, "batch_size": 32, "lr": 1e-4, "head_lr": 1e-3, "max_length": 64, "log_every": 5} | train,
        "eval": {"baseline": True, "calibrate": True},
    }


def test_fine_tuning_beats_the_frozen_baseline(fixtures, tmp_path):
    run_dir = api.train(sst2_config(fixtures, tmp_path), quiet=True)
    ev = json.loads((run_dir / "eval.json").read_text())
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r and "split" not in r]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, "training loss falls"
    assert ev["test_rows"] == 300
    assert ev["tuned"]["accuracy"] > ev["baseline"]["accuracy"], (ev["tuned"]["accuracy"], ev["baseline"]["accuracy"])
    assert ev["tuned"]["ece_calibrated"] <= ev["tuned"]["ece"] + 0.02


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "tunesmith.cli", *args]


def test_killed_run_resumes_to_the_same_weights(fixtures, tmp_path):
    base = sst2_config(fixtures, tmp_path, epochs=1, batch_size=16, checkpoint_every=4, precision="fp32")
    base["data"] |= {"max_rows": 400}
    base["eval"] = {"baseline": False, "calibrate": False}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(base))
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    # SIGKILL at the third checkpoint, with its files written and not yet renamed into place (faults.point).
    killed_run = subprocess.run(
        _cli("train", str(cfg), "-q"), env=env | {"TUNESMITH_KILL_AT": "checkpoint@3"}, capture_output=True, text=True
    )
    assert killed_run.returncode == -signal.SIGKILL, killed_run.stderr[-2000:]
    runs = tmp_path / "runs"
    killed = next(p for p in runs.iterdir() if p.is_dir())
    assert not (killed / "model").exists()
    assert sorted(p.name for p in (killed / "checkpoints").glob("step-*")) == ["step-4", "step-8"]

    done = subprocess.run(_cli("train", "--resume", str(killed), "-q"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    # The straight run in its own process too: same threads and allocator state as the two above.
    other = tmp_path / "straight.yaml"
    other.write_text(yaml.safe_dump(base | {"output_dir": str(tmp_path / "straight")}))
    plain = subprocess.run(_cli("train", str(other), "-q"), env=env, capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr[-2000:]
    straight = next(p for p in (tmp_path / "straight").iterdir() if p.is_dir())
    a = load_file(killed / "model" / "model.safetensors")
    b = load_file(straight / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["status"] for r in api.list_runs(runs) + api.list_runs(tmp_path / "straight")] == ["done", "done"]
