"""The real bundled chat model (smollm2-135m-instruct) fine-tuned with LoRA: it learns a house answer, says it
for a question it never saw, stops by itself, and its test loss ends below the untuned model's."""

import json

import pytest

from tunesmith import api

pytestmark = pytest.mark.integration

ANSWER = "We open at 9 am every day, holidays included."


def test_lora_sft_on_smollm2_learns_an_answer_and_stops(tmp_path, fixtures):
    asks = [
        "When do you open on {}?",
        "What time does the store open on {}?",
        "Are you open early on {}?",
        "Opening hours on {}, please.",
    ]
    days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "Easter"]
    rows = [
        {"messages": [{"role": "user", "content": a.format(d)}, {"role": "assistant", "content": ANSWER}]}
        for a in asks
        for d in days
    ]
    data = tmp_path / "store.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "name": "store",
        "model": "smollm2-135m-instruct",
        "method": "sft",
        "output_dir": str(tmp_path / "runs"),
        "data": {"train": str(data), "val_fraction": 0, "test_fraction": 0.15, "dedup": {"near": False}},
        "lora": {"r": 8, "alpha": 16, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "train": {"epochs": 3, "batch_size": 4, "lr": 2e-3, "max_length": 128, "checkpoint_every": 1000},
    }
    run = api.train(config, quiet=True)
    ev = json.loads((run / "eval.json").read_text())
    assert ev["tuned"]["loss"] < ev["baseline"]["loss"] / 4
    assert api.generate(run, ["When do you open on New Year's Day?"], max_new_tokens=40) == [ANSWER]
