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
        raw["train"] |= {"precision": "fp32"} | train
        return footprint.estimate(config_from_dict(raw), AutoConfig.from_pretrained(tiny_lm))

    small, big = total(batch_size=2), total(batch_size=8)
    assert big.activations_mb == pytest.approx(4 * small.activations_mb)
    short, long = total(max_length=64).activations_mb, total(max_length=128).activations_mb
    assert long / 4 < short < long / 2  # per row: linear in the tokens, and quadratic in attention's probabilities
    raw = sft_config(tiny_lm, tmp_path, fixtures / "oasst_20.jsonl", lora={"r": 4})
    raw["train"]["precision"] = "fp32"
    lora = footprint.estimate(config_from_dict(raw), AutoConfig.from_pretrained(tiny_lm))
    assert lora.optimizer_mb < small.optimizer_mb and lora.weights_mb == small.weights_mb
    raw["train"]["precision"] = "bf16"  # the frozen linear weights held in 16 bits (train/frozen.py)
    held = footprint.estimate(config_from_dict(raw), AutoConfig.from_pretrained(tiny_lm))
    assert held.weights_mb < lora.weights_mb
    # not where the method generates with the model it trains, nor where an engine shards them: there autocast keeps
    # a 16-bit copy of each for the backward beside the fp32 weights
    grpo = {"method": "grpo", "grpo": {"rewards": [{"function": "tests.methods.grpo_rewards:short"}]}}
    for change in (grpo, {"train": raw["train"] | {"distributed": {"strategy": "fsdp"}}}):
        unheld = footprint.estimate(config_from_dict(raw | change), AutoConfig.from_pretrained(tiny_lm))
        assert unheld.weights_mb - lora.weights_mb == pytest.approx(lora.weights_mb - held.weights_mb), change


def test_a_config_that_cannot_fit_fails_before_training_naming_what_to_lower(tiny_lm, tmp_path, fixtures, monkeypatch):
    monkeypatch.setattr(footprint, "memory_limit_mb", lambda: 500.0)
    cfg = sft_config(tiny_lm, tmp_path, fixtures / "oasst_20.jsonl")
    with pytest.raises(TunesmithError, match=r"needs about .* MB .* allows 500 MB: lower train.batch_size \(4;"):
        api.train(cfg, quiet=True)
    assert not list((tmp_path / "runs").glob("*/checkpoints"))


def test_a_batch_in_parts_needs_one_parts_activations(tiny_lm, tmp_path, fixtures):
    def activations(budget) -> float:
        raw = sft_config(tiny_lm, tmp_path, fixtures / "oasst_20.jsonl")
        raw["train"] |= {"batch_size": 8, "max_length": 128, "batch_tokens": budget}
        return footprint.estimate(config_from_dict(raw), AutoConfig.from_pretrained(tiny_lm)).activations_mb

    assert activations(256) == pytest.approx(activations(None) / 4)
    assert activations(64) == pytest.approx(activations(None) / 8)  # a part holds at least one whole row


def test_fp32_needs_more_than_bf16_and_plain_attention_adds_its_probabilities(tiny_lm, tmp_path, fixtures):
    def estimate(**train) -> footprint.Footprint:
        raw = sft_config(tiny_lm, tmp_path, fixtures / "oasst_20.jsonl")
        raw["train"] |= {"batch_tokens": None, "batch_size": 1} | train
        return footprint.estimate(config_from_dict(raw), AutoConfig.from_pretrained(tiny_lm))

    assert estimate(precision="fp32").activations_mb > estimate(precision="bf16").activations_mb
    full_bf16 = estimate(precision="bf16")
    assert full_bf16.weights_mb > estimate(precision="fp32").weights_mb  # autocast's copies of the trained weights
    # up to CAUSAL_UP_TO tokens attention is plain matmuls that keep heads x length probabilities per token
    short, long = estimate(max_length=512), estimate(max_length=1024)
    assert long.activations_mb < 2 * short.activations_mb


def test_on_a_cuda_gpu_all_but_the_runtime_is_checked_against_the_gpus_free_memory(
    tiny_lm, tmp_path, fixtures, monkeypatch
):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # device auto resolves to cuda
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    config = AutoConfig.from_pretrained(tiny_lm)
    raw = sft_config(tiny_lm, tmp_path, fixtures / "oasst_20.jsonl")
    raw["train"] |= {"batch_tokens": None, "batch_size": 1, "max_length": 256}
    cfg = config_from_dict(raw)
    need = footprint.estimate(cfg, config)
    on_gpu = need.on_gpu_mb
    assert on_gpu == need.total_mb - need.runtime_mb + footprint.CUDA_CONTEXT_MB
    monkeypatch.setattr(footprint, "memory_limit_mb", lambda: need.runtime_mb + need.weights_mb + 1)
    monkeypatch.setattr(footprint, "gpu_free_mb", lambda device: on_gpu + 1)
    assert footprint.check_fits(cfg, config) == need  # more than the machine's RAM in all, but it fits the GPU
    monkeypatch.setattr(footprint, "gpu_free_mb", lambda device: on_gpu - 1)
    with pytest.raises(TunesmithError, match=r"and the GPU \(cuda\) has free .* MB: lower train.batch_size \(1;"):
        footprint.check_fits(cfg, config)
    monkeypatch.setattr(footprint, "gpu_free_mb", lambda device: on_gpu + 1)
    monkeypatch.setattr(footprint, "memory_limit_mb", lambda: need.runtime_mb)
    with pytest.raises(TunesmithError, match=r"and this machine allows"):
        footprint.check_fits(cfg, config)
    # the fused attention runs on a GPU: no heads x length probabilities kept per token
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert footprint.estimate(cfg, config).activations_mb > need.activations_mb
