"""train.batch_tokens on the methods that run a batch in parts: more forward passes, the same training."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import sft_config
from tests.methods.test_dpo import dpo_config
from tunesmith import api
from tunesmith.methods import dpo, sft


def losses(run) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_a_batch_in_parts_trains_as_the_whole_batch(method, tiny_lm, tmp_path, fixtures, monkeypatch):
    """Batches of 4 conversations (sft) or pairs (dpo) cut into parts of at most 128 padded tokens: the logged
    losses and the trained weights match the run that takes each batch whole."""
    module, name = {"sft": (sft, "token_loss"), "dpo": (dpo, "sequence_logprobs")}[method]
    passes, forward = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: passes.append(1) or forward(*a, **k))

    def run(budget, folder):
        train = {"batch_tokens": budget, "precision": "fp32", "dropout": 0.0, "epochs": 1, "log_every": 1}
        if method == "sft":
            cfg = sft_config(tiny_lm, tmp_path / folder, fixtures / "oasst_20.jsonl", train=train)
        else:
            cfg = dpo_config(tiny_lm, tmp_path / folder, fixtures, train=train, eval={"baseline": False})
        passes.clear()
        return api.train(cfg, quiet=True), len(passes)

    (whole, whole_passes), (parts, parts_passes) = run(None, "whole"), run(128, "parts")
    assert parts_passes > whole_passes
    assert len(losses(whole)) > 2 and losses(parts) == pytest.approx(losses(whole), rel=1e-4)
    a, b = load_file(whole / "model" / "model.safetensors"), load_file(parts / "model" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
