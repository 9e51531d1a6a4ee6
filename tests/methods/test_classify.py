import numpy as np
import pytest
import torch

from tunesmith.config import config_from_dict
from tunesmith.methods.classify import build_model, freeze_embeddings, order_batches


def test_grouped_batches_pad_little_and_cover_every_row_once():
    lengths = np.random.default_rng(0).integers(3, 60, 3200)
    batches = order_batches(lengths, 32, seed=5, group_by_length=True)
    assert sorted(np.concatenate(batches).tolist()) == list(range(3200))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    random_padded = sum(len(b) * lengths[b].max() for b in order_batches(lengths, 32, seed=5, group_by_length=False))
    assert padded < 0.6 * random_padded
    assert [b.tolist() for b in batches] == [
        b.tolist() for b in order_batches(lengths, 32, seed=5, group_by_length=True)
    ]


def test_lora_trains_only_the_adapter_and_the_head(tiny_model):
    cfg = config_from_dict({"model": str(tiny_model), "data": {"train": "x"}, "lora": {"r": 4, "alpha": 8}})
    model = build_model(tiny_model, ["neg", "pos"], lora=cfg.lora)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    assert any("classifier" in n for n in trainable)


@pytest.mark.parametrize("setting, frozen", [(True, True), (False, False)])
def test_freeze_embeddings_freezes_the_token_embeddings_alone(tiny_model, setting, frozen):
    cfg = config_from_dict({"model": str(tiny_model), "data": {"train": "x"}, "train": {"freeze_embeddings": setting}})
    model = build_model(tiny_model, ["a", "b"])
    freeze_embeddings(model, cfg)
    assert model.get_input_embeddings().weight.requires_grad is not frozen
    assert all(p.requires_grad for n, p in model.named_parameters() if "word_embeddings" not in n)


def test_dropout_override_reaches_every_dropout(tiny_model):
    model = build_model(tiny_model, ["a", "b"], dropout=0.3)
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.3}


def test_the_longest_batch_comes_first():
    lengths = np.random.default_rng(1).integers(3, 90, 2000)
    batches = order_batches(lengths, 16, seed=2, group_by_length=True)
    assert lengths[batches[0]].max() == lengths.max()


def test_encoded_rows_round_trip_through_the_flat_store(tiny_model, monkeypatch):
    from transformers import AutoTokenizer

    from tunesmith.data.classify import Split
    from tunesmith.methods.classify import Encoded

    monkeypatch.setattr(Encoded, "CHUNK", 2)  # rows tokenized across chunk boundaries
    tok = AutoTokenizer.from_pretrained(tiny_model)
    split = Split(["a fine film", "bad", "the longest text of all of them here", "ok then"], ["x", "y", "x", "y"])
    enc = Encoded(tok, split, ["x", "y"], max_length=6)
    want = tok(split.texts, truncation=True, max_length=6)["input_ids"]
    assert len(enc) == 4 and enc.labels.tolist() == [0, 1, 0, 1]
    assert enc.truncated == sum(len(w) >= 6 for w in want) > 0
    batch = enc.collate(np.array([2, 0, 1]))
    for row, i in enumerate([2, 0, 1]):
        n = len(want[i])
        assert batch["input_ids"][row, :n].tolist() == want[i] and batch["attention_mask"][row].sum().item() == n
        assert (batch["input_ids"][row, n:] == tok.pad_token_id).all()
    sub = enc.subset(np.array([3, 1]))
    assert sub.collate(np.array([0]))["input_ids"][0].tolist() == want[3] and sub.labels.tolist() == [1, 1]
