"""tunesmith tune: Optuna on the validation split, trials in the registry, the test split read once at the end."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import tiny_config
from tunesmith import api
from tunesmith.config import load_config
from tunesmith.errors import TunesmithError
from tunesmith.runs import Registry

SPACE = {
    "train.lr": {"low": 1e-4, "high": 3e-3, "log": True},
    "train.batch_size": {"choices": [8, 16]},
    "train.epochs": {"low": 1, "high": 3},
}


def _config(tiny_model, fixtures, tmp_path, **search):
    cfg = tiny_config(tiny_model, fixtures / "sst2_train.tsv", tmp_path)
    cfg["train"] |= {"eval_every": 5}
    cfg["search"] = {"space": SPACE, "startup_trials": 2} | search
    return cfg


def test_a_study_finds_a_config_and_reads_test_once(tiny_model, fixtures, tmp_path):
    cfg = _config(tiny_model, fixtures, tmp_path)
    folder = api.tune(cfg, 5, study="s1")
    result = json.loads((folder / "tune.json").read_text())
    assert len(result["trials"]) == 5 and result["metric"] == "macro_f1"
    finished = [t for t in result["trials"] if t["state"] == "complete"]
    assert result["best"]["value"] == max(t["value"] for t in finished)
    rows = [r for r in Registry(tmp_path / "runs").list() if r["study"] == "s1"]
    assert len(rows) == 5 and {r["status"] for r in rows} <= {"done", "pruned"}
    assert sum(r["status"] == "pruned" for r in rows) == result["pruned"]
    for t in result["trials"]:  # a trial never saw the test split: it was set aside unread
        if t["run"]:
            ev = (
                json.loads((tmp_path / "runs" / t["run"] / "eval.json").read_text()) if t["state"] == "complete" else {}
            )
            assert "tuned" not in ev
    best = load_config(folder / "best.yaml")
    assert best.search is None
    assert best.train.lr == pytest.approx(result["best"]["params"]["train.lr"])
    assert result["best"]["test"]["how"] == "the best trial's model"
    assert 0 <= result["best"]["test"]["tuned"]["accuracy"] <= 1
    assert result["default"]["tuned"]["accuracy"] >= 0
    assert "Optimisation history" in (folder / "report.html").read_text()


def test_a_killed_study_resumes(tiny_model, fixtures, tmp_path):
    cfg = _config(tiny_model, fixtures, tmp_path, pruner="none")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = os.environ | {"TUNESMITH_KILL_AT": "step@25"}  # the second trial dies mid-run
    cmd = [sys.executable, "-m", "tunesmith", "tune", str(path), "--trials", "3", "--study", "k", "--no-default"]
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode != 0
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    result = json.loads((tmp_path / "runs" / "studies" / "k" / "tune.json").read_text())
    states = [t["state"] for t in result["trials"]]
    assert states.count("complete") == 3 and "fail" in states  # the killed trial failed, and was run again


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"train.lrr": {"low": 1e-5, "high": 1e-3}}, "search.space.train.lrr"),
        ({"train.lr": {"low": 1e-3, "high": 1e-5}}, "the range is empty"),
        ({"train.batch_size": {"choices": ["big", 8]}}, "search.space.train.batch_size = 'big'"),
        ({"train.schedule": {"choices": []}}, "choices is empty"),
    ],
)
def test_a_bad_search_is_refused_before_any_trial(tiny_model, fixtures, tmp_path, space, message):
    cfg = _config(tiny_model, fixtures, tmp_path)
    cfg["search"]["space"] = space
    with pytest.raises(TunesmithError, match=message.replace(".", r"\.").replace("(", r"\(")):
        api.tune(cfg, 3)
    assert not Registry(tmp_path / "runs").list()


def test_parallel_above_the_cores_is_refused(tiny_model, fixtures, tmp_path):
    with pytest.raises(TunesmithError, match="--parallel 999"):
        api.tune(_config(tiny_model, fixtures, tmp_path), 2, parallel=999)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two trials at once need two cores")
def test_parallel_trials_share_one_study(tiny_model, fixtures, tmp_path):
    folder = api.tune(
        _config(tiny_model, fixtures, tmp_path, pruner="none"), 4, parallel=2, study="p", compare_default=False
    )
    result = json.loads((folder / "tune.json").read_text())
    assert [t["number"] for t in result["trials"]] == [0, 1, 2, 3]
    assert all(t["state"] == "complete" for t in result["trials"])
    runs = [r for r in Registry(tmp_path / "runs").list() if r["study"] == "p"]
    assert len(runs) == 4
    share = len(os.sched_getaffinity(0)) // 2  # each trial's process takes its share of the cores
    assert {load_config(f"{r['path']}/config.yaml").train.threads for r in runs} == {share}
