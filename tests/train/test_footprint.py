import pytest
from transformers import AutoConfig

from tests.conftest import sft_config
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.train import footprint


def test_the_estimate_grows_with_batch_and_length_and_shrinks_under_lora(tiny_lm, tmp_path, fixtures):
    def total(**train) -> float:
        raw = sft_config(tiny_lm, tmp_path, fixtures / "oasst_20.jsonl")
        raw["train"] |= train
        return footprint.estimate(config_from_dict(raw), AutoConfig.from_pretrained(tiny_lm))

    small, big = total(batch_size=2), total(batch_size=8)
    assert big.activations_mb == pytest.approx(4 * small.activations_mb)
    assert total(max_length=64).activations_mb == pytest.approx(total(max_length=128).activations_mb / 2)
    raw = sft_config(tiny_lm, tmp_path, fixtures / "oasst_20.jsonl", lora={"r": 4})
    lora = footprint.estimate(config_from_dict(raw), AutoConfig.from_pretrained(tiny_lm))
    assert lora.optimizer_mb < small.optimizer_mb and lora.weights_mb == small.weights_mb
    raw["train"]["precision"] = "bf16"  # the frozen linear weights held in 16 bits (train/frozen.py)
    assert footprint.estimate(config_from_dict(raw), AutoConfig.from_pretrained(tiny_lm)).weights_mb < lora.weights_mb


def test_a_config_that_cannot_fit_fails_before_training_naming_what_to_lower(tiny_lm, tmp_path, fixtures, monkeypatch):
    monkeypatch.setattr(footprint, "memory_limit_mb", lambda: 500.0)
    cfg = sft_config(tiny_lm, tmp_path, fixtures / "oasst_20.jsonl")
    with pytest.raises(TunesmithError, match=r"needs about .* MB .* allows 500 MB: lower train.batch_size \(4;"):
        api.train(cfg, quiet=True)
    assert not list((tmp_path / "runs").glob("*/checkpoints"))


def test_a_batch_in_parts_needs_less_than_the_whole_batch_and_more_than_one_part(tiny_lm, tmp_path, fixtures):
    def activations(budget) -> float:
        raw = sft_config(tiny_lm, tmp_path, fixtures / "oasst_20.jsonl")
        raw["train"] |= {"batch_size": 8, "max_length": 128, "batch_tokens": budget}
        return footprint.estimate(config_from_dict(raw), AutoConfig.from_pretrained(tiny_lm)).activations_mb

    whole, parts = activations(None), activations(256)
    assert whole / 4 < parts < whole
    assert parts == pytest.approx(whole * (256 + footprint.HEAP_KEPT * (1024 - 256)) / 1024)
