"""The classifier's default recipe: chosen by the size of the prepared data, only for the keys a config leaves
unset, and recorded in the run."""

import json

import torch
import yaml

from tests.conftest import tiny_config
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.methods import classify


def test_the_recipe_turns_dropout_off_and_takes_big_batches_only_for_large_sets(monkeypatch):
    cfg = config_from_dict({"model": "minilm-l6", "data": {"train": "x"}, "train": {"device": "cpu"}})
    small = classify.recipe(cfg, {"rows": {"train": classify.LARGE_TRAIN - 1}})
    large = classify.recipe(cfg, {"rows": {"train": classify.LARGE_TRAIN}})
    assert small == {"train.dropout": 0.0}
    assert large == {"train.dropout": 0.0, "train.batch_size": 128, "train.lr": 2 * cfg.train.lr, "train.epochs": 1.0,
                     "train.freeze_embeddings": True, "train.batch_tokens": 512}  # fmt: skip
    monkeypatch.setattr(classify, "pick_device", lambda _: torch.device("cuda"))  # a GPU runs whole batches
    assert "train.batch_tokens" not in classify.recipe(cfg, {"rows": {"train": classify.LARGE_TRAIN}})


def test_a_run_keeps_the_keys_its_config_sets_and_records_what_the_recipe_chose(
    tiny_model, fixtures, tmp_path, monkeypatch
):
    monkeypatch.setattr(classify, "LARGE_TRAIN", 10)  # the fixture's 300 rows count as a large set
    cfg = tiny_config(tiny_model, fixtures / "sst2_train.tsv", tmp_path, eval={"baseline": False})
    del cfg["train"]["lr"]  # left to the recipe; epochs, batch_size and freeze_embeddings stay as the config sets them
    cfg["train"] |= {"freeze_embeddings": False, "device": "cpu"}
    run_dir = api.train(cfg, quiet=True)
    chosen = json.loads((run_dir / "recipe.json").read_text())
    assert chosen == {"train.dropout": 0.0, "train.lr": 1e-4, "train.batch_tokens": 512}
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]
    assert saved["lr"] == 1e-4 and saved["dropout"] == 0.0 and saved["batch_tokens"] == 512
    assert saved["freeze_embeddings"] is False
    assert saved["batch_size"] == cfg["train"]["batch_size"] and saved["epochs"] == cfg["train"]["epochs"]
    assert json.loads((run_dir / "eval.json").read_text())["recipe"] == chosen
