import pytest
import torch

from tunesmith.train.optim import build_optimizer, lr_at, warmup_steps


def test_warmup_then_linear_decay_to_zero():
    lrs = [lr_at(s, warmup=2, total=10, peak=1.0, schedule="linear") for s in range(10)]
    assert (
        lrs[:2] == [0.5, 1.0]
        and lrs[2] == 1.0
        and lrs[-1] == pytest.approx(1 / 8 * 1)
        and lrs == sorted(lrs[:2]) + sorted(lrs[2:], reverse=True)
    )


def test_cosine_and_constant():
    assert lr_at(5, warmup=0, total=10, peak=2.0, schedule="cosine") == pytest.approx(1.0)
    assert lr_at(9, warmup=0, total=10, peak=2.0, schedule="constant") == 2.0


def test_warmup_fraction_or_steps():
    assert warmup_steps(0.1, 200) == 20 and warmup_steps(30, 200) == 30 and warmup_steps(0, 200) == 0


def test_no_decay_on_bias_and_norm_and_head_lr():
    model = torch.nn.Sequential()
    model.add_module("body", torch.nn.Linear(4, 4))
    model.add_module("norm", torch.nn.LayerNorm(4))
    model.add_module("classifier", torch.nn.Linear(4, 2))
    opt = build_optimizer(model, lr=1e-4, weight_decay=0.1, head_lr=1e-3, head_names=("classifier",))
    by = {(g["lr"], g["weight_decay"]): sum(p.numel() for p in g["params"]) for g in opt.param_groups}
    assert by == {(1e-4, 0.1): 16, (1e-4, 0.0): 4 + 8, (1e-3, 0.1): 8, (1e-3, 0.0): 2}
