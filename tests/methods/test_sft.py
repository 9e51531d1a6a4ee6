import json

import pytest
import torch

from tunesmith import api
from tunesmith.errors import TunesmithError
from tunesmith.methods.sft import IGNORE, Tokens, render, token_loss

CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, fixtures):
    """A 2-layer, 32-wide Llama with a ChatML template and a byte-level BPE learned from fixture text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-llama")
    texts = [ln.split("\t")[0] for ln in (fixtures / "sst2_train.tsv").read_text().splitlines()[1:]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>", bos_token="<|im_start|>"
    )
    fast.chat_template = CHATML
    fast.save_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tokenizer(tiny_lm):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_lm)


def conversation(reply="Hello there!"):
    return [{"role": "user", "content": "Say hi to me"}, {"role": "assistant", "content": reply}]


def test_loss_is_on_the_assistant_reply_and_its_end_of_turn(tokenizer):
    text, spans = render(tokenizer, conversation())
    assert [text[a:b] for a, b in spans] == ["Hello there!<|im_end|>\n"]
    tok = Tokens(tokenizer, [{"messages": conversation()}], max_length=64, shape="chat")
    targets = [t for t in tok.targets[0] if t != IGNORE]
    assert tokenizer.decode(targets).startswith("Hello there!<|im_end|>")
    multi = conversation() + [{"role": "user", "content": "again"}, {"role": "assistant", "content": "Bye"}]
    text, spans = render(tokenizer, multi)
    assert [text[a:b] for a, b in spans] == ["Hello there!<|im_end|>\n", "Bye<|im_end|>\n"]


def test_loss_on_all_tokens_when_asked(tokenizer):
    row = {"messages": conversation()}
    replies_only = Tokens(tokenizer, [row], max_length=64, shape="chat")
    every = Tokens(tokenizer, [row], max_length=64, shape="chat", loss_on="all")
    assert every.targets[0] == every.ids[0] == replies_only.ids[0]
    assert IGNORE in replies_only.targets[0]


def test_truncation_is_counted_never_silent(tokenizer):
    rows = [{"messages": conversation("word " * 40)}, {"messages": conversation("ok")}]
    fits = len(Tokens(tokenizer, rows[1:], max_length=1000, shape="chat").ids[0])
    tok = Tokens(tokenizer, rows, max_length=fits + 2, shape="chat")
    assert tok.truncated == 1 and tok.replies_cut == 1 and len(tok) == 2
    tiny = Tokens(tokenizer, rows, max_length=4, shape="chat")  # the replies lie beyond max_length
    assert tiny.dropped == 2 and len(tiny) == 0
    with pytest.raises(
        TunesmithError, match=r"test example 1 \(data/test.parquet\): its prompt fills train.max_length=4"
    ):
        Tokens(tokenizer, rows, max_length=4, shape="chat", split="test", on_error="fail")


def test_summed_loss_equals_transformers_mean_loss_times_targets(tiny_lm, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    rows = [{"messages": conversation()}, {"prompt": "Name a colour", "response": "Red, or blue."}]
    tok = Tokens(tokenizer, rows, max_length=64, shape="chat")
    batch = tok.collate([0, 1])
    ours = token_loss(model, batch)
    ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert torch.allclose(ours / batch["n"], ref, atol=1e-5)


def sft_config(tiny_lm, tmp_path, data_file, **extra):
    cfg = {
        "name": "sft",
        "model": str(tiny_lm),
        "method": "sft",
        "output_dir": str(tmp_path / "runs"),
        "data": {
            "train": str(data_file),
            "val_fraction": 0.1,
            "test_fraction": 0.2,
            "dedup": {"near": False, "exact": False},
            "on_error": "skip",
        },  # a 128-token context leaves some oasst prompts no reply token
        "train": {
            "epochs": 3,
            "batch_size": 4,
            "lr": 3e-3,
            "max_length": 128,
            "log_every": 5,
            "checkpoint_every": 1000,
        },
    }
    for key, value in extra.items():
        cfg[key] = cfg.get(key, {}) | value if isinstance(value, dict) else value
    return cfg


def test_sft_run_beats_the_base_model_and_saves_a_plain_transformers_model(tiny_lm, tmp_path, fixtures):
    run = api.train(sft_config(tiny_lm, tmp_path, fixtures / "oasst_20.jsonl"), quiet=True)
    ev = json.loads((run / "eval.json").read_text())
    assert ev["tuned"]["perplexity"] < ev["baseline"]["perplexity"]
    assert ev["data"]["train"]["examples"] > 0 and "replies_cut" in ev["data"]["train"]
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(run / "model") is not None
    assert api.show_run(run)["status"] == "done"
    from tunesmith.errors import TunesmithError

    with pytest.raises(TunesmithError, match="a sft run is a text generator, not a classifier"):
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


def test_packed_loss_equals_the_loss_of_the_same_examples_unpacked(tiny_lm, tokenizer):
    from transformers import AutoModelForCausalLM

    from tunesmith.methods.sft import Packed

    model = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    rows = [{"messages": conversation(f"reply number {i} " * (i + 1))} for i in range(6)]
    rows += [{"prompt": "Name a colour", "response": "Red, or blue."}]
    tok = Tokens(tokenizer, rows, max_length=256, shape="chat")
    packed = Packed(tok, max_length=int(tok.lengths.max()) * 3, seed=0)
    assert len(packed) < len(tok)  # several examples share a row
    with torch.no_grad():
        together = sum(token_loss(model, packed.collate([r])) for r in range(len(packed)))
        apart = sum(token_loss(model, tok.collate([i])) for i in range(len(tok)))
    assert torch.allclose(together, apart, rtol=1e-5)
    assert sum(packed.collate([r])["n"] for r in range(len(packed))) == sum(
        tok.collate([i])["n"] for i in range(len(tok))
    )


def test_merged_saved_model_generates_what_the_adapter_generated(tiny_lm, tokenizer, tmp_path):
    from peft import LoraConfig as PeftLora
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from tunesmith.methods.classify import save_model
    from tunesmith.methods.sft import Sampling, generate, replies

    torch.manual_seed(1)
    peft = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_lm), PeftLora(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # a trained-looking adapter
    prompts = ["Say hi to me", "the film was good"]
    with_adapter = replies(peft, tokenizer, [[{"role": "user", "content": p}] for p in prompts], Sampling(12))
    save_model(peft.merge_and_unload(), tokenizer, {"method": "sft"}, tmp_path / "model")
    assert generate(tmp_path / "model", prompts, Sampling(12)) == with_adapter
    stop = with_adapter[0][4:7]  # a reply ends before its first stop string, which is not part of it
    assert generate(tmp_path / "model", prompts[:1], Sampling(12, stop=(stop,))) == [
        with_adapter[0].split(stop)[0].strip()
    ]
    assert generate(tmp_path / "model", prompts, Sampling(12, repetition_penalty=50.0)) != with_adapter


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
