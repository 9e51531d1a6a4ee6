"""method: distill-lm: a causal-LM student taught by a finished sft run, token by token or by its answers."""

import json

import pytest
from transformers import AutoConfig

from tests.conftest import sft_config
from tunesmith import api
from tunesmith.errors import TunesmithError


@pytest.fixture(scope="module")
def teacher(tiny_lm, fixtures, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lm-teacher")
    return api.train(sft_config(tiny_lm, tmp, fixtures / "oasst_20.jsonl"), quiet=True)


def _student(tiny_lm, fixtures, tmp_path, teacher, **distill):
    cfg = sft_config(tiny_lm, tmp_path, fixtures / "oasst_20.jsonl", train={"epochs": 4})
    return cfg | {"name": "student", "method": "distill-lm", "distill-lm": {"teacher": str(teacher)} | distill}


def _metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_token_kl_student_of_fewer_layers_moves_towards_the_teacher(tiny_lm, fixtures, tmp_path, teacher):
    run = api.train(_student(tiny_lm, fixtures, tmp_path, teacher, layers=1, alpha=1.0, temperature=1.0), quiet=True)
    ev = json.loads((run / "eval.json").read_text())
    assert ev["distill"]["mode"] == "token" and ev["distill"]["layers_kept"] == [0]
    assert AutoConfig.from_pretrained(run / "model").num_hidden_layers == 1
    assert ev["distill"]["student_params"] < ev["distill"]["teacher_params"]
    kl = [m["kl"] for m in _metrics(run) if "kl" in m]
    assert len(kl) >= 2 and kl[-1] < kl[0]  # alpha 1: the KL alone is the loss, and it falls
    assert ev["tuned"]["loss"] < ev["baseline"]["loss"] and "loss" in ev["teacher"]


def test_sequence_level_student_trains_on_the_teachers_answers(tiny_lm, fixtures, tmp_path, teacher):
    run = api.train(_student(tiny_lm, fixtures, tmp_path, teacher, mode="sequence", max_new_tokens=16), quiet=True)
    ev = json.loads((run / "eval.json").read_text())
    assert ev["distill"]["mode"] == "sequence" and ev["distill"]["teacher_answers"] > 0
    train = ev["data"]["train"]  # every answered prompt became a training row (some cut to nothing by max_length)
    assert train["examples"] + train["dropped_no_target_left"] == ev["distill"]["teacher_answers"]
    assert (run / "model" / "tunesmith.json").is_file() and "perplexity" in ev["tuned"]


def test_a_classifier_is_not_a_causal_lm_teacher(tiny_lm, tiny_model, fixtures, tmp_path):
    from tests.conftest import tiny_config

    clf = api.train(tiny_config(tiny_model, fixtures / "sst2_train.tsv", tmp_path / "c"), quiet=True)
    with pytest.raises(TunesmithError, match="not a causal-lm run; distill-lm takes an sft run"):
        api.train(_student(tiny_lm, fixtures, tmp_path, clf), quiet=True)
