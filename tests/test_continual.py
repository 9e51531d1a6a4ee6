import json

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from tests.conftest import sft_config, tiny_config
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.continual import Anchor, transfer
from tunesmith.errors import TunesmithError
from tunesmith.runs import Registry


def _second_task(fixtures, tmp_path, rows: int = 200):
    """A new task on real sentences with labels the first task never had (class-incremental)."""
    lines = (fixtures / "sst2_train.tsv").read_text().splitlines()[1 + 300 : 1 + 300 + rows]
    out = tmp_path / "task_b.tsv"
    body = [f"{s}\t{'long' if len(s.split()) > 10 else 'short'}" for s, _ in (ln.split("\t") for ln in lines)]
    out.write_text("sentence\tlabel\n" + "\n".join(body) + "\n")
    return out


@pytest.fixture(scope="module")
def first_run(tiny_model, fixtures, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("continual")
    return api.train(_one_epoch(tiny_config(tiny_model, fixtures / "sst2_train.tsv", tmp)), quiet=True), tmp


def _one_epoch(cfg: dict) -> dict:
    cfg["train"] |= {"epochs": 1}
    cfg["eval"] |= {"calibrate": False}
    return cfg


def _continue(tiny_model, fixtures, tmp, parent, **continual):
    cfg = _one_epoch(tiny_config(tiny_model, _second_task(fixtures, tmp), tmp, name="task-b", continual=continual))
    return api.train(cfg, continue_from=str(parent), quiet=True)


def test_a_run_continued_from_another_grows_its_head_records_its_parent_and_scores_every_task(
    first_run, tiny_model, fixtures
):
    parent, tmp = first_run
    child = _continue(tiny_model, fixtures, tmp, parent)
    meta = json.loads((child / "model" / "tunesmith.json").read_text())
    assert meta["labels"] == ["0", "1", "long", "short"]  # the parent's labels first, in its order
    assert meta["parent"] == str(parent)
    assert Registry(child.parent).row(child)["parent"] == str(parent)
    assert api.show_run(str(child))["lineage"] == [str(parent)]
    report = json.loads((child / "eval.json").read_text())["continual"]
    assert [t["run"] for t in report["tasks"]] == [str(parent), str(child)]
    first = json.loads((parent / "eval.json").read_text())["tuned"]["accuracy"]
    assert report["matrix"][0] == [round(first, 4)]
    assert len(report["matrix"][1]) == 2 and report["bwt"] == pytest.approx(report["matrix"][1][0] - round(first, 4))
    assert report["fwt"] is not None and report["before"][1] is not None
    assert 'alt="accuracy matrix"' in (child / "report.html").read_text()  # the heat map
    kept = pq.read_table(child / "replay.parquet").to_pylist()
    assert {r["task"] for r in kept} == {parent.name, child.name}  # both tasks stay replayable down the chain


def test_replay_mixes_the_parents_rows_in_at_the_ratio(first_run, tiny_model, fixtures):
    parent, tmp = first_run
    child = _continue(tiny_model, fixtures, tmp, parent, strategy="replay", replay_ratio=0.5)
    report = json.loads((child / "eval.json").read_text())
    trained = json.loads((child / "data" / "data_report.json").read_text())["rows"]["train"]
    assert report["continual"]["replayed_rows"] == round(0.5 * trained)


def test_l2_and_ewc_keep_the_weights_nearer_the_parent_than_plain_fine_tuning(first_run, tiny_model, fixtures):
    from transformers import AutoModelForSequenceClassification

    parent, tmp = first_run
    start = AutoModelForSequenceClassification.from_pretrained(parent / "model").state_dict()

    def moved(run) -> float:
        end = AutoModelForSequenceClassification.from_pretrained(run / "model").state_dict()
        return sum(float((end[k] - start[k]).pow(2).sum()) for k in start if "classifier" not in k)

    naive = moved(_continue(tiny_model, fixtures, tmp, parent))
    assert moved(_continue(tiny_model, fixtures, tmp, parent, strategy="l2", weight=1000.0)) < 0.5 * naive
    assert moved(_continue(tiny_model, fixtures, tmp, parent, strategy="ewc", weight=1e6)) < naive


def test_the_pull_is_half_lambda_times_the_weighted_squared_distance():
    layer = torch.nn.Linear(2, 1, bias=False)
    l2 = Anchor(layer, weight=4.0)
    ewc = Anchor(layer, weight=4.0, fisher={"weight": torch.tensor([[1.0, 0.0]])})
    assert float(l2(layer)) == 0.0
    with torch.no_grad():
        layer.weight += torch.tensor([[1.0, 2.0]])
    assert float(l2(layer)) == pytest.approx(0.5 * 4 * (1 + 4))
    assert float(ewc(layer)) == pytest.approx(0.5 * 4 * 1)  # no Fisher weight on the second input


def test_the_fisher_has_a_mean_of_one_and_keeps_its_proportions():
    from tunesmith.continual import fisher_information

    layer = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 0.0]]))
    batches = [{"x": torch.tensor([[1.0, 3.0]]), "n": 1}, {"x": torch.tensor([[1.0, 1.0]]), "n": 1}]
    fisher = fisher_information(layer, lambda m, b: (m(b["x"]) - 1.0).pow(2).sum(), batches)["weight"]
    raw = torch.tensor([[(4 + 4) / 2, (36 + 4) / 2]])  # gradient 2(wx - 1)x = -2x, squared, averaged over batches
    assert float(fisher.mean()) == pytest.approx(1.0)
    assert torch.allclose(fisher, raw / raw.mean())


def test_backward_and_forward_transfer_by_hand(tmp_path):
    from tunesmith.continual import Parent

    first = Parent(tmp_path / "a", {}, {"tuned": {"accuracy": 0.9}, "baseline": {"accuracy": 0.6}})
    got = transfer(first, tmp_path / "b", now=[0.7, 0.8], before=0.55, baseline=0.5, metric="accuracy")
    assert got["matrix"] == [[0.9], [0.7, 0.8]]
    assert got["avg_acc"] == pytest.approx(0.75)
    assert got["bwt"] == pytest.approx(0.7 - 0.9)  # forgetting
    assert got["fwt"] == pytest.approx(0.55 - 0.5)
    lm = Parent(tmp_path / "a", {}, {"tuned": {"loss": 2.0}, "baseline": {"loss": 3.0}})
    got = transfer(lm, tmp_path / "b", now=[2.5, 1.5], before=2.8, baseline=3.1, metric="loss")
    assert got["avg_loss"] == pytest.approx(2.0)
    assert got["bwt"] == pytest.approx(-(2.5 - 2.0))  # the loss on the first task rose: forgetting, negative
    assert got["fwt"] == pytest.approx(3.1 - 2.8)  # lower than the untuned model's before training: positive


def test_bad_continuations_are_clear_errors(first_run, tiny_model, fixtures, tmp_path):
    parent, tmp = first_run
    other = tiny_config("minilm-l6", _second_task(fixtures, tmp_path), tmp)
    with pytest.raises(TunesmithError, match=r"trained from model .* set model: "):
        api.train(other, continue_from=str(parent), quiet=True)
    with pytest.raises(TunesmithError, match="continual.replay_ratio"):
        config_from_dict(tiny_config(tiny_model, fixtures / "sst2_train.tsv", tmp, continual={"replay_ratio": 1.5}))
    with pytest.raises(TunesmithError, match="no run 'nowhere'"):
        api.train(tiny_config(tiny_model, fixtures / "sst2_train.tsv", tmp), continue_from="nowhere", quiet=True)
    dpo = tiny_config(tiny_model, fixtures / "sst2_train.tsv", tmp, method="dpo", continual={"parent": str(parent)})
    with pytest.raises(TunesmithError, match="continual.parent: method dpo does not use it"):
        config_from_dict(dpo)
    assert yaml.safe_load((parent / "config.yaml").read_text())["continual"]["parent"] is None


@pytest.fixture(scope="module")
def lm_parent(tiny_lm, fixtures, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lm-continual")
    cfg = sft_config(tiny_lm, tmp, fixtures / "oasst_20.jsonl", name="chat-a", train={"epochs": 1})
    return api.train(cfg, quiet=True), tmp


@pytest.mark.parametrize("strategy", ["replay", "ewc"])
def test_a_causal_lm_continues_and_scores_every_task_by_test_loss(lm_parent, tiny_lm, fixtures, strategy):
    parent, tmp = lm_parent
    cfg = sft_config(tiny_lm, tmp, fixtures / "sharegpt_10.jsonl", name=f"chat-b-{strategy}", train={"epochs": 1},
                     continual={"strategy": strategy, "replay_ratio": 1.0, "fisher_rows": 8})  # fmt: skip
    child = api.train(cfg, continue_from=str(parent), quiet=True)
    report = json.loads((child / "eval.json").read_text())["continual"]
    first = json.loads((parent / "eval.json").read_text())["tuned"]["loss"]
    assert report["metric"] == "loss" and report["matrix"][0] == [round(first, 4)] and len(report["matrix"][1]) == 2
    assert report["bwt"] == pytest.approx(-(report["matrix"][1][0] - round(first, 4)), abs=1e-4)
    assert (report["replayed_rows"] > 0) == (strategy == "replay")
    assert api.show_run(str(child))["lineage"] == [str(parent)]


def test_replay_needs_rows_of_the_parents_shape(lm_parent, tiny_lm, fixtures):
    parent, tmp = lm_parent
    cfg = sft_config(tiny_lm, tmp, fixtures / "dialogsum_20.jsonl", name="summaries", continual={"strategy": "replay"},
                     data={"response": "summary", "prompt_template": "Summarise:\n{dialogue}"})  # fmt: skip
    with pytest.raises(TunesmithError, match="trained on chat rows and this run's data is instruction"):
        api.train(cfg, continue_from=str(parent), quiet=True)


def test_a_method_that_does_not_continue_says_so(first_run, tiny_model, fixtures):
    parent, tmp = first_run
    cfg = tiny_config(tiny_model, fixtures / "sst2_train.tsv", tmp, method="fewshot")
    with pytest.raises(TunesmithError, match="method fewshot does not continue from a run; classify"):
        api.train(cfg, continue_from=str(parent), quiet=True)


def test_instruction_rows_replay_into_chat_data_as_one_turn_conversations(tiny_lm, fixtures, tmp_path):
    data = {"response": "summary", "prompt_template": "Summarise:\n{dialogue}"}
    parent = api.train(sft_config(tiny_lm, tmp_path, fixtures / "dialogsum_20.jsonl", name="summaries", data=data,
                                  train={"epochs": 1, "max_length": 256}), quiet=True)  # fmt: skip
    cfg = sft_config(tiny_lm, tmp_path, fixtures / "oasst_20.jsonl", name="chat-after", train={"epochs": 1},
                     continual={"strategy": "replay", "replay_ratio": 1.0})  # fmt: skip
    child = api.train(cfg, continue_from=str(parent), quiet=True)
    assert json.loads((child / "eval.json").read_text())["continual"]["replayed_rows"] > 0
