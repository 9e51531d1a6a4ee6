"""Several processes on one loop (gloo on this CPU): two processes with half the per-process batch make the same
run as one process with the whole batch, and a run whose process dies fails clearly."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import sft_config, tiny_config, train_losses
from tunesmith import api
from tunesmith.errors import TunesmithError
from tunesmith.models.layers import layer_classes
from tunesmith.runs import Registry

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two processes need two cores")


EXACT = {"group_by_length": False, "dropout": 0.0, "log_every": 1, "precision": "fp32"}  # the same rows, no noise


def _one_then_two(cfg: dict, batch: int, strategy: str = "ddp", *more: str):
    """The run in one process with the whole batch, then in two with half each: the same losses and weights."""
    one = api.train(cfg, quiet=True)
    half = [f"train.batch_size={batch // 2}", f"train.distributed.strategy={strategy}", *more]
    two = api.train(cfg, half, quiet=True, nproc=2)
    a, b = train_losses(one), train_losses(two)
    assert len(a) > 3 and [s for s, _ in a] == [s for s, _ in b]
    assert max(abs(x - y) for (_, x), (_, y) in zip(a, b)) < 1e-5
    wa, wb = (load_file(run / "model" / "model.safetensors") for run in (one, two))
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    return one, two


def test_two_processes_match_one_classifier(tiny_model, fixtures, tmp_path):
    cfg = tiny_config(tiny_model, fixtures / "sst2_train.tsv", tmp_path)
    cfg["train"] |= EXACT | {"epochs": 1, "batch_size": 16}
    one, two = _one_then_two(cfg, 16)
    setup = json.loads((two / "metrics.jsonl").read_text().splitlines()[0])
    assert setup["processes"] == 2
    assert Registry(two.parent).row(two)["status"] == "done"
    examples = [json.loads((run / "eval.json").read_text())["train"]["examples"] for run in (one, two)]
    assert examples[0] == examples[1]


def test_two_processes_match_one_lora_sft(tiny_lm, fixtures, tmp_path):
    train = EXACT | {"epochs": 2, "batch_size": 4}
    lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    cfg = sft_config(tiny_lm, tmp_path, fixtures / "oasst_20.jsonl", train=train, lora=lora)
    cfg["eval"] = {"baseline": False}
    _one_then_two(cfg, 4)


ZERO = "train.distributed.zero_stage"


@pytest.mark.parametrize("engine", [["fsdp"], ["deepspeed", f"{ZERO}=2"], ["deepspeed", f"{ZERO}=3"]])
def test_a_sharding_engine_matches_one_process(tiny_model, tiny_lm, fixtures, tmp_path, engine):
    """FSDP2 (full shard) and DeepSpeed's ZeRO-2 and ZeRO-3 over two processes (gloo on this CPU): full fine-tuning of
    the classifier, and LoRA SFT."""
    cfg = tiny_config(tiny_model, fixtures / "sst2_train.tsv", tmp_path / "bert")
    cfg["train"] |= EXACT | {"epochs": 1, "batch_size": 16}  # BERT's layers: found (its _no_split_modules)
    cfg["train"]["batch_tokens"] = 256  # a rank's longer rows make more parts: the other runs as many (weighted 0)
    _, two = _one_then_two(cfg, 16, *engine)
    assert json.loads((two / "eval.json").read_text())["tuned"]["accuracy"] > 0
    lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    sft = sft_config(
        tiny_lm, tmp_path / "llama", fixtures / "oasst_20.jsonl", train=EXACT | {"batch_size": 4}, lora=lora
    )
    sft["train"] |= {"epochs": 2}
    sft["eval"] = {"baseline": False}
    _one_then_two(sft, 4, *engine)


def test_deepspeed_missing_is_a_clear_error(tiny_model, fixtures, tmp_path, monkeypatch):
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else found(name, *a))
    cfg = tiny_config(tiny_model, fixtures / "sst2_train.tsv", tmp_path)
    cfg["train"] |= {"distributed": {"strategy": "deepspeed"}}
    with pytest.raises(TunesmithError, match="needs the deepspeed package, which is not installed"):
        api.train(cfg, quiet=True)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").glob("*/model"))


def test_fsdp_needs_a_layer_class(tiny_model, fixtures, tmp_path):
    with pytest.raises(TunesmithError, match="Sequential names no transformer layer class"):
        layer_classes(torch.nn.Sequential(torch.nn.Linear(2, 2)), None)
    cfg = tiny_config(tiny_model, fixtures / "sst2_train.tsv", tmp_path)
    cfg["train"] |= {"distributed": {"strategy": "fsdp", "fsdp_layers": ["NoSuchLayer"]}}
    with pytest.raises(TunesmithError, match="has no module of class NoSuchLayer"):
        api.train(cfg, quiet=True)


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


@pytest.mark.parametrize(
    "distributed", [{"strategy": "ddp"}, {"strategy": "fsdp"}, {"strategy": "deepspeed", "zero_stage": 3}]
)
def test_a_two_process_run_resumes_in_one(tiny_model, fixtures, tmp_path, distributed):
    cfg = tiny_config(tiny_model, fixtures / "sst2_train.tsv", tmp_path)
    cfg["train"] |= {"epochs": 2, "batch_size": 8, "checkpoint_every": 5, "distributed": distributed}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = os.environ | {"TUNESMITH_KILL_AT": "step@12"}  # both processes die after their 12th step
    cmd = [sys.executable, "-m", "tunesmith", "train", str(path), "--nproc", "2", "--quiet"]
    assert subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300).returncode != 0
    (row,) = Registry(tmp_path / "runs").list()
    assert row["status"] == "killed"  # rank 0 died without a word: resumable
    run_dir = api.train(None, resume=row["path"], quiet=True)
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    setups = [r for r in steps if r.get("split") == "setup"]
    assert [r["processes"] for r in setups] == [2, 1] and setups[1]["resumed"]
    assert Registry(tmp_path / "runs").row(run_dir)["status"] == "done"
