import pytest
import torch

from tests.conftest import conversation
from tunesmith.lm import logprobs
from tunesmith.lm.tokens import Tokens


@pytest.fixture
def lm_and_batch(tiny_lm, tokenizer):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    rows = [{"text": "the film was a joy to watch from start to end " * (i + 2)} for i in range(4)]
    return model, Tokens(tokenizer, rows, 128, "text").collate([0, 1, 2, 3])


def test_the_chunked_loss_and_its_gradients_equal_the_whole_one(lm_and_batch, monkeypatch):
    model, batch = lm_and_batch
    assert batch["n"] > 40
    whole = logprobs.token_loss(model, batch)
    whole.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    vocab = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", 7 * vocab)  # chunks of 7 targets: several, the last one short
    chunked = logprobs.token_loss(model, batch)
    chunked.backward()
    assert torch.allclose(chunked, whole, rtol=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, expected[name], atol=1e-6), name


def test_a_reply_batch_counts_its_tokens_and_targets(tokenizer):
    rows = [{"messages": conversation("Hello there!")}, {"messages": conversation("A much longer reply, surely.")}]
    tok = Tokens(tokenizer, rows, 128, "chat")
    batch = tok.collate([0, 1])
    assert batch["tokens"] == int(batch["attention_mask"].sum()) == int(tok.lengths.sum())
    assert batch["target_tokens"] == batch["n"] < batch["tokens"]


def test_on_the_same_first_batch_the_loss_equals_trls(tiny_lm, tokenizer, tmp_path, fixtures):
    """TRL's SFTTrainer tokenises prompt/completion rows and computes its loss; ours, on that very batch, must agree,
    and our own tokens and targets of the same rows must be TRL's."""
    import json

    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from tunesmith.lm.tokens import IGNORE, encode

    rows = [json.loads(ln) for ln in (fixtures / "dialogsum_20.jsonl").read_text().splitlines()[:8]]
    chats = [
        [{"role": "user", "content": r["dialogue"][:200]}, {"role": "assistant", "content": r["summary"]}] for r in rows
    ]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    args = SFTConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, max_length=256, use_cpu=True,
                     report_to="none", seed=0)  # fmt: skip
    data = Dataset.from_list([{"prompt": c[:1], "completion": c[1:]} for c in chats])
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    for chat, theirs in zip(chats, trainer.train_dataset):
        ids, targets = encode(tokenizer, {"messages": chat}, "chat")
        assert len(ids) <= 256, len(ids)
        assert ids == theirs["input_ids"] and targets == theirs["labels"]
    batch = dict(next(iter(trainer.get_train_dataloader())))
    with torch.no_grad():
        theirs = trainer.compute_loss(model, dict(batch))
        n = int((batch["labels"][:, 1:] != IGNORE).sum())
        ours = logprobs.token_loss(model, {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}) / n
    assert abs(float(ours) - float(theirs)) < 1e-3
