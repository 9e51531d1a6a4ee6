import json

import numpy as np
import pytest
import torch

from tests.conftest import sft_config
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.methods.grpo import GrpoConfig, advantages, grpo_loss, load_rewards, score

REWARDS = "tests.methods.grpo_rewards"


def test_advantages_are_normalised_within_each_group():
    adv, flat = advantages(np.array([1.0, 3.0, 2.0, 2.0]), group_size=2)
    assert adv[:2] == pytest.approx([-1.0, 1.0], abs=1e-3) and adv[2:].tolist() == [0.0, 0.0]
    assert flat.tolist() == [False, True]  # the second group carries no learning signal


def test_the_loss_equals_a_hand_computation():
    cfg = GrpoConfig(rewards=[{"function": f"{REWARDS}:short"}], beta=0.1, epsilon=0.2)
    logp = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)  # tokens: two of completion 0, one of completion 1
    rows = torch.tensor([0, 0, 1])
    batch = {"advantages": torch.tensor([1.0, -1.0]), "old": torch.tensor([-1.5, -2.0, -0.4]),
             "ref": torch.tensor([-1.0, -1.0, -1.0]), "reward_metrics": {}}  # fmt: skip
    loss, metrics = grpo_loss(logp, rows, batch, cfg)

    def token(lp, old, ref, a):
        ratio = np.exp(lp - old)
        surrogate = min(ratio * a, np.clip(ratio, 0.8, 1.2) * a)
        return -surrogate + 0.1 * (np.exp(ref - lp) - (ref - lp) - 1)

    want = (token(-1.0, -1.5, -1.0, 1.0) + token(-2.0, -2.0, -1.0, 1.0)) / 2 + token(-0.5, -0.4, -1.0, -1.0)
    assert loss.item() == pytest.approx(want, abs=1e-5) and metrics["kl"].item() > 0
    fresh = {k: v for k, v in batch.items() if k != "old"}  # the sampling policy is the one being trained
    same = grpo_loss(logp, rows, fresh, cfg)[0]
    want = (token(-1.0, -1.0, -1.0, 1.0) + token(-2.0, -2.0, -1.0, 1.0)) / 2 + token(-0.5, -0.5, -1.0, -1.0)
    assert same.item() == pytest.approx(want, abs=1e-5)


def test_a_reward_that_fails_is_an_error_naming_it(tmp_path):
    rewards = load_rewards(GrpoConfig(rewards=[{"function": f"{REWARDS}:{n}"} for n in ("wrong_count",)]))
    with pytest.raises(TunesmithError, match=r"reward 'wrong_count' returned \[1.0\], not 2 numbers"):
        score(rewards, ["a", "b"], ["x", "y"], {})
    for name, message in (("not_a_number", "returned NaN"), ("broken", "raised KeyError: 'answer'")):
        with pytest.raises(TunesmithError, match=f"reward '{name}' {message}"):
            score(load_rewards(GrpoConfig(rewards=[{"function": f"{REWARDS}:{name}"}])), ["a"], ["x"], {})
    skipped = score(load_rewards(GrpoConfig(rewards=[{"function": f"{REWARDS}:broken"}])), ["a"], ["x"], {}, skip=True)
    adv, flat = advantages(np.r_[skipped["broken"], 1.0, 0.0, 1.0], group_size=2)  # under data.on_error: skip
    assert np.isnan(skipped["broken"]).all() and adv[:2].tolist() == [0.0, 0.0] and flat.tolist() == [True, False]
    with pytest.raises(TunesmithError, match=r"grpo.rewards\[0\].function 'no_such_module:f': ModuleNotFoundError"):
        load_rewards(GrpoConfig(rewards=[{"function": "no_such_module:f"}]))
    run = tmp_path / "a-classifier-run"
    (run / "model").mkdir(parents=True)
    (run / "config.yaml").write_text("{}")
    (run / "model" / "tunesmith.json").write_text(json.dumps({"method": "classify", "kind": "classifier"}))
    with pytest.raises(TunesmithError, match=r"grpo.rewards\[0\].run .*a classify run is not a reward model"):
        load_rewards(GrpoConfig(rewards=[{"run": str(run)}]))


def test_the_grpo_section_is_checked_at_load_time(tiny_lm):
    base = {"model": str(tiny_lm), "data": {"train": "x.jsonl"}, "method": "grpo"}
    with pytest.raises(TunesmithError, match=r"grpo.rewards: required but missing"):
        config_from_dict(base)
    with pytest.raises(TunesmithError, match="exactly one of function"):
        config_from_dict(base | {"grpo": {"rewards": [{"function": "m:f", "run": "r"}]}})
    with pytest.raises(TunesmithError, match=r"grpo.group_size: Input should be greater than or equal to 2"):
        config_from_dict(base | {"grpo": {"rewards": [{"function": "m:f"}], "group_size": 1}})


def grpo_config(tiny_lm, tmp_path, data, **grpo):
    train = {"epochs": 2, "batch_size": 8, "lr": 1e-2, "warmup": 0, "max_length": 64, "log_every": 2}
    cfg = sft_config(tiny_lm, tmp_path, data, method="grpo", train=train)
    cfg["grpo"] = {"rewards": [{"function": f"{REWARDS}:short"}], "max_new_tokens": 12, "beta": 0.0} | grpo
    return cfg


def questions(tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"question {i}", "response": "Yes."}) + "\n" for i in range(40)))
    return data


def test_a_short_run_raises_the_reward_of_greedy_completions(tiny_lm, tmp_path):
    run = api.train(grpo_config(tiny_lm, tmp_path, questions(tmp_path)), quiet=True)
    ev = json.loads((run / "eval.json").read_text())
    assert ev["method"] == "grpo" and ev["test_rows"] == 8
    assert ev["tuned"]["reward"] > ev["baseline"]["reward"], (ev["tuned"]["reward"], ev["baseline"]["reward"])
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "loss" in r and "split" not in r]
    want = {"reward", "reward_short", "reward_short_std", "kl", "zero_std_groups", "completion_tokens", "rollout_s"}
    assert want <= set(logged[0]) and 0 < logged[0]["generate_s"] <= logged[0]["rollout_s"]
    html = (run / "report.html").read_text()
    assert 'alt="base vs tuned"' in html and '<td class="sample">' in html  # the reward bars and samples


def test_the_kl_penalty_needs_lora_and_is_logged_under_it(tiny_lm, tmp_path):
    data = questions(tmp_path)
    with pytest.raises(TunesmithError, match="grpo.beta > 0 .* set lora"):
        api.train(grpo_config(tiny_lm, tmp_path, data, beta=0.1), quiet=True)
    cfg = grpo_config(tiny_lm, tmp_path, data, beta=0.1, rewards=[{"function": f"{REWARDS}:short"},
                      {"function": f"{REWARDS}:says_yes", "weight": 2.0}])  # fmt: skip
    run = api.train(cfg | {"lora": {"r": 4, "alpha": 8}}, quiet=True)
    logged = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "kl" in r and "split" not in r]
    assert steps[-1]["kl"] > 0 and "reward_says_yes" in steps[-1]
    ev = json.loads((run / "eval.json").read_text())
    assert "reward_says_yes" in ev["tuned"] and len(ev["tuned"]["samples"]) == 5


def test_the_arithmetic_example_has_distinct_seeds_and_verifiable_rewards(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).parents[2] / "examples" / "arithmetic"
    subprocess.run([sys.executable, str(example / "make_problems.py"), "--out", str(tmp_path), "--train", "300",
                    "--test", "50"], check=True, capture_output=True)  # fmt: skip
    train, test = (
        [json.loads(ln) for ln in (tmp_path / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "test")
    )
    assert len(train) == 300 and len(test) == 50 and not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert {r["steps"] for r in test} == {1, 2}
    rewards = load_rewards(GrpoConfig(rewards=[{"function": f"{example / 'rewards.py'}:exact_answer"},
                                               {"function": f"{example / 'rewards.py'}:answer_format"}]))  # fmt: skip
    answer = test[0]["response"]
    got = score(rewards, [test[0]["prompt"]] * 3, [f"So it is... {answer}", "Answer: 99999", "no idea"],
                {"references": [[answer]] * 3})  # fmt: skip
    assert got["exact_answer"].tolist() == [1.0, 0.0, 0.0] and got["answer_format"].tolist() == [0.2, 0.2, 0.0]


def test_a_prompt_with_no_room_for_a_completion_names_it_or_is_skipped_and_counted(tiny_lm, tmp_path):
    data = questions(tmp_path)
    with data.open("a") as f:
        for i in range(10):
            f.write(json.dumps({"prompt": f"long question {i} " + "word " * 80, "response": "Yes."}) + "\n")
    cfg = grpo_config(tiny_lm, tmp_path, data)
    with pytest.raises(TunesmithError, match=r"prompt \d+ \(data/\w+.parquet\) is \d+ tokens, so no room is left"):
        api.train(cfg | {"data": cfg["data"] | {"on_error": "fail"}}, quiet=True)
    run = api.train(cfg, quiet=True)  # data.on_error: skip
    prompts = json.loads((run / "eval.json").read_text())["prompts"]
    assert sum(p["dropped_no_room"] for p in prompts.values()) == 10 and prompts["train"]["prompts"] > 0


def test_the_dialogsum_rewards_score_what_they_say():
    from pathlib import Path

    rewards = Path(__file__).parents[2] / "examples" / "dialogsum_rewards.py"
    names = ("under_budget", "keeps_speakers", "keeps_numbers", "rouge_l")
    loaded = load_rewards(GrpoConfig(rewards=[{"function": f"{rewards}:{n}"} for n in names]))
    prompt = "Summarise this dialogue:\n#Person1#: The room is 80 dollars.\n#Person2#: I'll take it for 2 nights."
    ref = "#Person2# books a room at 80 dollars for 2 nights."
    got = score(loaded, [prompt] * 3, [ref, "#Person1# sells a room for 95 dollars.", "word " * 100],
                {"references": [[ref]] * 3})  # fmt: skip
    assert got["under_budget"].tolist() == [1.0, 1.0, 0.0]
    assert got["keeps_speakers"].tolist() == [0.5, 0.5, 0.0]
    assert got["keeps_numbers"].tolist() == [1.0, 0.0, 0.5]  # all kept; none kept and one invented; none at all
    assert got["rouge_l"][0] == pytest.approx(1.0) and got["rouge_l"][1] < 0.5
