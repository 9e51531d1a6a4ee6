import json

import numpy as np
import pytest
import torch

from tests.conftest import tiny_config
from tunesmith import api
from tunesmith.errors import TunesmithError
from tunesmith.methods.fewshot import contrastive_batches, pair_loss


def few_rows(fixtures, tmp_path, per_class: int):
    """The first per_class rows of each label of the SST-2 fixture."""
    lines = (fixtures / "sst2_train.tsv").read_text().splitlines()
    taken, out = {}, [lines[0]]
    for line in lines[1:]:
        label = line.rsplit("\t", 1)[1]
        if taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            out.append(line)
    path = tmp_path / f"few{per_class}.tsv"
    path.write_text("\n".join(out) + "\n")
    return path


def fewshot_config(tiny_model, fixtures, tmp_path, per_class=16):
    cfg = tiny_config(tiny_model, few_rows(fixtures, tmp_path, per_class), tmp_path, method="fewshot",
                      fewshot={"pairs": 40})  # fmt: skip
    cfg["data"] |= {"test": str(fixtures / "sst2_dev.tsv"), "val_fraction": 0.0, "dedup": {"near": False}}
    cfg["train"] |= {"epochs": 2, "lr": 2e-3}
    return cfg


def test_the_pair_loss_counts_positives_and_negatives_equally():
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # rows 0 and 1 alike, row 2 orthogonal
    loss, metrics = pair_loss(emb, torch.tensor([0, 0, 1]))
    assert loss.item() == pytest.approx(0.0) and metrics["pos_similarity"].item() == pytest.approx(1.0)
    loss, _ = pair_loss(emb, torch.tensor([0, 1, 1]))  # one positive pair at cosine 0 (error 1), negatives 1 and 0
    assert loss.item() == pytest.approx((1.0 + 0.5) / 2)


def test_every_contrastive_batch_holds_positive_pairs():
    groups = [np.arange(0, 8), np.arange(8, 16), np.arange(16, 40)]
    for batch in contrastive_batches(groups, size=12, steps=20, seed=3):
        labels = np.searchsorted([8, 16, 40], batch, side="right")
        assert len(batch) == 12 and len(set(batch)) == 12 and np.bincount(labels).max() >= 2


def test_fewshot_tunes_the_encoder_and_saves_a_classifier_predict_loads(tiny_model, fixtures, tmp_path):
    run = api.train(fewshot_config(tiny_model, fixtures, tmp_path), quiet=True)
    ev = json.loads((run / "eval.json").read_text())
    assert ev["method"] == "fewshot" and ev["train"]["rows_per_class"] == {"0": 16, "1": 16}
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if "loss" in r and r.get("split", "train") == "train"]
    assert losses[-1] < losses[0]  # the contrastive loss falls
    predicted = api.predict(run, ["a gorgeous , witty , seductive movie .", "a dull , boring mess ."])
    assert len(predicted) == 2 and all(p["label"] in ("0", "1") for p in predicted)
    assert 0 <= ev["tuned"]["accuracy"] <= 1 and "baseline" in ev


def test_a_class_with_one_row_is_an_error_before_training(tiny_model, fixtures, tmp_path):
    with pytest.raises(TunesmithError, match="fewer than 2 training rows"):
        api.train(fewshot_config(tiny_model, fixtures, tmp_path, per_class=1), quiet=True)


def test_an_end_to_end_head_trains_on_from_the_regression(tiny_model, fixtures, tmp_path):
    cfg = fewshot_config(tiny_model, fixtures, tmp_path)
    cfg["fewshot"] |= {"head": "end_to_end", "head_epochs": 2}
    run = api.train(cfg, quiet=True)
    logged = [json.loads(line) for line in (run / "end_to_end" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in logged)  # the second loop ran, in its own folder
    ev = json.loads((run / "eval.json").read_text())
    assert 0 <= ev["tuned"]["accuracy"] <= 1 and api.predict(run, ["a fine film ."])[0]["label"] in ("0", "1")
