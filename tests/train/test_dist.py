"""Several processes on one loop (gloo on this CPU): two processes with half the per-process batch make the same
run as one process with the whole batch, and a run whose process dies fails clearly."""

import json
import os
import subprocess
import sys
import time

import pytest
import yaml
from safetensors.torch import load_file

from tests.conftest import sft_config, tiny_config
from tunesmith import api
from tunesmith.errors import TunesmithError
from tunesmith.runs import Registry

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two processes need two cores")


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r and r.get("split") is None]


def _close_runs(one, two):
    weights = "model/model.safetensors"
    a, b = _losses(one), _losses(two)
    assert len(a) > 3 and [s for s, _ in a] == [s for s, _ in b]
    assert max(abs(x - y) for (_, x), (_, y) in zip(a, b)) < 1e-5
    wa, wb = load_file(one / weights), load_file(two / weights)
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


def test_two_processes_match_one_classifier(tiny_model, fixtures, tmp_path):
    train = {
        "epochs": 1,
        "batch_size": 16,
        "group_by_length": False,
        "dropout": 0.0,
        "log_every": 1,
        "precision": "fp32",
    }
    cfg = tiny_config(tiny_model, fixtures / "sst2_train.tsv", tmp_path)
    cfg["train"] |= train
    one = api.train(cfg, quiet=True)
    two = api.train(cfg, ["train.batch_size=8"], quiet=True, nproc=2)
    assert one != two and (two / "eval.json").is_file()
    _close_runs(one, two)
    setup = json.loads((two / "metrics.jsonl").read_text().splitlines()[0])
    assert setup["processes"] == 2
    assert Registry(two.parent).row(two)["status"] == "done"
    assert (
        json.loads((two / "eval.json").read_text())["train"]["examples"]
        == json.loads((one / "eval.json").read_text())["train"]["examples"]
    )


def test_two_processes_match_one_lora_sft(tiny_lm, fixtures, tmp_path):
    train = {
        "epochs": 2,
        "batch_size": 4,
        "group_by_length": False,
        "dropout": 0.0,
        "log_every": 1,
        "precision": "fp32",
    }
    cfg = sft_config(
        tiny_lm, tmp_path, fixtures / "oasst_20.jsonl", train=train, lora={"r": 4, "alpha": 8, "dropout": 0.0}
    )
    cfg["eval"] = {"baseline": False}
    one = api.train(cfg, quiet=True)
    two = api.train(cfg, ["train.batch_size=2"], quiet=True, nproc=2)
    _close_runs(one, two)


def test_a_killed_process_fails_the_run(tiny_model, fixtures, tmp_path):
    cfg = tiny_config(tiny_model, fixtures / "sst2_train.tsv", tmp_path)
    cfg["train"] |= {"epochs": 3, "batch_size": 8}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = os.environ | {"TUNESMITH_KILL_AT": "step@3", "TUNESMITH_KILL_RANK": "1"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "tunesmith", "train", str(path), "--nproc", "2", "--quiet"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0
    assert time.monotonic() - started < 240
    rows = Registry(tmp_path / "runs").list()
    assert len(rows) == 1 and rows[0]["status"] == "failed", rows
    assert "Traceback" not in done.stderr.split("error:")[-1]
    assert not (tmp_path / "runs" / rows[0]["name"] / "model").exists()


def test_nproc_above_the_cores_is_refused(tiny_model, fixtures, tmp_path):
    cfg = tiny_config(tiny_model, fixtures / "sst2_train.tsv", tmp_path)
    with pytest.raises(TunesmithError, match="--nproc 999: this machine has"):
        api.train(cfg, nproc=999)
