import pytest
import torch

from tests.conftest import conversation
from tunesmith.errors import TunesmithError
from tunesmith.lm.chat import render
from tunesmith.lm.logprobs import token_loss
from tunesmith.lm.tokens import IGNORE, Packed, Tokens


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


def test_packed_loss_equals_the_loss_of_the_same_examples_unpacked(tiny_lm, tokenizer):
    from transformers import AutoModelForCausalLM

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


def test_branch_rows_give_the_log_probs_of_each_sequence_alone(tiny_lm, tokenizer):
    """A shared prompt read once, with several replies branching from it (and a group whose replies share their
    first words, which stay in each branch because they are scored), scores as each conversation alone."""
    from transformers import AutoModelForCausalLM

    from tunesmith.lm.logprobs import sequence_logprobs
    from tunesmith.lm.tokens import branch_rows, reply_tokens, shared_start, target_rows

    model = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    prompts = [[{"role": "user", "content": "Name a colour"}], [{"role": "user", "content": "Say hello " * 5}]]
    replies = [["Red.", "Blue, or green, or red."], ["Hello there!", "Hello there, friend."]]
    groups = [[reply_tokens(tokenizer, p, r, 256)[:2] for r in rs] for p, rs in zip(prompts, replies)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        together = sequence_logprobs(model, branch_rows(groups, pad))
        apart = sequence_logprobs(model, target_rows([s for j in range(2) for s in (g[j] for g in groups)], pad))
    assert together.shape == (4,)
    assert torch.allclose(together, apart, atol=1e-5)
    start = shared_start(groups[1])
    assert 0 < start < len(groups[1][0][0]) and groups[1][0][1][start] != IGNORE  # the prompt only is shared
    batch = branch_rows(groups, pad)
    assert batch["input_ids"].shape[1] < sum(len(ids) for ids, _ in groups[1])  # fewer tokens than apart
