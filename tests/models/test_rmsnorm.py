"""The one-step RMSNorm gives Llama's output bit for bit and its gradients to rounding."""

import copy

import pytest
import torch
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from tunesmith.models.rmsnorm import fuse_rmsnorm


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_output_and_gradients_equal_llamas(dtype):
    torch.manual_seed(0)
    ours = LlamaRMSNorm(48, eps=1e-5)
    ours.weight.data = torch.randn(48).to(dtype)
    theirs = copy.deepcopy(ours)
    assert fuse_rmsnorm(ours) == 1
    x = (torch.randn(3, 7, 48) * 4).to(dtype)
    grad = torch.randn(3, 7, 48).to(dtype)
    outs, grads = [], []
    for norm in (ours, theirs):
        xi = x.clone().requires_grad_()
        y = norm(xi)
        y.backward(grad)
        outs.append(y)
        grads.append((xi.grad, norm.weight.grad))
    assert torch.equal(outs[0], outs[1])
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    for a, b in zip(grads[0], grads[1]):
        assert a.dtype == b.dtype and torch.allclose(a.float(), b.float(), **tol)


def test_a_norm_with_other_arithmetic_keeps_its_own_forward():
    model = torch.nn.Sequential(GemmaRMSNorm(8), LlamaRMSNorm(8))
    assert fuse_rmsnorm(model) == 1
    assert "forward" not in vars(model[0]) and "forward" in vars(model[1])


def test_a_norm_whose_arithmetic_changed_keeps_its_own_forward(monkeypatch):
    """The same code but other numbers (as if transformers changed what the code calls) is not fused."""
    norm = LlamaRMSNorm(8)
    monkeypatch.setattr("tunesmith.models.rmsnorm._RMSNorm.apply", lambda x, w, eps: x + 1)
    assert fuse_rmsnorm(norm) == 0 and "forward" not in vars(norm)


def test_fusing_leaves_torchs_random_state_alone():
    state = torch.get_rng_state()
    fuse_rmsnorm(LlamaRMSNorm(8))
    assert torch.equal(torch.get_rng_state(), state)
