import json

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import sft_config
from tunesmith import api
from tunesmith.infer.reward import RewardModel
from tunesmith.methods.reward import pair_loss


def test_the_loss_equals_a_hand_computation():
    scores = torch.tensor([2.0, -1.0, 0.5, 0.0])  # chosen 0, chosen 1, rejected 0, rejected 1
    loss, metrics = pair_loss(scores)
    want = -F.logsigmoid(torch.tensor(1.5)) - F.logsigmoid(torch.tensor(-1.0))
    assert loss.item() == pytest.approx(want.item()) and metrics["reward_accuracy"].item() == 1


def reward_config(model, tmp_path, fixtures, **extra):
    """The hh-rlhf slice as train and as test (no dedup, no val): preference accuracy on the training pairs."""
    data = str(fixtures / "hh_rlhf_30.jsonl")
    cfg = sft_config(model, tmp_path, fixtures / "hh_rlhf_30.jsonl", method="reward",
                     data={"test": data, "val_fraction": 0.0},
                     train={"epochs": 6, "batch_size": 4, "lr": 3e-3, "max_length": 128, "log_every": 2})  # fmt: skip
    return cfg | extra


@pytest.mark.parametrize("which", ["tiny_lm", "tiny_model"])  # a scalar head on a causal LM, and on an encoder
def test_the_reward_model_learns_to_score_chosen_above_rejected(which, request, tmp_path, fixtures):
    run = api.train(reward_config(request.getfixturevalue(which), tmp_path, fixtures), quiet=True)
    ev = json.loads((run / "eval.json").read_text())
    assert ev["method"] == "reward" and ev["test_rows"] >= 20
    assert ev["tuned"]["preference_accuracy"] > max(ev["baseline"]["preference_accuracy"], 0.7)
    prepared = pq.read_table(run / "data" / "test.parquet").to_pylist()
    scorer = RewardModel.load(run)  # by run folder (or name or id), as GRPO will use it
    chosen = scorer.score([r["prompt"] for r in prepared], [r["chosen"] for r in prepared])
    rejected = scorer.score([r["prompt"] for r in prepared], [r["rejected"] for r in prepared])
    assert len(chosen) == len(prepared) == ev["test_rows"]
    agree = sum(c > r for c, r in zip(chosen, rejected)) / len(chosen)
    assert agree == pytest.approx(ev["tuned"]["preference_accuracy"], abs=0.05)
