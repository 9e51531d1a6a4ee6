import numpy as np


def test_encoded_rows_round_trip_through_the_flat_store(tiny_model, monkeypatch):
    from transformers import AutoTokenizer

    from tunesmith.data.prepared import Split
    from tunesmith.infer.classifier import Encoded

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
