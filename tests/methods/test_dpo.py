import json

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import sft_config, train_losses
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.lm.logprobs import sequence_logprobs
from tunesmith.methods.dpo import DpoConfig, Pairs, dpo_loss, pair_losses, scores

ROWS = [
    {"prompt": [{"role": "user", "content": "Say hi"}], "chosen": "Hello there!", "rejected": "Go away."},
    {"prompt": [{"role": "user", "content": "Name a colour"}], "chosen": "Red.", "rejected": "I will not say."},
]


def full_logprob(model, ids: list[int], targets: list[int]) -> float:
    """log p of the target tokens by the plain transformers forward: the hand computation."""
    logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    return sum(logp[t - 1, tok].item() for t, tok in enumerate(targets) if t > 0 and tok != -100)


def test_the_loss_equals_a_hand_computation(tiny_lm, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    pairs = Pairs(tokenizer, ROWS, max_length=64)
    batch = pairs.collate([0, 1])
    with torch.no_grad():
        policy = sequence_logprobs(model, batch)
    want = [full_logprob(model, *side) for side in pairs.chosen + pairs.rejected]
    assert policy.tolist() == pytest.approx(want, abs=1e-4)
    ref = torch.tensor([-30.0, -12.0, -25.0, -20.0])  # chosen 0, chosen 1, rejected 0, rejected 1
    loss, metrics = dpo_loss(policy, ref, DpoConfig(beta=0.5))
    by_hand = [0.5 * ((want[i] - ref[i].item()) - (want[i + 2] - ref[i + 2].item())) for i in (0, 1)]
    assert loss.item() == pytest.approx(sum(-F.logsigmoid(torch.tensor(m)).item() for m in by_hand), abs=1e-4)
    assert metrics["reward_margin"].item() == pytest.approx(sum(by_hand), abs=1e-4)
    assert metrics["reward_accuracy"].item() == sum(m > 0 for m in by_hand)


def test_ipo_and_label_smoothing_equal_their_formulas():
    h = torch.tensor([2.0, -1.0, 0.5])
    beta, eps = 0.2, 0.1
    ipo = pair_losses(h, DpoConfig(beta=beta, loss="ipo"))
    assert ipo.tolist() == pytest.approx([(x - 1 / (2 * beta)) ** 2 for x in h.tolist()])
    smooth = pair_losses(h, DpoConfig(beta=beta, label_smoothing=eps))
    want = [-(1 - eps) * F.logsigmoid(torch.tensor(beta * x)) - eps * F.logsigmoid(torch.tensor(-beta * x)) for x in h]
    assert smooth.tolist() == pytest.approx([w.item() for w in want])
    with pytest.raises(ValueError, match="label_smoothing applies to loss sigmoid only"):
        DpoConfig(loss="ipo", label_smoothing=0.1)


def test_per_token_logprobs_for_ipo(tiny_lm, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    batch = Pairs(tokenizer, ROWS, max_length=64).collate([0, 1])
    with torch.no_grad():
        total, mean = sequence_logprobs(model, batch), sequence_logprobs(model, batch, mean=True)
    tokens = torch.bincount(batch["seq"], minlength=batch["sequences"])  # targets per sequence
    assert mean.tolist() == pytest.approx((total / tokens).tolist(), abs=1e-5)


def test_the_untuned_model_scores_against_itself_at_log_2():
    lp = torch.tensor([[-3.0, -5.0], [-4.0, -1.0]])
    want = {"preference_accuracy": 0.5, "logp_margin": -0.5, "reward_accuracy": 0.0, "reward_margin": 0.0,
            "loss": pytest.approx(0.693147, abs=1e-6)}  # fmt: skip
    assert scores(lp, lp, DpoConfig(beta=0.1)) == want


def test_a_pair_with_the_same_tokens_names_its_row_or_is_skipped_and_counted(tokenizer):
    rows = ROWS + [{"prompt": [{"role": "user", "content": "x"}], "chosen": "same", "rejected": "same"}]
    with pytest.raises(TunesmithError, match=r"train pair 3 \(data/train.parquet\): chosen and rejected are the same"):
        Pairs(tokenizer, rows, 64, split="train")
    skipped = Pairs(tokenizer, rows, 64, split="train", on_error="skip")
    assert len(skipped) == 2 and skipped.report()["dropped_same_reply"] == 1


def dpo_config(tiny_lm, tmp_path, fixtures, **extra):
    """The hh-rlhf slice as train and as test (no dedup, no val): preference accuracy on the training pairs."""
    data = str(fixtures / "hh_rlhf_30.jsonl")
    cfg = sft_config(tiny_lm, tmp_path, fixtures / "hh_rlhf_30.jsonl", method="dpo", dpo={"beta": 0.5},
                     data={"test": data, "val_fraction": 0.0},
                     train={"epochs": 4, "batch_size": 4, "lr": 3e-3, "max_length": 256, "log_every": 2})  # fmt: skip
    for key, value in extra.items():
        cfg[key] = cfg.get(key, {}) | value if isinstance(value, dict) else value
    return cfg


def test_a_short_run_prefers_the_chosen_replies_more_often_than_the_untuned_model(tiny_lm, tmp_path, fixtures):
    run = api.train(dpo_config(tiny_lm, tmp_path, fixtures), quiet=True)
    ev = json.loads((run / "eval.json").read_text())
    assert ev["method"] == "dpo" and ev["test_rows"] >= 20 and ev["beta"] == 0.5
    assert ev["tuned"]["preference_accuracy"] > ev["baseline"]["preference_accuracy"]
    assert ev["tuned"]["reward_accuracy"] > 0.5 and ev["tuned"]["loss"] < 0.693
    assert "reward_accuracy" not in ev["baseline"]  # the untuned model's implicit rewards are all zero
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "loss" in r and "split" not in r]
    assert logged and {"reward_margin", "reward_accuracy", "logp_chosen", "logp_rejected"} <= set(logged[0])
    assert logged[-1]["reward_margin"] > 0
    assert "preference_accuracy" in (run / "report.html").read_text()
    assert len(api.generate(run, ["hello"], max_new_tokens=4)) == 1  # a plain causal LM: generate and chat work
    assert api.list_runs(tmp_path / "runs")[-1]["metrics"]["tuned_preference_accuracy"] > 0


def test_forgetting_on_general_text_is_reported_beside_the_preference(tiny_lm, tmp_path, fixtures):
    general = tmp_path / "general.txt"
    general.write_text(" ".join(ln.split("\t")[0] for ln in (fixtures / "sst2_dev.tsv").read_text().splitlines()[1:]))
    cfg = dpo_config(tiny_lm, tmp_path, fixtures, eval={"general_text": str(general), "general_tokens": 500})
    ev = json.loads((api.train(cfg, quiet=True) / "eval.json").read_text())
    base, tuned = ev["baseline"]["general_perplexity"], ev["tuned"]["general_perplexity"]
    assert ev["forgetting"]["ppl_ratio"] == pytest.approx(tuned / base) and base > 1


@pytest.mark.parametrize("section", [{"loss": "ipo"}, {"label_smoothing": 0.1}])
def test_ipo_and_conservative_dpo_learn_the_preference_too(tiny_lm, tmp_path, fixtures, section):
    run = api.train(dpo_config(tiny_lm, tmp_path, fixtures, dpo={"beta": 0.5} | section), quiet=True)
    ev = json.loads((run / "eval.json").read_text())
    assert all(ev[k] == v for k, v in section.items())
    untuned_loss = pair_losses(torch.zeros(1), DpoConfig(beta=0.5, **section)).item()  # h = 0: log 2, or IPO's 1
    assert ev["tuned"]["reward_accuracy"] > 0.5 and ev["tuned"]["loss"] < untuned_loss
    assert ev["tuned"]["preference_accuracy"] >= ev["baseline"]["preference_accuracy"]


def test_under_lora_the_reference_is_the_adapter_switched_off(tiny_lm, tmp_path, fixtures):
    cfg = dpo_config(tiny_lm, tmp_path, fixtures, lora={"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]},
                     data={"val_fraction": 0.2}, train={"epochs": 2, "lr": 1e-2})  # fmt: skip
    run = api.train(cfg, quiet=True)
    ev = json.loads((run / "eval.json").read_text())
    assert (
        ev["tuned"]["reward_margin"] != 0 and json.loads((run / "model" / "tunesmith.json").read_text())["lora_merged"]
    )
    val = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if '"split": "val"' in ln]
    assert val and "reward_accuracy" in val[-1]


def test_the_dpo_section_is_checked_at_load_time(tiny_lm):
    base = {"model": str(tiny_lm), "data": {"train": "x.jsonl"}, "method": "dpo"}
    assert config_from_dict(base).section().beta == 0.1
    with pytest.raises(TunesmithError, match=r"dpo.beta: Input should be greater than 0"):
        config_from_dict(base | {"dpo": {"beta": -1}})
    with pytest.raises(TunesmithError, match="dpo.betta: unknown key"):
        config_from_dict(base | {"dpo": {"betta": 1}})
    with pytest.raises(TunesmithError, match="dpo: a section of method dpo, but method is sft"):
        config_from_dict(base | {"method": "sft", "dpo": {"beta": 1}})
    with pytest.raises(TunesmithError, match="label_smoothing applies to loss sigmoid only"):
        config_from_dict(base | {"dpo": {"loss": "ipo", "label_smoothing": 0.1}})
    with pytest.raises(TunesmithError, match="dpo.loss"):
        config_from_dict(base | {"dpo": {"loss": "hinge"}})


def test_data_of_another_shape_is_a_clear_error(tiny_lm, tmp_path, fixtures):
    cfg = sft_config(tiny_lm, tmp_path, fixtures / "sst2_train.tsv", method="dpo")
    with pytest.raises(TunesmithError, match="method dpo trains on preference data, but .* holds classify data"):
        api.train(cfg, quiet=True)


def test_zero3_gives_the_same_run(tiny_lm, tmp_path, fixtures):
    """DeepSpeed's ZeRO-3 in one process, LoRA: the losses go through the engine (its forward marks each micro-batch)
    and the reference is the adapter switched off through it; the same losses as without the engine."""
    cfg = dpo_config(tiny_lm, tmp_path, fixtures, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    cfg["train"] |= {"epochs": 2, "batch_tokens": 256, "precision": "fp32"}  # a step in several parts; no probe
    zero3 = ["train.distributed.strategy=deepspeed", "train.distributed.zero_stage=3"]
    linear = F.linear
    runs = [api.train(cfg, quiet=True), api.train(cfg, zero3, quiet=True)]
    assert F.linear is linear  # DeepSpeed left torch's own (its memory_efficient_linear is off)
    plain, zero = (train_losses(run) for run in runs)
    assert len(plain) > 3 and [s for s, _ in plain] == [s for s, _ in zero]
    assert max(abs(a - b) for (_, a), (_, b) in zip(plain, zero)) < 1e-4
