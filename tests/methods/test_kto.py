import json

import numpy as np
import pytest
import torch

from tests.conftest import sft_config
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.methods.kto import Completions, KtoConfig, kto_loss, scores, unpaired

PAIRS = [
    {"prompt": [{"role": "user", "content": "Say hi"}], "chosen": "Hello there!", "rejected": "Go away."},
    {"prompt": [{"role": "user", "content": "Name a colour"}], "chosen": "Red.", "rejected": "I will not say."},
]


def test_the_loss_equals_a_hand_computation():
    cfg = KtoConfig(beta=0.5, desirable_weight=1.0, undesirable_weight=2.0)
    policy = torch.tensor([-10.0, -20.0, -15.0, -30.0, -25.0, -12.0])  # 3 examples, then their 3 twins
    ref = torch.tensor([-12.0, -18.0, -15.0, -31.0, -24.0, -14.0])
    good = torch.tensor([True, False, True])
    loss, metrics = kto_loss(policy, ref, good, cfg)
    r, z = [2.0, -2.0, 0.0], max(0.0, (1.0 - 1.0 + 2.0) / 3)  # twins' log-ratios 1, -1, 2: mean 2/3
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    want = (1 - sig(0.5 * (r[0] - z))) + 2.0 * (1 - sig(0.5 * (z - r[1]))) + (1 - sig(0.5 * (r[2] - z)))
    assert loss.item() == pytest.approx(want, abs=1e-6)
    assert metrics["kl"].item() == pytest.approx(3 * z) and metrics["reward_accuracy"].item() == 2


def test_pairs_become_two_unpaired_examples_with_mismatched_twins(tokenizer):
    examples = unpaired(PAIRS, "preference")
    assert [(c, g) for _, c, g in examples] == [("Hello there!", True), ("Go away.", False), ("Red.", True),
                                                ("I will not say.", False)]  # fmt: skip
    data = Completions(tokenizer, examples, max_length=64)
    batch = data.collate([0, 1])
    assert batch["input_ids"].shape[0] == 4 and batch["good"].tolist() == [True, False]
    twin = tokenizer.decode(data.twins[0][0])
    assert "Say hi" in twin and "Go away." in twin  # prompt 0 with completion 1


def test_the_untuned_model_scores_against_itself_at_a_half():
    lp = torch.tensor([[-3.0, -4.0], [-5.0, -4.0], [-2.0, -3.0]])
    good = np.array([True, False, True])
    out = scores(lp, lp, good, KtoConfig())
    assert out["desirable_auc"] == 1.0 and out["kl"] == 0.0 and out["loss"] == pytest.approx(0.5)


def kto_config(tiny_lm, tmp_path, file, **extra):
    cfg = sft_config(tiny_lm, tmp_path, file, method="kto", kto={"beta": 0.5},
                     data={"test": str(file), "val_fraction": 0.0},
                     train={"epochs": 4, "batch_size": 4, "lr": 1e-3, "max_length": 256, "log_every": 2})  # fmt: skip
    for key, value in extra.items():
        cfg[key] = cfg.get(key, {}) | value if isinstance(value, dict) else value
    return cfg


def test_a_short_run_on_preference_pairs_learns_which_replies_are_desirable(tiny_lm, tmp_path, fixtures):
    run = api.train(kto_config(tiny_lm, tmp_path, fixtures / "hh_rlhf_30.jsonl"), quiet=True)
    ev = json.loads((run / "eval.json").read_text())
    assert ev["method"] == "kto" and ev["test_rows"] >= 40 and ev["beta"] == 0.5
    assert ev["tuned"]["reward_accuracy"] > 0.6 and ev["tuned"]["loss"] < 0.5  # 0.5: the untuned model's loss
    assert ev["tuned"]["desirable_auc"] > ev["baseline"]["desirable_auc"]
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "loss" in r and "split" not in r]
    assert {"kl", "reward_accuracy", "reward_margin"} <= set(logged[0])
    assert "desirable_auc" in (run / "report.html").read_text()


def test_thumbs_up_and_down_feedback_trains_under_lora(tiny_lm, tmp_path):
    rows = [{"prompt": f"question {i}", "completion": "Yes, gladly." if i % 2 else "No.", "label": bool(i % 2)}
            for i in range(40)]  # fmt: skip
    data = tmp_path / "feedback.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = kto_config(tiny_lm, tmp_path, data, lora={"r": 4, "alpha": 8})
    run = api.train(cfg, quiet=True)
    ev = json.loads((run / "eval.json").read_text())
    assert json.loads((run / "data" / "data_report.json").read_text())["shape"] == "feedback"
    assert ev["tuned"]["reward_accuracy"] > 0.5 and ev["data"]["train"]["desirable"] == 20


def test_a_feedback_label_that_is_not_a_flag_names_its_line(tiny_lm, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "hi", "completion": "hello", "label": True}) + "\n"
                    + json.dumps({"prompt": "hi", "completion": "bye", "label": "maybe"}) + "\n")  # fmt: skip
    with pytest.raises(TunesmithError, match=r"bad.jsonl:2: label in 'label' is 'maybe'; allowed: true/false"):
        api.train(kto_config(tiny_lm, tmp_path, data, data={"on_error": "fail"}), quiet=True)


def test_the_kto_section_is_checked_at_load_time(tiny_lm):
    base = {"model": str(tiny_lm), "data": {"train": "x.jsonl"}, "method": "kto"}
    assert config_from_dict(base).section().desirable_weight == 1.0
    with pytest.raises(TunesmithError, match=r"kto.undesirable_weight: Input should be greater than 0"):
        config_from_dict(base | {"kto": {"undesirable_weight": 0}})
