"""method: distill: a student taught by a finished classifier run, on labelled and unlabeled rows."""

import csv
import json

import pytest
from transformers import AutoConfig

from tests.conftest import tiny_config
from tunesmith import api
from tunesmith.errors import TunesmithError


@pytest.fixture(scope="module")
def teacher(tiny_model, fixtures, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("teacher")
    return api.train(tiny_config(tiny_model, fixtures / "sst2_train.tsv", tmp), quiet=True)


def _student(tiny_model, fixtures, tmp_path, teacher, **distill):
    cfg = tiny_config(tiny_model, fixtures / "sst2_train.tsv", tmp_path)
    cfg |= {"name": "student", "method": "distill", "distill": {"teacher": str(teacher)} | distill}
    return cfg


def test_a_student_of_half_the_layers_learns_from_the_teacher(tiny_model, fixtures, tmp_path, teacher):
    unlabeled = tmp_path / "unlabeled.csv"
    texts = [line.split("\t")[0] for line in (fixtures / "sst2_dev.tsv").read_text().splitlines()[1:101]]
    with unlabeled.open("w", newline="") as f:
        csv.writer(f).writerows([["sentence"], *([t] for t in texts)])
    cfg = _student(tiny_model, fixtures, tmp_path, teacher, layers=1, alpha=0.7)
    cfg["data"]["unlabeled"] = str(unlabeled)
    run = api.train(cfg, quiet=True)
    ev = json.loads((run / "eval.json").read_text())
    assert ev["distill"]["layers_kept"] == [0] and ev["distill"]["unlabeled_rows"] == 100
    assert AutoConfig.from_pretrained(run / "model").num_hidden_layers == 1
    assert ev["distill"]["student_params"] < ev["distill"]["teacher_params"]
    assert 0 <= ev["teacher"]["accuracy"] <= 1 and 0 <= ev["tuned"]["accuracy"] <= 1
    assert ev["distill"]["accuracy_share_of_teacher"] == pytest.approx(
        ev["tuned"]["accuracy"] / ev["teacher"]["accuracy"]
    )
    assert api.predict(run, ["a lovely film"])[0]["label"] in ev["labels"]


def test_a_fresh_student_moves_towards_the_teacher(tiny_model, fixtures, tmp_path, teacher):
    cfg = _student(tiny_model, fixtures, tmp_path, teacher, alpha=1.0, temperature=1.0)  # the teacher alone
    cfg["train"] |= {"epochs": 3, "log_every": 1}
    run = api.train(cfg, quiet=True)
    kl = [json.loads(line).get("kl") for line in (run / "metrics.jsonl").read_text().splitlines()]
    kl = [k for k in kl if k is not None]
    assert sum(kl[-5:]) / 5 < 0.5 * sum(kl[:5]) / 5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"distill": {"layers": 2}}, "the teacher has 2 layers, so give 1 to 1"),
        ({"data": {"max_rows": 300, "label_names": {"0": "neg", "1": "pos"}}}, "labels the teacher was not trained on"),
        ({"data": {"unlabeled": "/no/such/file.csv"}}, "data file not found"),
    ],
)
def test_bad_distillation_is_refused(tiny_model, fixtures, tmp_path, teacher, change, message):
    cfg = _student(tiny_model, fixtures, tmp_path, teacher)
    for section, values in change.items():
        cfg[section] = cfg[section] | values
    with pytest.raises(TunesmithError, match=message):
        api.train(cfg, quiet=True)


def test_unlabeled_data_is_for_distill_only(tiny_model, fixtures, tmp_path):
    cfg = tiny_config(tiny_model, fixtures / "sst2_train.tsv", tmp_path)
    cfg["data"]["unlabeled"] = str(fixtures / "sst2_dev.tsv")
    with pytest.raises(TunesmithError, match="data.unlabeled: method classify does not use it"):
        api.train(cfg, quiet=True)
