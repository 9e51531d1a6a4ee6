"""minilm-l6 (the real bundled encoder) on real SST-2 slices: it learns, it beats its frozen baseline, and a
run killed with SIGKILL and resumed ends with the same weights as one that was never interrupted."""

import json
import os
import signal
import subprocess
import sys
import time

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

    proc = subprocess.Popen(_cli("train", str(cfg), "-q"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    runs = tmp_path / "runs"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if list(runs.glob("*/checkpoints/step-8/state.pt")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = next(p for p in runs.iterdir() if p.is_dir())
    assert not (killed / "model").exists()

    done = subprocess.run(_cli("train", "--resume", str(killed), "-q"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    straight = api.train(base, quiet=True)
    a = load_file(killed / "model" / "model.safetensors")
    b = load_file(straight / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["status"] for r in api.list_runs(runs)] == ["done", "done"]
