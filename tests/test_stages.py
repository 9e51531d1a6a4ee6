"""Transfer learning in stages: earlier stages train first, each from the one before, inside the run's folder."""

import json

import pytest
import yaml

from tests.conftest import tiny_config
from tests.test_continual import _second_task
from tests.test_faults import KILLED, cli, only_run
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError


def staged_config(tiny_model, fixtures, tmp_path, **stage):
    """Stage 1: SST-2 sentiment (0/1); the run itself: long/short sentences, other labels, so a fresh head."""
    cfg = tiny_config(tiny_model, _second_task(fixtures, tmp_path), tmp_path, name="target")
    cfg["train"] |= {"epochs": 1, "precision": "fp32"}
    cfg["eval"] |= {"calibrate": False}
    first = {"name": "sentiment", "data": {"train": str(fixtures / "sst2_train.tsv"), "max_rows": 200},
             "train": {"epochs": 2}}  # fmt: skip
    cfg["stages"] = [first | stage]
    return cfg


def test_a_run_trains_its_stages_first_and_starts_from_the_last(tiny_model, fixtures, tmp_path):
    run = api.train(staged_config(tiny_model, fixtures, tmp_path), quiet=True)
    ev = json.loads((run / "eval.json").read_text())
    (stage,) = ev["stages"]
    assert stage["name"] == "target-sentiment" and stage["labels"] == ["0", "1"] and "accuracy" in stage["tuned"]
    stage_dir = run / "stages" / "1-target-sentiment"
    assert json.loads((stage_dir / "eval.json").read_text())["tuned"]["accuracy"] == stage["tuned"]["accuracy"]
    start = json.loads((run / "start" / "config.json").read_text())  # the stage's encoder, its head dropped
    assert start["architectures"] == ["BertModel"]
    assert json.loads((run / "model" / "tunesmith.json").read_text())["labels"] == ["long", "short"]
    assert api.predict(run, ["a short one ."])[0]["label"] in ("long", "short")
    assert "target-sentiment" in (run / "report.html").read_text()  # the stages table


def test_the_same_labels_keep_the_head(tiny_model, fixtures, tmp_path):
    cfg = staged_config(tiny_model, fixtures, tmp_path)
    cfg["data"]["train"] = str(fixtures / "sst2_train.tsv")
    run = api.train(cfg, quiet=True)
    start = json.loads((run / "start" / "config.json").read_text())
    assert start["architectures"] == ["BertForSequenceClassification"]


def test_a_stage_with_an_unknown_key_names_the_stage(tiny_model, fixtures, tmp_path):
    with pytest.raises(TunesmithError, match=r"stages\[0\]\.epochs: unknown key"):
        config_from_dict(staged_config(tiny_model, fixtures, tmp_path, epochs=3))
    with pytest.raises(TunesmithError, match=r"stages\[0\] \(sentiment\)\.train\.lr"):
        config_from_dict(staged_config(tiny_model, fixtures, tmp_path, train={"lr": -1}))


def test_a_stage_whose_data_its_method_cannot_train_on_fails_before_anything_trains(tiny_model, fixtures, tmp_path):
    chat = {"name": "chat", "data": {"train": str(fixtures / "oasst_20.jsonl")}}
    cfg = staged_config(tiny_model, fixtures, tmp_path)
    cfg["stages"] = [cfg["stages"][0], chat]
    with pytest.raises(TunesmithError, match="chat") as err:
        api.train(cfg, quiet=True)
    assert "classify" in str(err.value)
    (row,) = api.list_runs(tmp_path / "runs")
    assert row["status"] == "failed"
    assert not list((tmp_path / "runs").rglob("checkpoints"))  # stage 1 never started


def test_a_run_killed_after_its_stage_resumes_without_training_the_stage_again(tiny_model, fixtures, tmp_path):
    path = tmp_path / "staged.yaml"
    path.write_text(yaml.safe_dump(staged_config(tiny_model, fixtures, tmp_path)))
    code, output = cli("train", str(path), "-q", kill_at="model@3")  # the stage's model, the start, then the run's
    assert code == KILLED, output
    _, run_dir = only_run(tmp_path)
    stage_eval = run_dir / "stages" / "1-target-sentiment" / "eval.json"
    assert stage_eval.is_file() and not (run_dir / "model").exists()
    before = stage_eval.stat().st_mtime_ns
    code, output = cli("train", "--resume", str(run_dir), "-q")
    assert code == 0, output
    assert stage_eval.stat().st_mtime_ns == before and (run_dir / "model" / "tunesmith.json").is_file()
    assert only_run(tmp_path)[0]["status"] == "done"
