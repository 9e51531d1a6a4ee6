"""The gate on causal-LM runs: test loss within a tolerance, and agreement with held-out feedback."""

from __future__ import annotations

import json

import pytest

from tests.conftest import sft_config
from tunesmith import api
from tunesmith.errors import TunesmithError

GOOD = "Hello there, friend!"
FEEDBACK = [{"prompt": f"Say hi to me {i}", "completion": GOOD, "label": True} for i in range(6)] + [
    {"prompt": f"Say hi to me {i}", "completion": "no no no no", "label": False} for i in range(6)
]


@pytest.fixture(scope="module")
def served(tiny_lm, fixtures, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gate")
    cfg = sft_config(tiny_lm, tmp, fixtures / "oasst_20.jsonl", train={"epochs": 1})
    held = tmp / "held.jsonl"
    held.write_text("".join(json.dumps(r) + "\n" for r in FEEDBACK))
    return api.train(cfg, quiet=True), held, tmp


def test_a_run_gated_against_itself_fails_on_feedback(served):
    run, held, _ = served
    result = api.gate(run, run, held)
    values = result["loss_and_agreement"]
    assert values["test"]["new"] == values["test"]["served"]  # the same model: the test loss holds
    assert not result["passed"] and "not above" in result["why"]
    assert json.loads((run / "gate.json").read_text())["passed"] is False


def test_a_run_trained_towards_the_feedback_agrees_with_it_more(served, tiny_lm):
    run, held, tmp = served
    rows = tmp / "good.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"Say hi to me {i}", "response": GOOD}) + "\n" for i in range(40)))
    cfg = sft_config(tiny_lm, tmp, rows, name="sft2", train={"epochs": 3, "lr": 3e-3})
    cfg["data"] |= {"dedup": {"exact": False, "near": False}}
    better = api.train(cfg, continue_from=str(run), quiet=True)
    result = api.gate(better, run, held, tolerance=10.0)
    values = result["loss_and_agreement"]["feedback"]
    assert values["new"] > values["served"] and result["passed"]


def test_bad_feedback_rows_name_the_line(served, tmp_path):
    run, _, _ = served
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "completion": "x", "label": true}\n{"prompt": "hi"}\n')
    with pytest.raises(TunesmithError, match=r"bad.jsonl:2: .*completion and label"):
        api.gate(run, run, bad)
