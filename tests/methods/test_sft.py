import json

import pytest

from tests.conftest import sft_config
from tunesmith import api


def test_sft_run_beats_the_base_model_and_saves_a_plain_transformers_model(tiny_lm, tmp_path, fixtures):
    run = api.train(sft_config(tiny_lm, tmp_path, fixtures / "oasst_20.jsonl"), quiet=True)
    ev = json.loads((run / "eval.json").read_text())
    assert ev["tuned"]["perplexity"] < ev["baseline"]["perplexity"]
    assert ev["data"]["train"]["examples"] > 0 and "replies_cut" in ev["data"]["train"]
    steps = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]
    steps = [r for r in steps if "split" not in r]
    assert all(a["tokens"] < b["tokens"] and a["target_tokens"] < b["target_tokens"] for a, b in zip(steps, steps[1:]))
    assert steps[-1]["target_tokens"] < steps[-1]["tokens"]  # replies only: the prompts are computed, not scored
    assert ev["train"]["tokens_per_s"] == pytest.approx(steps[-1]["tokens"] / ev["train"]["seconds"], rel=0.05)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(run / "model") is not None
    assert api.show_run(run)["status"] == "done"
    from tunesmith.errors import TunesmithError

    with pytest.raises(TunesmithError, match="a sft run is not a classifier; use tunesmith generate or chat"):
        api.predict(run, ["hello"])


def test_the_tuned_model_learns_to_stop(tiny_lm, tmp_path):
    """Every reply is "Yes." then end-of-turn: greedy generation must end there, far before max_new_tokens."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"question number {i} about the film"},
                {"role": "assistant", "content": "Yes."},
            ]
        }
        for i in range(40)
    ]
    data = tmp_path / "yes.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = sft_config(tiny_lm, tmp_path, data, train={"epochs": 8, "lr": 1e-2, "warmup": 0})
    run = api.train(cfg, quiet=True)
    replies = api.generate(run, ["question number 99 about the film", "another question"], max_new_tokens=40)
    assert replies == ["Yes.", "Yes."]


def test_lora_is_merged_into_a_plain_model(tiny_lm, tmp_path, fixtures):
    cfg = sft_config(
        tiny_lm,
        tmp_path,
        fixtures / "oasst_20.jsonl",
        train={"epochs": 1},
        lora={"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]},
    )
    run = api.train(cfg, quiet=True)
    assert not (run / "model" / "adapter_config.json").exists() and (run / "model" / "model.safetensors").exists()
    assert json.loads((run / "model" / "tunesmith.json").read_text())["lora_merged"] is True


def test_pretrain_on_text_chunks(tiny_lm, tmp_path, fixtures):
    docs = tmp_path / "docs.jsonl"
    texts = [ln.split("\t")[0] for ln in (fixtures / "sst2_train.tsv").read_text().splitlines()[1:201]]
    docs.write_text("".join(json.dumps({"text": " ".join(texts[i : i + 20])}) + "\n" for i in range(0, 200, 20)))
    cfg = sft_config(
        tiny_lm,
        tmp_path,
        docs,
        method="pretrain",
        data={"shape": "text", "chunk_tokens": 64, "chunk_overlap": 8},
        train={"packing": True},
    )
    run = api.train(cfg, quiet=True)
    ev = json.loads((run / "eval.json").read_text())
    assert ev["tuned"]["loss"] < ev["baseline"]["loss"]


def test_wrong_shape_for_the_method_is_a_clear_error(tiny_lm, tmp_path, fixtures):
    from tunesmith.errors import TunesmithError

    with pytest.raises(
        TunesmithError, match="method sft trains on chat or instruction data, but .* holds classify data"
    ):
        api.train(sft_config(tiny_lm, tmp_path, fixtures / "sst2_train.tsv"), quiet=True)


def test_generation_scores_and_forgetting_are_reported_for_base_and_tuned(tiny_lm, tmp_path, fixtures):
    general = tmp_path / "general.txt"
    general.write_text(" ".join(ln.split("\t")[0] for ln in (fixtures / "sst2_dev.tsv").read_text().splitlines()[1:]))
    cfg = sft_config(
        tiny_lm,
        tmp_path,
        fixtures / "oasst_20.jsonl",
        train={"epochs": 1},
        eval={"generate": 3, "max_new_tokens": 8, "general_text": str(general), "general_tokens": 500},
    )
    run = api.train(cfg, quiet=True)
    ev = json.loads((run / "eval.json").read_text())
    for who in ("baseline", "tuned"):
        assert {"rougeL", "bleu", "exact_match", "general_perplexity", "perplexity"} <= set(ev[who])
    assert len(ev["tuned"]["samples"]) == 3 and ev["tuned"]["replies_scored"] == 3 and ev["forgetting"]["ppl_ratio"] > 0
    html = (run / "report.html").read_text()
    assert 'alt="base vs tuned"' in html and html.count("<th>base model</th>") == 1 and "Forgetting" in html
    assert html.count('<td class="sample">') == 3 * 4 and "td.sample{text-align:left;white-space:pre-wrap" in html


def test_chat_streams_and_keeps_the_conversation(tiny_lm, tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    rows = [
        {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": "Yes."}]}
        for i in range(40)
    ]
    data = tmp_path / "yes.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = api.train(sft_config(tiny_lm, tmp_path, data, train={"epochs": 8, "lr": 1e-2, "warmup": 0}), quiet=True)
    session = api.chat(run, temperature=0, max_new_tokens=20)
    assert "".join(session.send("question 7")).strip() == "Yes."
    list(session.send("and again?"))
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    result = CliRunner().invoke(app, ["chat", str(run), "--temperature", "0"], input="question 3\n\n")
    assert result.exit_code == 0 and "model> Yes." in result.output
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("question 5\n\nquestion 6\n")
    result = CliRunner().invoke(app, ["generate", str(run), "--prompts", str(prompts)])
    assert result.exit_code == 2 and "prompts.txt:2:blankline" in "".join(result.output.split())  # lines line up
    prompts.write_text("question 5\nquestion 6\n")
    result = CliRunner().invoke(
        app, ["generate", str(run), "question 4", "--prompts", str(prompts), "--max-new-tokens", "20"]
    )
    assert result.exit_code == 0, result.output
    assert [json.loads(ln)["reply"] for ln in result.output.splitlines()] == ["Yes.", "Yes.", "Yes."]
    result = CliRunner().invoke(
        app, ["generate", str(run), "question 4", "--stop", "s.", "--repetition-penalty", "1.1"]
    )
    assert result.exit_code == 0 and json.loads(result.output)["reply"] == "Ye"
    session = api.chat(run, temperature=0, stop=["es"])
    assert "".join(session.send("question 7")) == "Y" and session.messages[-1] == {"role": "assistant", "content": "Y"}
