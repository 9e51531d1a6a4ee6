import pytest
import torch

from tunesmith.train.dropout import CpuDropout, keep_mask, use_cpu_dropout


def test_the_mask_keeps_1_minus_p_in_every_lane_of_a_draw():
    torch.manual_seed(0)
    keep = keep_mask(torch.Size([1_000_003]), 0.1, torch.device("cpu"))
    assert keep.dtype == torch.bool and keep.shape == (1_000_003,)
    # one 64-bit draw fills four lanes; the top one has a bit less: each lane must still keep 90%
    for lane in range(4):
        assert keep[lane::4].float().mean().item() == pytest.approx(0.9, abs=0.003)


def test_cpu_dropout_scales_what_it_keeps_and_its_gradient_matches():
    torch.manual_seed(1)
    x = torch.randn(64, 33, requires_grad=True)
    drop = CpuDropout(0.25)
    y = drop(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.75)
    assert kept.float().mean().item() == pytest.approx(0.75, abs=0.03)
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.75)
    drop.eval()
    assert drop(x) is x or torch.equal(drop(x), x)


def test_cpu_dropout_is_seeded_by_torch():
    x = torch.ones(1000)
    torch.manual_seed(7)
    a = CpuDropout(0.5)(x)
    torch.manual_seed(7)
    assert torch.equal(a, CpuDropout(0.5)(x))


def test_every_plain_dropout_is_swapped_and_the_output_in_eval_is_unchanged():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.1), torch.nn.ReLU(), torch.nn.Dropout(0.2))
    x = torch.randn(3, 4)
    model.eval()
    before = model(x)
    assert use_cpu_dropout(model) == 2
    assert [type(m) for m in model if isinstance(m, torch.nn.Dropout)] == [CpuDropout, CpuDropout]
    assert [m.p for m in model if isinstance(m, torch.nn.Dropout)] == [0.1, 0.2]
    assert torch.equal(model(x), before)
